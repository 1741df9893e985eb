#!/usr/bin/env bash
# Measures `haimg lab` on the example lab cluster (a benchmark, not a test): from `lab up`
# to the first master's init and to every node Ready, each node's kubeadm init or join,
# a fresh worker's join, how long the API is unreachable through the VIP when its holder
# loses power, and `lab down`. Prints Markdown rows. Run as root.
#
#   scripts/bench-lab.sh IMAGE [path/to/haimg]   (IMAGE: a store entry of `bake --target qemu`)
#   MOTO=path/to/moto_server (default: the test venv's) plays Parameter Store.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE="$1"
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
BIN=$(haimg_bin "${2:-}")
MOTO="${MOTO:-$HOME/.cache/haimg/venv/bin/moto_server}"
lab_scratch "$BIN"

t0=$(date +%s.%N)
"$BIN" lab up -c "$work/lab.yaml" --image "$IMAGE" --state "$state" --moto-server "$MOTO" 2>"$work/up.log" || { cat "$work/up.log" >&2; exit 1; }
t1=$(date +%s.%N)

# A fresh worker joins the running cluster.
s0=$(date +%s.%N)
"$BIN" lab scale -c "$work/lab.yaml" --state "$state" general 2 2>"$work/scale.log" || { cat "$work/scale.log" >&2; exit 1; }
s1=$(date +%s.%N)

# The VIP's holder loses its power; the API through the VIP is polled every 100 ms.
holder=""
for m in m1 m2 m3; do
  if ip netns exec "haimg-lab-$m" ip -o addr show dev eth0 | grep -q ' 10.0.0.100/'; then holder=$m; fi
done
readyz() { [ "$(ip netns exec haimg-lab curl -sk --max-time 1 https://10.0.0.100:6443/readyz)" = ok ]; }
k0=$(date +%s.%N)
"$BIN" lab stop --kill -c "$work/lab.yaml" --state "$state" "$holder" 2>/dev/null
until readyz; do sleep 0.1; done
k1=$(date +%s.%N)

d0=$(date +%s.%N)
"$BIN" lab down -c "$work/lab.yaml" --state "$state" 2>/dev/null
t2=$(date +%s.%N)

echo "| measure | seconds |"
echo "|---|---|"
sed -n 's/^haimg lab: \([0-9]\+\) nodes started in \([0-9.]\+\) s.*/| image converted, roots prepared, \1 nodes started | \2 |/p' "$work/up.log"
sed -n 's/^haimg lab: \(.*\): \(kubeadm [a-z]*\) done at \([0-9.]\+\) s/| \1: \2 done | \3 |/p' "$work/up.log"
sed -n 's/^haimg lab: \(.*\) Ready at \([0-9.]\+\) s/| \1 Ready | \2 |/p' "$work/up.log"
awk -v a="$t0" -v b="$t1" -v s0="$s0" -v s1="$s1" -v k0="$k0" -v k1="$k1" -v d0="$d0" -v c="$t2" -v h="$holder" 'BEGIN {
  printf "| `lab up` to every node Ready (whole process) | %.1f |\n", b - a
  printf "| `lab scale general 2`: a fresh worker booted, joined and Ready | %.1f |\n", s1 - s0
  printf "| the VIP holder (%s) killed: API unreachable through the VIP | %.1f |\n", h, k1 - k0
  printf "| `lab down` | %.1f |\n", c - d0
}'
