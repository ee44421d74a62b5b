#!/usr/bin/env bash
# alone.sh: the kvd-alone figures of issue 4, on loopback, in one run.
#
#  1. Three nodes are loaded with KEYS keys (default 1,000,000) of 256 B by
#     `perftool load` (Txns of 10 puts from 16 loops, so that raft takes
#     snapshots on the way, as a long-lived cluster would have).
#  2. A fourth node joins; the time from its exec to its first successful
#     linearizable Get (`perftool start`) is the join figure (< 15 s).
#  3. A follower, then the leader, is killed with SIGKILL and started again
#     on its data; exec to first linearizable Get on it is the restart
#     figure (< 2 s).
#  4. Unless SCALE=0: two more 3-node clusters side by side, one preloaded
#     with SMALL keys (default 100,000) and one with KEYS, then puts at 64
#     clients over each one's keyspace, alternated for ROUNDS rounds; the
#     median of the per-round ratios is the scale figure (>= 0.8).
#
# Environment: KEYS, SMALL, ROUNDS (default 4), DURATION (default 10s),
# SCALE. Ports (127.0.0.1 only): 7901-7904, 7931-7933, 7941-7943.
set -euo pipefail

KEYS=${KEYS:-1000000}
SMALL=${SMALL:-100000}
ROUNDS=${ROUNDS:-4}
DURATION=${DURATION:-10s}
SCALE=${SCALE:-1}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { echo "[$(date +%T)] $*" >&2; }
die() {
	log "error: $*"
	exit 1
}

for p in 7901 7902 7903 7904 7931 7932 7933 7941 7942 7943; do
	if ss -Hltn "sport = :$p" | grep -q .; then die "port $p is in use"; fi
done

TMP=$(mktemp -d -t kvalone.XXXXXX)
cleanup() {
	local rc=$?
	set +e
	for f in "$TMP"/*.pid; do
		[[ -e $f ]] || continue
		kill -KILL "$(cat "$f")" 2>/dev/null
	done
	if ((rc != 0)); then
		for f in "$TMP"/*.log; do
			[[ -e $f ]] || continue
			echo "== $f" >&2
			tail -5 "$f" >&2
		done
	fi
	rm -rf "$TMP"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "building"
(cd "$ROOT" && go build -o "$TMP/kvd" ./cmd/kvd && go build -o "$TMP/kvctl" ./cmd/kvctl &&
	go build -o "$TMP/perftool" ./bench/perftool)

# node NAME PORT SEED [extra flags]: the kvd command line of one node.
node() {
	local name=$1 port=$2 seed=$3
	shift 3
	echo "$TMP/kvd" --name "$name" --listen "127.0.0.1:$port" --data-dir "$TMP/data-$name" \
		--join "127.0.0.1:$seed" "$@"
}

# start NAME PORT SEED [flags]: starts a node in the background.
start() {
	local name=$1
	# shellcheck disable=SC2046 # node prints a command line
	$(node "$@") >"$TMP/$name.log" 2>&1 &
	echo $! >"$TMP/$name.pid"
}

# timed NAME PORT SEED [flags]: starts a node and prints the seconds from
# its exec to its first linearizable Get of the last key.
timed() {
	local name=$1 port=$2 key
	key=$(printf '%016d' $((KEYS - 1)))
	# shellcheck disable=SC2046
	"$TMP/perftool" start -endpoint "127.0.0.1:$port" -key "$key" -log "$TMP/$name.log" \
		-pidfile "$TMP/$name.pid" -- $(node "$@") | awk '{print $(NF)}' | tr -d s
}

# leader EPS: the address of the leader.
leader() {
	"$TMP/kvctl" --endpoints "$1" members -o json | jq -r '.members[] | select(.leader) | .address'
}

# voters EPS N: true once N voters are in the cluster.
voters() {
	[[ $("$TMP/kvctl" --endpoints "$1" members -o json 2>/dev/null |
		jq '[.members[] | select(.suffrage == "SUFFRAGE_VOTER")] | length') == "$2" ]]
}

gone() { ! kill -0 "$1" 2>/dev/null; }

wait_until() { # what seconds command...
	local what=$1 secs=$2
	shift 2
	for _ in $(seq $((secs * 5))); do
		if "$@" >/dev/null 2>&1; then return 0; fi
		sleep 0.2
	done
	die "no $what after ${secs}s"
}

# --- 1. load -------------------------------------------------------------
EPS=127.0.0.1:7901,127.0.0.1:7902,127.0.0.1:7903
for i in 1 2 3; do start "n$i" "790$i" 7901 --bootstrap-expect 3; done
wait_until "3 voters" 60 voters "$EPS" 3
log "loading $KEYS keys"
t0=$(date +%s.%N)
"$TMP/perftool" load -endpoints "$EPS" -n "$KEYS" -conc 16 -batch 10 >/dev/null
LOAD_S=$(echo "$(date +%s.%N) - $t0" | bc)
log "loaded in $(printf %.0f "$LOAD_S") s"

# --- 2. join -------------------------------------------------------------
JOIN_S=$(timed n4 7904 7901)
log "a fourth node joined and read in $JOIN_S s"

# --- 3. restarts ---------------------------------------------------------
EPS4=$EPS,127.0.0.1:7904
wait_until "4 voters" 60 voters "$EPS4" 4
LEADER=$(leader "$EPS4")
FOLLOWER=""
for i in 1 2 3; do
	[[ 127.0.0.1:790$i == "$LEADER" ]] || {
		FOLLOWER=$i
		break
	}
done
LEADER_N=${LEADER##*:790}

restart() { # index
	local i=$1
	local pid
	pid=$(cat "$TMP/n$i.pid")
	kill -KILL "$pid"
	wait "$pid" 2>/dev/null || true # reaps it if this shell started it
	wait_until "exit of n$i" 10 gone "$pid"
	timed "n$i" "790$i" 7901
}
FOLLOWER_S=$(restart "$FOLLOWER")
log "follower n$FOLLOWER restarted and read in $FOLLOWER_S s"
wait_until "4 voters" 60 voters "$EPS4" 4
LEADER_S=$(restart "$LEADER_N")
log "leader n$LEADER_N restarted and read in $LEADER_S s"
for i in 1 2 3 4; do kill -TERM "$(cat "$TMP/n$i.pid")" 2>/dev/null || true; done

# --- 4. scale ------------------------------------------------------------
RATIOS=()
if [[ $SCALE != 0 ]]; then
	for f in "$TMP"/n?.pid; do
		kill -KILL "$(cat "$f")" 2>/dev/null || true
		rm -f "$f"
	done
	SEPS=127.0.0.1:7931,127.0.0.1:7932,127.0.0.1:7933
	BEPS=127.0.0.1:7941,127.0.0.1:7942,127.0.0.1:7943
	for i in 1 2 3; do
		start "s$i" "793$i" 7931 --bootstrap-expect 3
		start "b$i" "794$i" 7941 --bootstrap-expect 3
	done
	wait_until "3 voters (small)" 60 voters "$SEPS" 3
	wait_until "3 voters (big)" 60 voters "$BEPS" 3
	log "preloading $SMALL and $KEYS keys"
	"$TMP/kvctl" --endpoints "$SEPS" bench --workload put --preload --total 1 --keyspace "$SMALL" -o json >/dev/null
	"$TMP/kvctl" --endpoints "$BEPS" bench --workload put --preload --total 1 --keyspace "$KEYS" -o json >/dev/null
	puts() { # eps keyspace
		"$TMP/kvctl" --endpoints "$1" bench --workload put --clients 64 --duration "$DURATION" --keyspace "$2" -o json |
			jq -r '.ops_per_s | floor'
	}
	for r in $(seq "$ROUNDS"); do
		s=$(puts "$SEPS" "$SMALL")
		b=$(puts "$BEPS" "$KEYS")
		RATIOS+=("$(echo "scale=2; $b / $s" | bc)")
		log "round $r: $SMALL keys $s puts/s, $KEYS keys $b puts/s, ratio ${RATIOS[-1]}"
	done
fi

# --- report --------------------------------------------------------------
echo "kvd alone, $KEYS keys of 256 B (loaded in $(printf %.0f "$LOAD_S") s):"
echo
echo "| figure | target | result |"
echo "| --- | --- | ---: |"
echo "| new node joins and serves a linearizable read | < 15 s | $JOIN_S s |"
echo "| restart, follower, SIGKILL | < 2 s | $FOLLOWER_S s |"
echo "| restart, leader, SIGKILL | < 2 s | $LEADER_S s |"
if ((${#RATIOS[@]})); then
	median=$(printf '%s\n' "${RATIOS[@]}" | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}')
	echo "| puts at 64 clients, $KEYS keys against $SMALL (median of ${#RATIOS[@]} rounds: ${RATIOS[*]}) | >= 0.8 | $median |"
fi
