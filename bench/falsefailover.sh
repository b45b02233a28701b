#!/usr/bin/env bash
# False failovers on the testbed (scripts/testbed.sh up 3: compute nodes n1-n3, each an
# etcd member, and the storage node; every client runs in the hub namespace).
#
# Counts how often a node that is alive but unwell is declared dead. The victim is n1,
# holding the one VM of a 1-VM cluster of the tiny image (128 MiB, pinned with
# `vc cluster create ff --image tiny --vms 1 --memory 128M --node n1`, its guest at rest:
# its console shows PEERLESS-TINY-WROTE), so that a false failover has a visible cost: the
# VM fenced, killed on n1 and booted again on another node. Three phases:
#   1. FALSE_FAILOVER_LOSS % (default 5) packet loss on n1's link for
#      FALSE_FAILOVER_MINUTES minutes (default 10). This kernel has no netem: a table of
#      our own in n1's namespace (`table inet plbench`) drops at random in an input and an
#      output hook chain on eth0, its veth to the hub's bridge (`numgen random mod 100 <
#      PCT drop`), each direction on its own, so a round trip loses about twice PCT.
#      Counters next to the rule give the drop rate measured. Traffic n1 sends to itself
#      (to its own etcd member) goes over lo and is not dropped.
#   2. n1's vcd paused 1 s out of every 4 for as long (testbed.sh pause / unpause,
#      SIGSTOP / SIGCONT: a stand-in for a loaded host); each stop as measured is printed.
#   3. A ramp: loss 10, 20, 30 ... 100 % for FALSE_FAILOVER_RAMP_SECONDS each (default:
#      RAMP_SECONDS, else 60) until the first false failover; that loss rate is printed.
# After each phase (and ramp step) the disturbance is removed, then the script waits the
# TTL and 3 s more, for n1 to be ready and for the cluster to be at rest (a recovery
# done), and counts, from what the cluster records:
#   - nodes declared dead: deletions of a node's key (/peerless/nodes/NODE), replayed from
#     etcd's history since the phase began (`etcdctl watch --prefix --rev`, asked of the
#     other members). etcd deletes that key exactly when the node's lease expires, and
#     that is what the others call dead: NodeLossRecovery's live set is those keys, a
#     fencing claim needs the key absent, `vc node list` shows a member without one as
#     dead. History, not samples: a death and re-registration between two polls is
#     counted too. Every node is counted, not only n1: a lossy etcd leader can cost the
#     healthy nodes their leases;
#   - fencings: writes under /peerless/fenced/ (recordFenced, one per fencing done);
#   - VMs moved: the VM's node and generation (raised by every placement) before and
#     after, or restarted where it was (its libvirt domain ID changed: n1 stopped it when
#     its lease ran out, its reconciler started it again); a moved VM's cluster is
#     destroyed and made again on n1 before the next phase;
#   - on n1 itself (its vcd log): renewals that failed, lease deadlines passed ("lease not
#     renewed in time": the near misses), self-fencings, registrations again; the other
#     nodes that self-fenced (their own lease ran out);
#   - etcd elections (raft term before and after).
#
# The testbed runs at its own short timers, not vcd's defaults: lease TTL 3 s (renewed
# every 1 s, the local deadline 1 s before expiry; scripts/testbed.sh writes
# leaseTTLSeconds: 3 into every vcd.yaml), etcd heartbeat/election 200/2000 ms; vcd's
# default TTL is 10 s. The TTL in effect (n1's vcd.yaml and what etcd granted) is printed.
# The target, 0 nodes declared dead, is stated for vcd's defaults; the testbed's shorter
# TTL is the harsher case.
#
# Waits (polling every 30 s, at most PEERLESS_BENCH_TESTBED_WAIT seconds) while another
# process owns the testbed, and never takes down a testbed it did not bring up. Takes its
# own down on any exit, after deleting its nftables table and resuming n1's vcd. BIN: where
# vc and vcd are (default: swift build --show-bin-path); PEERLESS_BENCH_LOGS=DIR keeps
# every node's logs there (the testbed's go with it).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d /opt/swift/usr/bin ] && export PATH=/opt/swift/usr/bin:$PATH
BIN=${BIN:-$(swift build --show-bin-path)}
MINUTES=${FALSE_FAILOVER_MINUTES:-10}
PCT=${FALSE_FAILOVER_LOSS:-5}
RAMP=${FALSE_FAILOVER_RAMP_SECONDS:-${RAMP_SECONDS:-60}}
testbed=scripts/testbed.sh
tb=${PEERLESS_TESTBED_DIR:-/var/lib/peerless-testbed}
image=images/build/tiny.img
work=/var/tmp/peerless-bench-falsefailover
wait_limit=${PEERLESS_BENCH_TESTBED_WAIT:-1800}
victim=n1
asked=n2 # the node every vc command goes to: not the victim, whose link is disturbed
export PEERLESS_TESTBED_OWNER=$$ PEERLESS_BIN=$BIN

say() { echo "falsefailover: $*" >&2; }
fail() { say "$*"; exit 1; }
ms() { echo $(($(date +%s%N) / 1000000)); }
seconds() { awk -v t="$1" 'BEGIN { printf "%.2f", t / 1000 }'; }
verdict() { if [ "$1" = 0 ]; then echo met; else echo "**not met**"; fi; } # COUNT: target 0
table() { echo; row "$@"; printf '|'; for _ in "$@"; do printf -- ' --- |'; done; echo; }
row() { printf '|'; for c in "$@"; do printf ' %s |' "$c"; done; echo; }
sleep_until() { # MS since the epoch
  local now
  now=$(ms)
  [ "$now" -ge "$1" ] || sleep "$(awk -v d=$(($1 - now)) 'BEGIN { printf "%.3f", d / 1000 }')"
}

[[ "$MINUTES" =~ ^[1-9][0-9]*$ ]] || fail "FALSE_FAILOVER_MINUTES must be a positive number, not $MINUTES"
[[ "$PCT" =~ ^[1-9][0-9]?$ ]] || fail "FALSE_FAILOVER_LOSS must be 1-99 (percent), not $PCT"
[[ "$RAMP" =~ ^[1-9][0-9]*$ ]] || fail "FALSE_FAILOVER_RAMP_SECONDS must be a positive number, not $RAMP"
if [ ! -x "$BIN/vc" ] || [ ! -x "$BIN/vcd" ]; then fail "no vc or vcd in $BIN (swift build, or set BIN)"; fi
[ -f "$image" ] || fail "no $image (images/tiny/build.sh images/build, or make images)"
command -v jq >/dev/null || fail "needs jq"
DURATION=$((MINUTES * 60))

# ---------------------------------------------------------------- the testbed, ours alone

mine=0
lossy=0  # our nftables table is in the victim's namespace
paused=0 # the victim's vcd may be stopped
undisturb() { # removes whatever this script did to the victim (best effort)
  if [ $lossy = 1 ]; then
    "$testbed" exec "$victim" nft delete table inet plbench 2>/dev/null || say "could not delete table inet plbench on $victim"
    lossy=0
  fi
  if [ $paused = 1 ]; then
    "$testbed" unpause "$victim" 2>/dev/null || say "could not resume $victim's vcd"
    paused=0
  fi
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  if [ $mine = 1 ]; then
    if [ "$(cat "$tb/owner" 2>/dev/null)" = $$ ]; then
      undisturb
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
: "${TESTBED_TOKEN_FILE:?}" "${TESTBED_STATE_stor:?}" "${TESTBED_ENDPOINT_stor:?}" "${TESTBED_ETCD_ENDPOINTS:?}"
: "${TESTBED_ENDPOINT_n1:?}"
nodes=(n1 n2 n3)
say "testbed up at $(date -u +%H:%M:%S) UTC"

# vc in the hub against one node's API; etcdctl in the hub against every member, or
# against the members other than the victim's (whose link is disturbed).
vc_on() { # NODE ARGS...
  local var="TESTBED_ENDPOINT_$1"
  shift
  "$testbed" exec hub "$BIN/vc" "$@" --endpoint "${!var}" --token-file "$TESTBED_TOKEN_FILE"
}
victim_host=$(sed -E 's|^http://([^:]+):.*|\1|' <<<"$TESTBED_ENDPOINT_n1")
etcd_others=$(tr ',' '\n' <<<"$TESTBED_ETCD_ENDPOINTS" | grep -vF "//$victim_host:" | paste -sd, -)
etcdctl_hub() { "$testbed" exec hub etcdctl --endpoints="$TESTBED_ETCD_ENDPOINTS" "$@"; }
etcdctl_others() { "$testbed" exec hub etcdctl --endpoints="$etcd_others" "$@"; }
vc_ok() { # NODE ARGS...
  vc_on "$@" >"$work/out" 2>"$work/err" || { cat "$work/err" >&2; fail "vc ${*:2} failed"; }
}
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

# etcd's members as "NODE MEMBER-ID-IN-DECIMAL IS-LEADER RAFT-TERM" lines, one per member
# that answered; the IDs are 64-bit, quoted before jq (jq 1.6 reads numbers as doubles).
etcd_status() {
  { etcdctl_hub endpoint status -w json 2>/dev/null || true; } |
    sed -E 's/"(cluster_id|member_id|leader)":([0-9]+)/"\1":"\2"/g' |
    jq -r '.[] | "\(.Endpoint | capture("10\\.99\\.0\\.1(?<i>[0-9]+):") | "n" + .i) \(.Status.header.member_id) \(.Status.header.member_id == .Status.leader) \(.Status.header.raft_term // .Status.raftTerm // 0)"'
}
etcd_all_up() { [ "$(etcd_status | awk '$3 == "true"' | wc -l)" = 1 ] && [ "$(etcd_status | wc -l)" = 3 ]; }
etcd_leader() { etcd_status | awk '$3 == "true" { print $1 }'; }
etcd_term() { etcd_status | awk '$4 > t { t = $4 } END { print t + 0 }'; }
etcd_revision() { etcdctl_others get /peerless/nodes/"$victim" -w json | jq -r '.header.revision'; }
# The keys under PREFIX that had an event of KIND (PUT or DELETE) since revision REV, one
# line per event (etcd keeps its whole history: nothing compacts it on the testbed). The
# watch replays them ("KIND", "KEY", then the value of a PUT) and then waits; it is
# stopped after a few seconds.
events_since() { # REV PREFIX KIND
  { timeout 8 "$testbed" exec hub etcdctl --endpoints="$etcd_others" watch --prefix --rev="$1" "$2" 2>/dev/null || true; } |
    awk -v k="$3" 'prev == k && index($0, "/") == 1 { print } { prev = $0 }'
}
# "N (NODE NODE ...)", or 0.
tally() { # LINES-OF-KEYS
  local keys
  keys=$(printf '%s\n' "$1" | sed -e 's|.*/||' -e '/^$/d')
  if [ -z "$keys" ]; then echo 0; else echo "$(wc -l <<<"$keys") ($(paste -sd' ' - <<<"$keys"))"; fi
}
mkdir -p "$TESTBED_STATE_stor/import"
cp --sparse=always "$image" "$TESTBED_STATE_stor/import/tiny.img"
"$testbed" exec stor "$BIN/vc" image import tiny /var/lib/peerless/import/tiny.img \
  --endpoint "$TESTBED_ENDPOINT_stor" --token-file /var/lib/peerless/api-token >/dev/null 2>"$work/err" ||
  { cat "$work/err" >&2; fail "the image import through the storage node failed"; }
rm -f "$TESTBED_STATE_stor/import/tiny.img"
await 30 "every node ready" all_ready "$asked"
await 30 "etcd to have three members and one leader" etcd_all_up

# The TTL in effect: what the victim's vcd.yaml asks for and what etcd granted it.
ttl=$(awk '/^leaseTTLSeconds:/ { print $2 }' "$tb/$victim/vcd.yaml")
granted=$(grep -m 1 '\] node registered$' "$tb/$victim/logs/vcd.log" | sed -nE 's/.* ttl=([0-9]+) .*/\1/p' || true)
[ -n "$ttl" ] || fail "no leaseTTLSeconds in $tb/$victim/vcd.yaml"
"$BIN/vc" explain timers --preset daemon -o json >"$work/timers-daemon.json"
default_ttl=$(jq -r '.settings.leaseTTLSeconds' "$work/timers-daemon.json")
say "lease TTL in effect: ${ttl} s ($victim's vcd.yaml), granted ${granted:-?} s by etcd; vcd's default is ${default_ttl} s"

# ---------------------------------------------------------------- the VM on the victim

generation=0
cluster=""
made=0
retries=0
gone() { # NAME: destroys what is left of it; true when nothing of it is listed
  vc_on "$asked" cluster destroy "$1" >/dev/null 2>&1 || true
  ! vc_on "$asked" cluster show "$1" >/dev/null 2>&1
}
# A 1-VM cluster pinned to the victim, its guest at rest. A create refused because one
# node's vcd does not answer another's (seen right after a node came back) is undone and
# tried again, at most 3 times, as in nodeloss.sh.
make_cluster() {
  local attempt
  made=$((made + 1))
  cluster=ff
  [ $made = 1 ] || cluster=ff$made
  for attempt in 1 2 3; do
    if vc_on "$asked" cluster create "$cluster" --image tiny --vms 1 --memory 128M --node "$victim" \
      >"$work/out" 2>"$work/err"; then
      vc_ok "$asked" cluster wait "$cluster" --console PEERLESS-TINY-WROTE --timeout 600
      say "$cluster: its VM runs on $victim, guest at rest"
      return 0
    fi
    grep -q 'no vcd answers' "$work/err" || { cat "$work/err" >&2; fail "vc cluster create $cluster failed"; }
    retries=$((retries + 1))
    say "$cluster: the create failed (attempt $attempt): $(tail -n 1 "$work/err" | cut -c1-200); destroying what it left, trying again in 5 s"
    await 60 "what the failed create of $cluster left to be destroyed" gone "$cluster"
    sleep 5
  done
  fail "vc cluster create $cluster failed three times"
}
# Where the cluster's VM is: vm_node, vm_domain, vm_gen (its generation) and vm_op (the
# operation holding the cluster, or -). False when vc does not answer.
vm_now() {
  vc_on "$asked" cluster show "$cluster" -o json >"$work/vm.json" 2>"$work/vm.err" || return 1
  read -r vm_node vm_domain vm_gen vm_op < <(jq -r \
    '"\(.vms[0].node) \(.vms[0].domain | gsub(" "; "-")) \(.cluster.vms[0].generation) \(.operation.kind // "-")"' "$work/vm.json")
}
at_rest() { vm_now && [ "$vm_domain" = running ] && [ "$vm_op" = - ]; } # the VM running somewhere, no operation
# Before each phase: the VM running on the victim, its guest at rest, every node ready
# and etcd whole.
ready_to_disturb() {
  await 120 "every node ready" all_ready "$asked"
  await 60 "etcd to have three members and one leader" etcd_all_up
  if [ -z "$cluster" ]; then
    make_cluster
  else
    vm_now || { cat "$work/vm.err" >&2; fail "vc cluster show $cluster failed"; }
    if [ "$vm_node" != "$victim" ] || [ "$vm_domain" != running ] || [ "$vm_op" != - ]; then
      say "$cluster: its VM is on $vm_node ($vm_domain, operation $vm_op); making a cluster on $victim again"
      await 120 "$cluster to be destroyed" gone "$cluster"
      make_cluster
    fi
  fi
  await 60 "$cluster's VM to run on $victim, no operation" at_rest
  [ "$vm_node" = "$victim" ] || fail "$cluster's VM is not on $victim but on $vm_node"
  generation=$vm_gen
  domain=$(virsh_on "$victim" list --name | sed '/^$/d' | head -n 1)
  domid=$(virsh_on "$victim" domid "$domain")
}
virsh_on() { # NODE ARGS...
  local node=$1
  shift
  "$testbed" exec "$node" virsh -q -c qemu:///system "$@"
}

# ---------------------------------------------------------------- disturbances

loss_on() { # PCT: drops PCT % of the victim's packets each way, at random, counted
  "$testbed" exec "$victim" nft -f - <<EOF
table inet plbench
delete table inet plbench
table inet plbench {
  chain input {
    type filter hook input priority -300; policy accept;
    iifname "eth0" counter
    iifname "eth0" numgen random mod 100 < $1 counter drop
  }
  chain output {
    type filter hook output priority -300; policy accept;
    oifname "eth0" counter
    oifname "eth0" numgen random mod 100 < $1 counter drop
  }
}
EOF
  lossy=1
}
# Reads the counters ("PACKETS DROPPED", both directions) and deletes the table.
loss_off() {
  "$testbed" exec "$victim" nft list table inet plbench |
    awk '/counter packets/ { for (i = 1; i < NF; i++) if ($i == "packets") n = $(i + 1)
           if (/ drop/) d += n; else s += n }
         END { print s + 0, d + 0 }' >"$work/counters"
  "$testbed" exec "$victim" nft delete table inet plbench
  lossy=0
}
# The victim's vcd stopped 1 s out of every 4 for SECONDS; each stop as measured (from
# the pause's return to the unpause's) into $work/stops.
pause_cycles() { # SECONDS
  local start end k=0 a b
  start=$(ms)
  end=$((start + $1 * 1000))
  : >"$work/stops"
  while [ $((start + k * 4000)) -lt "$end" ]; do
    sleep_until $((start + k * 4000))
    paused=1
    "$testbed" pause "$victim"
    a=$(ms)
    sleep 1
    "$testbed" unpause "$victim"
    b=$(ms)
    paused=0
    echo $((b - a)) >>"$work/stops"
    k=$((k + 1))
  done
  sleep_until "$end"
}

# ---------------------------------------------------------------- one phase

# Lines of the victim's vcd log since the mark, matching a message.
declare -A lines
log_marks() { local n; for n in stor "${nodes[@]}"; do lines[$n]=$(wc -l <"$tb/$n/logs/vcd.log"); done; }
victim_count() { # MESSAGE-REGEX
  tail -n +"$((lines[$victim] + 1))" "$tb/$victim/logs/vcd.log" | grep -cE "\] ($1)" || true
}
# The other nodes that self-fenced since the mark (a node whose own lease expired stops
# its VMs, holding some or not), as tally does.
others_selffenced() {
  local n out=""
  for n in stor "${nodes[@]}"; do
    [ "$n" != "$victim" ] || continue
    if tail -n +"$((lines[$n] + 1))" "$tb/$n/logs/vcd.log" | grep -q '\] self-fenced: every VM of this node is stopped$'; then
      out="$out$n"$'\n'
    fi
  done
  tally "$out"
}
# What the other nodes logged about fencing and recovering the victim since the mark.
others_said() {
  local n
  for n in stor "${nodes[@]}"; do
    [ "$n" != "$victim" ] || continue
    tail -n +"$((lines[$n] + 1))" "$tb/$n/logs/vcd.log" |
      grep -E ' (node lost: fencing its incarnations at the storage|fenced|fencing failed; it is tried again|recovering the VMs of a lost node|recovered|recovery failed)$' |
      sed "s/^/    $n: /" || true
  done
}

# Runs one disturbance and counts; sets the r_* results.
phase() { # KIND(loss|pause) PCT SECONDS
  local kind=$1 pct=$2 secs=$3 rev term0 t0 label seen dropped
  ready_to_disturb
  r_leader=$(etcd_leader)
  term0=$(etcd_term)
  rev=$(etcd_revision)
  log_marks
  label="$([ "$kind" = loss ] && echo "$pct % loss each way" || echo "vcd paused 1 s in 4") for ${secs} s"
  say "$(date -u +%H:%M:%S) UTC: $label on $victim (etcd's leader: ${r_leader:-none}; $cluster's VM on $victim, generation $generation)"
  t0=$(ms)
  r_rate="-"
  r_stops="-"
  if [ "$kind" = loss ]; then
    loss_on "$pct"
    sleep "$secs"
    loss_off
    read -r seen dropped <"$work/counters"
    [ "$seen" -gt 0 ] || fail "no packet passed $victim's eth0 in ${secs} s"
    r_rate="$(awk -v d="$dropped" -v s="$seen" 'BEGIN { printf "%.1f", 100 * d / s }') % of $seen"
  else
    pause_cycles "$secs"
    r_stops="$(wc -l <"$work/stops") stops of $(sort -n "$work/stops" | head -n 1)-$(sort -n "$work/stops" | tail -n 1) ms"
  fi
  r_seconds=$((($(ms) - t0) / 1000))
  # An expiry the last moments caused comes up to a TTL later; then a recovery, if any.
  sleep $((ttl + 3))
  await 120 "$victim to be ready again" is_state "$victim" ready "$asked"
  await 180 "$cluster to be at rest (its VM running, no operation)" at_rest
  # Every node's deaths, not only the victim's: a lossy etcd leader can cost the others
  # their leases too.
  r_deaths=$(events_since $((rev + 1)) /peerless/nodes/ DELETE)
  r_dead=$(sed '/^$/d' <<<"$r_deaths" | wc -l)
  r_dead_nodes=$(tally "$r_deaths")
  r_fenced=$(tally "$(events_since $((rev + 1)) /peerless/fenced/ PUT)")
  r_elections=$(($(etcd_term) - term0))
  if [ "$vm_node" != "$victim" ] || [ "$vm_gen" != "$generation" ]; then
    r_moved="1 ($victim -> $vm_node, generation $generation -> $vm_gen)"
  elif [ "$(virsh_on "$victim" domid "$domain" 2>/dev/null || echo none)" != "$domid" ]; then
    r_moved="0, restarted on $victim"
  else
    r_moved=0
  fi
  r_others_selffenced=$(others_selffenced)
  r_failed=$(victim_count 'lease renewal failed')
  r_late=$(victim_count 'lease not renewed in time')
  r_selffenced=$(victim_count 'self-fenced: every VM of this node is stopped')
  r_registered=$(victim_count 'node registered$')
  say "$label: declared dead $r_dead_nodes, fenced $r_fenced, VMs moved $r_moved; on $victim: renewals failed $r_failed," \
    "deadline passed $r_late, self-fenced $r_selffenced, registered again $r_registered; other nodes self-fenced" \
    "$r_others_selffenced; etcd elections $r_elections$([ "$kind" = loss ] && echo "; dropped $r_rate packets" || echo "; $r_stops")"
  others_said >&2
}

# ---------------------------------------------------------------- the phases

declare -a ramp_rows=()
phase loss "$PCT" "$DURATION"
p1=("$PCT % loss each way on $victim's link" "$r_seconds" "$r_rate" "$r_dead_nodes" "$r_fenced" "$r_moved"
  "$r_failed / $r_late / $r_selffenced / $r_registered" "$r_others_selffenced" "$r_elections" "${r_leader:-?}" "$(verdict "$r_dead")")
phase pause 0 "$DURATION"
p2=("$victim's vcd paused 1 s in 4 ($r_stops)" "$r_seconds" "-" "$r_dead_nodes" "$r_fenced" "$r_moved"
  "$r_failed / $r_late / $r_selffenced / $r_registered" "$r_others_selffenced" "$r_elections" "${r_leader:-?}" "$(verdict "$r_dead")")
first=""
for pct in 10 20 30 40 50 60 70 80 90 100; do
  phase loss "$pct" "$RAMP"
  ramp_rows+=("$pct|$r_seconds|$r_rate|$r_dead_nodes|$r_fenced|$r_moved|$r_failed / $r_late / $r_selffenced / $r_registered|$r_others_selffenced|$r_elections|${r_leader:-?}")
  if [ "$r_dead" -gt 0 ]; then
    first=$pct
    break
  fi
done

echo "## False failovers (testbed: 3 compute nodes, each an etcd member, and a storage node; TCG guests)"
echo
echo "Lease TTL in effect: ${ttl} s (${victim}'s vcd.yaml; etcd granted ${granted:-?} s), renewed every" \
  "$(awk -v t="$ttl" 'BEGIN { printf "%.2f", t / 3 }') s, the testbed's own timers; vcd's default TTL is" \
  "${default_ttl} s, for which the target (0 nodes declared dead) is stated and which is not measured here." \
  "The victim ${victim} holds the one VM of a 1-VM cluster (128 MiB, guest at rest); every \`vc\` command asks ${asked}."
cols=("disturbance" "seconds" "packets dropped (measured)" "nodes declared dead (lease expired in etcd)"
  "fencings at the storage" "VMs moved"
  "on ${victim}: renewals failed / deadline passed / self-fenced / registered again" "other nodes self-fenced" "etcd elections"
  "etcd's leader at the start" "target 0 dead (vcd's defaults; here TTL ${ttl} s)")
table "${cols[@]}"
row "${p1[@]}"
row "${p2[@]}"
table "ramp: loss each way (%)" "seconds" "packets dropped (measured)" "nodes declared dead" "fencings" "VMs moved" \
  "on ${victim}: renewals failed / deadline passed / self-fenced / registered again" "other nodes self-fenced" "etcd elections" "etcd's leader at the start"
for r in "${ramp_rows[@]}"; do
  IFS='|' read -r -a cells <<<"$r"
  row "${cells[@]}"
done
echo
if [ -n "$first" ]; then
  echo "First false failover of the ramp at **${first} % loss each way** (${RAMP} s per step; about" \
    "$(awk -v p="$first" 'BEGIN { printf "%.0f", 100 * (1 - (1 - p / 100) ^ 2) }') % of round trips lose a packet)."
else
  echo "No false failover in the ramp up to 100 % loss each way (${RAMP} s per step)."
fi
[ $retries = 0 ] || echo "$retries cluster create(s) failed because one node's vcd did not answer another's and were tried again."
echo "Declared dead: deletions of a node's key under /peerless/nodes/ in etcd's history (its lease expired; every node" \
  "counted, not only ${victim}), replayed with \`etcdctl watch --rev\`; fencings: writes under /peerless/fenced/;" \
  "a VM restarted on ${victim} is one whose libvirt domain ID changed. Loss is dropped at random by" \
  "nftables on ${victim}'s eth0, in and out each on its own; its traffic to its own etcd member is not dropped."
