#!/usr/bin/env bash
# rest.sh: the CPU of 3-node clusters at rest, kvd builds against etcd, in
# one run on loopback.
#
#   bench/rest.sh KVD [KVD...]
#
# Starts a 3-member etcd cluster (Debian's etcd-server, installed if
# missing) and one 3-node kvd cluster per binary, all at once, waits until
# each answers a put and SETTLE seconds more, then reads utime+stime of
# every node (/proc/PID/stat) at the start and end of WINDOW seconds, ROUNDS
# times, and prints the CPU seconds each cluster used in each window. The
# clusters hold no keys and get no requests in the window.
#
# Environment:
#   WINDOW  seconds per measure (default 30)
#   ROUNDS  windows (default 2)
#   SETTLE  seconds between ready and the first window (default 10)
#   BASE    port base (default 8400)
set -euo pipefail

[[ $# -ge 1 ]] || { echo "usage: $0 KVD [KVD...]" >&2; exit 2; }
WINDOW=${WINDOW:-30} ROUNDS=${ROUNDS:-2} SETTLE=${SETTLE:-10} BASE=${BASE:-8400}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { echo "[$(date +%T)] $*" >&2; }

if ! command -v etcd >/dev/null; then
	log "installing etcd-server"
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
fi

TMP=$(mktemp -d -t kvrest.XXXXXX)
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

# etcd: clients BASE+1..3, peers BASE+11..13.
CLUSTER=""
for i in 1 2 3; do CLUSTER+="e$i=http://127.0.0.1:$((BASE + 10 + i)),"; done
for i in 1 2 3; do
	etcd --name "e$i" --data-dir "$TMP/e$i" \
		--listen-client-urls "http://127.0.0.1:$((BASE + i))" \
		--advertise-client-urls "http://127.0.0.1:$((BASE + i))" \
		--listen-peer-urls "http://127.0.0.1:$((BASE + 10 + i))" \
		--initial-advertise-peer-urls "http://127.0.0.1:$((BASE + 10 + i))" \
		--initial-cluster "${CLUSTER%,}" --initial-cluster-state new \
		--initial-cluster-token rest --logger zap >"$TMP/etcd-e$i.log" 2>&1 &
	PIDS[etcd$i]=$!
done

# kvd cluster k (1, 2, ...): BASE+20k+1..3.
NAMES=(etcd)
k=0
for bin in "$@"; do
	k=$((k + 1))
	base=$((BASE + 20 * k))
	for i in 1 2 3; do
		"$(realpath "$bin")" --name "n$i" --listen "127.0.0.1:$((base + i))" --data-dir "$TMP/k$k/d$i" \
			--bootstrap-expect 3 --join "127.0.0.1:$((base + 1))" --log-level warn >"$TMP/kvd$k-n$i.log" 2>&1 &
		PIDS[kvd$k$i]=$!
	done
	NAMES+=("kvd$k")
done

ready() { # name
	local base
	if [[ $1 == etcd ]]; then
		for i in 1 2 3; do curl -sf "http://127.0.0.1:$((BASE + i))/health" | grep -q '"health":"true"' || return 1; done
		return 0
	fi
	base=$((BASE + 20 * ${1#kvd}))
	"$TMP/kvctl" --endpoints "127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2)),127.0.0.1:$((base + 3))" \
		members -o json | jq -e '[.members[] | select(.suffrage == "SUFFRAGE_VOTER")] | length == 3' >/dev/null &&
		"$TMP/kvctl" --endpoints "127.0.0.1:$((base + 1))" bench --workload put --total 1 -o json >/dev/null
}
for n in "${NAMES[@]}"; do
	deadline=$((SECONDS + 90))
	until ready "$n" 2>/dev/null; do
		((SECONDS < deadline)) || { log "$n not ready in 90 s"; tail -n 5 "$TMP"/*.log >&2; exit 1; }
		sleep 0.5
	done
	log "$n ready"
done
sleep "$SETTLE"

ticks() { # name: utime+stime of its three nodes
	local t=0 i
	for i in 1 2 3; do t=$((t + $(awk '{print $14 + $15}' "/proc/${PIDS[$1$i]}/stat"))); done
	echo "$t"
}
hz=$(getconf CLK_TCK)
for r in $(seq "$ROUNDS"); do
	declare -A T0=()
	for n in "${NAMES[@]}"; do T0[$n]=$(ticks "$n"); done
	sleep "$WINDOW"
	line="round $r, CPU s over ${WINDOW} s:"
	for n in "${NAMES[@]}"; do
		line+=" $n $(echo "scale=2; ($(ticks "$n") - ${T0[$n]}) / $hz" | bc)"
	done
	echo "$line"
done
