#!/usr/bin/env bash
# Installs the tiny image's kernel and initrd where vcd's KVM probe looks for them.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p /var/lib/peerless/probe
install -m 0644 images/build/tiny-vmlinuz /var/lib/peerless/probe/vmlinuz
install -m 0644 images/build/tiny-initrd.img /var/lib/peerless/probe/initrd.img
