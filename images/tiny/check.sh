#!/usr/bin/env bash
# Boot-test the tiny image under QEMU TCG (nested KVM hangs on these hosts).
#
#   images/tiny/check.sh [--iscsi] [OUTDIR]         (OUTDIR: images/build)
#
# 1. disk boot (SeaBIOS -> extlinux -> kernel + tiny initrd -> /sbin/init) of
#    a copy of tiny.img, with a user-mode NIC whose DHCP server names the VM
#    and an SMBIOS hostname that DHCP must override; checks both console
#    markers and reads /var/lib/peerless/id back from the copy with debugfs;
# 2. probe mode: -kernel/-initrd with peerless.probe must print
#    PEERLESS-PROBE-OK and make QEMU exit by itself;
# 3. with --iscsi: disk boot from a tgtd LUN (target tid 900 on 127.0.0.1,
#    backed by another copy), deleted again afterwards.
# MEM (MiB, default 128) sets the guest RAM.
set -euo pipefail

iscsi=0
if [ "${1:-}" = --iscsi ]; then
    iscsi=1
    shift
fi
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${1:-$(dirname "$here")/build}
mem=${MEM:-128}
tid=900
iqn=iqn.2026-11.dev.peerless:imgtest

tmp=$(mktemp -d)
qpid=
took=
target_made=0
cleanup() {
    local rc=$?
    if [ -n "$qpid" ]; then stop; fi
    if [ "$target_made" = 1 ]; then
        tgtadm --lld iscsi --op delete --mode target --tid "$tid" --force || true
    fi
    rm -rf "$tmp"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

secs_since() { awk -v a="$1" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }'; }

# boot LOG MARKER QEMU-ARGS...: start QEMU, wait up to 120 s for MARKER on
# the serial log; sets $took to the seconds it took. Leaves QEMU running
# ($qpid). Not to be called in $(...): $qpid must reach stop() and cleanup.
boot() {
    local log=$1 marker=$2 t0 i
    shift 2
    t0=$(date +%s%N)
    qemu-system-x86_64 -accel tcg -m "$mem" -nographic -nodefaults -serial stdio \
        -no-reboot "$@" >"$log" 2>&1 &
    qpid=$!
    for ((i = 0; i < 1200; i++)); do
        if grep -qa "$marker" "$log"; then
            took=$(secs_since "$t0")
            return 0
        fi
        kill -0 "$qpid" 2>/dev/null || break
        sleep 0.1
    done
    echo "FAILED: no '$marker'; serial log:" >&2
    tr -d '\r' <"$log" | tail -n 20 >&2
    return 1
}
# QEMU blocked on an iSCSI target that went away ignores SIGTERM: escalate.
stop() {
    local i
    [ -n "$qpid" ] || return 0
    kill "$qpid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$qpid" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$qpid" 2>/dev/null || true
    wait "$qpid" 2>/dev/null || true
    qpid=
}
expect_line() { # LOG LINE
    tr -d '\r' <"$1" | grep -qxF "$2" || { echo "FAILED: no line '$2' in $1" >&2; tr -d '\r' <"$1" | tail -n 5 >&2; return 1; }
}

cp --sparse=always "$out/tiny.img" "$tmp/disk.img"
boot "$tmp/disk.log" PEERLESS-TINY-WROTE -drive "file=$tmp/disk.img,format=raw,if=virtio" \
    -nic user,model=virtio-net-pci,hostname=check-dhcp \
    -smbios type=11,value=peerless.hostname=check-smbios
stop
expect_line "$tmp/disk.log" "PEERLESS-TINY-BOOTED host=check-dhcp ip=10.0.2.15"
expect_line "$tmp/disk.log" "PEERLESS-TINY-WROTE id=check-dhcp"
id=$(debugfs -R 'cat /var/lib/peerless/id' "$tmp/disk.img" 2>/dev/null)
[ "$id" = check-dhcp ] || { echo "FAILED: id on disk is '$id'" >&2; exit 1; }
echo "ok disk boot (${mem} MiB, DHCP): markers after ${took} s, id written to the disk"

t0=$(date +%s%N)
timeout 120 qemu-system-x86_64 -accel tcg -m "$mem" -nographic -nodefaults -serial stdio \
    -kernel "$out/tiny-vmlinuz" -initrd "$out/tiny-initrd.img" \
    -append 'console=ttyS0 peerless.probe quiet' -no-reboot >"$tmp/probe.log" 2>&1 ||
    { echo "FAILED: probe QEMU did not exit by itself" >&2; exit 1; }
expect_line "$tmp/probe.log" PEERLESS-PROBE-OK
echo "ok probe: PEERLESS-PROBE-OK, then QEMU exited, after $(secs_since "$t0") s"

if [ "$iscsi" = 1 ]; then
    cp --sparse=always "$out/tiny.img" "$tmp/lun.img"
    tgtadm --lld iscsi --op new --mode target --tid "$tid" -T "$iqn"
    target_made=1
    tgtadm --lld iscsi --op new --mode logicalunit --tid "$tid" --lun 1 -b "$tmp/lun.img"
    tgtadm --lld iscsi --op bind --mode target --tid "$tid" -I ALL
    boot "$tmp/iscsi.log" PEERLESS-TINY-WROTE \
        -drive "file=iscsi://127.0.0.1/$iqn/1,format=raw,if=virtio" \
        -smbios type=11,value=peerless.hostname=check-iscsi
    # Before the target goes: see stop().
    stop
    expect_line "$tmp/iscsi.log" "PEERLESS-TINY-BOOTED host=check-iscsi ip=none"
    tgtadm --lld iscsi --op delete --mode target --tid "$tid" --force
    target_made=0
    id=$(debugfs -R 'cat /var/lib/peerless/id' "$tmp/lun.img" 2>/dev/null)
    [ "$id" = check-iscsi ] || { echo "FAILED: id on the LUN is '$id'" >&2; exit 1; }
    echo "ok iSCSI boot (tgtd LUN via libiscsi): markers after ${took} s, id written to the LUN"
fi
