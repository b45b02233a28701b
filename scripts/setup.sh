#!/usr/bin/env bash
# Installs every Debian package Peerless needs, and the users libvirtd wants.
# Safe to re-run. Starts no daemon: see scripts/daemons.sh for that.
set -euo pipefail

packages=(
  # build
  pkg-config libvirt-dev libiscsi-dev libsystemd-dev
  # runtime: hypervisor, iSCSI, storage, catalog, network
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
  qemu-system-x86 qemu-utils qemu-block-extra
  tgt libiscsi-bin
  btrfs-progs xfsprogs e2fsprogs util-linux fdisk
  etcd-server etcd-client
  dnsmasq-base iproute2 nftables
  # image recipes
  busybox-static extlinux syslinux-common cpio debootstrap
  # tests and demo
  jq curl bind9-dnsutils procps openssh-client
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  # Nothing may start during the install: this machine has no systemd as PID 1, and the
  # project starts exactly the daemons it needs itself.
  policy=/usr/sbin/policy-rc.d
  made_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    made_policy=1
  fi
  trap '[ "$made_policy" = 1 ] && rm -f "$policy"' EXIT
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# libvirtd refuses to start without these (libvirt-daemon-system, which makes them,
# also pulls in systemd integration that this machine cannot use).
getent group kvm >/dev/null || groupadd -r kvm
getent group libvirt >/dev/null || groupadd -r libvirt
getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
getent passwd libvirt-qemu >/dev/null ||
  useradd -r -g libvirt-qemu -G kvm -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
mkdir -p /var/log/libvirt /run/libvirt /var/lib/libvirt/qemu

# What Debian's udev rule does (KERNEL=="kvm", GROUP="kvm", MODE="0660"); without udev the
# node may carry another group. libvirtd then finds KVM "no longer available" for its QEMU
# user on every call, throws its capability cache away and re-probes QEMU for seconds.
if [ -c /dev/kvm ]; then
  chgrp kvm /dev/kvm
  chmod 0660 /dev/kvm
fi
echo "setup: packages and users ready"
