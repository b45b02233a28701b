#!/usr/bin/env bash
# Several Peerless nodes on one machine. Each node is a network namespace pl-NAME with
# its own address on one bridge, its own UTS name and a private mount namespace in which
# /run, /etc/libvirt, /var/lib/libvirt, /var/log/libvirt, /var/cache/libvirt and
# /var/lib/peerless are directories of its own. Compute nodes n1..nN run virtlogd,
# libvirtd and vcd (the first three an etcd member each); the storage node stor runs tgtd
# and vcd. The hub namespace pl-hub holds the bridge and is where clients run.
#
#   scripts/testbed.sh up N [--no-vcd] | down | status | env
#   scripts/testbed.sh kill|restart|wipe NODE   (restart starts no vcd if NODE has no vcd.yaml)
#   scripts/testbed.sh start-vcd NODE            (a restarted node's vcd, once its vcd.yaml is written)
#   scripts/testbed.sh pause|unpause NODE [--all]
#   scripts/testbed.sh partition NODE... [--in|--out] [--etcd-only] | heal [NODE...]
#   scripts/testbed.sh exec NODE|hub CMD...
#
# Everything it makes carries the pl- prefix or lives under the testbed directory, and
# only processes inside its own namespaces are ever signalled, so it cannot touch the
# host's daemons. Only one testbed per machine: the addresses and names are fixed.
set -euo pipefail

tb=${PEERLESS_TESTBED_DIR:-/var/lib/peerless-testbed}
hub=pl-hub
subnet=10.99.0
storage=stor
api_port=7480
# etcd's timers: the election timeout must outlast a heartbeat delayed by TCG guests on
# two shared cores. 200/2000 ms is twice what gave no leader change under load in the
# lease drill (multinode.md), and its minimum lease TTL, ceil(1.5 x 2 s) = 3 s, is
# exactly the leaseTTLSeconds the nodes ask for, so no lease is silently lengthened.
etcd_heartbeat=${PEERLESS_TESTBED_ETCD_HEARTBEAT_MS:-200}
etcd_election=${PEERLESS_TESTBED_ETCD_ELECTION_MS:-2000}
# What `up` waits for at most, per stage.
start_timeout=${PEERLESS_TESTBED_TIMEOUT:-60}
# Directories every node gets a private copy of (the bind mounts' targets).
bind_targets="/run /etc/libvirt /var/lib/libvirt /var/log/libvirt /var/cache/libvirt /var/lib/peerless"

say() { echo "testbed: $*"; }
die() { echo "testbed: $*" >&2; exit 1; }

usage() {
  sed -n '9,14p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# ---------------------------------------------------------------- names and addresses

address_of() { # NODE -> its address on the bridge
  case "$1" in
    "$storage") echo "$subnet.10" ;;
    n[0-9]*) echo "$subnet.$((10 + ${1#n}))" ;;
    hub) echo "$subnet.1" ;;
    *) die "no node named $1" ;;
  esac
}

netns_of() { echo "pl-$1"; }

# The nodes of this testbed, storage first, in the order they were made.
nodes() { [ -f "$tb/nodes" ] && cat "$tb/nodes" || true; }
compute_nodes() { nodes | grep -v "^$storage\$" || true; }
# etcd members: the first three compute nodes (fewer when there are fewer).
etcd_members() { compute_nodes | head -n 3; }
is_member() { etcd_members | grep -qx "$1"; }

known() { nodes | grep -qx "$1" || die "no node named $1 in this testbed (nodes: $(nodes | tr '\n' ' '))"; }

etcd_endpoints() { # comma-separated client URLs of every member
  local n out=""
  for n in $(etcd_members); do out="$out${out:+,}http://$(address_of "$n"):2379"; done
  echo "$out"
}

# ---------------------------------------------------------------- processes

# PIDs are only ever signalled when the process is still inside the node's own network
# namespace: a recorded PID that the kernel has since given to someone else is left alone.
netns_inode() { stat -L -c %i "/run/netns/$1" 2>/dev/null; }
in_netns() { # PID NETNS
  local want
  want=$(netns_inode "$2") || return 1
  [ -n "$want" ] && [ "$(stat -L -c %i "/proc/$1/ns/net" 2>/dev/null)" = "$want" ]
}

pid_of() { # NODE DAEMON -> the PID if it runs (in the node's namespace), else nothing
  local f="$tb/$1/pids/$2" pid
  [ -f "$f" ] || return 1
  pid=$(cat "$f")
  in_netns "$pid" "$(netns_of "$1")" || return 1
  echo "$pid"
}

alive() { pid_of "$1" "$2" >/dev/null; }

# Whether a daemon just spawned still runs. Until it has entered the node's network
# namespace (env, setsid and nsenter run first in the host's) it is not "alive" there, so
# a start is judged by its recorded PID alone, which is our own child.
started() { # NODE DAEMON
  local f="$tb/$1/pids/$2"
  [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null
}

# Every process in a node's network namespace: its holder, daemons, QEMUs, dnsmasqs.
netns_pids() { ip netns pids "$1" 2>/dev/null || true; }

# Starts DAEMON of NODE in the node's namespaces, detached (own session, no terminal, no
# pipes of the caller: a test harness that waits for our output must not wait for it),
# with a clean environment, and records its PID. nsenter and setsid exec without forking
# here (no PID namespace, and a background job is no process group leader), so $! is the
# daemon itself.
spawn() { # NODE DAEMON CMD...
  local node=$1 daemon=$2 d="$tb/$1" holder
  shift 2
  holder=$(pid_of "$node" holder) || die "node $node has no holder process (killed? run: $0 restart $node)"
  env -i PATH="$PATH" HOME=/root LANG=C.UTF-8 \
    setsid nsenter -t "$holder" -m -u --net="/run/netns/$(netns_of "$node")" "$@" \
    </dev/null >>"$d/logs/$daemon.log" 2>&1 &
  echo $! >"$d/pids/$daemon"
}

# Runs a command inside NODE (its network, mount and UTS namespaces).
in_node() { # NODE CMD...
  local node=$1 holder
  shift
  holder=$(pid_of "$node" holder) || die "node $node is not running (killed? run: $0 restart $node)"
  nsenter -t "$holder" -m -u --net="/run/netns/$(netns_of "$node")" "$@"
}

in_hub() { nsenter --net="/run/netns/$hub" "$@"; }

# Libvirt puts each QEMU in cgroups of the host's (shared) hierarchy and removes them only
# when it sees the QEMU end. Before a QEMU is killed behind libvirtd's back, its cgroup
# directories are written down so that `down` can remove exactly those.
note_qemu_cgroups() { # NETNS
  local pid
  [ -d "$tb" ] || return 0
  for pid in $(netns_pids "$1"); do
    case "$(cat "/proc/$pid/comm" 2>/dev/null)" in
      qemu-system-*) ;;
      *) continue ;;
    esac
    awk -F: '{print $2 ":" $3}' "/proc/$pid/cgroup" 2>/dev/null >>"$tb/qemu-cgroups" || true
  done
}

remove_noted_cgroups() {
  [ -f "$tb/qemu-cgroups" ] || return 0
  local line controller path dir
  sort -u "$tb/qemu-cgroups" | while IFS= read -r line; do
    controller=${line%%:*}
    path=${line#*:}
    # The domain's own directory is the qemu-ID-NAME.libvirt-qemu ancestor.
    path=$(echo "$path" | sed -n 's#^\(.*/qemu-[^/]*\.libvirt-qemu\).*#\1#p')
    [ -n "$path" ] || continue
    case "$controller" in
      "") dir=/sys/fs/cgroup/unified$path ;;
      name=systemd) dir=/sys/fs/cgroup/systemd$path ;;
      *) dir=/sys/fs/cgroup/${controller%%,*}$path ;;
    esac
    # rmdir only ever removes empty cgroups: one still in use stays.
    if [ -d "$dir" ]; then find "$dir" -depth -type d -exec rmdir {} \; 2>/dev/null || true; fi
  done
}

# SIGKILLs every process in NETNS until none is left (a dying libvirtd may still fork).
sweep_netns() { # NETNS
  local tries=0 pids
  note_qemu_cgroups "$1"
  while pids=$(netns_pids "$1") && [ -n "$pids" ]; do
    # shellcheck disable=SC2086 # one PID per word
    kill -KILL $pids 2>/dev/null || true
    tries=$((tries + 1))
    [ $tries -lt 50 ] || { echo "testbed: processes left in $1: $pids" >&2; return 1; }
    sleep 0.1
  done
}

# SIGTERM to the recorded daemons of NODES, then SIGKILL to what is left after SECONDS.
stop_daemons() { # SECONDS DAEMON NODE...
  local secs=$1 daemon=$2 n pid pids="" end left
  shift 2
  for n in "$@"; do
    if pid=$(pid_of "$n" "$daemon"); then
      kill -CONT "$pid" 2>/dev/null || true # a paused daemon cannot act on SIGTERM
      kill -TERM "$pid" 2>/dev/null || true
      pids="$pids $pid"
    fi
  done
  [ -n "$pids" ] || return 0
  end=$((SECONDS + secs))
  while [ $SECONDS -lt $end ]; do
    left=""
    for pid in $pids; do
      case "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" in
        "" | Z) ;;
        *) left="$left $pid" ;;
      esac
    done
    [ -n "$left" ] || return 0
    sleep 0.1
  done
  for n in "$@"; do
    if pid=$(pid_of "$n" "$daemon"); then kill -KILL "$pid" 2>/dev/null || true; fi
  done
}

# ---------------------------------------------------------------- health checks

etcd_ok() { in_hub curl -fsS -m 2 "http://$(address_of "$1"):2379/health" 2>/dev/null | grep -q '"health":"true"'; }
libvirt_ok() { in_node "$1" virsh -c qemu:///system version >/dev/null 2>&1; }
tgt_ok() { in_node "$1" tgtadm --lld iscsi --op show --mode system >/dev/null 2>&1; }
# The token goes in a header file, not on a command line that ps shows.
vcd_ok() {
  in_hub curl -fsS -m 3 -H @"$tb/api-header" "http://$(address_of "$1"):$api_port/v1/node" >/dev/null 2>&1
}

# Waits until CHECK NODE succeeds while DAEMON runs; on failure prints one line and the
# tail of the daemon's log, and returns 1.
await() { # DAEMON CHECK NODE
  local daemon=$1 check=$2 node=$3 end=$((SECONDS + start_timeout)) log="$tb/$3/logs/$1.log"
  until "$check" "$node"; do
    if ! started "$node" "$daemon"; then
      echo "testbed: $daemon on $node exited during start; the end of $log:" >&2
      tail -n 15 "$log" >&2 || true
      return 1
    fi
    if [ $SECONDS -ge $end ]; then
      echo "testbed: $daemon on $node did not answer within ${start_timeout}s; the end of $log:" >&2
      tail -n 15 "$log" >&2 || true
      return 1
    fi
    sleep 0.2
  done
}

# Runs `await` for several (daemon, check, node) triples at once; fails if any failed.
await_all() { # "DAEMON CHECK NODE"...
  local spec pids=() rc=0 p
  for spec in "$@"; do
    # shellcheck disable=SC2086 # three words
    await $spec &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  return $rc
}

# ---------------------------------------------------------------- making a node

# Files of a node: its private directories, libvirt's configuration, vcd's configuration.
make_node_files() { # NODE ROLE
  local n=$1 role=$2 d="$tb/$1" addr f
  addr=$(address_of "$n")
  mkdir -p "$d"/{run/lock,etc/qemu,etc/secrets,etc/nwfilter,lib/qemu,log,cache,peerless,etcd,logs,pids}
  chmod 700 "$d/etcd" "$d/etc/secrets"
  echo "$role" >"$d/role"
  # Only the client configuration: the host's qemu/*.xml would define its domains here.
  for f in libvirt.conf libvirt-admin.conf; do
    if [ -f "/etc/libvirt/$f" ]; then cp "/etc/libvirt/$f" "$d/etc/"; fi
  done
  # libvirt refuses a migration between two hosts with one UUID, and this machine has no
  # SMBIOS to tell nodes apart: each node gets its own.
  [ -f "$d/host-uuid" ] || cat /proc/sys/kernel/random/uuid >"$d/host-uuid"
  cat >"$d/etc/libvirtd.conf" <<EOF
# Node $n of the Peerless testbed. Besides the local socket, TCP on the node's underlay
# address only, for live migration between the nodes' libvirtds (peer-to-peer: the
# source's libvirtd calls the destination's). Who may reach it: the other nodes on the
# testbed's underlay; guests cannot (their tenant boundary admits DHCP and DNS only).
# Without authentication, as befits a private test underlay; a production underlay uses
# listen_tls with the nodes' certificates instead (see the README).
listen_tls = 0
listen_tcp = 1
listen_addr = "$addr"
auth_tcp = "none"
host_uuid = "$(cat "$d/host-uuid")"
EOF
  chown libvirt-qemu:libvirt-qemu "$d/lib/qemu"
  # A copy of the host's QEMU capabilities cache: probing both QEMU binaries again costs
  # each libvirtd seconds of CPU at start. It is a copy, so a node's libvirtd that finds
  # it stale (libvirt checks binaries, kernel and microcode) probes again on its own.
  if [ -d /var/cache/libvirt/qemu/capabilities ] && [ ! -d "$d/cache/qemu" ]; then
    mkdir -p "$d/cache/qemu"
    cp -a /var/cache/libvirt/qemu/capabilities "$d/cache/qemu/"
  fi
  install -m 600 "$tb/api-token" "$d/peerless/api-token"

  local roles="[compute]" extra_var="PEERLESS_TESTBED_EXTRA_$n" endpoints
  [ "$role" = compute ] || roles="[storage]"
  endpoints=$(etcd_endpoints | sed 's/,/, /g')
  cat >"$d/vcd.yaml" <<EOF
node: $n
roles: $roles
stateDirectory: /var/lib/peerless
api: {host: $addr, port: $api_port, socket: /run/peerless/vcd.sock, tokenFile: /var/lib/peerless/api-token}
etcd:
  endpoints: [$endpoints]
  prefix: /peerless
  # The member 'vcnode join' gives a node: the founding members' timers.
  member: {heartbeatMilliseconds: $etcd_heartbeat, electionMilliseconds: $etcd_election, arguments: ["--unsafe-no-fsync"]}
  # Off unless a test asks: the tests that kill a founding member restart it.
  replaceDeadMemberAfterSeconds: ${PEERLESS_TESTBED_REPLACE_DEAD_MEMBER_AFTER:-0}
network: {underlay: $addr}
iscsi: {portal: $subnet.10:3260}
pool: {path: /var/lib/peerless/pool, embeddedImage: /var/lib/peerless/pool.img, embeddedSizeGiB: 4}
accelerator: {mode: tcg}
leaseTTLSeconds: 3
reconcileIntervalSeconds: 5
EOF
  if [ -n "${!extra_var:-}" ]; then printf '%s\n' "${!extra_var}" >>"$d/vcd.yaml"; fi
}

# The node's network namespace and its veth to the hub's bridge (the hub end is vNAME).
make_node_netns() { # NODE
  local n=$1 ns addr
  ns=$(netns_of "$n")
  addr=$(address_of "$n")
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip -n "$hub" link add "v$n" type veth peer name eth0 netns "$ns"
  ip -n "$hub" link set "v$n" master tb0 up
  ip -n "$ns" addr add "$addr/24" dev eth0
  ip -n "$ns" link set eth0 up
}

# The holder: the process whose mount and UTS namespaces are the node's. It sets the host
# name and the bind mounts, says so with a file, and sleeps; every daemon joins it.
start_holder() { # NODE
  local n=$1 d="$tb/$1" ns
  ns=$(netns_of "$n")
  rm -f "$d/holder.ready"
  # The node's mount namespace starts as a copy of the host's. The host's mounts under the
  # directories the node gets its own of are dropped from that copy before the binds: a
  # bind would only hide them, and hidden they still count. vcd would find the host's
  # pool mounted at /var/lib/peerless/pool in its mount table, and the copied /run/netns
  # would keep every network namespace of the host (ours and other people's) alive for
  # as long as the node lives. /etc/hosts names every node, so a node's own name
  # resolves (libvirt asks for it).
  env -i PATH="$PATH" HOME=/root LANG=C.UTF-8 \
    setsid nsenter --net="/run/netns/$ns" unshare -m -u --propagation private sh -c '
      set -e
      hostname "$1"
      for target in '"$bind_targets"'; do
        awk -v t="$target" '"'"'$5 == t || index($5, t "/") == 1 { print length($5), $5 }'"'"' /proc/self/mountinfo |
          sort -rn | while read -r _ m; do umount -l "$m"; done
      done
      mount --bind "$2/run" /run
      mount --bind "$2/etc" /etc/libvirt
      mount --bind "$2/lib" /var/lib/libvirt
      mount --bind "$2/log" /var/log/libvirt
      mount --bind "$2/cache" /var/cache/libvirt
      mount --bind "$2/peerless" /var/lib/peerless
      mount --bind "$3" /etc/hosts
      touch "$2/holder.ready"
      exec sleep infinity' holder "$n" "$d" "$tb/hosts" \
    </dev/null >>"$d/logs/holder.log" 2>&1 &
  echo $! >"$d/pids/holder"
}

await_holders() { # NODE...
  # Generous: under load (two cores, TCG guests) a namespace takes seconds to set up.
  local n end=$((SECONDS + 30))
  for n in "$@"; do
    until [ -f "$tb/$n/holder.ready" ]; do
      if ! started "$n" holder || [ $SECONDS -ge $end ]; then
        echo "testbed: node $n could not set up its namespaces; the end of $tb/$n/logs/holder.log:" >&2
        tail -n 15 "$tb/$n/logs/holder.log" >&2 || true
        return 1
      fi
      sleep 0.05
    done
  done
}

start_etcd() { # NODE
  local n=$1 addr cluster="" m
  addr=$(address_of "$n")
  for m in $(etcd_members); do cluster="$cluster${cluster:+,}$m=http://$(address_of "$m"):2380"; done
  # With a data directory from an earlier start, etcd ignores the --initial-* flags and
  # rejoins as the member it was. Loopback too, for etcdctl inside the node.
  spawn "$n" etcd etcd --name "$n" --data-dir "$tb/$n/etcd" \
    --listen-client-urls "http://$addr:2379,http://127.0.0.1:2379" --advertise-client-urls "http://$addr:2379" \
    --listen-peer-urls "http://$addr:2380" --initial-advertise-peer-urls "http://$addr:2380" \
    --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token pl-testbed \
    --heartbeat-interval "$etcd_heartbeat" --election-timeout "$etcd_election" --unsafe-no-fsync
}

# Starts a node's system daemons (not vcd); prints the checks to wait for, one a line.
start_system_daemons() { # NODE
  local n=$1
  if [ "$(cat "$tb/$n/role")" = storage ]; then
    # tgtd's management socket is in the node's private /run: the host's tgtd and this one
    # never meet. It listens on the storage address only, as vcd requires.
    spawn "$n" tgtd tgtd -f --iscsi "portal=$subnet.10:3260"
    echo "tgtd tgt_ok $n"
  else
    # A private /run means a private virtlogd: libvirtd finds it by its socket there.
    spawn "$n" virtlogd virtlogd
    spawn "$n" libvirtd libvirtd --listen -f /etc/libvirt/libvirtd.conf
    echo "libvirtd libvirt_ok $n"
    if is_member "$n" && [ -d "$tb/$n/etcd" ]; then
      start_etcd "$n"
      echo "etcd etcd_ok $n"
    fi
  fi
}

vcd_binary() {
  local bin=${PEERLESS_BIN:-}
  if [ -z "$bin" ]; then
    # The toolchain lives in /opt/swift on these machines (as in the Makefile).
    bin=$(cd "$(dirname "$0")/.." && PATH=/opt/swift/usr/bin:$PATH swift build --show-bin-path) ||
      die "cannot ask swift build where the binaries are; set PEERLESS_BIN"
  fi
  [ -x "$bin/vcd" ] || die "no vcd binary at $bin/vcd (build it with swift build, or set PEERLESS_BIN)"
  echo "$bin/vcd"
}

start_vcd() { # VCD NODE
  spawn "$2" vcd "$1" --config "$tb/$2/vcd.yaml" --log-level "${PEERLESS_TESTBED_LOG_LEVEL:-debug}"
}

# ---------------------------------------------------------------- commands

cmd_up() {
  local count="" with_vcd=1 a
  for a in "$@"; do
    case "$a" in
      --no-vcd) with_vcd=0 ;;
      [0-9]*) count=$a ;;
      *) usage ;;
    esac
  done
  [[ "$count" =~ ^[0-9]+$ ]] && [ "$count" -ge 1 ] && [ "$count" -le 200 ] ||
    die "up wants a number of compute nodes, 1 to 200"
  [ ! -e "$tb" ] || die "a testbed is already at $tb; run: $0 down"
  local ns
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
    case "$ns" in pl-*) die "namespace $ns is left from an earlier testbed; run: $0 down" ;; esac
  done
  local vcd=""
  [ $with_vcd = 0 ] || vcd=$(vcd_binary)

  # From here on, a failure leaves nothing behind (unless asked to keep it to look at).
  trap 'rc=$?; if [ $rc -ne 0 ]; then
          if [ -n "${PEERLESS_TESTBED_KEEP:-}" ]; then echo "testbed: kept for inspection at $tb; remove with: $0 down" >&2
          else echo "testbed: up failed; removing what it made" >&2; cmd_down >/dev/null 2>&1 || true; fi
        fi' EXIT

  local began=$SECONDS n i
  mkdir -p "$tb"
  chmod 700 "$tb"
  # /run/netns is made (as a mount) by the first `ip netns add`; down removes it only if
  # it was ours.
  [ -e /run/netns ] || touch "$tb/made-run-netns"
  echo "$storage" >"$tb/nodes"
  for i in $(seq 1 "$count"); do echo "n$i" >>"$tb/nodes"; done
  if [ $with_vcd = 1 ]; then echo "$vcd" >"$tb/vcd-binary"; fi
  # Who uses the testbed (a test process, the demo), so that another user of this machine
  # waits for it instead of taking it down: there is room for one testbed only.
  if [ -n "${PEERLESS_TESTBED_OWNER:-}" ]; then echo "$PEERLESS_TESTBED_OWNER" >"$tb/owner"; fi

  # One token for every node: the peers' internal routes and the clients use the same.
  (umask 077 && od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$tb/api-token" && echo >>"$tb/api-token")
  (umask 077 && printf 'Authorization: Bearer %s\n' "$(tr -d '\n' <"$tb/api-token")" >"$tb/api-header")
  {
    echo "127.0.0.1 localhost"
    echo "$subnet.1 hub"
    for n in $(nodes); do echo "$(address_of "$n") $n"; done
  } >"$tb/hosts"

  ip netns add "$hub"
  ip -n "$hub" link set lo up
  ip -n "$hub" link add tb0 type bridge
  ip -n "$hub" addr add "$subnet.1/24" dev tb0
  ip -n "$hub" link set tb0 up
  for n in $(nodes); do
    make_node_files "$n" "$([ "$n" = "$storage" ] && echo storage || echo compute)"
    make_node_netns "$n"
  done
  for a in $bind_targets; do [ -d "$a" ] || mkdir -p "$a"; done
  for n in $(nodes); do start_holder "$n"; done
  # shellcheck disable=SC2046 # one node per word
  await_holders $(nodes)

  # Every node's system daemons at once, then vcd everywhere (vcd checks them at start).
  local checks=()
  for n in $(nodes); do
    while IFS= read -r a; do checks+=("$a"); done < <(start_system_daemons "$n")
  done
  await_all "${checks[@]}"
  say "system daemons of $(nodes | wc -l) nodes answer after $((SECONDS - began)) s"

  if [ $with_vcd = 1 ]; then
    checks=()
    for n in $(nodes); do
      start_vcd "$vcd" "$n"
      checks+=("vcd vcd_ok $n")
    done
    await_all "${checks[@]}"
    say "vcd answers on every node after $((SECONDS - began)) s"
  fi
  trap - EXIT
  cmd_status
}

cmd_down() {
  local began=$SECONDS n ns pid made_run_netns=0
  [ -f "$tb/made-run-netns" ] && made_run_netns=1
  if [ -d "$tb" ]; then
    local reversed
    reversed=$(nodes | tac)
    # vcd first, on every node at once: it ends its operations at a step boundary.
    # shellcheck disable=SC2086 # one node per word
    stop_daemons 5 vcd $reversed
    # Domains stopped through libvirt leave no cgroups behind. A destroy takes QEMU about
    # 2 s, so every domain of every node is destroyed at once. Only these jobs are waited
    # for: the caller's own children (an `up` that failed) may include holders, which
    # never end by themselves.
    local jobs=() dom
    for n in $(compute_nodes); do
      alive "$n" libvirtd || continue
      for dom in $(timeout 5 nsenter -t "$(pid_of "$n" holder)" -m -u --net="/run/netns/$(netns_of "$n")" \
        virsh -c qemu:///system list --name 2>/dev/null); do
        timeout 10 nsenter -t "$(pid_of "$n" holder)" -m -u --net="/run/netns/$(netns_of "$n")" \
          virsh -c qemu:///system destroy "$dom" >/dev/null 2>&1 &
        jobs+=($!)
      done
    done
    for pid in "${jobs[@]}"; do wait "$pid" || true; done
    if alive "$storage" tgtd; then
      # tgtd ignores SIGTERM; this ends it with its targets.
      timeout 5 nsenter -t "$(pid_of "$storage" holder)" -m --net="/run/netns/$(netns_of "$storage")" \
        tgtadm --lld iscsi --op delete --mode system --force >/dev/null 2>&1 || true
    fi
    # shellcheck disable=SC2086
    stop_daemons 5 libvirtd $reversed &
    jobs=($!)
    # etcd members one after another: each hands over leadership as it goes, where two
    # stopping together wait in vain for each other (10 s, seen).
    for n in $reversed; do stop_daemons 5 etcd "$n"; done
    wait "${jobs[0]}" || true
    # shellcheck disable=SC2086
    stop_daemons 3 virtlogd $reversed
  fi
  # Whatever is left in our namespaces (QEMUs, dnsmasqs, holders, a hung daemon, or the
  # processes of a testbed whose state directory is gone) is ours: SIGKILL.
  local spaces
  spaces=$(ip netns list 2>/dev/null | awk '{print $1}' | grep '^pl-' || true)
  for ns in $spaces; do sweep_netns "$ns" || true; done
  remove_noted_cgroups
  detach_loops
  # Nodes first: deleting a node's namespace deletes its veth, then the hub's bridge.
  for ns in $spaces; do if [ "$ns" != "$hub" ]; then ip netns del "$ns" 2>/dev/null || true; fi; done
  for ns in $spaces; do if [ "$ns" = "$hub" ]; then ip netns del "$ns" 2>/dev/null || true; fi; done
  if [ $made_run_netns = 1 ] && [ -d /run/netns ] && [ -z "$(ls -A /run/netns)" ]; then
    umount /run/netns 2>/dev/null || true
    rmdir /run/netns 2>/dev/null || true
  fi
  rm -rf "$tb"
  say "down after $((SECONDS - began)) s"
}

# Loop devices backed by a file of the testbed. vcd on the storage node loop-mounts its
# pool image inside the node's mount namespace, where the file's path is the node's
# /var/lib/peerless/pool.img, the same as the host's own pool: so a loop device is
# recognised by the device and inode of its backing file, never by its path alone.
detach_loops() {
  [ -d "$tb" ] || return 0
  local ours loops dev ino majmin file
  ours=$(find "$tb" -xdev -type f -size +0 -exec stat -c '%i %Hd:%Ld' {} + 2>/dev/null || true)
  loops=$(losetup --list --noheadings --raw -O NAME,BACK-INO,BACK-MAJ:MIN,BACK-FILE 2>/dev/null || true)
  [ -n "$loops" ] || return 0
  while read -r dev ino majmin file; do
    # --raw escapes blanks as \x20.
    majmin=$(printf '%b' "$majmin" | tr -d ' ')
    file=$(printf '%b' "$file")
    if grep -qx "$ino $majmin" <<<"$ours" || [[ "$file" == "$tb"/* ]]; then
      losetup -d "$dev" 2>/dev/null || true
      say "detached $dev ($file)"
    fi
  done <<<"$loops"
}

cmd_kill() { # NODE
  [ $# = 1 ] || usage
  known "$1"
  local ns
  ns=$(netns_of "$1")
  [ -e "/run/netns/$ns" ] || die "node $1 has no namespace (wiped?)"
  sweep_netns "$ns"
  say "killed every process of $1"
}

cmd_restart() { # NODE: bring a killed (or wiped) node's daemons back with its directories
  [ $# = 1 ] || usage
  known "$1"
  local n=$1 ns
  ns=$(netns_of "$n")
  if alive "$n" holder; then die "node $n is running; kill it first: $0 kill $n"; fi
  if [ -n "$(netns_pids "$ns")" ]; then die "node $n still has processes: $(netns_pids "$ns" | tr '\n' ' ')"; fi
  if [ ! -d "$tb/$n" ]; then
    # A wiped node comes back as a fresh machine: new directories, no etcd data. A wiped
    # etcd member is not started again (a removed member's name cannot rejoin empty;
    # replacing it is a membership change, not a restart).
    make_node_files "$n" "$([ "$n" = "$storage" ] && echo storage || echo compute)"
    rmdir "$tb/$n/etcd"
  fi
  [ -e "/run/netns/$ns" ] || make_node_netns "$n"
  start_holder "$n"
  await_holders "$n"
  local checks=() a
  while IFS= read -r a; do checks+=("$a"); done < <(start_system_daemons "$n")
  await_all "${checks[@]}"
  if [ -f "$tb/vcd-binary" ] && [ -f "$tb/$n/vcd.yaml" ]; then
    start_vcd "$(cat "$tb/vcd-binary")" "$n"
    await vcd vcd_ok "$n"
  elif [ -f "$tb/vcd-binary" ]; then
    say "restarted $n without vcd: $tb/$n/vcd.yaml is missing (write it, then: $0 start-vcd $n)"
    return
  fi
  say "restarted $n"
}

cmd_start_vcd() { # NODE: start the vcd of a node restarted without one
  [ $# = 1 ] || usage
  known "$1"
  local n=$1
  [ -f "$tb/vcd-binary" ] || die "this testbed runs no vcd (it was made with --no-vcd)"
  [ -f "$tb/$n/vcd.yaml" ] || die "node $n has no vcd.yaml ($tb/$n/vcd.yaml)"
  alive "$n" holder || die "node $n is not running; restart it first: $0 restart $n"
  if alive "$n" vcd; then die "node $n's vcd runs already"; fi
  start_vcd "$(cat "$tb/vcd-binary")" "$n"
  await vcd vcd_ok "$n"
  say "started vcd on $n"
}

cmd_wipe() { # NODE: remove a killed node's namespace and files
  [ $# = 1 ] || usage
  known "$1"
  local n=$1 ns
  ns=$(netns_of "$n")
  if alive "$n" holder || [ -n "$(netns_pids "$ns")" ]; then die "node $n is running; kill it first: $0 kill $n"; fi
  # Its loop devices first: their backing files are about to go.
  local saved=$tb
  tb="$saved/$n"
  detach_loops
  tb=$saved
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "${tb:?}/$n"
  say "wiped $n"
}

signal_node() { # SIGNAL NODE [--all]
  local sig=$1 n=$2 all=${3:-} pid pids
  known "$n"
  if [ "$all" = --all ]; then
    pids=$(netns_pids "$(netns_of "$n")")
    [ -n "$pids" ] || die "node $n has no processes"
    # shellcheck disable=SC2086 # one PID per word
    kill "-$sig" $pids 2>/dev/null || true
  else
    [ -z "$all" ] || usage
    pid=$(pid_of "$n" vcd) || die "vcd does not run on $n"
    kill "-$sig" "$pid"
  fi
}

cmd_partition() { # NODE... [--in|--out] [--etcd-only]
  local group=() inbound=1 outbound=1 etcd_only=0 a
  for a in "$@"; do
    case "$a" in
      --in) outbound=0 ;;
      --out) inbound=0 ;;
      --etcd-only) etcd_only=1 ;;
      -*) usage ;;
      *) known "$a"; group+=("$a") ;;
    esac
  done
  [ ${#group[@]} -gt 0 ] || usage
  # The listed nodes form one side: they still reach each other, and nothing else
  # (the hub, where clients run, included). ARP is left alone, so a heal is instant.
  local peers="" n in_rules="" out_rules="" fwd_rules=""
  for n in "${group[@]}"; do peers="$peers${peers:+, }$(address_of "$n")"; done
  if [ $etcd_only = 1 ]; then
    # Both ends of etcd's connections: clients and peers to us, and ours to others.
    [ $inbound = 0 ] || in_rules='iifname "eth0" tcp dport { 2379, 2380 } drop
    iifname "eth0" tcp sport { 2379, 2380 } drop'
    [ $outbound = 0 ] || out_rules='oifname "eth0" tcp dport { 2379, 2380 } drop
    oifname "eth0" tcp sport { 2379, 2380 } drop'
  else
    [ $inbound = 0 ] || in_rules='iifname "eth0" drop'
    [ $outbound = 0 ] || out_rules='oifname "eth0" drop'
    # Traffic the node routes (none today, but a guest's could be) is cut the same way.
    fwd_rules="$in_rules
    $out_rules"
  fi
  for n in "${group[@]}"; do
    # Made again from nothing each time ("table" then "delete" is nft's idiom for that).
    ip netns exec "$(netns_of "$n")" nft -f - <<EOF
table inet testbed_partition
delete table inet testbed_partition
table inet testbed_partition {
  set side { type ipv4_addr; elements = { $peers } }
  chain input {
    type filter hook input priority -300; policy accept;
    iifname "eth0" ip saddr @side accept
    $in_rules
  }
  chain forward {
    type filter hook forward priority -300; policy accept;
    $fwd_rules
  }
  chain output {
    type filter hook output priority -300; policy accept;
    oifname "eth0" ip daddr @side accept
    $out_rules
  }
}
EOF
  done
  local how=both
  [ $inbound = 1 ] || how=out
  [ $outbound = 1 ] || how=in
  say "partitioned ${group[*]} ($how$([ $etcd_only = 0 ] || echo ", etcd ports only"))"
}

cmd_heal() { # [NODE...]
  local targets=("$@") n
  [ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(nodes)
  for n in "${targets[@]}"; do
    [ -e "/run/netns/$(netns_of "$n")" ] || continue
    ip netns exec "$(netns_of "$n")" nft delete table inet testbed_partition 2>/dev/null || true
  done
  say "healed ${targets[*]}"
}

cmd_exec() { # NODE|hub CMD...
  [ $# -ge 2 ] || usage
  local n=$1 holder
  shift
  if [ "$n" = hub ]; then
    [ -e "/run/netns/$hub" ] || die "no testbed is up"
    exec nsenter --net="/run/netns/$hub" "$@"
  fi
  known "$n"
  holder=$(pid_of "$n" holder) || die "node $n is not running (killed? run: $0 restart $n)"
  exec nsenter -t "$holder" -m -u --net="/run/netns/$(netns_of "$n")" "$@"
}

daemon_state() { # NODE DAEMON -> up | paused | down
  local pid
  pid=$(pid_of "$1" "$2") || { echo down; return; }
  case "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" in
    T | t) echo paused ;;
    Z | "") echo down ;;
    *) echo up ;;
  esac
}

cmd_status() {
  [ -d "$tb" ] || { say "no testbed at $tb"; return 0; }
  local n line d
  for n in $(nodes); do
    if [ ! -d "$tb/$n" ]; then
      printf '%-5s %-11s wiped\n' "$n" "$(address_of "$n")"
      continue
    fi
    line=$(printf '%-5s %-11s %-8s' "$n" "$(address_of "$n")" "$(cat "$tb/$n/role")")
    for d in holder virtlogd libvirtd etcd tgtd vcd; do
      [ -f "$tb/$n/pids/$d" ] || continue
      line="$line $d=$(daemon_state "$n" "$d")"
    done
    if ip netns exec "$(netns_of "$n")" nft list table inet testbed_partition >/dev/null 2>&1; then
      line="$line partitioned"
    fi
    echo "$line"
  done
}

cmd_env() {
  [ -d "$tb" ] || die "no testbed at $tb"
  local n
  printf 'export PEERLESS_TESTBED_DIR=%q\n' "$tb"
  printf 'export TESTBED_HUB=%q\n' "$hub"
  printf 'export TESTBED_NODES=%q\n' "$(compute_nodes | tr '\n' ' ' | sed 's/ $//')"
  printf 'export TESTBED_STORAGE=%q\n' "$storage"
  printf 'export TESTBED_TOKEN_FILE=%q\n' "$tb/api-token"
  printf 'export VC_TOKEN_FILE=%q\n' "$tb/api-token"
  printf 'export TESTBED_ETCD_ENDPOINTS=%q\n' "$(etcd_endpoints)"
  for n in $(nodes); do
    printf 'export TESTBED_ENDPOINT_%s=%q\n' "$n" "http://$(address_of "$n"):$api_port"
    printf 'export TESTBED_STATE_%s=%q\n' "$n" "$tb/$n/peerless"
  done
}

[ "$(id -u)" = 0 ] || die "needs root (network and mount namespaces)"
cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  up) cmd_up "$@" ;;
  down) cmd_down ;;
  kill) cmd_kill "$@" ;;
  restart) cmd_restart "$@" ;;
  start-vcd) cmd_start_vcd "$@" ;;
  wipe) cmd_wipe "$@" ;;
  pause) [ $# -ge 1 ] || usage; signal_node STOP "$@" ;;
  unpause) [ $# -ge 1 ] || usage; signal_node CONT "$@" ;;
  partition) cmd_partition "$@" ;;
  heal) cmd_heal "$@" ;;
  exec) cmd_exec "$@" ;;
  status) cmd_status ;;
  env) cmd_env ;;
  *) usage ;;
esac
