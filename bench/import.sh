#!/usr/bin/env bash
# Image import through libiscsi (vc image import: a temporary tgt target, pipelined
# WRITE(16)s), against dd of the same image to a local file on the same pool filesystem.
# Both include getting the data to disk. Target: at least 0.8 of dd's throughput.
source "$(dirname "$0")/lib.sh"
vcd_up
src=/var/tmp/peerless-bench-source.raw
trap 'rm -f "$src"; cleanup' EXIT
make_image "$src" 1G
bytes=$(stat -c %s "$src")
mbps() { awk -v b="$bytes" -v t="$1" 'BEGIN { printf "%.0f", b / 1048576 / (t / 1000) }'; }

runs=5
ours=(); ref=()
for i in $(seq 1 "$runs"); do
  # Each run starts with nothing dirty (the loop-backed pool writes back lazily) and the
  # source in the page cache.
  sync; cat "$src" >/dev/null
  start=$(ms)
  bvc image import "img$i" "$src" >/dev/null
  sync -f "$POOL/images/img$i.raw"
  ours+=("$(elapsed_ms "$start")")
  bvc image delete "img$i" >/dev/null

  sync; cat "$src" >/dev/null
  start=$(ms)
  dd if="$src" of="$POOL/images/dd$i.raw" bs=1M status=none conv=fsync
  ref+=("$(elapsed_ms "$start")")
  rm -f "$POOL/images/dd$i.raw"
done
o=$(median "${ours[@]}"); r=$(median "${ref[@]}")

echo "## Importing a 1 GiB raw image (incompressible, no zero blocks), median of $runs"
table "path" "time (s)" "MiB/s" "throughput ratio"
row "vc image import (libiscsi, 16 x 1 MiB WRITE(16) in flight)" "$(awk -v t="$o" 'BEGIN { printf "%.2f", t / 1000 }')" "$(mbps "$o")" \
  "$(awk -v a="$o" -v b="$r" 'BEGIN { printf "%.2f", b / a }')"
row "reference: dd bs=1M conv=fsync to the pool" "$(awk -v t="$r" 'BEGIN { printf "%.2f", t / 1000 }')" "$(mbps "$r")" "1.00"
