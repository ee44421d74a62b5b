#!/usr/bin/env bash
# compare.sh: kvd against etcd, side by side, in one run on loopback.
#
# Builds kvd, kvctl and bench/etcddriver, installs Debian's etcd-server if
# etcd is missing, starts a 3-node kvd cluster (raft log always fsynced) and
# a 3-member etcd cluster (fsync on, etcd's default), both with their data in
# one temp dir, preloads KEYS keys of VALUE_SIZE bytes into each, records
# the RSS of every node 30 s after the preloads, then runs each workload against kvd then etcd, in
# ROUNDS rounds (A B A B ...), with the same load-generator settings and the
# same key seed, and prints a markdown table of medians, with the servers'
# CPU time per request (utime+stime of the three server processes over a
# run, from /proc/PID/stat, over its requests) and the load generator's
# (its own CPU time over its requests: it shares the two cores with the
# servers, so a heavier client leaves the servers less) and the bytes the
# servers caused to be written to disk per request (write_bytes of
# /proc/PID/io). Loops are spread
# over the three nodes, except in the rows marked "to the leader" (both
# drivers' --target leader), where neither system forwards writes. With
# one client, "spread" means every put goes to the first node: both
# leaders are moved to the second node first, so that it meets a follower in
# both systems, and the report says where each leader was before and after
# the runs (an election under load may move one).
#
# Environment:
#   DURATION    length of one run (default 10s)
#   ROUNDS      rounds of A/B (default 3)
#   KEYS        keyspace and preload size (default 100000)
#   VALUE_SIZE  value size in bytes (default 256)
#   RAW_OUT     if set, the JSON line of every run is copied there
#   ETCD_API    1 (default): also run etcd's client (bench/etcddriver)
#               against kvd's etcd API, for a second table "kvd via the
#               etcd API" against etcd, both measured by the same client;
#               0 leaves it out (a third shorter run)
#   PORT_BASE   ports used, 127.0.0.1 only (default 7700): kvd PORT_BASE+1..3,
#               etcd clients PORT_BASE+11..13, etcd peers PORT_BASE+21..23
set -euo pipefail

DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
KEYS=${KEYS:-100000}
VALUE_SIZE=${VALUE_SIZE:-256}
ETCD_API=${ETCD_API:-1}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PORT_BASE=${PORT_BASE:-7700}
KVD_PORTS=($((PORT_BASE + 1)) $((PORT_BASE + 2)) $((PORT_BASE + 3)))
ETCD_CLIENT_PORTS=($((PORT_BASE + 11)) $((PORT_BASE + 12)) $((PORT_BASE + 13)))
ETCD_PEER_PORTS=($((PORT_BASE + 21)) $((PORT_BASE + 22)) $((PORT_BASE + 23)))

log() { echo "[$(date +%T)] $*" >&2; }
die() { log "error: $*"; exit 1; }

# --- ports must be free --------------------------------------------------
for p in "${KVD_PORTS[@]}" "${ETCD_CLIENT_PORTS[@]}" "${ETCD_PEER_PORTS[@]}"; do
	if ss -Hltn "sport = :$p" | grep -q .; then
		die "port $p is in use"
	fi
done

TMP=$(mktemp -d -t kvbench.XXXXXX)
declare -a PIDS=()
declare -A PID_OF=()

cleanup() {
	local rc=$?
	set +e
	if ((${#PIDS[@]})); then
		log "stopping ${#PIDS[@]} processes"
		for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
		# kvd can take long to stop once its peers are gone: give every
		# process 10s in all, then kill what is left.
		for _ in $(seq 100); do
			local alive=0
			for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
			((alive)) || break
			sleep 0.1
		done
		for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; done
		for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
	fi
	if ((rc != 0)) && [[ -d $TMP/logs ]]; then
		log "failed (exit $rc); last log lines:"
		for f in "$TMP"/logs/*; do echo "== $f" >&2; tail -5 "$f" >&2; done
	fi
	rm -rf "$TMP"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$TMP/bin" "$TMP/logs" "$TMP/data"

# --- tools ---------------------------------------------------------------
if ! command -v etcd >/dev/null; then
	log "installing etcd-server"
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
fi
if ! command -v jq >/dev/null; then
	log "installing jq"
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq jq >/dev/null
fi
ETCD_VERSION=$(etcd --version | awk '/etcd Version/ {print $3}')

log "building kvd, kvctl and etcddriver"
(cd "$ROOT" && go build -o "$TMP/bin/kvd" ./cmd/kvd && go build -o "$TMP/bin/kvctl" ./cmd/kvctl)
(cd "$ROOT/bench/etcddriver" && go build -o "$TMP/bin/etcddriver" .)
KVD=$TMP/bin/kvd
KVCTL=$TMP/bin/kvctl
DRIVER=$TMP/bin/etcddriver

KVD_EPS=$(printf '127.0.0.1:%s,' "${KVD_PORTS[@]}"); KVD_EPS=${KVD_EPS%,}
ETCD_EPS=$(printf '127.0.0.1:%s,' "${ETCD_CLIENT_PORTS[@]}"); ETCD_EPS=${ETCD_EPS%,}

# --- start the clusters --------------------------------------------------
log "starting etcd $ETCD_VERSION (3 members)"
CLUSTER=""
for i in 1 2 3; do CLUSTER+="e$i=http://127.0.0.1:${ETCD_PEER_PORTS[i-1]},"; done
CLUSTER=${CLUSTER%,}
for i in 1 2 3; do
	etcd --name "e$i" --data-dir "$TMP/data/e$i" \
		--listen-client-urls "http://127.0.0.1:${ETCD_CLIENT_PORTS[i-1]}" \
		--advertise-client-urls "http://127.0.0.1:${ETCD_CLIENT_PORTS[i-1]}" \
		--listen-peer-urls "http://127.0.0.1:${ETCD_PEER_PORTS[i-1]}" \
		--initial-advertise-peer-urls "http://127.0.0.1:${ETCD_PEER_PORTS[i-1]}" \
		--initial-cluster "$CLUSTER" --initial-cluster-state new \
		--initial-cluster-token bench --logger zap \
		>"$TMP/logs/etcd-e$i.log" 2>&1 &
	PIDS+=($!); PID_OF[etcd-e$i]=$!
done

log "starting kvd (3 nodes)"
for i in 1 2 3; do
	"$KVD" --name "n$i" --listen "127.0.0.1:${KVD_PORTS[i-1]}" --data-dir "$TMP/data/k$i" \
		--bootstrap-expect 3 --join "127.0.0.1:${KVD_PORTS[0]}" \
		>"$TMP/logs/kvd-n$i.log" 2>&1 &
	PIDS+=($!); PID_OF[kvd-n$i]=$!
done

wait_for() { # what, seconds, command...
	local what=$1 secs=$2; shift 2
	for _ in $(seq $((secs * 5))); do
		if "$@" >/dev/null 2>&1; then log "$what ready"; return 0; fi
		sleep 0.2
	done
	die "$what not ready after ${secs}s"
}
kvd_ready() {
	[[ $("$KVCTL" --endpoints "$KVD_EPS" members -o json | jq '[.members[] | select(.suffrage == "SUFFRAGE_VOTER")] | length') == 3 ]] &&
		"$KVCTL" --endpoints "$KVD_EPS" bench --workload put --total 1 --keyspace "$KEYS" -o json
}
etcd_ready() {
	for i in 1 2 3; do
		curl -sf "http://127.0.0.1:${ETCD_CLIENT_PORTS[i-1]}/health" | grep -q '"health":"true"' || return 1
	done
	"$DRIVER" --endpoints "$ETCD_EPS" --workload put --total 1 --keyspace "$KEYS" -o json
}
wait_for etcd 60 etcd_ready
wait_for kvd 60 kvd_ready

# --- preload -------------------------------------------------------------
log "preloading $KEYS keys of $VALUE_SIZE B into kvd"
start=$(date +%s.%N)
"$KVCTL" --endpoints "$KVD_EPS" bench --workload put --preload --total 1 \
	--keyspace "$KEYS" --value-size "$VALUE_SIZE" -o json >/dev/null
KVD_PRELOAD_S=$(echo "$(date +%s.%N) - $start" | bc)
log "preloading $KEYS keys of $VALUE_SIZE B into etcd"
start=$(date +%s.%N)
"$DRIVER" --endpoints "$ETCD_EPS" --preload-only --keyspace "$KEYS" --value-size "$VALUE_SIZE" >/dev/null
ETCD_PRELOAD_S=$(echo "$(date +%s.%N) - $start" | bc)

# leaders: where each system's leader is, as "kvd-address etcd-address".
# The one-client rows not sent to the leader go to the first endpoint of
# each system: they compare like with like only when neither leads there.
leaders() {
	local k e
	k=$("$KVCTL" --endpoints "$KVD_EPS" members -o json | jq -r '.members[] | select(.leader) | .address') || k=""
	e=$("$DRIVER" --endpoints "$ETCD_EPS" --target leader --workload put --total 1 --keyspace "$KEYS" -o json |
		jq -r '.endpoints[0]') || e=""
	echo "${k:-unknown} ${e:-unknown}"
}

# Both leaders go to the second node: the one-client rows not sent to the
# leader use the first endpoint only, so both systems then meet a follower
# there (kvd's forwards the put, etcd's proposes it), like for like, instead
# of whatever each election happened to pick.
log "moving both leaders to the second node"
read -r kvd_leader _ <<<"$(leaders)"
if [[ $kvd_leader != "127.0.0.1:${KVD_PORTS[1]}" ]]; then
	# An election on a loaded machine can leave no leader for a moment.
	wait_for "kvd leader on n2" 60 "$KVCTL" --endpoints "$KVD_EPS" --timeout 30s leader transfer n2
fi
"$DRIVER" --endpoints "$ETCD_EPS" --move-leader-to "127.0.0.1:${ETCD_CLIENT_PORTS[1]}" >/dev/null

read -r KVD_LEADER_START ETCD_LEADER_START <<<"$(leaders)"
log "leaders: kvd $KVD_LEADER_START, etcd $ETCD_LEADER_START"

rss_mb() { awk '/^VmRSS:/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
declare -A RSS=()
# Both systems are Go programs that hand freed memory back to the OS on
# their own schedules: let both settle alike (30s) before sampling.
sleep 30
for n in n1 n2 n3; do RSS[kvd-$n]=$(rss_mb "${PID_OF[kvd-$n]}"); done
for e in e1 e2 e3; do RSS[etcd-$e]=$(rss_mb "${PID_OF[etcd-$e]}"); done

# --- workloads -----------------------------------------------------------
# label|bench flags, the same for both systems.
WORKLOADS=(
	"put, 1 client|--workload put --clients 1"
	"put, 64 clients|--workload put --clients 64"
	"put, 256 clients|--workload put --clients 256"
	# The same puts sent to the leader only: neither system forwards.
	"put, 1 client, to the leader|--workload put --clients 1 --target leader"
	"put, 64 clients, to the leader|--workload put --clients 64 --target leader"
	"put, 256 clients, to the leader|--workload put --clients 256 --target leader"
	"get linearizable, 256 clients|--workload get --consistency l --clients 256"
	"get serializable, 256 clients|--workload get --consistency s --clients 256"
)
COMMON=(--duration "$DURATION" --keyspace "$KEYS" --value-size "$VALUE_SIZE")
RESULTS=$TMP/results.jsonl
: >"$RESULTS"

HZ=$(getconf CLK_TCK)
# cpu_ticks system: utime+stime of the system's three server processes.
cpu_ticks() {
	local t=0 p procs=$1
	# kvd through its etcd API: kvd's processes.
	[[ $procs == kvdetcd ]] && procs=kvd
	for p in "${!PID_OF[@]}"; do
		[[ $p == "$procs"-* ]] || continue
		t=$((t + $(awk '{print $14 + $15}' "/proc/${PID_OF[$p]}/stat")))
	done
	echo "$t"
}

# disk_bytes system: bytes the system's three server processes caused to
# be written to disk (write_bytes of /proc/PID/io: page cache writes,
# memory-mapped ones included).
disk_bytes() {
	local b=0 p procs=$1
	[[ $procs == kvdetcd ]] && procs=kvd
	for p in "${!PID_OF[@]}"; do
		[[ $p == "$procs"-* ]] || continue
		b=$((b + $(awk '/^write_bytes:/ {print $2}' "/proc/${PID_OF[$p]}/io")))
	done
	echo "$b"
}

run_one() { # system label round seed flags...
	local sys=$1 label=$2 round=$3 seed=$4; shift 4
	local out t0 t1 w0 w1 lg_us
	t0=$(cpu_ticks "$sys")
	w0=$(disk_bytes "$sys")
	# The load generator runs in a subshell whose `times` gives its CPU
	# (the second line: children's user and system time, as 1m2.345s).
	if [[ $sys == kvd ]]; then
		out=$("$KVCTL" --endpoints "$KVD_EPS" bench "$@" "${COMMON[@]}" --seed "$seed" -o json && times >"$TMP/times") || out=""
	elif [[ $sys == kvdetcd ]]; then
		out=$("$DRIVER" --endpoints "$KVD_EPS" "$@" "${COMMON[@]}" --seed "$seed" -o json && times >"$TMP/times") || out=""
	else
		out=$("$DRIVER" --endpoints "$ETCD_EPS" "$@" "${COMMON[@]}" --seed "$seed" -o json && times >"$TMP/times") || out=""
	fi
	t1=$(cpu_ticks "$sys")
	w1=$(disk_bytes "$sys")
	if [[ -z $out ]]; then
		log "  $sys: run failed"
		return 0
	fi
	lg_us=$(awk 'NR == 2 {
		t = 0
		for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] }
		printf "%d", t * 1000000
	}' "$TMP/times")
	# Server CPU per request: the three servers' CPU time over the run
	# (the load generator's start and stop included, alike for both).
	jq -c --arg sys "$sys" --arg wl "$label" --argjson round "$round" \
		--argjson cpu_us "$(((t1 - t0) * 1000000 / HZ))" --argjson lg_us "$lg_us" --argjson wb "$((w1 - w0))" \
		'. + {system: $sys, wl: $wl, round: $round} +
		 {server_cpu_us_per_op: (if .ops > 0 then $cpu_us / .ops else null end),
		  loadgen_cpu_us_per_op: (if .ops > 0 then $lg_us / .ops else null end),
		  disk_bytes_per_op: (if .ops > 0 then $wb / .ops else null end)}' <<<"$out" >>"$RESULTS"
	log "  $sys: $(jq -r '"\(.ops_per_s | floor) ops/s, p50 \(.p50_ms) ms, p99 \(.p99_ms) ms, errors \([.errors[]] | add // 0)"' <<<"$out"), CPU us/op server $(tail -n 1 "$RESULTS" | jq -r '[.server_cpu_us_per_op, .loadgen_cpu_us_per_op] | map(if type == "number" then floor else "n/a" end) | "\(.[0]), load generator \(.[1])"')"
}

for round in $(seq "$ROUNDS"); do
	for idx in "${!WORKLOADS[@]}"; do
		label=${WORKLOADS[idx]%%|*}
		read -r -a flags <<<"${WORKLOADS[idx]#*|}"
		seed=$((round * 100 + idx + 1))
		log "round $round/$ROUNDS: $label ($DURATION each)"
		run_one kvd "$label" "$round" "$seed" "${flags[@]}"
		run_one etcd "$label" "$round" "$seed" "${flags[@]}"
		if [[ $ETCD_API == 1 ]]; then
			run_one kvdetcd "$label" "$round" "$seed" "${flags[@]}"
		fi
	done
done

if [[ -n ${RAW_OUT:-} ]]; then cp "$RESULTS" "$RAW_OUT"; fi
read -r KVD_LEADER_END ETCD_LEADER_END <<<"$(leaders)"

# --- report --------------------------------------------------------------
echo "kvd vs etcd $ETCD_VERSION on 127.0.0.1, 3 nodes each; $KEYS keys of $VALUE_SIZE B preloaded;"
echo "each run $DURATION, closed loop, same load generator (api/client/bench); median of $ROUNDS rounds run A/B interleaved."
echo
# table A: a markdown table of system A against etcd, row by row.
table() {
	local sys=$1
	echo "| workload | kvd ops/s | etcd ops/s | kvd/etcd | kvd p50 / p99 ms | etcd p50 / p99 ms | server CPU us/op kvd / etcd | load generator CPU us/op kvd / etcd | disk B/op kvd / etcd | errors kvd / etcd |"
	echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
	for w in "${WORKLOADS[@]}"; do
		label=${w%%|*}
		jq -rs --arg wl "$label" --arg sys "$sys" '
			def median: sort | if length == 0 then null
				elif length % 2 == 1 then .[(length - 1) / 2]
				else (.[length / 2 - 1] + .[length / 2]) / 2 end;
			def stats($s): [.[] | select(.wl == $wl and .system == $s)] |
				{n: length, ops: ([.[].ops_per_s] | median), p50: ([.[].p50_ms] | median),
				 p99: ([.[].p99_ms] | median), cpu: ([.[].server_cpu_us_per_op | select(. != null)] | median),
				 lg: ([.[].loadgen_cpu_us_per_op | select(. != null)] | median),
				 disk: ([.[].disk_bytes_per_op | select(. != null)] | median),
				 errs: ([.[] | [.errors[]] | add // 0] | add // 0)};
			def f0: if . == null then "n/a" else (. | round | tostring) end;
			def f2: if . == null then "n/a" else ((. * 100 | round) / 100 | tostring) end;
			stats($sys) as $k | stats("etcd") as $e |
			"| \($wl) | \($k.ops | f0) | \($e.ops | f0) | " +
			(if $k.ops == null or $e.ops == null or $e.ops == 0 then "n/a" else "\(($k.ops / $e.ops) | f2)x" end) +
			" | \($k.p50 | f2) / \($k.p99 | f2) | \($e.p50 | f2) / \($e.p99 | f2) | \($k.cpu | f0) / \($e.cpu | f0) | \($k.lg | f0) / \($e.lg | f0) | \($k.disk | f0) / \($e.disk | f0) | \($k.errs) / \($e.errs) |"
		' "$RESULTS"
	done
}
table kvd
if [[ $ETCD_API == 1 ]]; then
	echo
	echo "kvd via the etcd API: the same workloads run by etcd's client (bench/etcddriver, clientv3) against kvd's etcd v3 face (kvd columns) and against etcd:"
	echo
	table kvdetcd
fi
echo
echo "RSS per node after preload (VmRSS, MiB); preload took kvd $(printf %.1f "$KVD_PRELOAD_S") s, etcd $(printf %.1f "$ETCD_PRELOAD_S") s:"
echo
echo "| node | kvd | etcd |"
echo "| --- | ---: | ---: |"
for i in 1 2 3; do
	echo "| $i | ${RSS[kvd-n$i]} | ${RSS[etcd-e$i]} |"
done
kt=$(echo "${RSS[kvd-n1]} + ${RSS[kvd-n2]} + ${RSS[kvd-n3]}" | bc)
et=$(echo "${RSS[etcd-e1]} + ${RSS[etcd-e2]} + ${RSS[etcd-e3]}" | bc)
echo "| total | $kt | $et |"
echo
# The one-client rows not sent to the leader use the first endpoint only.
echo "Leaders (before / after the runs): kvd $KVD_LEADER_START / $KVD_LEADER_END, etcd $ETCD_LEADER_START / $ETCD_LEADER_END;"
echo "the one-client rows not marked \"to the leader\" send every put to 127.0.0.1:${KVD_PORTS[0]} (kvd) and 127.0.0.1:${ETCD_CLIENT_PORTS[0]} (etcd)."
