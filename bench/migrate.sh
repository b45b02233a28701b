#!/usr/bin/env bash
# Live migration on the testbed (scripts/testbed.sh up 2: compute nodes n1 and n2, etcd
# members both, and the storage node; every client runs in the hub namespace).
#
# Measures `vcnode drain` of a node holding one booted TCG guest, from the outside: the
# wall clock of the command (vcnode in the hub against the drained node's API), until it
# has cordoned the node, moved the VM by libvirt's peer-to-peer live migration and
# answered. Its progress line ("migrate NAME: live to NODE in X s, paused Y ms") gives the
# guest's pause (the destination's completed job, VIR_DOMAIN_JOB_DOWNTIME). For 256 MiB
# and 1 GiB guests (1 vCPU), MIGRATE_RUNS times each (default 3), the median reported.
# Each size: a 1-VM cluster of the tiny image pinned to n1 (`vc cluster create --node
# n1`), its guest at rest (its console file on the node shows PEERLESS-TINY-WROTE), then
# drained back and forth: run 1 drains n1 (to n2), run 2 drains n2 (to n1), ...; after
# each, the drained node is uncordoned and the VM checked running on the other node. The
# cluster is destroyed afterwards.
#
# Reference, in the same run and interleaved with it (run r of both before run r+1, the
# one that goes first alternating): `virsh migrate --live --p2p --persistent
# --undefinesource --abort-on-error --unsafe DOMAIN qemu+tcp://DST/system tcp://DST
# --listen-address DST` run by virsh inside the origin node, between the same two
# libvirtds in the same directions, its wall clock; the downtime from `virsh domjobinfo
# --completed` on the destination. The flags are those vcd passes to
# virDomainMigrateToURI3 (LIVE, PEER2PEER, PERSIST_DEST, UNDEFINE_SOURCE, ABORT_ON_ERROR,
# the same migration URI and listen address), plus --unsafe. The domain (ref-mgMIB, not
# Peerless's: no Peerless metadata, so no vcd touches it) is the Peerless VM's own
# definition (`virsh dumpxml --inactive` on n1) with these differences:
#   - its disk is a raw file, a copy of images/build/tiny.img in this script's directory
#     under /var/tmp, which both nodes see (checked: /var/tmp is no private directory of
#     a node), cache=none as Peerless's, not relabelled (mode 0666); Peerless's disk is
#     iSCSI (libiscsi, CHAP) at the storage node. Neither migration copies the disk.
#     libvirt refuses to migrate a disk on a local file system unless --unsafe (its
#     check only; nothing else changes);
#   - no network interface: the Peerless VM has a virtio NIC on its cluster's bridge;
#   - its console file is in the same shared directory, not the node's own;
#   - no Peerless metadata, another name and UUID, hostname ref-mgMIB in its OEM strings;
#   - one XML for the destination: vcd passes the definition retargeted to the new
#     incarnation's initiator name (DEST_XML and PERSIST_XML).
# What the drain does beyond the migration is in its time on purpose: the cordon, the plan
# and its etcd records, the destination's incarnation admitted at the target, the
# network and the domain defined on the destination, and the disk exported to the new
# incarnation alone afterwards. The target: at most 1.2 times virsh's median.
#
# Both guests run at once on one node (each idle once booted). Waits (polling every 30 s,
# at most PEERLESS_BENCH_TESTBED_WAIT seconds) while another process owns the testbed, and
# never takes down a testbed it did not bring up. Takes its own down on any exit, after
# destroying and undefining the reference domains on both nodes. BIN: where vc, vcd and
# vcnode are (default: swift build --show-bin-path); PEERLESS_BENCH_LOGS=DIR keeps every
# node's logs there (the testbed's go with it).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d /opt/swift/usr/bin ] && export PATH=/opt/swift/usr/bin:$PATH
BIN=${BIN:-$(swift build --show-bin-path)}
RUNS=${MIGRATE_RUNS:-3}
testbed=scripts/testbed.sh
tb=${PEERLESS_TESTBED_DIR:-/var/lib/peerless-testbed}
image=images/build/tiny.img
work=/var/tmp/peerless-bench-migrate
wait_limit=${PEERLESS_BENCH_TESTBED_WAIT:-1800}
sizes=(256 1024) # MiB
export PEERLESS_TESTBED_OWNER=$$ PEERLESS_BIN=$BIN

say() { echo "migrate: $*" >&2; }
fail() { say "$*"; exit 1; }
ms() { echo $(($(date +%s%N) / 1000000)); }
seconds() { awk -v t="$1" 'BEGIN { printf "%.2f", t / 1000 }'; }
median() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; } # A B -> A/B
verdict() { if [ $(($1 * 10)) -le $(($2 * 12)) ]; then echo met; else echo "**not met**"; fi; } # OURS-MS REF-MS: <= 1.2
table() { echo; row "$@"; printf '|'; for _ in "$@"; do printf -- ' --- |'; done; echo; }
row() { printf '|'; for c in "$@"; do printf ' %s |' "$c"; done; echo; }
size_label() { if [ "$1" -ge 1024 ]; then echo "$(($1 / 1024)) GiB"; else echo "$1 MiB"; fi; }
size_option() { if [ "$1" -ge 1024 ]; then echo "$(($1 / 1024))G"; else echo "$1M"; fi; }

[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || fail "MIGRATE_RUNS must be a positive number, not $RUNS"
for b in vc vcd vcnode; do [ -x "$BIN/$b" ] || fail "no $b in $BIN (swift build, or set BIN)"; done
[ -f "$image" ] || fail "no $image (images/tiny/build.sh images/build, or make images)"
command -v jq >/dev/null || fail "needs jq"
command -v python3 >/dev/null || fail "needs python3 (to rewrite the reference domain's XML)"

# ---------------------------------------------------------------- the testbed, ours alone

nodes=(n1 n2)
mine=0
# The reference domains, destroyed and undefined on every node (best effort: also while
# a run fails).
ref_gone() {
  local n d
  for n in "${nodes[@]}"; do
    for d in $("$testbed" exec "$n" virsh -q -c qemu:///system list --all --name 2>/dev/null | grep '^ref-mg' || true); do
      "$testbed" exec "$n" virsh -q -c qemu:///system destroy "$d" >/dev/null 2>&1 || true
      "$testbed" exec "$n" virsh -q -c qemu:///system undefine "$d" >/dev/null 2>&1 || true
    done
  done
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  if [ $mine = 1 ]; then
    if [ "$(cat "$tb/owner" 2>/dev/null)" = $$ ]; then
      ref_gone
      if [ -n "${PEERLESS_BENCH_LOGS:-}" ]; then
        local n
        for n in stor "${nodes[@]}"; do
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
"$testbed" up 2 >"$work/up.log" 2>&1 || { cat "$work/up.log" >&2; fail "the testbed did not come up"; }
mine=1
eval "$("$testbed" env)"
# Set by the env above.
: "${TESTBED_TOKEN_FILE:?}" "${TESTBED_STATE_stor:?}" "${TESTBED_ENDPOINT_stor:?}"
: "${TESTBED_STATE_n1:?}" "${TESTBED_STATE_n2:?}" "${TESTBED_ENDPOINT_n1:?}" "${TESTBED_ENDPOINT_n2:?}"

# vc and vcnode in the hub against one node's API; virsh inside a node.
vc_on() { # NODE ARGS...
  local var="TESTBED_ENDPOINT_$1"
  shift
  "$testbed" exec hub "$BIN/vc" "$@" --endpoint "${!var}" --token-file "$TESTBED_TOKEN_FILE"
}
vcnode_on() { # NODE ARGS...
  local var="TESTBED_ENDPOINT_$1"
  shift
  "$testbed" exec hub "$BIN/vcnode" "$@" --endpoint "${!var}" --token-file "$TESTBED_TOKEN_FILE"
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
address_of() { # NODE -> its underlay address (from its API endpoint)
  local var="TESTBED_ENDPOINT_$1" a
  a=${!var#http://}
  echo "${a%%:*}"
}
other() { if [ "$1" = n1 ]; then echo n2; else echo n1; fi; } # NODE -> the other compute node
node_state() { # NODE ASKED -> ready | cordoned | dead, as node ASKED sees it
  vc_on "$2" node list -o json 2>/dev/null | jq -r --arg n "$1" '.[] | select(.record.name == $n) | .state'
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
is_state() { [ "$(node_state "$1" "$3")" = "$2" ]; } # NODE STATE ASKED
all_ready() { local n; for n in "${nodes[@]}"; do is_state "$n" ready "$1" || return 1; done; } # ASKED
console_has() { grep -q "$2" "$1" 2>/dev/null; } # FILE TEXT
# The Peerless VM runs on NODE, as NODE's API shows it, with no operation left.
vm_runs_on() { # CLUSTER VM NODE
  vc_on "$3" cluster show "$1" -o json 2>/dev/null |
    jq -e --arg v "$2" --arg n "$3" '.operation == null and any(.vms[]; .name == $v and .node == $n and .domain == "running")' >/dev/null
}
domain_state() { virsh_on "$1" domstate "$2" 2>/dev/null | sed '/^$/d' || true; } # NODE DOMAIN

# Both nodes see this script's directory under /var/tmp, the reference disk's.
echo "$$" >"$work/shared"
for n in "${nodes[@]}"; do
  [ "$("$testbed" exec "$n" cat "$work/shared" 2>/dev/null)" = $$ ] || fail "node $n does not see $work: the reference's disk cannot be shared"
done

mkdir -p "$TESTBED_STATE_stor/import"
cp --sparse=always "$image" "$TESTBED_STATE_stor/import/tiny.img"
"$testbed" exec stor "$BIN/vc" image import tiny /var/lib/peerless/import/tiny.img \
  --endpoint "$TESTBED_ENDPOINT_stor" --token-file /var/lib/peerless/api-token >/dev/null 2>"$work/err" ||
  { cat "$work/err" >&2; fail "the image import through the storage node failed"; }
rm -f "$TESTBED_STATE_stor/import/tiny.img"
await 30 "every node ready" all_ready n1

# ---------------------------------------------------------------- the two guests

# The reference domain's definition from the Peerless VM's: XML on stdin, out on stdout.
reference_xml() { # NAME DISK CONSOLE
  python3 -c '
import sys, xml.etree.ElementTree as ET
name, disk, console = sys.argv[1:4]
root = ET.fromstring(sys.stdin.read())
def drop(parent, tag):
    for e in parent.findall(tag):
        parent.remove(e)
drop(root, "uuid")
drop(root, "metadata")
drop(root, "seclabel")
root.find("name").text = name
for entry in root.iter("entry"):
    if entry.text and entry.text.startswith("peerless.hostname="):
        entry.text = "peerless.hostname=" + name
devices = root.find("devices")
drop(devices, "interface")
disks = devices.findall("disk")
if len(disks) != 1:
    sys.exit("expected one disk, found %d" % len(disks))
d = disks[0]
d.set("type", "file")
drop(d, "source")
drop(d, "auth")
source = ET.Element("source", {"file": disk})
ET.SubElement(source, "seclabel", {"model": "dac", "relabel": "no"})
d.insert(1, source)
serials = devices.findall("serial")
if len(serials) != 1:
    sys.exit("expected one serial port, found %d" % len(serials))
serials[0].find("source").set("path", console)
sys.stdout.write(ET.tostring(root, encoding="unicode"))
' "$@"
}

# One size: the Peerless cluster and the reference domain on n1, both guests at rest.
# Sets cluster, vm and ref.
boot_both() { # MIB
  local mib=$1 disk console
  cluster="mg$mib"
  vm="$cluster-1"
  ref="ref-mg$mib"
  vc_ok n1 cluster create "$cluster" --image tiny --vms 1 --memory "$(size_option "$mib")" --node n1
  await 60 "$vm to run on n1" vm_runs_on "$cluster" "$vm" n1

  virsh_on n1 dumpxml --inactive "$vm" >"$work/$vm.xml" || fail "virsh dumpxml $vm on n1 failed"
  disk="$work/$ref.img"
  console="$work/$ref.console"
  cp --sparse=always "$image" "$disk"
  : >"$console"
  chmod 0666 "$disk" "$console"
  reference_xml "$ref" "$disk" "$console" <"$work/$vm.xml" >"$work/$ref.xml" || fail "could not make $ref's XML from $vm's"
  virsh_on n1 define "$work/$ref.xml" >/dev/null || fail "virsh define $ref on n1 failed"
  virsh_on n1 start "$ref" >/dev/null || fail "virsh start $ref on n1 failed"

  await 600 "$vm's guest to be at rest (PEERLESS-TINY-WROTE)" console_has "$TESTBED_STATE_n1/consoles/$cluster/$vm.log" PEERLESS-TINY-WROTE
  await 600 "$ref's guest to be at rest (PEERLESS-TINY-WROTE)" console_has "$console" PEERLESS-TINY-WROTE
  say "$cluster: $vm and $ref ($(size_label "$mib"), 1 vCPU, TCG) booted on n1"
}

# One drain of SRC (the VM moves to the other node); appends to peer_ms, peer_down, peer_in.
drain_once() { # SRC
  local src=$1 dst start took line
  dst=$(other "$src")
  await 60 "$dst to be ready before the drain of $src" is_state "$dst" ready "$src"
  start=$(ms)
  vcnode_on "$src" drain "$src" >"$work/drain.out" 2>"$work/drain.err" ||
    { cat "$work/drain.err" "$work/drain.out" >&2; fail "vcnode drain $src failed"; }
  took=$(($(ms) - start))
  line=$(tr '\r' '\n' <"$work/drain.err" | grep -o "migrate $vm: .*" | tail -n 1 || true)
  [[ "$line" =~ ^migrate\ $vm:\ live\ to\ $dst\ in\ ([0-9.]+)\ s,\ paused\ ([0-9]+)\ ms ]] ||
    { cat "$work/drain.err" "$work/drain.out" >&2; fail "vcnode drain $src did not move $vm live to $dst: ${line:-no progress line}"; }
  peer_in+=("${BASH_REMATCH[1]}")
  peer_down+=("${BASH_REMATCH[2]}")
  peer_ms+=("$took")
  await 60 "$vm to run on $dst after the drain" vm_runs_on "$cluster" "$vm" "$dst"
  vcnode_on "$src" uncordon "$src" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; fail "vcnode uncordon $src failed"; }
  await 60 "$src to be ready again" is_state "$src" ready "$dst"
  say "$cluster: vcnode drain $src: $(seconds "$took") s ($line)"
}

# One virsh migration of the reference from SRC to the other node; appends to ref_ms, ref_down.
migrate_once() { # SRC
  local src=$1 dst addr start took down
  dst=$(other "$src")
  addr=$(address_of "$dst")
  [ "$(domain_state "$src" "$ref")" = running ] || fail "$ref does not run on $src before its migration"
  start=$(ms)
  virsh_on "$src" migrate --live --p2p --persistent --undefinesource --abort-on-error --unsafe \
    "$ref" "qemu+tcp://$addr/system" "tcp://$addr" --listen-address "$addr" >"$work/migrate.out" 2>&1 ||
    { cat "$work/migrate.out" >&2; fail "virsh migrate $ref from $src to $dst failed"; }
  took=$(($(ms) - start))
  virsh_on "$dst" domjobinfo --completed "$ref" >"$work/jobinfo" 2>&1 || { cat "$work/jobinfo" >&2; fail "virsh domjobinfo --completed $ref on $dst failed"; }
  down=$(awk '/^Total downtime:/ { print $3 }' "$work/jobinfo")
  [[ "$down" =~ ^[0-9]+$ ]] || { cat "$work/jobinfo" >&2; fail "no downtime in $ref's completed job on $dst"; }
  [ "$(domain_state "$dst" "$ref")" = running ] || fail "$ref does not run on $dst after its migration"
  ! virsh_on "$src" dominfo "$ref" >/dev/null 2>&1 || fail "$ref is still defined on $src after its migration"
  ref_ms+=("$took")
  ref_down+=("$down")
  say "$cluster: virsh migrate $ref $src -> $dst: $(seconds "$took") s, downtime $down ms ($(awk '/^Time elapsed:/ { print $3 " " $4 }' "$work/jobinfo") in libvirt's job)"
}

declare -A result result_runs
for mib in "${sizes[@]}"; do
  boot_both "$mib"
  peer_ms=() peer_down=() peer_in=() ref_ms=() ref_down=()
  src=n1
  for run in $(seq 1 "$RUNS"); do
    if [ $((run % 2)) = 1 ]; then
      drain_once "$src"
      migrate_once "$src"
    else
      migrate_once "$src"
      drain_once "$src"
    fi
    src=$(other "$src")
  done
  vc_ok "$src" cluster destroy "$cluster"
  ref_gone
  rm -f "$work/$ref.img" "$work/$ref.console"
  pm=$(median "${peer_ms[@]}")
  rm_=$(median "${ref_ms[@]}")
  result[$mib]="$pm $rm_ $(median "${peer_down[@]}") $(median "${ref_down[@]}")"
  runs=""
  for i in "${!peer_ms[@]}"; do
    runs="$runs${runs:+; }$(seconds "${peer_ms[$i]}") s (migration ${peer_in[$i]} s, paused ${peer_down[$i]} ms) against $(seconds "${ref_ms[$i]}") s (${ref_down[$i]} ms)"
  done
  result_runs[$mib]=$runs
done

echo "## Live migration (testbed: 2 compute nodes and a storage node; one TCG guest at rest, 1 vCPU)"
table "memory" "runs" "\`vcnode drain\` median (s)" "\`virsh migrate --live --p2p\` median (s)" "ratio" \
  "target <= 1.2" "Peerless downtime median (ms)" "virsh downtime median (ms)"
for mib in "${sizes[@]}"; do
  read -r pm rm_ pd rd <<<"${result[$mib]}"
  row "$(size_label "$mib")" "$RUNS" "$(seconds "$pm")" "$(seconds "$rm_")" "$(ratio "$pm" "$rm_")" \
    "$(verdict "$pm" "$rm_")" "$pd" "$rd"
done
echo
for mib in "${sizes[@]}"; do
  echo "$(size_label "$mib"), each run (n1 to n2, then back, ...): drain wall clock (vcd's own migration time, the guest's pause) against virsh's wall clock (its downtime): ${result_runs[$mib]}."
done
echo
echo "Wall clocks from outside: \`vcnode drain\` run in the hub against the drained node's API," \
  "\`virsh migrate\` run inside the origin node, both through the testbed's nsenter. Downtimes:" \
  "libvirt's completed job on the destination (the drain's progress line; \`virsh domjobinfo --completed\`)." \
  "The reference domain is the Peerless VM's definition with a raw file disk on a directory both nodes see," \
  "no NIC (see the script's header)."
