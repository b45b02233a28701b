#!/usr/bin/env bash
# The several-node demo (make cluster-demo): three compute nodes and a storage node on
# this machine (scripts/testbed.sh), the tiny image imported through the storage node,
# a 4-VM cluster "demo" created through n3's API, placed over the nodes by vcd, and a
# wait until every VM wrote PEERLESS-TINY-WROTE on its serial console from its iSCSI disk.
# Builds nothing: it wants the binaries (swift build) and images/build/tiny.img
# (images/tiny/build.sh images/build, or make images). The testbed stays up afterwards
# for a look around; scripts/testbed.sh down removes it.
set -euo pipefail
cd "$(dirname "$0")/.."

testbed=scripts/testbed.sh
image=${PEERLESS_DEMO_IMAGE:-images/build/tiny.img}
marker=PEERLESS-TINY-WROTE
cluster=demo
vms=4
wait_seconds=${PEERLESS_DEMO_TIMEOUT:-900}

fail() { echo "cluster-demo: $*" >&2; exit 1; }
step() { printf '\n== %s\n' "$*"; }

bin=${PEERLESS_BIN:-$(PATH=/opt/swift/usr/bin:$PATH swift build --show-bin-path)}
for b in vcd vc; do
  [ -x "$bin/$b" ] || fail "no $bin/$b; build first (swift build), or set PEERLESS_BIN"
done
[ -f "$image" ] || fail "no $image; make it first: images/tiny/build.sh images/build (or make images)"
export PEERLESS_BIN=$bin

tb=${PEERLESS_TESTBED_DIR:-/var/lib/peerless-testbed}
owner=$(cat "$tb/owner" 2>/dev/null || true)
if [ -n "$owner" ] && [ "$owner" != $$ ] && kill -0 "$owner" 2>/dev/null; then
  fail "the testbed is in use by process $owner ($(tr '\0' ' ' <"/proc/$owner/cmdline" | cut -c1-80)); run the demo when it ends"
fi
if [ -e "$tb" ] || ip netns list 2>/dev/null | grep -q '^pl-'; then
  # Left by an earlier demo or a killed run: the demo starts from nothing each time.
  echo "cluster-demo: replacing the testbed left at $tb"
  "$testbed" down
fi

step "testbed: 3 compute nodes and the storage node"
PEERLESS_TESTBED_OWNER=$$ "$testbed" up 3 || fail "the testbed did not come up (the reason is above)"
eval "$("$testbed" env)"

# vc runs in the hub namespace, which reaches every node, against one node's API.
vc_on() { # NODE ARGS...
  local node=$1 endpoint_var="TESTBED_ENDPOINT_$1"
  shift
  "$testbed" exec hub "$bin/vc" "$@" --endpoint "${!endpoint_var}" --token-file "$TESTBED_TOKEN_FILE"
}

step "nodes, as n1 sees them"
vc_on n1 node list || fail "vcd on n1 cannot list the nodes: the catalog has no node records yet"
ready=$(vc_on n1 node list -o json | jq '[.[] | select(.state == "ready")] | length')
[ "$ready" = 4 ] || fail "n1 sees $ready ready node(s), not 4: vcd does not register every node yet"

step "import the tiny image through the storage node"
# vcd reads the file at the path it is given, in its own mount namespace: the copy goes
# into the storage node's own /var/lib/peerless, and vc runs inside that node.
mkdir -p "$TESTBED_STATE_stor/import"
cp --sparse=always "$image" "$TESTBED_STATE_stor/import/tiny.img"
"$testbed" exec stor "$bin/vc" image import tiny /var/lib/peerless/import/tiny.img \
  --endpoint "$TESTBED_ENDPOINT_stor" --token-file /var/lib/peerless/api-token ||
  fail "vcd on stor did not import the image (see $tb/stor/logs/vcd.log)"
rm -f "$TESTBED_STATE_stor/import/tiny.img"
vc_on n2 image list || fail "n2 does not list the image the storage node imported"

step "create cluster $cluster ($vms VMs) through n3's API"
# The create streams its steps (each run on the node it belongs to) and ends with the
# cluster as n3 shows it.
vc_on n3 cluster create "$cluster" --image tiny --vms "$vms" --memory 128M ||
  fail "n3 could not create the cluster (see $tb/n3/logs/vcd.log and the hosting nodes' logs)"

step "wait until every VM printed $marker (TCG guests on 2 cores: about a minute)"
placement=$(vc_on n3 cluster show "$cluster" -o json | jq -r '.vms[] | "\(.name) \(.node)"') ||
  fail "cluster show -o json gave no VMs"
[ "$(echo "$placement" | wc -l)" = "$vms" ] || fail "the cluster has not $vms VMs: $placement"
deadline=$((SECONDS + wait_seconds))
pending=$placement
while [ -n "$pending" ]; do
  still=""
  while read -r vm node; do
    # The console of a VM is a file in its hosting node's /var/lib/peerless.
    log="$tb/$node/peerless/consoles/$cluster/$vm.log"
    if [ -f "$log" ] && line=$(grep -a -m1 "$marker" "$log"); then
      echo "$vm on $node: $(echo "$line" | tr -d '\r')"
    else
      still="$still$vm $node"$'\n'
    fi
  done <<<"$pending"
  pending=$(printf '%s' "$still" | sed '/^$/d')
  [ -n "$pending" ] || break
  if [ $SECONDS -ge $deadline ]; then
    while read -r vm node; do
      echo "cluster-demo: $vm on $node printed no $marker in ${wait_seconds}s; the end of its console:" >&2
      tail -n 5 "$tb/$node/peerless/consoles/$cluster/$vm.log" >&2 2>/dev/null || echo "  (no console file)" >&2
    done <<<"$pending"
    exit 1
  fi
  sleep 2
done

step "cluster $cluster, as n1 sees it"
vc_on n1 cluster show "$cluster"
cat <<EOF

The testbed stays up. Look around:
  eval "\$($testbed env)"                       # endpoints and the token file
  $testbed status                               # every node and daemon
  $testbed exec hub $bin/vc node list --endpoint \$TESTBED_ENDPOINT_n1 --token-file \$TESTBED_TOKEN_FILE
Remove it all (VMs, nodes, namespaces, files):
  $testbed down
EOF
