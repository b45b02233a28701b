#!/usr/bin/env bash
# The main job on the embedded single-machine default: import the tiny image, create a
# 3-VM cluster named demo, wait until every VM printed its boot marker, show the cluster.
# Run through `make demo`, which first installs packages, starts the daemons, builds and
# makes the image.
set -euo pipefail
cd "$(dirname "$0")/.."

vc=$(swift build --show-bin-path)/vc
marker=PEERLESS-TINY-BOOTED

scripts/vcd.sh start
"$vc" node list

if ! "$vc" image list -o json | jq -e '.[] | select(.name == "tiny" and .state == "ready")' >/dev/null; then
  "$vc" image import tiny images/build/tiny.img
fi

state=$("$vc" cluster list -o json | jq -r '.[] | select(.spec.name == "demo") | .state')
case "$state" in
  "") "$vc" cluster create demo --image tiny --vms 3 --memory 256M >/dev/null ;;
  running) echo "cluster demo exists already" ;;
  suspended) "$vc" cluster resume demo ;;
  *) echo "cluster demo is $state; destroy it with: $vc cluster destroy demo" >&2; exit 1 ;;
esac

echo "waiting for every VM to print $marker on its serial console (TCG boots take a while)..."
"$vc" cluster wait demo --console "$marker" --timeout 900
echo
"$vc" cluster show demo
echo
echo "Next: $vc cluster suspend demo | resume demo | destroy demo; $vc vm console demo-1"
