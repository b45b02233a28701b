#!/usr/bin/env bash
# Soak of node loss on the testbed: ROUNDS rounds each of killing and of partitioning the
# node that holds a cluster's first VM (default 50 each, about 45 minutes), with `virsh
# list` sampled on every node all along. Prints the round times and, at the end, VMs
# lost, VMs seen on two nodes at once and leftovers: all must be 0. `make test` runs the
# same test with 10 rounds of each.
#
#   scripts/soak-nodeloss.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d /opt/swift/usr/bin ] && export PATH=/opt/swift/usr/bin:$PATH
export PEERLESS_NODELOSS_ROUNDS=${1:-50}
swift build --build-tests
exec swift test --skip-build --filter 'NodeFailoverTests/killAndPartitionOverAndOverLoseNothing'
