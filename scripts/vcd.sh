#!/usr/bin/env bash
# Starts or stops this node's vcd in the background, for machines where systemd is not
# PID 1 (this one, CI). With systemd, use systemd/vcd.service instead.
#
#   scripts/vcd.sh start [CONFIG.yaml] | stop | status
set -euo pipefail
cd "$(dirname "$0")/.."

state=/var/lib/peerless/daemons
log=/var/log/peerless/vcd.log
socket=${PEERLESS_SOCKET:-/run/peerless/vcd.sock}
mkdir -p "$state" "$(dirname "$log")"

alive() { [ -f "$state/vcd.pid" ] && kill -0 "$(cat "$state/vcd.pid")" 2>/dev/null; }
answers() { curl -fsS -m 5 --unix-socket "$socket" http://vcd/v1/node >/dev/null 2>&1; }

case "${1:-}" in
  start)
    if alive && answers; then echo "vcd: already running (pid $(cat "$state/vcd.pid"))"; exit 0; fi
    bin=$(swift build --show-bin-path)/vcd
    args=()
    [ -n "${2:-}" ] && args=(-c "$2")
    nohup "$bin" "${args[@]}" >>"$log" 2>&1 &
    echo $! >"$state/vcd.pid"
    # The first start may spend up to 20 s proving whether KVM works.
    for _ in $(seq 1 240); do
      if answers; then echo "vcd: running (pid $(cat "$state/vcd.pid")), log in $log"; exit 0; fi
      if ! alive; then break; fi
      sleep 0.5
    done
    echo "vcd: did not come up; last lines of $log:" >&2
    tail -n 20 "$log" >&2
    exit 1
    ;;
  stop)
    if alive; then
      pid=$(cat "$state/vcd.pid")
      kill -TERM "$pid"
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$state/vcd.pid"
    echo "vcd: stopped"
    ;;
  status)
    if alive && answers; then echo "vcd: running (pid $(cat "$state/vcd.pid"))"; else echo "vcd: not running"; exit 1; fi
    ;;
  *) echo "usage: $0 start [CONFIG] | stop | status" >&2; exit 2 ;;
esac
