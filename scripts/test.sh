#!/usr/bin/env bash
# Runs every test on a fresh Debian machine: installs the real validators, etcd and the
# moto AWS emulator (scripts/install-test-deps.sh), then the Rust test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/haimg/target}"
# Tests must fail fast against the local emulator instead of retrying for minutes.
export AWS_MAX_ATTEMPTS=1
cargo test --locked "$@"
