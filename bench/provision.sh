#!/usr/bin/env bash
# Provisioning of one VM disk: reflink clone, tgt export bound to the node's initiator
# with a CHAP secret of its own, libiscsi TEST UNIT READY + INQUIRY + READ CAPACITY.
# Target: median under 10 ms (19.2 ms when vcd still ran tgtadm, 2026-11-25).
# Reference in the same run: the same steps done with the command-line tools
# (cp --reflink, tgtadm x5 with the account, iscsi-inq + iscsi-readcapacity16).
source "$(dirname "$0")/lib.sh"
pool_up
make_image "$POOL/images/golden.raw" 1G
sync -f "$POOL/images/golden.raw"
runs=20

t=$("$BIN/peerless-bench" provision --pool "$POOL" --image images/golden.raw --runs "$runs")

initiator=iqn.2026-11.dev.peerless:node.benchref
samples=()
for i in $(seq 1 "$runs"); do
  iqn=iqn.2026-11.dev.peerless:disk.benchref-$i
  tid=$((900 + i))
  start=$(ms)
  cp --reflink=always "$POOL/images/golden.raw" "$POOL/disks/ref-$i.raw"
  tgtadm --lld iscsi --op new --mode target --tid "$tid" -T "$iqn"
  tgtadm --lld iscsi --op new --mode logicalunit --tid "$tid" --lun 1 -b "$POOL/disks/ref-$i.raw"
  # The reference shows its password on a command line; vcd never does.
  tgtadm --lld iscsi --op new --mode account --user "benchref-$i" --password "benchref-secret-$i"
  tgtadm --lld iscsi --op bind --mode account --tid "$tid" --user "benchref-$i"
  tgtadm --lld iscsi --op bind --mode target --tid "$tid" --initiator-name "$initiator"
  iscsi-inq -i "$initiator" "iscsi://benchref-$i%benchref-secret-$i@127.0.0.1/$iqn/1" >/dev/null
  iscsi-readcapacity16 -i "$initiator" "iscsi://benchref-$i%benchref-secret-$i@127.0.0.1/$iqn/1" >/dev/null
  samples+=("$(elapsed_ms "$start")")
  tgtadm --lld iscsi --op delete --mode target --tid "$tid" --force
  tgtadm --lld iscsi --op delete --mode account --user "benchref-$i"
  rm -f "$POOL/disks/ref-$i.raw"
done
ref_median=$(median "${samples[@]}")

echo "## Provisioning one VM disk (clone, export, libiscsi checks), $runs runs"
table "path" "median (ms)" "min (ms)" "max (ms)"
row "vcd's code (FICLONE, tgtd's socket, CHAP, libiscsi in-process)" "$(jq -r .medianMs <<<"$t" | xargs printf '%.1f')" \
  "$(jq -r .minMs <<<"$t" | xargs printf '%.1f')" "$(jq -r .maxMs <<<"$t" | xargs printf '%.1f')"
row "reference: cp --reflink, tgtadm, iscsi-inq, iscsi-readcapacity16 (CHAP)" "$ref_median" \
  "$(printf '%s\n' "${samples[@]}" | sort -n | head -1)" "$(printf '%s\n' "${samples[@]}" | sort -n | tail -1)"
