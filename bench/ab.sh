#!/usr/bin/env bash
# ab.sh: two kvd builds side by side, for measuring one change.
#
#   bench/ab.sh KVD_A KVD_B [bench flags...] [-- more bench flags...]
#
# Starts two 3-node clusters on loopback, one from each kvd binary (A on
# ports BASE+1..3, B on BASE+11..13; BASE is 7800 by default), preloads KEYS keys into each, then runs
# `kvctl bench` with the given flags against A and B in turn, ROUNDS times
# (A B A B ...; ORDER=BA starts with B). Each run prints its throughput,
# latency, the server CPU per request: utime+stime of the three kvd
# processes (/proc/PID/stat) over the run, divided by the requests, and the
# bytes they caused to be written to disk per request (write_bytes of
# /proc/PID/io: page cache writes, memory-mapped ones included). Flag sets
# separated by -- are separate workloads: each round runs every one against
# A and B in turn, so one run compares several workloads. The
# machine is shared and noisy: read the ratio of the two columns within a
# round, over several rounds.
#
# Environment:
#   ROUNDS  rounds (default 3)
#   KEYS    keyspace and preload size (default 100000)
#   ORDER   AB (default) or BA
#   BASE    port base (default 7800), for a second run beside another
#   ENV_A, ENV_B  extra environment for the A or B nodes ("K=V K2=V2")
#
# Example:
#   go build -o /tmp/a/kvd ./cmd/kvd   # before the change
#   go build -o /tmp/b/kvd ./cmd/kvd   # after
#   bench/ab.sh /tmp/a/kvd /tmp/b/kvd --workload put --clients 64 --duration 8s
#
# What metrics cost (one binary, metrics off in A):
#   ENV_A=KVD_NO_METRICS=true bench/ab.sh /tmp/b/kvd /tmp/b/kvd \
#     --workload put --clients 64 --duration 8s -- \
#     --workload get --consistency s --clients 256 --duration 8s
set -euo pipefail

[[ $# -ge 2 ]] || { echo "usage: $0 KVD_A KVD_B [bench flags...]" >&2; exit 2; }
KVD_A=$(realpath "$1") KVD_B=$(realpath "$2"); shift 2
ROUNDS=${ROUNDS:-3}
KEYS=${KEYS:-100000}
ORDER=${ORDER:-AB}
BASE=${BASE:-7800}
A=$BASE B=$((BASE + 10))
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { echo "[$(date +%T)] $*" >&2; }
for p in $((A + 1)) $((A + 2)) $((A + 3)) $((B + 1)) $((B + 2)) $((B + 3)); do
	if ss -Hltn "sport = :$p" | grep -q .; then log "port $p is in use"; exit 1; fi
done
command -v jq >/dev/null || { log "jq is needed (apt-get install jq)"; exit 1; }

TMP=$(mktemp -d -t kvab.XXXXXX)
declare -A PIDS=()
cleanup() {
	local rc=$?
	set +e
	for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
	for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
	rm -rf "$TMP"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

(cd "$ROOT" && go build -o "$TMP/kvctl" ./cmd/kvctl)
KVCTL=$TMP/kvctl

eps() { echo "127.0.0.1:$(($1 + 1)),127.0.0.1:$(($1 + 2)),127.0.0.1:$(($1 + 3))"; }

start() { # name binary baseport env
	local name=$1 bin=$2 base=$3 envs=$4
	for i in 1 2 3; do
		# shellcheck disable=SC2086 # envs is a list of K=V words
		env $envs "$bin" --name "n$i" --listen "127.0.0.1:$((base + i))" \
			--data-dir "$TMP/$name/d$i" --bootstrap-expect 3 --join "127.0.0.1:$((base + 1))" \
			--log-level warn >"$TMP/$name-n$i.log" 2>&1 &
		PIDS[$name$i]=$!
	done
	local deadline=$((SECONDS + 90))
	until "$KVCTL" --endpoints "$(eps "$base")" bench --workload put --total 1 --timeout 2s -o json >/dev/null 2>&1; do
		if ((SECONDS > deadline)); then
			log "cluster $name did not form in 90 s; last log lines:"
			tail -n 5 "$TMP/$name"-n*.log >&2
			exit 1
		fi
		sleep 0.2
	done
	"$KVCTL" --endpoints "$(eps "$base")" bench --workload put --preload --total 1 --keyspace "$KEYS" -o json >/dev/null
	log "cluster $name ready on $(eps "$base")"
}
start A "$KVD_A" "$A" "${ENV_A:-}"
start B "$KVD_B" "$B" "${ENV_B:-}"

ticks() { # name: utime+stime of its three nodes
	local t=0 i
	for i in 1 2 3; do
		t=$((t + $(awk '{print $14 + $15}' "/proc/${PIDS[$1$i]}/stat")))
	done
	echo "$t"
}
hz=$(getconf CLK_TCK)
wbytes() { # name: bytes its three nodes caused to be written to disk
	local b=0 i
	for i in 1 2 3; do
		b=$((b + $(awk '/^write_bytes:/ {print $2}' "/proc/${PIDS[$1$i]}/io")))
	done
	echo "$b"
}

one() { # name baseport flags...
	local name=$1 base=$2; shift 2
	local t0 t1 w0 w1 out
	t0=$(ticks "$name")
	w0=$(wbytes "$name")
	out=$("$KVCTL" --endpoints "$(eps "$base")" bench "$@" --keyspace "$KEYS" -o json)
	t1=$(ticks "$name")
	w1=$(wbytes "$name")
	jq -r --arg n "$name" --argjson cpu "$(((t1 - t0) * 1000000 / hz))" --argjson wb "$((w1 - w0))" \
		'"\($n): \(.ops_per_s | floor) ops/s, p50 \(.p50_ms * 100 | round / 100) ms, p99 \(.p99_ms * 100 | round / 100) ms, p99.9 \(.p999_ms * 10 | round / 10) ms, max \(.max_ms | round) ms, errors \([.errors[]] | add // 0), server CPU \(if .ops > 0 then ($cpu / .ops | floor) else "n/a" end) us/op, disk \(if .ops > 0 then ($wb / .ops | floor) else "n/a" end) B/op"' <<<"$out"
}

# The workloads: the flag sets between --.
WORKLOADS=()
cur=""
for a in "$@"; do
	if [[ $a == -- ]]; then
		WORKLOADS+=("$cur"); cur=""
	else
		cur+="${cur:+ }$a"
	fi
done
WORKLOADS+=("$cur")

for r in $(seq "$ROUNDS"); do
	for w in "${WORKLOADS[@]}"; do
		echo "round $r/$ROUNDS: $w"
		# shellcheck disable=SC2086 # w is a list of flags
		if [[ $ORDER == BA ]]; then
			one B "$B" $w; one A "$A" $w
		else
			one A "$A" $w; one B "$B" $w
		fi
	done
done
