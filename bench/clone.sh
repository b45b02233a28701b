#!/usr/bin/env bash
# Disk clone time and extra space, 1 GiB and 10 GiB golden images, against a plain copy.
# Target: under 50 ms and under 1 MiB each, flat in image size.
source "$(dirname "$0")/lib.sh"
pool_up

echo "## Disk clone (reflink) against a plain copy"
table "golden image" "clone, median of 10 (ms)" "clone, max (ms)" "extra space of clone" "plain copy (ms)" "extra space of copy"
for size in 1G 10G; do
  make_image "$POOL/images/golden-$size.raw" "$size"
  sync -f "$POOL/images/golden-$size.raw"
  t=$("$BIN/peerless-bench" clone --pool "$POOL" --source "images/golden-$size.raw" --keep "disks/clone-$size.raw" --runs 10)
  extra=$(exclusive_bytes "$POOL/disks/clone-$size.raw")
  start=$(ms)
  cp --reflink=never "$POOL/images/golden-$size.raw" "$POOL/disks/copy-$size.raw"
  sync -f "$POOL/disks/copy-$size.raw"
  copy_ms=$(elapsed_ms "$start")
  copy_extra=$(exclusive_bytes "$POOL/disks/copy-$size.raw")
  row "$size" "$(jq -r .medianMs <<<"$t" | xargs printf '%.2f')" "$(jq -r .maxMs <<<"$t" | xargs printf '%.2f')" \
    "$(mib "$extra")" "$copy_ms" "$(mib "$copy_extra")"
  rm -f "$POOL/images/golden-$size.raw" "$POOL/disks/clone-$size.raw" "$POOL/disks/copy-$size.raw"
done
