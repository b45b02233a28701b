#!/usr/bin/env bash
# Scheduler and node plan at scale: 10,000 VMs placed over 10, 100 and 1,000 simulated
# nodes (no daemon, no host changes). Prints a table: time of one placement decision for a
# 16-VM cluster, of the ledger it is made from, and of one node's plan (settled, after a
# restart, and the storage node's), each the median of many.
# Target: a placement decision under 10 ms at 1,000 nodes.
set -euo pipefail
cd "$(dirname "$0")/.."
swift run -c release peerless-bench scale "$@"
