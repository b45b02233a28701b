#!/usr/bin/env bash
# Control-plane time to create an N-VM cluster until every domain runs (guest boot
# excluded), N = 1, 4, 16. Target: under 0.5 s per VM, and parallel.
# Reference in the same run: libvirt alone starting the same N defined domains (virsh
# start, in parallel), i.e. the floor under which no manager on this libvirt can go.
source "$(dirname "$0")/lib.sh"
vcd_up
bvc image import tiny images/build/tiny.img >/dev/null 2>&1

echo "## Creating an N-VM cluster until every domain runs (guest boot excluded)"
table "N" "vc cluster create (s)" "per VM (s)" "libvirt alone: virsh start of the N domains in parallel (s)"
for n in 1 4 16; do
  name=bench$n
  start=$(ms)
  bvc cluster create "$name" --image tiny --vms "$n" --memory 128M >/dev/null
  ours=$(elapsed_ms "$start")
  running=$(bvc cluster show "$name" -o json | jq '[.vms[] | select(.domain == "running")] | length')
  [ "$running" = "$n" ] || { echo "bench: only $running of $n domains run" >&2; exit 1; }
  # The same domains, stopped and started by libvirt alone.
  domains=$(bvc cluster show "$name" -o json | jq -r '.vms[].name')
  for d in $domains; do virsh -q -c qemu:///system destroy "$d" >/dev/null; done
  start=$(ms)
  pids=(); for d in $domains; do virsh -q -c qemu:///system start "$d" >/dev/null & pids+=($!); done
  wait "${pids[@]}"
  ref=$(elapsed_ms "$start")
  bvc cluster destroy "$name" >/dev/null
  row "$n" "$(awk -v t="$ours" 'BEGIN { printf "%.2f", t / 1000 }')" \
    "$(awk -v t="$ours" -v n="$n" 'BEGIN { printf "%.3f", t / 1000 / n }')" \
    "$(awk -v t="$ref" 'BEGIN { printf "%.2f", t / 1000 }')"
done
