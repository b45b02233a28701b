# Shared by bench/*.sh: a reflink pool of its own (a loop-mounted btrfs image), a vcd of
# its own for the end-to-end benchmarks, and table printing. Everything is removed on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BENCH=/var/tmp/peerless-bench
POOL=$BENCH/pool
BIN=$(swift build --show-bin-path)
SOCKET=$BENCH/vcd.sock
# vc against the bench vcd (options go after the subcommand).
bvc() { "$BIN/vc" "$@" --endpoint "unix://$SOCKET"; }
mkdir -p "$BENCH"

ms() { date +%s%N; }
elapsed_ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

pool_up() {
  if ! mountpoint -q "$POOL"; then
    [ -f "$BENCH/pool.img" ] || { truncate -s 64G "$BENCH/pool.img"; mkfs.btrfs -q -f "$BENCH/pool.img" >/dev/null 2>&1; }
    mkdir -p "$POOL"
    mount -o loop "$BENCH/pool.img" "$POOL"
  fi
  mkdir -p "$POOL/images" "$POOL/disks"
}

vcd_up() {
  pool_up
  cat >"$BENCH/vcd.yaml" <<YAML
node: bench
stateDirectory: $BENCH/state
api: {port: 7490, socket: $SOCKET}
etcd: {prefix: /peerless-bench}
pool: {path: $POOL, embeddedImage: $BENCH/pool.img}
network: {prefix: "10.79"}
accelerator: {mode: tcg}
reconcileIntervalSeconds: 0
YAML
  "$BIN/vcd" -c "$BENCH/vcd.yaml" ${BENCH_LOG_LEVEL:+--log-level $BENCH_LOG_LEVEL} >>"$BENCH/vcd.log" 2>&1 &
  echo $! >"$BENCH/vcd.pid"
  for _ in $(seq 1 120); do bvc node list >/dev/null 2>&1 && return 0; sleep 0.5; done
  echo "bench: vcd did not start:" >&2; tail -5 "$BENCH/vcd.log" >&2
  return 1
}

cleanup() {
  if [ -f "$BENCH/vcd.pid" ]; then
    local failed=0
    for c in $(bvc cluster list -o json 2>/dev/null | jq -r '.[].spec.name'); do
      bvc cluster destroy "$c" >/dev/null 2>"$BENCH/destroy.err" || { failed=1; cat "$BENCH/destroy.err" >&2; }
    done
    if [ "$failed" = 1 ]; then
      echo "bench: a cluster could not be destroyed; its state is kept in $BENCH and under /peerless-bench" >&2
      return 1
    fi
    kill -TERM "$(cat "$BENCH/vcd.pid")" 2>/dev/null || true
    while kill -0 "$(cat "$BENCH/vcd.pid")" 2>/dev/null; do sleep 0.1; done
    rm -f "$BENCH/vcd.pid"
    etcdctl del --prefix /peerless-bench >/dev/null 2>&1 || true
  fi
  if mountpoint -q "$POOL"; then umount "$POOL"; fi
  rm -rf "$BENCH"
}
trap cleanup EXIT

# A raw disk image of SIZE (e.g. 1G) full of incompressible data, with an MBR so that
# it is recognised as a disk image.
make_image() {
  local file=$1 size=$2
  head -c "$size" /dev/urandom >"$file"
  printf 'label: dos\nstart=2048, type=83\n' | sfdisk -q "$file" >/dev/null
}

# A markdown table: table COLUMN... then row CELL... for each line.
table() { echo; row "$@"; printf '|'; for _ in "$@"; do printf -- ' --- |'; done; echo; }
row() { printf '|'; for c in "$@"; do printf ' %s |' "$c"; done; echo; }

# Exclusive bytes of a file on btrfs: what it costs beyond what it shares.
exclusive_bytes() { sync -f "$1"; btrfs filesystem du --raw -s "$1" | awk 'NR == 2 { print $2 }'; }
median() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
mib() { awk -v b="$1" 'BEGIN { printf "%.2f MiB", b / 1048576 }'; }
