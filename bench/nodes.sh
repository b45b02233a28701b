#!/usr/bin/env bash
# Peerless on several nodes, on the testbed (scripts/testbed.sh up 3: compute nodes n1-n3
# and the storage node; every client runs in the hub namespace).
#
# 1. `vc cluster create` of N = 4 and 16 VMs spread over the three nodes, until every
#    domain runs (guest boot excluded, as create.sh), median of CREATE_RUNS. Reference in
#    the same run: libvirt alone, `virsh create` of the same domains (each one's own XML,
#    dumped from the node Peerless put it on) on the same three libvirtds, all at once.
#    The reference keeps what Peerless made around the domains (disk targets on the
#    storage node, CHAP secrets, bridges, VXLAN, dnsmasq): the Peerless domains are
#    stopped and created again from their XML, with every node's vcd paused meanwhile
#    (testbed.sh pause) so that no reconciler starts them behind libvirt's back.
#    Target: at most 1.25 times the reference.
# 2. Resume of a suspended 4-VM cluster (256 MiB per VM, booted, at rest) on another node
#    than the one that suspended it, against resume on the same node, median of
#    RESUME_RUNS. A resume keeps every VM on its node while the node is alive (a
#    cordoned node keeps what it has), so "another node" is made the only way the
#    product knows: the node's vcd is paused until its lease expires and it is seen dead,
#    then the cluster is resumed; it comes back afterwards and removes what it held.
#    The cluster is placed with --placement pack, so all four VMs are on one node and
#    all four move: n1 -> n2 -> n1 ... (n3 takes the requests and never hosts them).
#    Target: at most 1.2 times resume on the same node.
#
# Waits (polling every 30 s, at most PEERLESS_BENCH_TESTBED_WAIT seconds) while another
# process owns the testbed, and never takes down a testbed it did not bring up. Takes its
# own down on any exit. BIN: where vc and vcd are (default: swift build --show-bin-path);
# PEERLESS_BENCH_LOGS=DIR keeps every node's logs there (the testbed's go with it).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d /opt/swift/usr/bin ] && export PATH=/opt/swift/usr/bin:$PATH
BIN=${BIN:-$(swift build --show-bin-path)}
CREATE_RUNS=${CREATE_RUNS:-3}
RESUME_RUNS=${RESUME_RUNS:-5}
testbed=scripts/testbed.sh
tb=${PEERLESS_TESTBED_DIR:-/var/lib/peerless-testbed}
image=images/build/tiny.img
work=/var/tmp/peerless-bench-nodes
wait_limit=${PEERLESS_BENCH_TESTBED_WAIT:-1800}
export PEERLESS_TESTBED_OWNER=$$ PEERLESS_BIN=$BIN

say() { echo "nodes: $*" >&2; }
fail() { say "$*"; exit 1; }
ms() { date +%s%N; }
elapsed_ms() { echo $((($(date +%s%N) - $1) / 1000000)); }
seconds() { awk -v t="$1" 'BEGIN { printf "%.2f", t / 1000 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
median() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
table() { echo; row "$@"; printf '|'; for _ in "$@"; do printf -- ' --- |'; done; echo; }
row() { printf '|'; for c in "$@"; do printf ' %s |' "$c"; done; echo; }

if [ ! -x "$BIN/vc" ] || [ ! -x "$BIN/vcd" ]; then fail "no vc or vcd in $BIN (swift build, or set BIN)"; fi
[ -f "$image" ] || fail "no $image (images/tiny/build.sh images/build, or make images)"

# ---------------------------------------------------------------- the testbed, ours alone

mine=0
cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  if [ $mine = 1 ]; then
    if [ "$(cat "$tb/owner" 2>/dev/null)" = $$ ]; then
      if [ -n "${PEERLESS_BENCH_LOGS:-}" ]; then
        local n
        for n in stor n1 n2 n3; do
          mkdir -p "$PEERLESS_BENCH_LOGS/$n"
          cp -r "$tb/$n/logs/." "$PEERLESS_BENCH_LOGS/$n/" 2>/dev/null || true
        done
      fi
      # down resumes paused daemons, destroys every domain and removes every node.
      "$testbed" down >/dev/null || say "testbed down failed; see scripts/testbed.sh status"
    else
      say "the testbed's owner is no longer this run; left as it is"
    fi
  fi
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

waited=0
while [ -e "$tb" ] || ip netns list 2>/dev/null | grep -q '^pl-'; do
  owner=$(cat "$tb/owner" 2>/dev/null || true)
  [ $waited -lt "$wait_limit" ] ||
    fail "the testbed is still in use after ${wait_limit}s (owner: ${owner:-none recorded}); not taking it down"
  if [ -n "$owner" ] && kill -0 "$owner" 2>/dev/null; then
    say "the testbed is in use by process $owner ($(tr '\0' ' ' <"/proc/$owner/cmdline" | cut -c1-60)); waiting"
  else
    say "a testbed is up at $tb with no live owner (${owner:-none recorded}); not taking it down, waiting (remove it with $testbed down if nobody uses it)"
  fi
  sleep 30
  waited=$((waited + 30))
done
rm -rf "$work"
mkdir -p "$work"
"$testbed" up 3 >"$work/up.log" 2>&1 || { cat "$work/up.log" >&2; fail "the testbed did not come up"; }
mine=1
eval "$("$testbed" env)"
# Set by the env above.
: "${TESTBED_TOKEN_FILE:?}" "${TESTBED_STATE_stor:?}" "${TESTBED_ENDPOINT_stor:?}"
nodes=(n1 n2 n3)
api=n3

# vc in the hub against one node's API; virsh inside a node.
vc_on() { # NODE ARGS...
  local var="TESTBED_ENDPOINT_$1"
  shift
  "$testbed" exec hub "$BIN/vc" "$@" --endpoint "${!var}" --token-file "$TESTBED_TOKEN_FILE"
}
virsh_on() { # NODE ARGS...
  local node=$1
  shift
  "$testbed" exec "$node" virsh -q -c qemu:///system "$@"
}
# Runs a vc command; on failure prints its error and fails the benchmark.
vc_ok() { # NODE ARGS...
  vc_on "$@" >"$work/out" 2>"$work/err" || { cat "$work/err" >&2; fail "vc ${*:2} failed"; }
}
node_state() { # NODE -> ready | cordoned | dead, as the API node sees it
  vc_on "$api" node list -o json | jq -r --arg n "$1" '.[] | select(.record.name == $n) | .state'
}
await() { # SECONDS WHAT CMD...: until CMD succeeds
  local limit=$1 what=$2 end
  shift 2
  end=$((SECONDS + limit))
  until "$@"; do
    [ $SECONDS -lt $end ] || fail "$what did not happen within ${limit}s"
    sleep 0.5
  done
}
is_state() { [ "$(node_state "$1")" = "$2" ]; }
all_ready() { local n; for n in "${nodes[@]}"; do is_state "$n" ready || return 1; done; }

mkdir -p "$TESTBED_STATE_stor/import"
cp --sparse=always "$image" "$TESTBED_STATE_stor/import/tiny.img"
"$testbed" exec stor "$BIN/vc" image import tiny /var/lib/peerless/import/tiny.img \
  --endpoint "$TESTBED_ENDPOINT_stor" --token-file /var/lib/peerless/api-token >/dev/null 2>"$work/err" ||
  { cat "$work/err" >&2; fail "the image import through the storage node failed"; }
rm -f "$TESTBED_STATE_stor/import/tiny.img"
await 30 "every node ready" all_ready

# ---------------------------------------------------------------- create over three nodes

# Creates every node's domains from their XML files with virsh create, all at once;
# fails if any create fails. The XML files are under $work, which every node sees.
virsh_create_all() { # DIR: DIR/NODE/*.xml
  local dir=$1 n pids=() rc=0 p
  for n in "${nodes[@]}"; do
    compgen -G "$dir/$n/*.xml" >/dev/null || continue
    # shellcheck disable=SC2016 # expanded by the node's shell
    "$testbed" exec "$n" bash -c 'pids=(); rc=0
      for f in "$@"; do virsh -q -c qemu:///system create "$f" >/dev/null & pids+=($!); done
      for p in "${pids[@]}"; do wait "$p" || rc=1; done; exit $rc' _ "$dir/$n"/*.xml &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  return $rc
}
destroy_all() { # VM NODE lines: every domain destroyed, all at once
  local vm n pids=() p
  while read -r vm n; do
    virsh_on "$n" destroy "$vm" >/dev/null &
    pids+=($!)
  done <<<"$1"
  for p in "${pids[@]}"; do wait "$p"; done
}
running_on_nodes() { # VM NODE lines: every domain runs on its node
  local vm n
  while read -r vm n; do
    [ "$(virsh_on "$n" domstate "$vm" | sed '/^$/d')" = running ] || return 1
  done <<<"$1"
}

declare -A ours_ms ref_ms spread
for n in 4 16; do
  ours=()
  refs=()
  for run in $(seq 1 "$CREATE_RUNS"); do
    name=spread$n-$run
    sync
    sleep 2
    start=$(ms)
    vc_ok "$api" cluster create "$name" --image tiny --vms "$n" --memory 128M
    ours+=("$(elapsed_ms "$start")")
    vc_ok "$api" cluster show "$name" -o json
    placed=$(jq -r '.vms[] | "\(.name) \(.node)"' "$work/out")
    [ "$(jq '[.vms[] | select(.domain == "running")] | length' "$work/out")" = "$n" ] ||
      fail "not every domain of $name runs after its create: $(jq -c '[.vms[] | {name, node, domain}]' "$work/out")"
    spread[$n]=$(jq -r '[.vms[].node] | group_by(.) | map("\(.[0]): \(length)") | join(", ")' "$work/out")
    # Each domain's own definition, from the node it runs on.
    rm -rf "$work/xml"
    while read -r vm node; do
      mkdir -p "$work/xml/$node"
      virsh_on "$node" dumpxml --inactive "$vm" >"$work/xml/$node/$vm.xml"
    done <<<"$placed"
    for node in "${nodes[@]}"; do "$testbed" pause "$node" >/dev/null; done
    destroy_all "$placed"
    sync
    sleep 2
    start=$(ms)
    virsh_create_all "$work/xml" || fail "virsh create of the domains of $name failed"
    refs+=("$(elapsed_ms "$start")")
    running_on_nodes "$placed" || fail "not every domain of $name runs after virsh create"
    # The domains libvirt made are the cluster's own (same name, UUID, metadata,
    # incarnation): vcd finds them running and the destroy removes them with the rest.
    for node in "${nodes[@]}"; do "$testbed" unpause "$node" >/dev/null; done
    await 30 "every node ready again" all_ready
    vc_ok "$api" cluster destroy "$name"
  done
  ours_ms[$n]=$(median "${ours[@]}")
  ref_ms[$n]=$(median "${refs[@]}")
  say "create N=$n: ours ${ours[*]} ms, virsh create ${refs[*]} ms"
done

# ---------------------------------------------------------------- resume on another node

name=moves
vc_ok "$api" cluster create "$name" --image tiny --vms 4 --memory 256M --placement pack
# Guests at rest, not booting, as suspend.sh measures them.
vc_ok "$api" cluster wait "$name" --console PEERLESS-TINY-WROTE --timeout 600
hosts_of() { vc_on "$api" cluster show "$name" -o json | jq -r '[.vms[].node] | unique | join(",")'; }
all_running() {
  vc_on "$api" cluster show "$name" -o json | jq -e '[.vms[] | select(.domain == "running")] | length == 4' >/dev/null
}
# A node that came back holds nothing of the cluster any more: no domain, no bridge, no
# firewall table (its reconciler removes them).
left_nothing() { # NODE
  [ -z "$(virsh_on "$1" list --all --name | sed '/^$/d')" ] &&
    ! "$testbed" exec "$1" ip -o link show | grep -q vcbr &&
    ! "$testbed" exec "$1" nft list tables | grep -q peerless_
}
timed_vc() { # VAR ARGS...: ARGS through the API node, its time in ms appended to VAR
  local -n into=$1
  shift
  sync
  local start
  start=$(ms)
  vc_ok "$api" "$@"
  into+=("$(elapsed_ms "$start")")
}

same=()
other=()
moves=()
for run in $(seq 1 "$RESUME_RUNS"); do
  here=$(hosts_of)
  [[ "$here" != *,* ]] || fail "the cluster is on several nodes ($here); pack should keep it on one"
  vc_ok "$api" cluster suspend "$name"
  timed_vc same cluster resume "$name"
  [ "$(hosts_of)" = "$here" ] || fail "a resume with every node alive moved the cluster from $here to $(hosts_of)"
  all_running || fail "not every VM runs after the resume on $here"

  vc_ok "$api" cluster suspend "$name"
  "$testbed" pause "$here" >/dev/null
  await 60 "$here to be seen dead" is_state "$here" dead
  timed_vc other cluster resume "$name"
  there=$(hosts_of)
  if [ "$there" = "$here" ] || [[ "$there" == *,* ]]; then
    fail "the resume with $here dead placed the cluster on $there"
  fi
  all_running || fail "not every VM runs after the resume on $there"
  moves+=("$here->$there")
  "$testbed" unpause "$here" >/dev/null
  await 60 "$here to be ready again" is_state "$here" ready
  await 60 "$here to remove what it held of the cluster" left_nothing "$here"
done
say "resume on the same node: ${same[*]} ms; on another node: ${other[*]} ms (${moves[*]})"
vc_ok "$api" cluster destroy "$name"

echo "## Several nodes (testbed: 3 compute nodes and a storage node, TCG guests)"
table "N" "placement" "vc cluster create (s)" "libvirt alone: virsh create of the same domains on the same 3 libvirtds, in parallel (s)" "ratio (target <= 1.25)"
for n in 4 16; do
  row "$n" "${spread[$n]}" "$(seconds "${ours_ms[$n]}")" "$(seconds "${ref_ms[$n]}")" "$(ratio "${ours_ms[$n]}" "${ref_ms[$n]}")"
done
echo
echo "Median of $CREATE_RUNS creates each, until every domain runs (guest boot excluded)."
os=$(median "${other[@]}")
ss=$(median "${same[@]}")
table "resume of a suspended 4-VM cluster (256 MiB per VM)" "median (s)" "runs (s)" "ratio (target <= 1.2)"
row "on another node than the one that suspended it (${moves[*]})" "$(seconds "$os")" \
  "$(for t in "${other[@]}"; do printf '%s ' "$(seconds "$t")"; done)" "$(ratio "$os" "$ss")"
row "reference: on the same node" "$(seconds "$ss")" "$(for t in "${same[@]}"; do printf '%s ' "$(seconds "$t")"; done)" ""
