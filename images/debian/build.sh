#!/usr/bin/env bash
# Build a real Debian 12 (bookworm) guest image for Peerless with debootstrap.
#
#   images/debian/build.sh [OUTDIR]      (run as root; OUTDIR: images/build)
#
# Makes OUTDIR/debian.img: raw, 2 GiB sparse (PEERLESS_DEBIAN_SIZE_MIB), one
# ext4 filesystem over the whole disk ("superfloppy", like the tiny image)
# booted by extlinux, so no partition offset to get right. Stock Debian
# kernel and initramfs: give the guest 1 GiB of RAM.
#
# Guest side: systemd, systemd-networkd (DHCP on every ethernet NIC) with
# systemd-resolved, openssh-server (keys only), serial console on ttyS0, and
# peerless-firstboot.service, which applies the SMBIOS OEM-string metadata
# and prints PEERLESS-DEBIAN-READY host=<hostname> on ttyS0. See
# images/README.md.
#
# Slow (debootstrap + kernel: minutes). Does nothing when debian.img is newer
# than build.sh and every file in rootfs/ (PEERLESS_DEBIAN_FORCE=1 rebuilds).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
images=$(dirname "$here")
source "$images/lib.sh"
out=${1:-$images/build}
work=${PEERLESS_IMAGE_WORK:-$images/build/work}
mirror=${PEERLESS_DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
size_mib=${PEERLESS_DEBIAN_SIZE_MIB:-2048}

# Installed after debootstrap, inside the chroot, with policy-rc.d in place
# (openssh-server's postinst would otherwise try to start sshd on the host's
# port 22). dbus: hostnamectl and networkd's DHCP hostname go through it.
packages=(
    linux-image-amd64 systemd-sysv udev dbus systemd-resolved openssh-server
    dmidecode iproute2 iputils-ping procps netbase less bind9-dnsutils
)

[ "$(id -u)" = 0 ] || { echo "build.sh: must run as root (debootstrap, mount)" >&2; exit 1; }
need_tools debootstrap:debootstrap mkfs.ext4:e2fsprogs e2fsck:e2fsprogs extlinux:extlinux flock:util-linux
mkdir -p "$out" "$work/debian-cache"
out=$(cd "$out" && pwd)
work=$(cd "$work" && pwd)
img=$out/debian.img

exit_if_built "debian image up to date: $img" "$work/.debian.lock" "${PEERLESS_DEBIAN_FORCE:-0}" \
    "$here/build.sh" "$here/rootfs" "$images/lib.sh" -- "$img"

started=$(date +%s)
# The build must leave the host's /dev/kvm alone (see the chroot's /dev below); should a
# package script reach it anyway, its group is put back and the build says so.
kvm_group=$(stat -c %g /dev/kvm 2>/dev/null || true)
stage=$(mktemp -d "$work/debian.XXXXXX")
root=$stage/root
tmp=$img.tmp.$$

# Unmount everything below $stage, deepest first: debootstrap or a failed
# chroot step can leave proc/sys/dev mounted inside the tree, and rm -rf
# must never walk into a bind-mounted /dev.
unmount_all() {
    local m
    for m in $(awk -v s="$stage/" 'index($2, s) == 1 { print $2 }' /proc/mounts | sort -r); do
        umount "$m" 2>/dev/null || umount -l "$m" || true
    done
}
cleanup() {
    local rc=$?
    unmount_all
    if [ -n "$kvm_group" ] && [ "$(stat -c %g /dev/kvm)" != "$kvm_group" ]; then
        echo "build.sh: the build changed /dev/kvm's group; restoring it" >&2
        chgrp "$kvm_group" /dev/kvm
    fi
    if awk -v s="$stage/" 'index($2, s) == 1 { found = 1 } END { exit !found }' /proc/mounts; then
        echo "build.sh: mounts remain under $stage; not removing it" >&2
    else
        rm -rf "$stage"
    fi
    rm -f "$tmp"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

echo "debootstrap $suite from $mirror (minbase) ..."
if ! debootstrap --variant=minbase --include=ca-certificates \
    --cache-dir="$work/debian-cache" "$suite" "$root" "$mirror" >"$stage/debootstrap.log" 2>&1; then
    tail -n 30 "$stage/debootstrap.log" >&2
    [ -f "$root/debootstrap/debootstrap.log" ] && tail -n 30 "$root/debootstrap/debootstrap.log" >&2
    echo "build.sh: debootstrap failed (is $mirror reachable?)" >&2
    exit 1
fi

in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 "$@"; }

cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb http://security.debian.org/debian-security $suite-security main
EOF
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
cp /etc/resolv.conf "$root/etc/resolv.conf.build"
rm -f "$root/etc/resolv.conf"
cp "$root/etc/resolv.conf.build" "$root/etc/resolv.conf"
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
# A /dev of the chroot's own, never the host's: systemd's postinst runs systemd-tmpfiles,
# whose static-nodes rules chgrp /dev/kvm to the *chroot's* kvm group id. Through a bind
# mount that rewrites the host's /dev/kvm, libvirtd then finds KVM unusable for its QEMU
# user and re-probes QEMU on every call (a domain define took minutes).
mount -t tmpfs -o mode=0755,size=1m,nosuid peerless-dev "$root/dev"
for node in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
    IFS=: read -r name major minor <<<"$node"
    mknod -m 0666 "$root/dev/$name" c "$major" "$minor"
done
mkdir -p "$root/dev/pts" "$root/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$root/dev/pts"
ln -s pts/ptmx "$root/dev/ptmx"
ln -s /proc/self/fd "$root/dev/fd"

echo "installing ${packages[*]} ..."
{
    in_root apt-get -q update &&
        in_root apt-get -q -y --no-install-recommends install "${packages[@]}"
} >"$stage/apt.log" 2>&1 || {
    tail -n 40 "$stage/apt.log" >&2
    echo "build.sh: package installation failed" >&2
    exit 1
}

# --- configuration -------------------------------------------------------
cp -a "$here/rootfs/." "$root/"
chmod 755 "$root/usr/local/sbin/peerless-firstboot"
in_root systemctl enable peerless-firstboot.service systemd-networkd.service \
    systemd-resolved.service ssh.service serial-getty@ttyS0.service >/dev/null 2>&1
# It would ask for locale/timezone/root password on the serial console on
# the first boot (empty machine-id) and wait there for ever.
ln -sf /dev/null "$root/etc/systemd/system/systemd-firstboot.service"

cat >"$root/etc/fstab" <<'EOF'
# The whole virtio disk is the root filesystem (no partition table).
/dev/vda  /  ext4  defaults,errors=remount-ro  0  1
EOF
# No static hostname: peerless-firstboot writes one from the metadata, and
# without metadata the DHCP server's name (via networkd) applies.
rm -f "$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
# Keys only; the root account has no password (debootstrap leaves it locked).
mkdir -p "$root/etc/ssh/sshd_config.d"
printf 'PermitRootLogin prohibit-password\nPasswordAuthentication no\n' \
    >"$root/etc/ssh/sshd_config.d/peerless.conf"

# Per-VM identity must not be baked into the golden image: an empty
# machine-id makes systemd create a fresh one on each VM's first boot, and
# peerless-firstboot creates the SSH host keys.
rm -f "$root"/etc/ssh/ssh_host_*
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id" "$root/var/lib/systemd/random-seed"

# resolved's stub, written by networkd's DHCP DNS servers.
rm -f "$root/etc/resolv.conf" "$root/etc/resolv.conf.build"
ln -s ../run/systemd/resolve/stub-resolv.conf "$root/etc/resolv.conf"
rm -f "$root/usr/sbin/policy-rc.d"
in_root apt-get -q clean >/dev/null
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/log/*.log "$root"/var/log/apt/*
unmount_all

kver=$(ls "$root/lib/modules" | sort -V | tail -n 1)
[ -e "$root/boot/vmlinuz-$kver" ] && [ -e "$root/boot/initrd.img-$kver" ] ||
    { echo "build.sh: kernel or initramfs missing for $kver" >&2; exit 1; }
# extlinux follows the /vmlinuz and /initrd.img links that the kernel
# package keeps pointing at the newest kernel, so guest upgrades still boot.
mkdir -p "$root/boot/extlinux"
cat >"$root/boot/extlinux/extlinux.conf" <<'EOF'
DEFAULT debian
PROMPT 0
TIMEOUT 0
LABEL debian
  LINUX /vmlinuz
  INITRD /initrd.img
  APPEND root=/dev/vda ro console=ttyS0,115200 quiet vga=current
EOF
[ -L "$root/vmlinuz" ] && [ -L "$root/initrd.img" ] || {
    ln -sf "boot/vmlinuz-$kver" "$root/vmlinuz"
    ln -sf "boot/initrd.img-$kver" "$root/initrd.img"
}

# --- filesystem image ----------------------------------------------------
# Same ext4 feature limits for extlinux 6.04 as the tiny image.
echo "making the ${size_mib} MiB filesystem ..."
rm -f "$tmp"
truncate -s "${size_mib}M" "$tmp"
mkfs.ext4 -q -F -b 4096 -L peerless-root -O ^64bit,^metadata_csum \
    -E root_owner=0:0 -d "$root" "$tmp"
mnt=$stage/mnt
mkdir -p "$mnt"
mount -o loop "$tmp" "$mnt"
log=$(extlinux --install "$mnt/boot/extlinux" 2>&1) || { echo "$log" >&2; exit 1; }
umount "$mnt"
log=$(e2fsck -fn "$tmp" 2>&1) || { echo "$log" >&2; exit 1; }
mv -f "$tmp" "$img"

echo "debian image built in $(($(date +%s) - started)) s"
echo "  kernel: $kver"
printf '  %s %s (allocated %s)\n' "$img" "$(du -h --apparent-size "$img" | cut -f1)" "$(du -h "$img" | cut -f1)"
