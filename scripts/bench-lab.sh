#!/usr/bin/env bash
# Measures `haimg lab` on the example lab cluster (a benchmark, not a test): from `lab up`
# to the first master's init and to every node Ready, each node's kubeadm init or join,
# and `lab down`. Prints Markdown rows. Run as root.
#
#   scripts/bench-lab.sh IMAGE [path/to/haimg]   (IMAGE: a store entry of `bake --target qemu`)
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE="$1"
BIN="${2:-}"
if [ -z "$BIN" ]; then
  cargo build --release -q
  BIN="${CARGO_TARGET_DIR:-target}/release/haimg"
fi
work=$(mktemp -d)
cp examples/lab.yaml "$work/"
state="$work/state"
cleanup() { "$BIN" lab down -c "$work/lab.yaml" --state "$state" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

t0=$(date +%s.%N)
"$BIN" lab up -c "$work/lab.yaml" --image "$IMAGE" --state "$state" 2>"$work/up.log" || { cat "$work/up.log" >&2; exit 1; }
t1=$(date +%s.%N)
"$BIN" lab down -c "$work/lab.yaml" --state "$state" 2>/dev/null
t2=$(date +%s.%N)

echo "| measure | seconds |"
echo "|---|---|"
sed -n 's/^haimg lab: \([0-9]\+\) nodes started in \([0-9.]\+\) s.*/| image converted, roots prepared, \1 nodes started | \2 |/p' "$work/up.log"
sed -n 's/^haimg lab: \(.*\): \(kubeadm [a-z]*\) done at \([0-9.]\+\) s/| \1: \2 done | \3 |/p' "$work/up.log"
sed -n 's/^haimg lab: \(.*\) Ready at \([0-9.]\+\) s/| \1 Ready | \2 |/p' "$work/up.log"
awk -v a="$t0" -v b="$t1" -v c="$t2" 'BEGIN {
  printf "| `lab up` to every node Ready (whole process) | %.1f |\n", b - a
  printf "| `lab down` | %.1f |\n", c - b
}'
