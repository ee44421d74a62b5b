#!/usr/bin/env bash
# groupidle.sh: what idle data groups cost each node of a real kvd cluster
# (issue 37's "idle cost of a group"), with every part a group has: its
# raft instance, raft log directory and Badger store.
#
#   bench/groupidle.sh [--steps "0 8 16 32 64"] [--window 20] [--settle 10]
#
# Starts three kvd processes on loopback (data on this machine's disk,
# under a temporary directory), then for each step creates data groups
# until there are that many, each over a prefix of its own and hosted by
# all three nodes, so each node holds one replica of every group. After
# SETTLE seconds at rest it reads, for each node: CPU seconds over WINDOW
# seconds (utime+stime of /proc/PID/stat), VmRSS, open files, and the data
# directory's size on disk (du). It prints one line per step and node and
# the mean cost per group added since step 0. The groups hold no keys and
# get no requests.
#
# Flags (each also an environment variable, in capitals):
#   --steps "0 8 16 32 64"  groups per node at which to measure (STEPS)
#   --window 20             seconds of each CPU measure (WINDOW)
#   --settle 10             seconds at rest before it (SETTLE)
#   --base 8600             first port (BASE)
#   --kvd PATH --kvctl PATH binaries (default: built from this tree)
set -euo pipefail

STEPS=${STEPS:-"0 8 16 32 64"} WINDOW=${WINDOW:-20} SETTLE=${SETTLE:-10} BASE=${BASE:-8600}
KVD=${KVD:-} KVCTL=${KVCTL:-}
while [[ $# -gt 0 ]]; do
	case $1 in
	--steps) STEPS=$2 ;;
	--window) WINDOW=$2 ;;
	--settle) SETTLE=$2 ;;
	--base) BASE=$2 ;;
	--kvd) KVD=$2 ;;
	--kvctl) KVCTL=$2 ;;
	*) echo "unknown flag $1" >&2; exit 2 ;;
	esac
	shift 2
done
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { echo "[$(date +%T)] $*" >&2; }

TMP=$(mktemp -d -t kvgroupidle.XXXXXX)
PIDS=()
cleanup() {
	local rc=$?
	set +e
	for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
	for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
	rm -rf "$TMP"
	exit "$rc"
}
trap cleanup EXIT INT TERM

if [[ -z $KVD || -z $KVCTL ]]; then
	log "building kvd and kvctl"
	(cd "$ROOT" && go build -o "$TMP/kvd" ./cmd/kvd && go build -o "$TMP/kvctl" ./cmd/kvctl)
	KVD=${KVD:-$TMP/kvd} KVCTL=${KVCTL:-$TMP/kvctl}
fi

addrs=()
for i in 1 2 3; do addrs+=("127.0.0.1:$((BASE + i - 1))"); done
endpoints=$(IFS=,; echo "${addrs[*]}")
for i in 1 2 3; do
	"$KVD" --name "n$i" --listen "${addrs[i-1]}" --data-dir "$TMP/d$i" \
		--bootstrap-expect 3 --join "${addrs[0]},${addrs[1]}" >"$TMP/n$i.log" 2>&1 &
	PIDS+=($!)
done
export KVCTL_ENDPOINTS=$endpoints
deadline=$((SECONDS + 60))
until "$KVCTL" put /ready yes >/dev/null 2>&1; do
	((SECONDS < deadline)) || { log "the cluster did not serve within 60 s"; tail -5 "$TMP"/n*.log >&2; exit 1; }
	sleep 0.2 # poll interval
done

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; } # clock ticks
rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; } # KiB
tick=$(getconf CLK_TCK)
made=0
declare -A base_cpu=() base_rss=() base_disk=()
printf '%-6s %-4s %10s %10s %10s %10s\n' groups node cpu_pct rss_mib files disk_mib
for step in $STEPS; do
	while ((made < step)); do
		made=$((made + 1))
		"$KVCTL" group create "g$made" --prefix "/g$made/" --replicas n1,n2,n3 >/dev/null
	done
	sleep "$SETTLE" # at rest before the measure, not a synchronisation
	declare -A c0=()
	for i in 1 2 3; do c0[$i]=$(cpu "${PIDS[i-1]}"); done
	sleep "$WINDOW" # the measuring window
	for i in 1 2 3; do
		pid=${PIDS[i-1]}
		c=$(($(cpu "$pid") - c0[$i]))
		pct=$(awk -v c="$c" -v t="$tick" -v w="$WINDOW" 'BEGIN {printf "%.2f", 100 * c / t / w}')
		r=$(rss "$pid")
		files=$(ls "/proc/$pid/fd" | wc -l)
		disk=$(du -sk "$TMP/d$i" | cut -f1)
		printf '%-6s %-4s %10s %10.1f %10s %10.1f\n' "$step" "n$i" "$pct" "$(awk -v r="$r" 'BEGIN {print r / 1024}')" "$files" "$(awk -v d="$disk" 'BEGIN {print d / 1024}')"
		if ((step == 0)); then
			base_cpu[$i]=$pct base_rss[$i]=$r base_disk[$i]=$disk
		elif [[ -n ${base_rss[$i]:-} ]]; then
			awk -v s="$step" -v p="$pct" -v p0="${base_cpu[$i]}" -v r="$r" -v r0="${base_rss[$i]}" -v d="$disk" -v d0="${base_disk[$i]}" \
				'BEGIN {printf "       per group added: %.3f %% of a core, %.2f MiB RSS, %.2f MiB disk\n", (p - p0) / s, (r - r0) / 1024 / s, (d - d0) / 1024 / s}'
		fi
	done
done
