#!/usr/bin/env bash
# groups.sh: put throughput of a cluster of 6 cgroup-limited containers with
# 1, 2 or 3 raft groups (issue 37, "Measured, not assumed").
#
#   bench/groups.sh [--groups "1 2 3"] [--image "A B"] [--duration 25s] ...
#
# For each round, image and mode it starts a fresh cluster: six kvd
# containers n1..n6 on a bridge network of its own, each limited to --cpus
# (0.25) of a CPU by its cgroup (docker run --cpus), the meta group on n1..n3
# (--max-voters 3; n1..n3 start first and bootstrap, n4..n6 join after as
# non-voters). Then it creates the mode's groups, runs `kvctl bench
# --workload put` from the host (outside every container) against the six
# containers' bridge addresses, prints one line, appends one JSON line to
# --results, and removes the cluster.
#
# Modes (--groups):
#   1  no group created: keys /a/ and /b/, both in the meta group (n1..n3),
#      n4..n6 only forward (the single-group figure, before and after)
#   2  keys /a/ and /b/; a group for /b/ on n4,n5,n6, /a/ stays in the meta
#      group on n1..n3: each node holds one replica, two leaders
#   3  keys /a/, /b/ and /c/, a third each; /b/ on n4,n5,n6 and /c/ on
#      --c-replicas (n1,n3,n5): nine replicas on six nodes, three leaders
#      (the meta leader's spreading of group leaders decides where they go;
#      the line and the JSON record where they are)
#
# Data is on a tmpfs in each container (--tmpfs /data), not a volume: all
# six nodes share this machine's one disk, whose fsync latency neither the
# cgroup limits nor the number of nodes change, so a volume would measure
# the disk; with a tmpfs each node is bounded by its CPU share alone, which
# is what "nodes of fixed size" asks. The tmpfs goes with its container.
#
# Flags (each also an environment variable, in capitals; bash keeps GROUPS
# for itself, so the modes' variable is NGROUPS):
#   --groups "1 2 3"   modes to run, in order (NGROUPS, default 1)
#   --image "A B"      images to compare, each mode on each in turn (IMAGE;
#                      default: deploy/build-image.sh builds this tree as
#                      kvstore-groupbench). For another git revision:
#                      git worktree add /tmp/rev REV && /tmp/rev/deploy/build-image.sh kvstore-rev
#   --duration 25s     measured run per mode (DURATION)
#   --warmup 5s        unmeasured run before it (WARMUP)
#   --clients "64 256" concurrent request loops of kvctl bench (CLIENTS): one
#                      measured run for each, on the same cluster. A leader
#                      batches more puts per raft entry when more wait, so its
#                      CPU per put falls as clients rise: compare modes at the
#                      same count, and at counts where throughput has levelled
#   --cpus 0.25        CPU limit of each container (CPUS)
#   --rounds 1         rounds of every image and mode (ROUNDS)
#   --c-replicas LIST  replicas of the /c/ group in mode 3 (C_REPLICAS)
#   --results FILE     where JSON lines go (RESULTS; default
#                      bench/results-raw.jsonl; "-" for none)
#   --kvctl PATH       the load generator and admin client (KVCTL; default:
#                      built from this tree). It needs `bench --prefixes`,
#                      and `group create` for modes 2 and 3.
#   --label TEXT       recorded in the JSON (LABEL), e.g. the revision
#   --place meta|data  where the keys live (PLACE, default meta): meta as
#                      the modes above say; data puts every key in a data
#                      group of its own, the meta group idle (mode 1: one
#                      group "ab" over /a/ and /b/ on n1..n3; mode 2: /a/ on
#                      n1..n3, /b/ on n4..n6; mode 3: and /c/ on --c-replicas),
#                      so that each group has three replicas and no
#                      non-voters, in every mode
#
# Each line printed and each JSON line carries, besides kvctl bench's report:
# node_cpu, the CPUs each node used over the run (its limit is --cpus, read
# back from the container's cgroup into cgroup_cpu_limits); node_throttled,
# the time its cgroup spent throttled per second of the run; loadgen_cpu,
# the CPUs kvctl bench used; host_busy, the share of the machine's host_cpus
# busy (with anything, other users included); layout, the members and
# groups as kvctl listed them before the run.
#
# Needs Docker and jq, and the host must reach the bridge network's
# addresses (Linux). It refuses to start while other containers run (one
# Docker suite at a time on a shared machine); FORCE=1 overrides.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MODES=${NGROUPS:-1}
IMAGES=${IMAGE:-}
DURATION=${DURATION:-25s}
WARMUP=${WARMUP:-5s}
CLIENTS=${CLIENTS:-64 256}
CPUS=${CPUS:-0.25}
ROUNDS=${ROUNDS:-1}
C_REPLICAS=${C_REPLICAS:-n1,n3,n5}
PLACE=${PLACE:-meta}
RESULTS=${RESULTS:-$ROOT/bench/results-raw.jsonl}
KVCTL=${KVCTL:-}
LABEL=${LABEL:-}
NODES=6

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
while [[ $# -gt 0 ]]; do
	[[ $# -ge 2 ]] || usage
	case $1 in
	--groups) MODES=$2 ;;
	--image) IMAGES=$2 ;;
	--duration) DURATION=$2 ;;
	--warmup) WARMUP=$2 ;;
	--clients) CLIENTS=$2 ;;
	--cpus) CPUS=$2 ;;
	--rounds) ROUNDS=$2 ;;
	--c-replicas) C_REPLICAS=$2 ;;
	--results) RESULTS=$2 ;;
	--kvctl) KVCTL=$2 ;;
	--label) LABEL=$2 ;;
	--place) PLACE=$2 ;;
	*) usage ;;
	esac
	shift 2
done
MODES=${MODES//,/ }
CLIENTS=${CLIENTS//,/ }

log() { echo "[$(date +%T)] $*" >&2; }
die() { log "$*"; exit 1; }

for m in $MODES; do
	[[ $m == [123] ]] || die "unknown mode $m: want 1, 2 or 3"
done
command -v jq >/dev/null || die "jq is needed (apt-get install jq)"
command -v docker >/dev/null || die "docker is needed"
if [[ ${FORCE:-} != 1 ]] && [[ -n $(docker ps -q) ]]; then
	docker ps >&2
	die "other containers are running (another Docker suite?); wait for them, or FORCE=1"
fi

RUN=$(printf '%04x%04x' $RANDOM $RANDOM)
LABELKEY=kvgroupbench
TMP=$(mktemp -d -t kvgroups.XXXXXX)
cleanup_cluster() {
	local ids
	ids=$(docker ps -aq --filter "label=$LABELKEY=$RUN")
	[[ -z $ids ]] || docker rm -f $ids >/dev/null
	ids=$(docker network ls -q --filter "label=$LABELKEY=$RUN")
	[[ -z $ids ]] || docker network rm $ids >/dev/null
}
CHILD= # a kvctl bench running in the background, for cleanup to stop
cleanup() {
	local rc=$?
	set +e
	[[ -z $CHILD ]] || { kill -TERM "$CHILD"; wait "$CHILD"; } 2>/dev/null
	cleanup_cluster
	rm -rf "$TMP"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ -z $KVCTL ]]; then
	(cd "$ROOT" && go build -o "$TMP/kvctl" ./cmd/kvctl)
	KVCTL=$TMP/kvctl
fi
[[ $("$KVCTL" bench --help 2>&1) == *--prefixes* ]] ||
	die "$KVCTL has no bench --prefixes: build kvctl from a tree that has it (--kvctl)"
for m in $MODES; do
	if [[ $m != 1 ]] && ! "$KVCTL" group create --help >/dev/null 2>&1; then
		die "mode $m needs \`kvctl group create\`, which $KVCTL does not know (the multi-group feature, issue 37, is not in this build)"
	fi
done
if [[ -z $IMAGES ]]; then
	log "building the image kvstore-groupbench from $ROOT"
	"$ROOT/deploy/build-image.sh" kvstore-groupbench >/dev/null
	IMAGES=kvstore-groupbench
	[[ -n $LABEL ]] || LABEL=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || true)
fi
for img in $IMAGES; do
	docker image inspect "$img" >/dev/null || die "no image $img"
done

declare -A ID=() # node name -> container id, of the cluster up now

# cgroup_dir KIND ID: the container's cgroup directory for the cpu (v1:
# cpu, cpuacct) controllers, or its one v2 directory.
cgroup_dir() {
	local kind=$1 id=$2 d
	for d in "/sys/fs/cgroup/$kind/docker/$id" "/sys/fs/cgroup/system.slice/docker-$id.scope" "/sys/fs/cgroup/docker/$id"; do
		[[ -d $d ]] && { echo "$d"; return; }
	done
	return 1
}

# cpu_limit ID: the CPU limit the kernel enforces on the container, in
# CPUs, from its cgroup (cfs quota / period, or cpu.max).
cpu_limit() {
	local d
	if d=$(cgroup_dir cpu "$1") && [[ -f $d/cpu.cfs_quota_us ]]; then
		echo "$(cat "$d/cpu.cfs_quota_us") $(cat "$d/cpu.cfs_period_us")" | awk '{ if ($1 < 0) print "none"; else printf "%g\n", $1 / $2 }'
	elif [[ -f $d/cpu.max ]]; then
		awk '{ if ($1 == "max") print "none"; else printf "%g\n", $1 / $2 }' "$d/cpu.max"
	else
		echo unknown
	fi
}

# cpu_ns ID: CPU time the container has used, in nanoseconds.
cpu_ns() {
	local d
	if d=$(cgroup_dir cpuacct "$1") && [[ -f $d/cpuacct.usage ]]; then
		cat "$d/cpuacct.usage"
	elif d=$(cgroup_dir cpu "$1") && [[ -f $d/cpu.stat ]]; then
		awk '$1 == "usage_usec" { print $2 * 1000 }' "$d/cpu.stat"
	else
		echo 0
	fi
}

# throttled_ns ID: time the container's cgroup has spent throttled.
throttled_ns() {
	local d
	d=$(cgroup_dir cpu "$1") || { echo 0; return; }
	awk '$1 == "throttled_time" { print $2 } $1 == "throttled_usec" { print $2 * 1000 }' "$d/cpu.stat"
}

# start_node IMAGE NAME: runs node NAME in the background.
start_node() {
	local img=$1 name=$2
	docker run -d --name "kvgroups-$RUN-$name" --hostname "$name" \
		--label "$LABELKEY=$RUN" --network "kvgroups-$RUN" --network-alias kvd \
		--cpus "$CPUS" --tmpfs /data:rw,size=2g,uid=65532,gid=65532,mode=0755 \
		"$img" --name "$name" --join kvd --bootstrap-expect 3 --max-voters 3 \
		--log-level warn >/dev/null
}

ip_of() { docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "kvgroups-$RUN-$1"; }

# wait_members ADDR: until the cluster has n1..n3 as voters and n4..n6 as
# non-voters, all alive, and takes a write.
wait_members() {
	local addr=$1 deadline=$((SECONDS + 120)) want got
	want='n1 voter alive,n2 voter alive,n3 voter alive,n4 nonvoter alive,n5 nonvoter alive,n6 nonvoter alive'
	while :; do
		got=$("$KVCTL" --endpoints "$addr" --timeout 3s -o json members 2>/dev/null |
			jq -r '[.members[] | "\(.id) \(.suffrage | ascii_downcase | sub("^suffrage_"; "")) \(.gossipState)"] | sort | join(",")' 2>/dev/null) || got=
		if [[ $got == "$want" ]] && "$KVCTL" --endpoints "$addr" --timeout 3s put /ready x >/dev/null 2>&1; then
			return
		fi
		((SECONDS < deadline)) || die "the cluster did not form in 120s: members ${got:-unknown}"
		sleep 1
	done
}

# start_cluster IMAGE: n1..n3 first, so that they are the meta group's
# voters, then n4..n6.
start_cluster() {
	local img=$1 i
	docker network create --label "$LABELKEY=$RUN" "kvgroups-$RUN" >/dev/null
	for i in 1 2 3; do start_node "$img" "n$i"; done
	local deadline=$((SECONDS + 90))
	until "$KVCTL" --endpoints "$(ip_of n1):7379" --timeout 3s put /ready x >/dev/null 2>&1; do
		((SECONDS < deadline)) || die "n1..n3 did not elect a leader in 90s"
		sleep 1
	done
	for i in 4 5 6; do start_node "$img" "n$i"; done
	wait_members "$(ip_of n1):7379"
}

# create_groups MODE ADDR: the mode's groups, each with a leader when the
# command returns.
create_groups() {
	local mode=$1 addr=$2
	if [[ $PLACE == data ]]; then
		# Every key in a data group of 3 replicas; the meta group idle.
		local -a spec
		case $mode in
		1) spec=("ab --range /a/ /b0 --replicas n1,n2,n3") ;;
		2) spec=("a --prefix /a/ --replicas n1,n2,n3" "b --prefix /b/ --replicas n4,n5,n6") ;;
		*) spec=("a --prefix /a/ --replicas n1,n2,n3" "b --prefix /b/ --replicas n4,n5,n6" "c --prefix /c/ --replicas $C_REPLICAS") ;;
		esac
		local g
		for g in "${spec[@]}"; do
			# shellcheck disable=SC2086 # the spec's words are the arguments
			"$KVCTL" --endpoints "$addr" --timeout 60s group create $g >&2
		done
		return
	fi
	if ((mode >= 2)); then
		"$KVCTL" --endpoints "$addr" --timeout 60s group create b --prefix /b/ --replicas n4,n5,n6 >&2
	fi
	if ((mode >= 3)); then
		"$KVCTL" --endpoints "$addr" --timeout 60s group create c --prefix /c/ --replicas "$C_REPLICAS" >&2
	fi
}

# in_background OUT CMD...: runs CMD with its standard output to OUT, in
# the background, so that a signal to this script is handled at once (bash
# runs a trap only once the foreground command is done), and waits for it.
in_background() {
	local out=$1 rc=0
	shift
	"$@" >"$out" &
	CHILD=$!
	wait "$CHILD" || rc=$?
	CHILD=
	return "$rc"
}

# host_cpu: "busy total" jiffies of the whole machine, from /proc/stat.
host_cpu() { awk '$1 == "cpu" { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t; exit }' /proc/stat; }

# children_ticks: CPU time, in clock ticks, of this shell's finished
# children (cutime + cstime): the load generator's, around one run.
children_ticks() { awk '{ print $16 + $17 }' "/proc/$$/stat"; }

# measure ROUND IMAGE MODE READY_S LAYOUT LIMITS BENCH...: one measured run
# of the command BENCH against the cluster up now (ID holds its
# containers): prints the result line, appends the JSON line.
measure() {
	local round=$1 img=$2 mode=$3 ready_s=$4 layout=$5 limits=$6 i
	shift 6
	declare -A CPU0=() THR0=()
	for i in $(seq 1 $NODES); do
		CPU0[n$i]=$(cpu_ns "${ID[n$i]}")
		THR0[n$i]=$(throttled_ns "${ID[n$i]}")
	done
	local load1 t1 t2 out host0 host1 kids0 kids1
	load1=$(cut -d' ' -f1 /proc/loadavg)
	host0=$(host_cpu)
	kids0=$(children_ticks)
	t1=$(date +%s%N)
	in_background "$TMP/out" "$@"
	out=$(<"$TMP/out")
	t2=$(date +%s%N)
	kids1=$(children_ticks)
	host1=$(host_cpu)
	local cpu='{}' thr='{}'
	for i in $(seq 1 $NODES); do
		local c th
		c=$(awk -v a="${CPU0[n$i]}" -v b="$(cpu_ns "${ID[n$i]}")" -v t=$((t2 - t1)) 'BEGIN { printf "%.3f", (b - a) / t }')
		th=$(awk -v a="${THR0[n$i]}" -v b="$(throttled_ns "${ID[n$i]}")" -v t=$((t2 - t1)) 'BEGIN { printf "%.3f", (b - a) / t }')
		cpu=$(jq -c --arg n "n$i" --argjson v "$c" '. + {($n): $v}' <<<"$cpu")
		thr=$(jq -c --arg n "n$i" --argjson v "$th" '. + {($n): $v}' <<<"$thr")
	done
	local hz loadgen host
	hz=$(getconf CLK_TCK)
	loadgen=$(awk -v a="$kids0" -v b="$kids1" -v hz="$hz" -v t=$((t2 - t1)) 'BEGIN { printf "%.3f", (b - a) / hz / (t / 1e9) }')
	host=$(awk -v a="$host0" -v b="$host1" 'BEGIN { split(a, x, " "); split(b, y, " "); printf "%.3f", (y[1] - x[1]) / (y[2] - x[2]) }')
	local line
	line=$(jq -c \
		--arg img "$img" --arg imgid "$(docker image inspect -f '{{.Id}}' "$img")" --arg lbl "$LABEL" \
		--argjson groups "$mode" --argjson round "$round" --argjson cpus "$CPUS" --arg place "$PLACE" \
		--arg time "$(date -u +%FT%TZ)" --argjson ready "$ready_s" --argjson load1 "$load1" \
		--argjson cpu "$cpu" --argjson thr "$thr" --arg layout "$layout" \
		--arg limits "$limits" --argjson nodes "$NODES" \
		--argjson loadgen "$loadgen" --argjson host "$host" --argjson ncpu "$(nproc)" \
		'{bench: "groups", system: "kvd", wl: "put, \(.clients) clients, \(.prefixes | length) prefixes, \($groups) group(s) (\($place)), \($nodes) nodes at \($cpus) CPU",
		  round: $round, time: $time, image: $img, image_id: $imgid}
		 + (if $lbl == "" then {} else {"label": $lbl} end)
		 + {groups: $groups, nodes: $nodes, cpus: $cpus, cgroup_cpu_limits: ($limits | split(" ")),
		    ready_s: $ready, load1_before: $load1, node_cpu: $cpu, node_throttled: $thr,
		    loadgen_cpu: $loadgen, host_busy: $host, host_cpus: $ncpu, layout: $layout, place: $place}
		 + .
		 + {loadgen_cpu_us_per_op: (if .ops > 0 then $loadgen * .duration_s * 1e6 / .ops else null end),
		    server_cpu_us_per_op: (if .ops > 0 then ($cpu | add) * .duration_s * 1e6 / .ops else null end)}' <<<"$out")
	echo "$line" | jq -r '"\(.image) \(.groups) group(s), \(.clients) clients: \(.ops_per_s | floor) puts/s  p50 \(.p50_ms * 10 | round / 10) ms  p99 \(.p99_ms * 10 | round / 10) ms  errors \(.errors | add // 0)  CPU: nodes \(.node_cpu | to_entries | map("\(.key) \(.value)") | join(" ")), load generator \(.loadgen_cpu), machine \(.host_busy * .host_cpus * 100 | round / 100) of \(.host_cpus)"'
	if ! jq -e --argjson cpus "$CPUS" '[.node_cpu[]] | max >= 0.9 * $cpus' <<<"$line" >/dev/null; then
		log "warning: no node used 90% of its $CPUS CPU: the nodes were not the limit (the load generator, or the machine, busy with others?)"
	fi
	if [[ $RESULTS != - ]]; then
		echo "$line" >>"$RESULTS"
	fi
}

# run_one ROUND IMAGE MODE
run_one() {
	local round=$1 img=$2 mode=$3 i
	local prefixes=/a/,/b/
	((mode == 3)) && prefixes=/a/,/b/,/c/
	log "round $round, $img, $mode group(s): starting $NODES nodes at $CPUS CPU"
	local t0=$SECONDS
	start_cluster "$img"
	local ready_s=$((SECONDS - t0))
	ID=()
	local eps=() limits=()
	for i in $(seq 1 $NODES); do
		ID[n$i]=$(docker inspect -f '{{.Id}}' "kvgroups-$RUN-n$i")
		eps+=("$(ip_of "n$i"):7379")
		local lim
		lim=$(cpu_limit "${ID[n$i]}")
		limits+=("$lim")
		if [[ $lim != unknown ]] && ! awk -v a="$lim" -v b="$CPUS" 'BEGIN { exit !(a == b) }'; then
			die "n$i runs with a CPU limit of $lim, not $CPUS"
		fi
	done
	local endpoints
	endpoints=$(IFS=,; echo "${eps[*]}")
	create_groups "$mode" "${eps[0]}"
	local layout
	layout=$("$KVCTL" --endpoints "${eps[0]}" members | tr -s ' ' | sed 's/^/  /')
	if ((mode >= 2)); then
		layout+=$'\n'$("$KVCTL" --endpoints "${eps[0]}" group list | sed 's/^/  /')
	fi
	log "layout:"$'\n'"$layout"

	local bench=("$KVCTL" --endpoints "$endpoints" --timeout 5s bench --workload put
		--prefixes "$prefixes" -o json)
	local c
	in_background /dev/null "${bench[@]}" --clients "${CLIENTS%% *}" --duration "$WARMUP"
	for c in $CLIENTS; do
		measure "$round" "$img" "$mode" "$ready_s" "$layout" "${limits[*]}" "${bench[@]}" --clients "$c" --duration "$DURATION"
	done
	cleanup_cluster
}

for round in $(seq 1 "$ROUNDS"); do
	for img in $IMAGES; do
		for mode in $MODES; do
			run_one "$round" "$img" "$mode"
		done
	done
done
