#!/usr/bin/env bash
# Runs the README's Compose commands against the image built by
# deploy/build-image.sh and checks what they promise, printing the timings:
# three nodes form a cluster and take a write; --scale kvd=5 gives five
# voters; --scale kvd=6 and a group serve two raft groups with leaders on
# different nodes; --scale kvd=3 leaves three voters, no dead member and
# the group's keys; restart keeps the data. It uses its own project name and removes its containers,
# network and volumes (also the volumes of replicas removed by scaling
# down) when it ends, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
export COMPOSE_PROJECT_NAME=kvstore-compose-check
COMPOSE=${COMPOSE:-docker-compose}   # COMPOSE="docker compose" for Compose v2
LIMIT=${LIMIT:-120}                  # seconds allowed for each step

volumes=()
remember_volumes() {
  local id
  for id in $($COMPOSE ps -q kvd); do
    volumes+=($(docker inspect -f '{{range .Mounts}}{{if eq .Destination "/data"}}{{.Name}} {{end}}{{end}}' "$id"))
  done
}
cleanup() {
  remember_volumes || true
  $COMPOSE down -v -t 40 >/dev/null 2>&1 || true
  if [ ${#volumes[@]} -gt 0 ]; then
    docker volume rm -f $(printf '%s\n' "${volumes[@]}" | sort -u) >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
kvctl() { $COMPOSE exec -T kvd kvctl "$@"; }
# until DESC CMD...: retry CMD until it succeeds, for at most LIMIT seconds.
until_ok() {
  local desc=$1; shift
  local end=$((SECONDS + LIMIT))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $end ]; then
      echo "FAIL: $desc not within ${LIMIT}s" >&2
      $COMPOSE ps >&2 || true
      $COMPOSE logs --tail 40 >&2 || true
      exit 1
    fi
    sleep 0.5
  done
}
voters() { kvctl members -o json | grep -o '"suffrage":"SUFFRAGE_VOTER"' | wc -l; }
members() { kvctl members -o json | grep -o '"id":' | wc -l; }
has_voters() { [ "$(voters)" -eq "$1" ] && [ "$(members)" -eq "$1" ]; }
has_members() { [ "$(members)" -eq "$1" ]; }
two_leaders() { [ "$(kvctl group list -o json | grep -o '"leader":"[^"]*"' | sort -u | wc -l)" -eq 2 ]; }

t=$(date +%s%N)
$COMPOSE up -d
until_ok "a first write" kvctl put hello world
echo "up -d to the first acknowledged write: $(ms "$t") ms"

t=$(date +%s%N)
$COMPOSE up -d --scale kvd=5
until_ok "five voters" has_voters 5
echo "--scale kvd=5 to five voters: $(ms "$t") ms"

# Six nodes serve two raft groups, their leaders on different nodes.
t=$(date +%s%N)
$COMPOSE up -d --scale kvd=6
until_ok "six members" has_members 6
kvctl group create events --prefix /registry/events/ --timeout 60s
until_ok "a write to the events group" kvctl put /registry/events/e1 started
until_ok "the groups' leaders on different nodes" two_leaders
echo "--scale kvd=6 and a group to two leaders on different nodes: $(ms "$t") ms"
kvctl group list

remember_volumes
t=$(date +%s%N)
$COMPOSE up -d --scale kvd=3
until_ok "three voters and no other member" has_voters 3
echo "--scale kvd=3 to three voters, no dead member: $(ms "$t") ms"
if kvctl members | grep -q -w -e dead -e suspect; then
  echo "FAIL: a dead member is left:" >&2; kvctl members >&2; exit 1
fi

t=$(date +%s%N)
$COMPOSE restart
until_ok "a write after restart" kvctl put after restart
echo "restart to the first acknowledged write: $(ms "$t") ms"
got=$(kvctl get hello)
if [ "$got" != world ]; then
  echo "FAIL: after restart, hello = '$got', want world" >&2; exit 1
fi
# The nodes that left moved the events group to the nodes that stayed;
# after the restart the group elects its own leader.
until_ok "a read of the events group after restart" kvctl get /registry/events/e1
got=$(kvctl get /registry/events/e1)
if [ "$got" != started ]; then
  echo "FAIL: after scaling down, /registry/events/e1 = '$got', want started" >&2; kvctl group list >&2; exit 1
fi
kvctl members
echo "compose check: ok"
