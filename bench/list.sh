#!/usr/bin/env bash
# `vc cluster list` with 1,000 clusters in the catalog, against `etcdctl get --prefix` of
# the same keys, median of RUNS (each tool's run alternating with the other's).
# Target: at most 3 times etcdctl.
#
# Needs no testbed and touches nothing of the host: the whole benchmark runs in a network
# namespace of its own (only its loopback), with its own etcd (its own data directory)
# and its own vcd (compute role only, libvirt's in-process test driver, reconciler at
# start only, and that on an empty catalog), so no host daemon, domain, bridge or port is
# ever seen. The records are bench/cluster-record.json (the record of a real 4-VM create
# on the testbed, three nodes) with names, subnets, addresses and disks varied, one in ten
# suspended. A catalog holds at most 254 clusters under one network prefix
# (AddressPlan.subnets), so the records take the prefixes 10.77 to 10.80.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${PEERLESS_BENCH_LIST_NETNS:-}" != 1 ]; then
  exec unshare --net env PEERLESS_BENCH_LIST_NETNS=1 bash "$0" "$@"
fi
ip link set lo up
[ -d /opt/swift/usr/bin ] && export PATH=/opt/swift/usr/bin:$PATH
BIN=${BIN:-$(swift build --show-bin-path)}
CLUSTERS=${CLUSTERS:-1000}
RUNS=${RUNS:-11}
work=/var/tmp/peerless-bench-list
template=bench/cluster-record.json
etcd_url=http://127.0.0.1:23791
prefix=/peerless

say() { echo "list: $*" >&2; }
fail() { say "$*"; exit 1; }
ms() { date +%s%N; }
elapsed_ms() { echo $((($(date +%s%N) - $1) / 1000000)); }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
median() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
range() { printf '%s\n' "$@" | sort -n | awk 'NR == 1 { lo = $1 } { hi = $1 } END { print lo "-" hi }'; }
table() { echo; row "$@"; printf '|'; for _ in "$@"; do printf -- ' --- |'; done; echo; }
row() { printf '|'; for c in "$@"; do printf ' %s |' "$c"; done; echo; }

if [ ! -x "$BIN/vc" ] || [ ! -x "$BIN/vcd" ]; then fail "no vc or vcd in $BIN (swift build, or set BIN)"; fi

stop() { # NAME: the process whose PID is in $work/NAME.pid, TERM then KILL after 10 s
  local f="$work/$1.pid" pid i
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    [ "$i" -lt 100 ] || kill -KILL "$pid" 2>/dev/null || true
    sleep 0.1
  done
  wait "$pid" 2>/dev/null || true
  rm -f "$f"
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  stop vcd
  stop etcd
  rm -rf "$work"
  exit $rc
}
rm -rf "$work"
mkdir -p "$work/state"
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

etcd --name benchlist --data-dir "$work/etcd" --unsafe-no-fsync \
  --listen-client-urls "$etcd_url" --advertise-client-urls "$etcd_url" \
  --listen-peer-urls http://127.0.0.1:23801 --initial-advertise-peer-urls http://127.0.0.1:23801 \
  --initial-cluster benchlist=http://127.0.0.1:23801 >"$work/etcd.log" 2>&1 &
echo $! >"$work/etcd.pid"
ctl() { ETCDCTL_API=3 etcdctl --endpoints="$etcd_url" "$@"; }
for _ in $(seq 1 100); do ctl endpoint health >/dev/null 2>&1 && break; sleep 0.1; done
ctl endpoint health >/dev/null 2>&1 || { tail -5 "$work/etcd.log" >&2; fail "etcd did not start"; }

cat >"$work/vcd.yaml" <<YAML
node: benchlist
roles: [compute]
stateDirectory: $work/state
libvirtURI: "test:///default"
api: {host: 127.0.0.1, port: 7491, socket: $work/vcd.sock}
etcd: {endpoints: [$etcd_url], prefix: $prefix}
network: {prefix: "10.76", bridgePrefix: vcbl}
accelerator: {mode: tcg}
reconcileIntervalSeconds: 0
YAML
"$BIN/vcd" -c "$work/vcd.yaml" --log-level warning >"$work/vcd.log" 2>&1 &
echo $! >"$work/vcd.pid"
vc() { "$BIN/vc" "$@" --endpoint "unix://$work/vcd.sock"; }
for _ in $(seq 1 120); do vc node list >/dev/null 2>&1 && break; sleep 0.5; done
vc node list >/dev/null 2>&1 || { tail -5 "$work/vcd.log" >&2; fail "vcd did not start"; }

# The records: the template with a name, a subnet and everything derived from them of
# its own. Each is written with etcdctl put, four at a time.
mkdir -p "$work/records"
jq -r --argjson n "$CLUSTERS" '
  def hex2: "0123456789abcdef" as $d | $d[(. / 16 | floor):(. / 16 | floor) + 1] + $d[(. % 16):(. % 16) + 1];
  . as $t | range(1; $n + 1) | . as $i
  | (($i - 1) % 254 + 1) as $s | (77 + (($i - 1) / 254 | floor)) as $o
  | ("c" + ("000" + ($i | tostring))[-4:]) as $name
  | "10.\($o).\($s)" as $net
  | $t
  | .value.spec.name = $name
  | .value.state = (if $i % 10 == 0 then "suspended" else "running" end)
  | .value.network |= (.subnet = $s | .bridge = "vcbr\($s)" | .cidr = "\($net).0/24" | .gateway = "\($net).1"
      | .domain = "\($name).vc" | .vni = 7700 + $s
      | .nodeAddresses |= map_values("\($net)." + (split(".") | last)))
  | .value.vms |= map(
      "\($name)-\(.index)" as $vm
      | .name = $vm | .ip = "\($net).\(10 + .index)" | .mac = "52:54:00:\($o | hex2):\($s | hex2):\(.index | hex2)"
      | .diskIQN = "iqn.2026-11.dev.peerless:disk.\($vm)" | .diskFile = "disks/\($name)/\($vm).raw"
      | .saveFile = "saves/\($name)/\($vm).save")
  | "\($name)\t\(tojson)"' "$template" |
  while IFS=$'\t' read -r name value; do printf '%s' "$value" >"$work/records/$name"; done
records=("$work"/records/*)
pids=()
for k in 0 1 2 3; do
  (
    for ((j = k; j < ${#records[@]}; j += 4)); do
      f=${records[j]}
      ctl put "$prefix/clusters/${f##*/}" <"$f" >/dev/null || exit 1
    done
  ) &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || fail "writing the records with etcdctl put failed"; done
bytes=$(cat "${records[@]}" | wc -c)

listed=$(vc cluster list -o json | jq length)
stored=$(ctl get --prefix "$prefix/clusters/" --keys-only | sed '/^$/d' | wc -l)
if [ "$listed" != "$CLUSTERS" ] || [ "$stored" != "$CLUSTERS" ]; then
  fail "vc lists $listed clusters and etcd holds $stored, not $CLUSTERS"
fi

# One untimed run of each first (connections, caches), then RUNS rounds of all four.
table_ms=() json_ms=() api_ms=() sum_ms=() gw_ms=() ctl_ms=() node_ms=() image_ms=()
timed() { # VAR CMD...: CMD's time in ms appended to VAR
  local -n into=$1
  shift
  local start
  start=$(ms)
  "$@" >/dev/null
  into+=("$(elapsed_ms "$start")")
}
api() { curl -fsS --unix-socket "$work/vcd.sock" http://vcd/v1/clusters; }
summaries() { curl -fsS --unix-socket "$work/vcd.sock" 'http://vcd/v1/clusters?view=summary'; }
# What vcd itself reads: the same range through etcd's JSON gateway.
range_body=$(jq -cn --arg k "$(printf '%s' "$prefix/clusters/" | base64)" --arg e "$(printf '%s' "$prefix/clusters0" | base64)" \
  '{key: $k, range_end: $e}')
gateway() { curl -fsS -X POST "$etcd_url/v3/kv/range" -d "$range_body"; }
for round in $(seq 0 "$RUNS"); do
  timed table_ms vc cluster list
  timed json_ms vc cluster list -o json
  timed api_ms api
  timed sum_ms summaries
  timed gw_ms gateway
  timed ctl_ms ctl get --prefix "$prefix/clusters/"
  timed node_ms vc node list
  timed image_ms vc image list
  if [ "$round" = 0 ]; then table_ms=() json_ms=() api_ms=() sum_ms=() gw_ms=() ctl_ms=() node_ms=() image_ms=(); fi
done
tm=$(median "${table_ms[@]}") jm=$(median "${json_ms[@]}") am=$(median "${api_ms[@]}") sm=$(median "${sum_ms[@]}") gm=$(median "${gw_ms[@]}")
cm=$(median "${ctl_ms[@]}") nm=$(median "${node_ms[@]}") im=$(median "${image_ms[@]}")

echo "## Listing $CLUSTERS clusters ($((bytes / 1024)) KiB of records, 4 VMs each), median of $RUNS"
table "" "median (ms)" "range (ms)" "ratio to etcdctl (target <= 3)"
row "vc cluster list" "$tm" "$(range "${table_ms[@]}")" "$(ratio "$tm" "$cm")"
row "vc cluster list -o json" "$jm" "$(range "${json_ms[@]}")" "$(ratio "$jm" "$cm")"
row "vcd's answer alone: GET /v1/clusters over its socket (curl)" "$am" "$(range "${api_ms[@]}")" "$(ratio "$am" "$cm")"
row "vcd's summaries alone, what vc cluster list asks: GET /v1/clusters?view=summary (curl)" "$sm" "$(range "${sum_ms[@]}")" "$(ratio "$sm" "$cm")"
row "etcd's JSON gateway alone, the range vcd reads (curl)" "$gm" "$(range "${gw_ms[@]}")" "$(ratio "$gm" "$cm")"
row "reference: etcdctl get --prefix $prefix/clusters/" "$cm" "$(range "${ctl_ms[@]}")" ""
row "for scale: vc image list (no image), the fixed cost of a vc command" "$im" "$(range "${image_ms[@]}")" "$(ratio "$im" "$cm")"
row "for scale: vc node list (one node; vcd reads every cluster record for the commitments)" "$nm" "$(range "${node_ms[@]}")" "$(ratio "$nm" "$cm")"
