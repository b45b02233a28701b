#!/usr/bin/env bash
# Boot-test the tiny image under QEMU TCG (nested KVM hangs on these hosts).
#
#   images/tiny/check.sh [--iscsi] [--peers] [OUTDIR]   (OUTDIR: images/build)
#
# 1. disk boot (SeaBIOS -> extlinux -> kernel + tiny initrd -> /sbin/init) of
#    a copy of tiny.img, with a user-mode NIC whose DHCP server names the VM
#    and an SMBIOS hostname that DHCP must override; checks the console
#    markers and reads /var/lib/peerless/id back from the copy with debugfs;
#    a peer that does not resolve (peerless.peers=, peerless.peerwait=4)
#    must be reported missing;
# 2. probe mode: -kernel/-initrd with peerless.probe must print
#    PEERLESS-PROBE-OK and make QEMU exit by itself;
# 3. with --iscsi: disk boot from a tgtd LUN (target tid 900 on 127.0.0.1,
#    backed by another copy), deleted again afterwards;
# 4. with --peers: two guests on one bridge in a network namespace of their
#    own, with a dnsmasq that names them (DHCP and DNS) and hands out MTU
#    1400; each must print that MTU and reach the other by name, and a third,
#    nameless peer must be reported missing. The namespace goes afterwards.
# MEM (MiB, default 128) sets the guest RAM.
set -euo pipefail

iscsi=0
peers=0
while :; do
    case "${1:-}" in
    --iscsi) iscsi=1 ;;
    --peers) peers=1 ;;
    *) break ;;
    esac
    shift
done
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${1:-$(dirname "$here")/build}
mem=${MEM:-128}
tid=900
iqn=iqn.2026-11.dev.peerless:imgtest

tmp=$(mktemp -d)
qpids=()
qpid=
took=
target_made=0
ns=
dnsmasq_pid=
cleanup() {
    local rc=$?
    stop
    if [ "$target_made" = 1 ]; then
        tgtadm --lld iscsi --op delete --mode target --tid "$tid" --force || true
    fi
    if [ -n "$dnsmasq_pid" ]; then
        kill "$dnsmasq_pid" 2>/dev/null || true
        wait "$dnsmasq_pid" 2>/dev/null || true
    fi
    if [ -n "$ns" ]; then
        ip -n "$ns" link del tapa 2>/dev/null || true
        ip -n "$ns" link del tapb 2>/dev/null || true
        ip netns del "$ns" || true
    fi
    rm -rf "$tmp"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

secs_since() { awk -v a="$1" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }'; }

# start LOG QEMU-ARGS...: start a QEMU (inside "${netns_exec[@]}", when set)
# with its serial console on LOG. Sets $qpid and $t0 and adds the QEMU to
# $qpids, which stop() ends. Not to be called in $(...).
netns_exec=()
start() {
    local log=$1
    shift
    t0=$(date +%s%N)
    "${netns_exec[@]}" qemu-system-x86_64 -accel tcg -m "$mem" -nographic -nodefaults -serial stdio \
        -no-reboot "$@" >"$log" 2>&1 &
    qpid=$!
    qpids+=("$qpid")
}
# await LOG MARKER [PID [T0]]: wait up to 120 s for MARKER on the serial log
# of the QEMU PID (default $qpid) started at T0 (default $t0); sets $took
# to the seconds since T0.
await() {
    local log=$1 marker=$2 pid=${3:-$qpid} since=${4:-$t0} i
    for ((i = 0; i < 1200; i++)); do
        if grep -qa -- "$marker" "$log"; then
            took=$(secs_since "$since")
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "FAILED: no '$marker'; serial log:" >&2
    tr -d '\r' <"$log" | tail -n 20 >&2
    return 1
}
# boot LOG MARKER QEMU-ARGS...: start, then await MARKER.
boot() {
    local log=$1 marker=$2
    shift 2
    start "$log" "$@"
    await "$log" "$marker"
}
# Ends every QEMU started. QEMU blocked on an iSCSI target that went away
# ignores SIGTERM: escalate.
stop() {
    local i p alive
    [ "${#qpids[@]}" -gt 0 ] || return 0
    kill "${qpids[@]}" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        alive=0
        for p in "${qpids[@]}"; do
            if kill -0 "$p" 2>/dev/null; then alive=1; fi
        done
        [ "$alive" = 1 ] || break
        sleep 0.1
    done
    for p in "${qpids[@]}"; do
        kill -9 "$p" 2>/dev/null || true
    done
    for p in "${qpids[@]}"; do wait "$p" 2>/dev/null || true; done
    qpids=()
    qpid=
}
expect_line() { # LOG LINE
    tr -d '\r' <"$1" | grep -qxF "$2" || { echo "FAILED: no line '$2' in $1" >&2; tr -d '\r' <"$1" | tail -n 5 >&2; return 1; }
}

cp --sparse=always "$out/tiny.img" "$tmp/disk.img"
boot "$tmp/disk.log" PEERLESS-TINY-WROTE -drive "file=$tmp/disk.img,format=raw,if=virtio" \
    -nic user,model=virtio-net-pci,hostname=check-dhcp \
    -smbios type=11,value=peerless.hostname=check-smbios \
    -smbios type=11,value=peerless.peers=check-absent,value=peerless.peerwait=4
booted=$took
await "$tmp/disk.log" PEERLESS-TINY-PEERS-FAILED
stop
expect_line "$tmp/disk.log" "PEERLESS-TINY-BOOTED host=check-dhcp ip=10.0.2.15"
expect_line "$tmp/disk.log" "PEERLESS-TINY-WROTE id=check-dhcp"
expect_line "$tmp/disk.log" "PEERLESS-TINY-MTU dev=eth0 mtu=1500"
expect_line "$tmp/disk.log" "PEERLESS-TINY-PEERS-FAILED missing=check-absent"
id=$(debugfs -R 'cat /var/lib/peerless/id' "$tmp/disk.img" 2>/dev/null)
[ "$id" = check-dhcp ] || { echo "FAILED: id on disk is '$id'" >&2; exit 1; }
echo "ok disk boot (${mem} MiB, DHCP): markers after ${booted} s, id written to the disk," \
    "unresolvable peer reported missing after ${took} s"

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

if [ "$peers" = 1 ]; then
    # A namespace of our own: its bridge, taps and dnsmasq touch nothing of
    # the host's network, and go with it.
    ns=peerless-check-$$
    ip netns add "$ns"
    nsx() { ip netns exec "$ns" "$@"; }
    nsx ip link set lo up
    nsx ip link add br0 type bridge
    nsx ip addr add 10.99.0.1/24 dev br0
    nsx ip link set br0 up
    for t in tapa tapb; do
        nsx ip tuntap add dev "$t" mode tap
        nsx ip link set "$t" master br0 up
    done
    # As Peerless's own dnsmasq does: a fixed address and name per MAC, the
    # names in DNS too, and the network's MTU (below 1500 over a VXLAN).
    # (QEMU reads ",," as a comma inside an option value.)
    # Not through nsx: $! must be dnsmasq itself (ip netns exec execs it).
    ip netns exec "$ns" dnsmasq --keep-in-foreground --conf-file=/dev/null --user=root --pid-file= \
        --no-resolv --no-hosts --leasefile-ro --bind-interfaces --interface=br0 \
        --dhcp-range=10.99.0.0,static,255.255.255.0,infinite \
        --dhcp-host=52:54:00:99:00:11,10.99.0.11,peer-a,infinite \
        --dhcp-host=52:54:00:99:00:12,10.99.0.12,peer-b,infinite \
        --host-record=peer-a,10.99.0.11 --host-record=peer-b,10.99.0.12 \
        --dhcp-option=option:mtu,1400 --log-dhcp --log-facility="$tmp/dnsmasq.log" &
    dnsmasq_pid=$!
    netns_exec=(ip netns exec "$ns")
    cp --sparse=always "$out/tiny.img" "$tmp/peer-a.img"
    cp --sparse=always "$out/tiny.img" "$tmp/peer-b.img"
    start "$tmp/peer-a.log" -drive "file=$tmp/peer-a.img,format=raw,if=virtio" \
        -netdev tap,id=n0,ifname=tapa,script=no,downscript=no \
        -device virtio-net-pci,netdev=n0,mac=52:54:00:99:00:11 \
        -smbios type=11,value=peerless.hostname=peer-a,value=peerless.peers=peer-b
    apid=$qpid at0=$t0
    start "$tmp/peer-b.log" -drive "file=$tmp/peer-b.img,format=raw,if=virtio" \
        -netdev tap,id=n0,ifname=tapb,script=no,downscript=no \
        -device virtio-net-pci,netdev=n0,mac=52:54:00:99:00:12 \
        -smbios type=11,value=peerless.hostname=peer-b,value=peerless.peers=peer-a,,peer-gone \
        -smbios type=11,value=peerless.peerwait=30
    bpid=$qpid bt0=$t0
    netns_exec=()
    await "$tmp/peer-a.log" PEERLESS-TINY-PEERS-OK "$apid" "$at0"
    atook=$took
    await "$tmp/peer-b.log" PEERLESS-TINY-PEERS-FAILED "$bpid" "$bt0"
    btook=$took
    stop
    expect_line "$tmp/peer-a.log" "PEERLESS-TINY-BOOTED host=peer-a ip=10.99.0.11"
    expect_line "$tmp/peer-a.log" "PEERLESS-TINY-MTU dev=eth0 mtu=1400"
    expect_line "$tmp/peer-a.log" "PEERLESS-TINY-PEER name=peer-b ip=10.99.0.12"
    expect_line "$tmp/peer-b.log" "PEERLESS-TINY-BOOTED host=peer-b ip=10.99.0.12"
    expect_line "$tmp/peer-b.log" "PEERLESS-TINY-MTU dev=eth0 mtu=1400"
    expect_line "$tmp/peer-b.log" "PEERLESS-TINY-PEER name=peer-a ip=10.99.0.11"
    expect_line "$tmp/peer-b.log" "PEERLESS-TINY-PEERS-FAILED missing=peer-gone"
    echo "ok peers (bridge + dnsmasq, MTU 1400): peer-a reached peer-b by name after ${atook} s;" \
        "peer-b reached peer-a and reported peer-gone missing after ${btook} s"
fi
