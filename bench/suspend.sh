#!/usr/bin/env bash
# Suspend and resume of a 4-VM cluster, against virsh managedsave / virsh start of the same
# VMs (in parallel, as vcd does, and one after another). Target: ratio at most 1.2.
source "$(dirname "$0")/lib.sh"
vcd_up
bvc image import tiny images/build/tiny.img >/dev/null 2>&1
bvc cluster create sus --image tiny --vms 4 --memory 256M >/dev/null
# Measure guests at rest, not while they boot.
bvc cluster wait sus --console PEERLESS-TINY-WROTE --timeout 600 >/dev/null
domains=$(bvc cluster show sus -o json | jq -r '.vms[].name')
seconds() { awk -v t="$1" 'BEGIN { printf "%.2f", t / 1000 }'; }

runs=5
ours_s=(); ours_r=(); par_s=(); par_r=(); seq_s=(); seq_r=(); pool_s=(); pool_r=(); cache_s=(); cache_r=()
mkdir -p "$POOL/reference"
# Writing memory images leaves the loop-backed pool writing back for a while: every timed
# step starts with nothing dirty.
for _ in $(seq 1 "$runs"); do
  sync; start=$(ms); bvc cluster suspend sus >/dev/null; ours_s+=("$(elapsed_ms "$start")")
  sync; start=$(ms); bvc cluster resume sus >/dev/null; ours_r+=("$(elapsed_ms "$start")")

  sync; start=$(ms); pids=(); for d in $domains; do virsh -q -c qemu:///system managedsave "$d" >/dev/null & pids+=($!); done; wait "${pids[@]}"
  par_s+=("$(elapsed_ms "$start")")
  sync; start=$(ms); pids=(); for d in $domains; do virsh -q -c qemu:///system start "$d" >/dev/null & pids+=($!); done; wait "${pids[@]}"
  par_r+=("$(elapsed_ms "$start")")

  # The same storage as vcd: memory images in the pool, 4 in parallel.
  sync; start=$(ms); pids=(); for d in $domains; do virsh -q -c qemu:///system save --bypass-cache "$d" "$POOL/reference/$d.save" >/dev/null & pids+=($!); done; wait "${pids[@]}"
  pool_s+=("$(elapsed_ms "$start")")
  sync; start=$(ms); pids=(); for d in $domains; do virsh -q -c qemu:///system restore "$POOL/reference/$d.save" >/dev/null & pids+=($!); done; wait "${pids[@]}"
  pool_r+=("$(elapsed_ms "$start")")
  rm -f "$POOL"/reference/*.save

  # The same through the page cache (what vcd would do without VIR_DOMAIN_SAVE_BYPASS_CACHE):
  # the writeback is timed with the save, and the restore reads from the disk, not the cache.
  sync; start=$(ms); pids=(); for d in $domains; do virsh -q -c qemu:///system save "$d" "$POOL/reference/$d.save" >/dev/null & pids+=($!); done; wait "${pids[@]}"; sync
  cache_s+=("$(elapsed_ms "$start")")
  echo 3 >/proc/sys/vm/drop_caches
  start=$(ms); pids=(); for d in $domains; do virsh -q -c qemu:///system restore "$POOL/reference/$d.save" >/dev/null & pids+=($!); done; wait "${pids[@]}"
  cache_r+=("$(elapsed_ms "$start")")
  rm -f "$POOL"/reference/*.save

  sync; start=$(ms); for d in $domains; do virsh -q -c qemu:///system managedsave "$d" >/dev/null; done
  seq_s+=("$(elapsed_ms "$start")")
  sync; start=$(ms); for d in $domains; do virsh -q -c qemu:///system start "$d" >/dev/null; done
  seq_r+=("$(elapsed_ms "$start")")
done
os=$(median "${ours_s[@]}"); or=$(median "${ours_r[@]}")
ps=$(median "${par_s[@]}"); pr=$(median "${par_r[@]}")
ss=$(median "${seq_s[@]}"); sr=$(median "${seq_r[@]}")
qs=$(median "${pool_s[@]}"); qr=$(median "${pool_r[@]}")
cs=$(median "${cache_s[@]}"); cr=$(median "${cache_r[@]}")

echo "## Suspend and resume of a 4-VM cluster (256 MiB each), median of $runs"
table "" "suspend (s)" "resume (s)" "ratio ours / reference"
row "vc cluster suspend / resume" "$(seconds "$os")" "$(seconds "$or")" ""
row "reference: virsh managedsave / start, 4 in parallel" "$(seconds "$ps")" "$(seconds "$pr")" \
  "$(awk -v a="$os" -v b="$ps" -v c="$or" -v d="$pr" 'BEGIN { printf "%.2f / %.2f", a / b, c / d }')"
row "reference: virsh save / restore into the pool (vcd's storage), 4 in parallel" "$(seconds "$qs")" "$(seconds "$qr")" \
  "$(awk -v a="$os" -v b="$qs" -v c="$or" -v d="$qr" 'BEGIN { printf "%.2f / %.2f", a / b, c / d }')"
row "reference: virsh save / restore into the pool through the page cache, 4 in parallel" "$(seconds "$cs")" "$(seconds "$cr")" \
  "$(awk -v a="$os" -v b="$cs" -v c="$or" -v d="$cr" 'BEGIN { printf "%.2f / %.2f", a / b, c / d }')"
row "reference: virsh managedsave / start, one after another" "$(seconds "$ss")" "$(seconds "$sr")" \
  "$(awk -v a="$os" -v b="$ss" -v c="$or" -v d="$sr" 'BEGIN { printf "%.2f / %.2f", a / b, c / d }')"
