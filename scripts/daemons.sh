#!/usr/bin/env bash
# Starts (or stops) the system daemons a Peerless node needs when systemd is not PID 1:
# a single-member etcd on loopback, virtlogd, libvirtd and tgtd. Idempotent: a daemon that
# already answers is left alone. Only the PIDs this script recorded are ever stopped.
#
#   scripts/daemons.sh start|stop|status
set -euo pipefail

state=${PEERLESS_DAEMON_DIR:-/var/lib/peerless/daemons}
etcd_client=${PEERLESS_ETCD_CLIENT:-http://127.0.0.1:2379}
etcd_peer=${PEERLESS_ETCD_PEER:-http://127.0.0.1:2380}
# tgtd listens only here (the storage address), never on every address of the host: a
# guest must not even reach its login.
iscsi_portal=${PEERLESS_ISCSI_PORTAL:-127.0.0.1:3260}
mkdir -p "$state"

alive() { [ -f "$state/$1.pid" ] && kill -0 "$(cat "$state/$1.pid")" 2>/dev/null; }

wait_for() { # wait_for WHAT SECONDS CMD...
  local what=$1 secs=$2; shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $end ]; then echo "daemons: $what did not come up in ${secs}s" >&2; return 1; fi
    sleep 0.2
  done
}

etcd_ok() { curl -fsS -m 2 -X POST "$etcd_client/v3/kv/range" -d '{"key":"AA=="}'; }
libvirt_ok() { virsh -c qemu:///system version; }
tgt_ok() { tgtadm --lld iscsi --op show --mode system; }

start() {
  if ! etcd_ok >/dev/null 2>&1; then
    mkdir -p "$state/etcd"
    etcd --name peerless --data-dir "$state/etcd" \
      --listen-client-urls "$etcd_client" --advertise-client-urls "$etcd_client" \
      --listen-peer-urls "$etcd_peer" --initial-advertise-peer-urls "$etcd_peer" \
      --initial-cluster "peerless=$etcd_peer" >"$state/etcd.log" 2>&1 &
    echo $! >"$state/etcd.pid"
    wait_for etcd 30 etcd_ok
  fi
  mkdir -p /var/log/libvirt /run/libvirt /var/lib/libvirt/qemu
  # Only this namespace's: the testbed's nodes run virtlogds and tgtds of their own.
  if ! pgrep -x --ns $$ --nslist mnt,net virtlogd >/dev/null; then
    virtlogd -d -p "$state/virtlogd.pid"
  fi
  if ! libvirt_ok >/dev/null 2>&1; then
    libvirtd -d -p "$state/libvirtd.pid"
    wait_for libvirtd 30 libvirt_ok
  fi
  if ! tgt_ok >/dev/null 2>&1; then
    tgtd --iscsi "portal=$iscsi_portal"
    wait_for tgtd 15 tgt_ok
    pgrep -xn --ns $$ --nslist mnt,net tgtd >"$state/tgtd.pid"
  fi
  echo "daemons: etcd, virtlogd, libvirtd and tgtd are running"
}

stop() {
  if alive tgtd; then
    tgtadm --lld iscsi --op delete --mode system --force 2>/dev/null || kill "$(cat "$state/tgtd.pid")"
  fi
  for d in libvirtd virtlogd etcd; do
    if alive "$d"; then kill -TERM "$(cat "$state/$d.pid")"; fi
  done
  rm -f "$state"/*.pid
  echo "daemons: stopped what this script started"
}

status() {
  etcd_ok >/dev/null 2>&1 && echo "etcd: up" || echo "etcd: down"
  libvirt_ok >/dev/null 2>&1 && echo "libvirtd: up" || echo "libvirtd: down"
  tgt_ok >/dev/null 2>&1 && echo "tgtd: up" || echo "tgtd: down"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
