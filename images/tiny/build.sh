#!/usr/bin/env bash
# Build the tiny Peerless test guest: a raw, bootable disk image made only
# from Debian packages (the Debian kernel and busybox-static), plus a copy of
# its kernel and initrd for direct -kernel/-initrd boots (the KVM probe).
#
#   images/tiny/build.sh [OUTDIR]        (run as root; OUTDIR: images/build)
#
# Makes OUTDIR/tiny.img, OUTDIR/tiny-vmlinuz, OUTDIR/tiny-initrd.img.
# Does nothing when all three are newer than build.sh, initrd-init and rootfs/
# (set PEERLESS_TINY_FORCE=1 to rebuild anyway).
#
# Why not the stock Debian initramfs: it is ~36 MB and needs >= 1 GiB of RAM;
# ours holds busybox and the handful of modules that find a virtio ext4 root.
#
# Layout of tiny.img: "superfloppy", one ext4 filesystem over the whole disk,
# no partition table; extlinux's boot sector sits in the ext4 boot block
# (the first 1 KiB, which ext4 leaves unused), so SeaBIOS boots it directly.
# Contents and console markers: images/README.md.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
images=$(dirname "$here")
source "$images/lib.sh"
out=${1:-$images/build}
# Shared by all builds (the downloaded .debs are reused), whatever OUTDIR is.
work=${PEERLESS_IMAGE_WORK:-$images/build/work}
size_mib=${PEERLESS_TINY_SIZE_MIB:-64}

[ "$(id -u)" = 0 ] || { echo "build.sh: must run as root (mount, mknod)" >&2; exit 1; }
# tool:Debian package; extlinux carries ldlinux.sys/.c32 inside itself.
need_tools apt-get:apt dpkg-deb:dpkg mkfs.ext4:e2fsprogs e2fsck:e2fsprogs extlinux:extlinux \
    cpio:cpio gzip:gzip flock:util-linux mountpoint:util-linux
mkdir -p "$out" "$work/debs"
out=$(cd "$out" && pwd)
work=$(cd "$work" && pwd)

img=$out/tiny.img
kernel_out=$out/tiny-vmlinuz
initrd_out=$out/tiny-initrd.img

exit_if_built "tiny image up to date: $img" "$work/.tiny.lock" "${PEERLESS_TINY_FORCE:-0}" \
    "$here/build.sh" "$here/initrd-init" "$here/rootfs" "$images/lib.sh" -- "$img" "$kernel_out" "$initrd_out"

started=$(date +%s)
stage=$(mktemp -d "$work/tiny.XXXXXX")
mnt=
cleanup() {
    local rc=$?
    if [ -n "$mnt" ] && mountpoint -q "$mnt"; then
        umount "$mnt" || umount -l "$mnt" || true
    fi
    rm -rf "$stage"
    rm -f "$img.tmp.$$" "$kernel_out.tmp.$$" "$initrd_out.tmp.$$"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

apt_q() { apt-get -q -o APT::Sandbox::User=root "$@"; }

# Print the cached .deb for a package, downloading it first if needed.
# apt-get update only when apt does not know the package: a fresh machine
# may have no lists at all.
fetch_deb() {
    local pkg=$1 deb
    deb=$(ls "$work/debs/${pkg}"_*_amd64.deb 2>/dev/null | tail -n 1 || true)
    if [ -z "$deb" ]; then
        if ! (cd "$work/debs" && apt_q download "$pkg" >&2); then
            apt_q update >&2
            (cd "$work/debs" && apt_q download "$pkg" >&2)
        fi
        deb=$(ls "$work/debs/${pkg}"_*_amd64.deb | tail -n 1)
    fi
    echo "$deb"
}

# The ABI-versioned image package (linux-image-6.1.0-NN-amd64) that the
# linux-image-amd64 metapackage currently points at.
kernel_pkg() {
    apt-cache depends linux-image-amd64 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'
}
kpkg=$(kernel_pkg)
if [ -z "$kpkg" ]; then
    apt_q update >&2
    kpkg=$(kernel_pkg)
fi
[ -n "$kpkg" ] || { echo "build.sh: cannot resolve linux-image-amd64" >&2; exit 1; }

kdeb=$(fetch_deb "$kpkg")
bdeb=$(fetch_deb busybox-static)

# Unpacking the kernel (~400 MB of modules) is the slow part: keep it.
kdir=$work/kernel/$(basename "$kdeb" .deb)
if [ ! -e "$kdir/.done" ]; then
    rm -rf "$kdir"
    mkdir -p "$kdir"
    dpkg-deb -x "$kdeb" "$kdir"
    touch "$kdir/.done"
fi
kver=$(ls "$kdir/lib/modules" | head -n 1)
vmlinuz=$kdir/boot/vmlinuz-$kver
moddir=$kdir/lib/modules/$kver
[ -f "$vmlinuz" ] && [ -d "$moddir" ] || { echo "build.sh: bad kernel package $kdeb" >&2; exit 1; }

mkdir "$stage/busybox"
dpkg-deb -x "$bdeb" "$stage/busybox"
busybox=$stage/busybox/bin/busybox
[ -x "$busybox" ] || { echo "build.sh: no bin/busybox in $bdeb" >&2; exit 1; }

# The package ships no modules.dep (depmod runs at install time). kmod's
# depmod may be missing on the build host; busybox's does the same job here.
if [ ! -s "$moddir/modules.dep" ]; then
    if command -v depmod >/dev/null; then
        depmod -b "$kdir" "$kver"
    else
        "$busybox" depmod -b "$kdir" "$kver"
    fi
fi

# resolve NAME...: append to $order (module paths relative to $moddir) every
# module needed for NAME, dependencies first. Built-in modules are skipped.
declare -A seen=()
order=()
resolve_path() {
    local rel=$1 dep
    [ -z "${seen[$rel]:-}" ] || return 0
    seen[$rel]=1
    for dep in $(awk -v m="$rel:" '$1 == m { $1 = ""; print; exit }' "$moddir/modules.dep"); do
        resolve_path "$dep"
    done
    order+=("$rel")
}
resolve() {
    local name alt rel
    for name in "$@"; do
        alt=${name//_/-}
        rel=$(awk -F: -v a="/$name.ko" -v b="/$alt.ko" '
            { p = $1; sub(/\.(xz|zst|gz)$/, "", p) }
            substr(p, length(p) - length(a) + 1) == a || substr(p, length(p) - length(b) + 1) == b { print $1; exit }
        ' "$moddir/modules.dep")
        if [ -n "$rel" ]; then
            resolve_path "$rel"
        elif grep -qE "/($name|$alt)\.ko" "$moddir/modules.builtin"; then
            :
        else
            echo "build.sh: module $name neither built in nor in $kver" >&2
            exit 1
        fi
    done
}

# install_modules DESTROOT LISTNAME: copy $order's modules (decompressed,
# busybox insmod wants plain ELF) and write their load order.
install_modules() {
    local dest=$1/lib/modules rel plain
    mkdir -p "$dest"
    : >"$dest/load.list"
    for rel in "${order[@]}"; do
        plain=${rel%.xz}
        plain=${plain%.zst}
        plain=${plain%.gz}
        mkdir -p "$dest/$(dirname "$plain")"
        case "$rel" in
        *.xz) xz -dc "$moddir/$rel" >"$dest/$plain" ;;
        *.zst) zstd -qdc "$moddir/$rel" >"$dest/$plain" ;;
        *.gz) gzip -dc "$moddir/$rel" >"$dest/$plain" ;;
        *) cp "$moddir/$rel" "$dest/$plain" ;;
        esac
        echo "$plain" >>"$dest/load.list"
    done
}

# bin/ with busybox and a relative link per applet, so the tree works both
# as / and when inspected from the host.
install_busybox() {
    local root=$1 applet
    mkdir -p "$root/bin"
    cp "$busybox" "$root/bin/busybox"
    for applet in $("$busybox" --list); do
        [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
    done
}

# --- initrd --------------------------------------------------------------
# ext4 asks for crc32c through the crypto API (a softdep modules.dep does not
# list); crc32c_generic always works, unlike crc32c-intel under TCG.
initrd_root=$stage/initrd
mkdir -p "$initrd_root"/{dev,proc,sys,newroot}
install_busybox "$initrd_root"
seen=() order=()
resolve virtio_pci virtio_blk crc32c_generic ext4
initrd_modules=("${order[@]}")
install_modules "$initrd_root"
install -m 0755 "$here/initrd-init" "$initrd_root/init"
# The kernel opens /dev/console for /init before anything can mount devtmpfs.
mknod -m 600 "$initrd_root/dev/console" c 5 1
mknod -m 666 "$initrd_root/dev/null" c 1 3
(cd "$initrd_root" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -9) \
    >"$stage/initrd.img"

# --- disk root -----------------------------------------------------------
# On the disk: virtio_net for DHCP; button + evdev so busybox acpid sees the
# ACPI power button and `virsh shutdown` works.
root=$stage/root
mkdir -p "$root"/{boot/extlinux,dev,etc,lib,mnt,proc,root,run,sys,tmp,var/lib/peerless,usr}
chmod 1777 "$root/tmp"
chmod 700 "$root/root"
install_busybox "$root"
ln -s ../bin "$root/usr/bin"
ln -s ../bin "$root/usr/sbin"
seen=() order=()
# The initrd already loaded these; listing them keeps the disk bootable
# without our initrd too (insmod of a loaded module is ignored).
resolve virtio_pci virtio_blk crc32c_generic ext4 virtio_net button evdev
disk_modules=("${order[@]}")
install_modules "$root"
cp -a "$here/rootfs/." "$root/"
chmod 0755 "$root/sbin/init" "$root/etc/udhcpc/default.script" "$root/etc/acpi/PWRF/00000080"
mknod -m 600 "$root/dev/console" c 5 1
mknod -m 666 "$root/dev/null" c 1 3
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\n' >"$root/etc/group"
printf '127.0.0.1 localhost\n' >"$root/etc/hosts"
cp "$vmlinuz" "$root/boot/vmlinuz"
cp "$stage/initrd.img" "$root/boot/initrd.img"
cat >"$root/boot/extlinux/extlinux.conf" <<'EOF'
DEFAULT peerless
PROMPT 0
TIMEOUT 0
LABEL peerless
  LINUX /boot/vmlinuz
  INITRD /boot/initrd.img
  APPEND root=/dev/vda rw console=ttyS0 quiet vga=current
EOF
# vga=current: otherwise the kernel's real-mode setup sets a video mode, and
# SeaBIOS's serial console (no VGA device) answers with a screen-clearing
# escape sequence that lands on the serial log right before our first marker.

# --- filesystem image ----------------------------------------------------
# extlinux 6.04 reads ext4, but not every feature e2fsprogs 1.47 turns on:
# 64bit and metadata_csum are off to stay within what it is known to boot.
# 4 KiB blocks: mke2fs would pick 1 KiB ("small") at this size.
tmp=$img.tmp.$$
rm -f "$tmp"
truncate -s "${size_mib}M" "$tmp"
mkfs.ext4 -q -F -b 4096 -m 0 -L peerless-tiny -O ^64bit,^metadata_csum \
    -E root_owner=0:0 -d "$root" "$tmp"

mnt=$stage/mnt
mkdir -p "$mnt"
mount -o loop "$tmp" "$mnt"
# Both chat on stderr even when all is well; show them only on failure.
quietly() {
    local log
    log=$("$@" 2>&1) || { echo "$log" >&2; echo "build.sh: failed: $*" >&2; return 1; }
}
quietly extlinux --install "$mnt/boot/extlinux"
umount "$mnt"
mnt=
quietly e2fsck -fn "$tmp"

cp "$vmlinuz" "$kernel_out.tmp.$$"
cp "$stage/initrd.img" "$initrd_out.tmp.$$"
mv -f "$kernel_out.tmp.$$" "$kernel_out"
mv -f "$initrd_out.tmp.$$" "$initrd_out"
# The image last: up_to_date() then sees all three or none as new.
mv -f "$tmp" "$img"

echo "tiny image built in $(($(date +%s) - started)) s"
echo "  kernel:  $kpkg ($kver)"
echo "  initrd modules: ${initrd_modules[*]##*/}"
echo "  disk modules:   ${disk_modules[*]##*/}"
printf '  %-40s %s\n' \
    "$img" "$(du -h --apparent-size "$img" | cut -f1) (allocated $(du -h "$img" | cut -f1))" \
    "$kernel_out" "$(du -h "$kernel_out" | cut -f1)" \
    "$initrd_out" "$(du -h "$initrd_out" | cut -f1)"
