#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian machine:
#   - the real validators haimg's outputs are checked with (cloud-init, shellcheck,
#     keepalived, haproxy, nginx, the AWS CLI's botocore),
#   - a real etcd for the member clean-up tests,
#   - the moto AWS emulator, in a virtualenv so the system Python stays untouched.
# Idempotent: a second run on a prepared machine does nothing but check.
set -euo pipefail

VENV="${HAIMG_VENV:-$HOME/.cache/haimg/venv}"
APT_PACKAGES=(procps curl xz-utils systemd systemd-container containerd cloud-init shellcheck keepalived haproxy nginx-light libnginx-mod-stream etcd-server etcd-client iproute2 openssl python3-venv
  # what the older haproxy and keepalived in ../shared/validators link against
  libssl3 libpcre2-8-0 zlib1g libcrypt1 libnl-3-200 libnl-genl-3-200 libsnmp40 libglib2.0-0
  # (systemd-container: systemd-nspawn, which boots the lab's nodes)
  # local images: a Debian root from the mirror, a bootable disk without mounts, and qemu
  # with UEFI firmware to boot it (dpkg-dev-free: packages are built with dpkg-deb)
  mmdebstrap e2fsprogs dosfstools mtools fdisk systemd-boot-efi ovmf
  # a frozen local apt mirror for the file:// mirror test (scripts/local-mirror.sh)
  apt-utils gnupg
  # groff reads the generated man pages (tests/cli.rs)
  groff-base)
# Debian 12's qemu-system-x86 (7.2) breaks with the machine's qemu-utils 10.0 from
# bookworm-backports: the three are installed together at 7.2.
QEMU_PACKAGES=(qemu-system-x86 qemu-utils qemu-system-common)
# moto[server] is the AWS emulator; awscli brings botocore's ParamValidator, the
# AWS CLI's own parameter validation that rendered JSON is checked with.
PIP_PACKAGES=("moto[server]==5.1.*" "awscli==1.*")

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "install-test-deps: apt-get install ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  # Services are not started inside the test machine: the tests run their own.
  DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v qemu-system-x86_64 >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  v=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
  pins=()
  for p in "${QEMU_PACKAGES[@]}"; do pins+=("$p=$v"); done
  echo "install-test-deps: apt-get install ${pins[*]}" >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends --allow-downgrades "${pins[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/moto_server" ] || [ ! -x "$VENV/bin/aws" ]; then
  echo "install-test-deps: creating $VENV" >&2
  PY=/usr/bin/python3; [ -x "$PY" ] || PY=python3
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "${PIP_PACKAGES[@]}"
fi
# haproxy 2.0, keepalived 2.0 and upstream kubeadm from ../shared, checked and unpacked.
TOOLS=$("$(dirname "$0")/shared-tools.sh")
echo "install-test-deps: ok (venv $VENV, tools $TOOLS)" >&2
