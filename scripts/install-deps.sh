#!/usr/bin/env bash
# Installs the Debian packages of the real clients the tests drive: qemu-io
# and qemu-img (qemu-utils), nbdinfo and nbdcopy (libnbd-bin), libnbd's
# Python bindings (python3-libnbd, for requests other clients refuse to
# send), fio; and what the VM harness of the NVMe/TCP end-to-end test
# (../shared/vm) needs to build and boot its guest under QEMU; ip (iproute2)
# for the tests that build a rack in network namespaces, and nft (nftables)
# for the chaos harness's partitions and packet loss inside them.
set -euo pipefail

declare -A pkg_for=(
  [qemu-io]=qemu-utils
  [qemu-img]=qemu-utils
  [qemu-nbd]=qemu-utils
  [nbdinfo]=libnbd-bin
  [nbdcopy]=libnbd-bin
  [fio]=fio
  [nbdsh]=python3-libnbd
  [ip]=iproute2
  [nft]=nftables
)
missing=()
for cmd in "${!pkg_for[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${pkg_for[$cmd]}")
done
# The VM harness (e2e/nvme_test.go runs ../shared/vm/vm-attach-demo.sh)
# would install these itself, but only as root: install them here, where
# sudo is used. busybox-static, not busybox: the guest's initramfs gets a
# static binary.
for p in qemu-system-x86 nbdkit busybox-static cpio kmod socat python3; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
pkgs=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
echo "installing Debian packages: $pkgs"
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# shellcheck disable=SC2086
$sudo apt-get install -y -qq --no-install-recommends $pkgs
