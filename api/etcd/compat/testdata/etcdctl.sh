#!/usr/bin/env bash
# The etcdctl transcript of the differential test (etcdctl_test.go): the
# same commands against kvstore's etcd face and against a real etcd, whose
# outputs are compared once normalized. ENDPOINTS: comma-separated
# host:port of every member.
set -u
export ETCDCTL_API=3
E=(etcdctl --endpoints "$ENDPOINTS" --command-timeout 10s)
FIRST=${ENDPOINTS%%,*}
E1=(etcdctl --endpoints "$FIRST" --command-timeout 10s)

# run prints a command, its output (etcdctl's own retry warnings left out)
# and its exit code.
run() {
  echo "\$ ${*}"
  local out rc
  out=$("$@" 2>&1); rc=$?
  printf '%s\n' "$out" | grep -v '"level":"warn"'
  echo "[rc=$rc]"
}
# bg_until LINE CMD... runs a command that does not end by itself until a
# line of its output is LINE (30 s at most), stops it, and prints it all.
bg_until() {
  local line=$1; shift
  echo "\$ ${*}"
  "$@" >"$TMP/bg.out" 2>&1 &
  local pid=$!
  for _ in $(seq 150); do
    grep -qx -- "$line" "$TMP/bg.out" && break
    sleep 0.2
  done
  kill "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  grep -v '"level":"warn"' "$TMP/bg.out"
}
modrev() { "${E[@]}" get "$1" -w json | sed 's/.*"mod_revision":\([0-9]*\).*/\1/'; }

echo "## put and get"
run "${E[@]}" put k1 v1
run "${E[@]}" put k2 v2
run "${E[@]}" put k3 v3
REV1=$(modrev k1)
run "${E[@]}" put k1 v1b --prev-kv
run "${E[@]}" get k1
run "${E[@]}" get k --prefix
run "${E[@]}" get k --prefix --limit 2
run "${E[@]}" get k --prefix --keys-only
run "${E[@]}" get k --prefix --sort-by=MODIFY --order=DESCEND
run "${E[@]}" get k --prefix --sort-by=VALUE --order=ASCEND
run "${E[@]}" get k1 --rev="$REV1"
run "${E[@]}" get k1 k3
run "${E[@]}" get k2 --from-key
run "${E[@]}" get k --prefix -w json
run "${E[@]}" get k1 -w fields
run "${E[@]}" get nokey
run "${E[@]}" get k1 --consistency=s

echo "## del"
run "${E[@]}" del k2
run "${E[@]}" del k2
run "${E[@]}" put k4 v4
run "${E[@]}" del k --prefix --prev-kv
run "${E[@]}" get k --prefix

echo "## txn"
run "${E[@]}" put t1 a
printf 'value("t1") = "a"\n\nput t1 b\nget t1\n\nput t1 c\n\n' > "$TMP/txn1"
run bash -c "${E[*]} txn < $TMP/txn1"
printf 'value("t1") = "a"\n\nput t1 b\n\nput t1 c\nget t1\n\n' > "$TMP/txn2"
run bash -c "${E[*]} txn < $TMP/txn2"
printf 'mod("t1") > "0"\nversion("t1") = "3"\n\ndel t1\n\n\n' > "$TMP/txn3"
run bash -c "${E[*]} txn -w json < $TMP/txn3 | sed 's/\"[a-z_]*revision\":[0-9]*/R/g'"
printf 'create("t9") = "0"\n\nput t9 new\n\n\n' > "$TMP/txn4"
run bash -c "${E[*]} txn < $TMP/txn4"
run bash -c "${E[*]} txn < $TMP/txn4"

echo "## watch"
# Watches never end by themselves: each runs until its last expected line
# comes, from a revision so that when it starts does not matter.
WREV=$(( $("${E[@]}" get w -w json | sed 's/.*"revision":\([0-9]*\).*/\1/') + 1 ))
run "${E[@]}" put w1 a
run "${E[@]}" put w1 b
run "${E[@]}" del w1
run "${E[@]}" put w2 c
bg_until c "${E1[@]}" watch w --prefix --prev-kv --rev="$WREV"
bg_until c "${E[@]}" watch w2 --rev=1

echo "## lease"
LEASE=$("${E[@]}" lease grant 100 | awk '{print $2}')
echo "lease $LEASE"
run "${E[@]}" put lk1 v --lease="$LEASE"
run "${E[@]}" put lk2 v --lease="$LEASE"
run "${E[@]}" lease timetolive "$LEASE" --keys
run "${E[@]}" lease list
run "${E[@]}" lease keep-alive --once "$LEASE"
run "${E[@]}" lease revoke "$LEASE"
run "${E[@]}" get lk --prefix
run "${E[@]}" lease timetolive "$LEASE"
run "${E[@]}" lease revoke "$LEASE"
run "${E[@]}" lease grant 0
run "${E[@]}" put lk3 v --lease=123456789

echo "## lock and elect"
run "${E[@]}" lock mylock echo "held the lock"
bg_until proposal "${E[@]}" elect myelection proposal

echo "## cluster"
run "${E[@]}" member list
run "${E[@]}" member list -w json
run "${E[@]}" endpoint status
run "${E[@]}" endpoint health
run "${E[@]}" alarm list
run "${E[@]}" endpoint hashkv
run "${E[@]}" defrag

echo "## compaction"
run "${E[@]}" put c1 x
CREV=$(modrev c1)
run "${E[@]}" put c1 y
run "${E[@]}" compaction "$CREV" --physical
run "${E[@]}" get c1 --rev=$((CREV - 1))
run "${E[@]}" compaction "$CREV"
