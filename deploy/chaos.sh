#!/usr/bin/env bash
# The failure suite on real networks (deploy/chaos): builds the image, then
# runs five containers on a bridge network of the suite's own through every
# fault under load, and prints one row per fault. Needs Docker, root (it
# enters the containers' network namespaces with nsenter and mounts a
# tmpfs), iptables and tc on the host.
#
#   deploy/chaos.sh                   the short schedule: every fault once (CI)
#   deploy/chaos.sh --duration 10m    the long one: rounds of every fault, longer holds
#
# Other flags go to the suite: --faults "kill leader,pause leader" (names
# or their beginnings), --seed N, --results FILE (the table, also written
# there), --image TAG (default kvstore; then build it yourself), --groups 2
# (the workload over two raft groups: a data group over half its keys,
# with faults that kill and pause its leader and move it while its leader
# is killed).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ " $* " != *" --image"* ]]; then
  deploy/build-image.sh kvstore >/dev/null
fi
cd deploy/chaos
# The suite bounds itself (its schedule, plus 15 minutes); -timeout 0 leaves
# that to it.
exec go test -count=1 -v -timeout 0 -run 'TestChaos$' . -args "$@"
