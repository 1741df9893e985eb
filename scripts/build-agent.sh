#!/usr/bin/env bash
# Builds the haimg that `haimg bake` stages into images: Linux, glibc 2.31 (Ubuntu 20.04,
# the oldest supported base), so it starts on every supported image. A haimg built on a
# newer distribution needs newer glibc symbol versions and bake refuses it.
#
#   scripts/build-agent.sh [amd64|arm64]     prints the binary's path on stdout
#
# Uses cargo-zigbuild (crates.io) with zig from the `ziglang` package (PyPI), both installed
# under ~/.cache/haimg on first use. HAIMG_AGENT_PROFILE picks the cargo profile (release by
# default; the tests use dev, which builds faster).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-amd64}" in
  amd64) triple=x86_64-unknown-linux-gnu ;;
  arm64) triple=aarch64-unknown-linux-gnu ;;
  *) echo "build-agent: unknown architecture ${1} (amd64 or arm64)" >&2; exit 2 ;;
esac
GLIBC=2.31
PROFILE="${HAIMG_AGENT_PROFILE:-release}"
CACHE="${HAIMG_CACHE:-$HOME/.cache/haimg}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
ZIG_VENV="$CACHE/zig-venv"
TOOLS="$CACHE/cargo-tools"
if [ ! -x "$ZIG_VENV/bin/python" ] || ! "$ZIG_VENV/bin/python" -c 'import ziglang' 2>/dev/null; then
  echo "build-agent: installing zig (PyPI ziglang) into $ZIG_VENV" >&2
  python3 -m venv "$ZIG_VENV"
  "$ZIG_VENV/bin/pip" install -q --disable-pip-version-check 'ziglang==0.17.1'
fi
if [ ! -x "$TOOLS/bin/cargo-zigbuild" ]; then
  echo "build-agent: installing cargo-zigbuild into $TOOLS" >&2
  cargo install -q --locked cargo-zigbuild@0.24.1 --root "$TOOLS"
fi
# cargo-zigbuild runs zig as `python3 -m ziglang` when python3 has it.
export PATH="$ZIG_VENV/bin:$TOOLS/bin:$PATH"
if [ "$triple" = aarch64-unknown-linux-gnu ] && ! rustup target list --installed 2>/dev/null | grep -qx "$triple"; then
  echo "build-agent: the Rust standard library for $triple is not installed (rustup target add $triple)" >&2
  exit 1
fi
cargo zigbuild --locked --quiet --profile "$PROFILE" --bin haimg --target "$triple.$GLIBC" >&2
dir=$PROFILE; [ "$PROFILE" = dev ] && dir=debug
echo "$CARGO_TARGET_DIR/$triple/$dir/haimg"
