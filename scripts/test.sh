#!/usr/bin/env bash
# Runs every test on a fresh Debian machine: installs the real validators, etcd and the
# moto AWS emulator (scripts/install-test-deps.sh), then the Rust test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
# With HAIMG_UPDATE_GOLDEN set, every golden test rewrites its files and passes: a test run
# must never do that.
if [ -n "${HAIMG_UPDATE_GOLDEN+set}" ]; then
  echo "test.sh: HAIMG_UPDATE_GOLDEN is set: golden files would be rewritten, not checked; unset it (update goldens with cargo test directly)" >&2
  exit 2
fi
scripts/install-test-deps.sh
# The README's first command builds into ./target: the tests reuse that build (CI points
# CARGO_TARGET_DIR at a warm directory outside the clone instead).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
# Tests must fail fast against the local emulator instead of retrying for minutes.
export AWS_MAX_ATTEMPTS=1
# The agent images get (glibc 2.31, cargo zigbuild): the bake tests check what it needs.
HAIMG_TEST_AGENT=$(HAIMG_AGENT_PROFILE=dev scripts/build-agent.sh)
export HAIMG_TEST_AGENT
cargo test --locked "$@"
