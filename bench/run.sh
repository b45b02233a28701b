#!/usr/bin/env bash
# Runs every benchmark; each prints a markdown table with its reference measured in the
# same run. Results are also kept in bench/results/latest.md.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench/results
{
  echo "# Peerless benchmarks, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r)"
  for b in clone provision create suspend import scale list nodes nodeloss migrate; do bash "bench/$b.sh"; done
} | tee bench/results/latest.md
