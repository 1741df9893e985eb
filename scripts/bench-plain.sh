#!/usr/bin/env bash
# What baking buys (a benchmark, not a test): the example lab cluster twice in one run, from
# the debian-12 image baked by haimg and from its plain base (`bake --plain`: the same base
# with nothing installed, whose nodes' user-data install containerd, Kubernetes, the images
# and haimg at boot, as the seeds do by hand). Both come from one frozen local mirror
# (scripts/local-mirror.sh), so both get the same packages; a plain node reads the mirror and
# the bake's files through read-only binds (no network transfer: a lower bound for
# installing at boot). Prints Markdown rows. Run as root.
#
#   scripts/bench-plain.sh SOURCES AGENT [path/to/haimg]
#     SOURCES: scripts/kube-artifacts.sh's directory; AGENT: the haimg the images run
#     (scripts/build-agent.sh); MOTO=path/to/moto_server (default: the test venv's).
set -euo pipefail
cd "$(dirname "$0")/.."
here=$(pwd)
SOURCES="$1"
AGENT="$2"
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
BIN=$(haimg_bin "${3:-}")
MOTO="${MOTO:-$HOME/.cache/haimg/venv/bin/moto_server}"
STORE="${STORE:-$HOME/.cache/haimg/bench-plain-store}"
lab_scratch "$BIN"

# The recipe from a frozen mirror of everything a bake installs (the base and the pins).
base=$(sed -n '/^pub const BASE_PACKAGES/,/^];/p' src/bake/local/mod.rs | sed -n 's/^ *"\([^"]*\)",$/\1/p')
pins=$(sed -n '/^  packages:/,/^  [a-zA-Z]/p' image-recipes/debian-12.yaml | sed -n 's/^    \([a-z0-9.+-]*\): *"\{0,1\}\([^"]*\)"\{0,1\}$/\1=\2/p')
# shellcheck disable=SC2086 # one package per word
mirror=$(scripts/local-mirror.sh "$SOURCES" $base $pins)
sha=$(sha256sum "$mirror/key.gpg" | cut -d' ' -f1)
python3 - "$here" "$mirror" "$sha" "$work/debian-12.yaml" <<'PY'
import sys
here, mirror, sha, out = sys.argv[1:]
t = open(f"{here}/image-recipes/debian-12.yaml").read()
t = t.replace("key: keys/", f"key: {here}/image-recipes/keys/").replace("manifest: cni/", f"manifest: {here}/image-recipes/cni/")
start, end = t.index("  aptMirror:\n"), t.index("  packages:\n")
t = t[:start] + f"  aptMirror:\n    url: file://{mirror}/mirror\n    key: {mirror}/key.gpg\n    sha256: {sha}\n" + t[end:]
open(out, "w").write(t)
PY

bake() {
  "$BIN" bake "$work/debian-12.yaml" --target qemu --store "$STORE" --sources "$SOURCES" \
    --haimg-binary "$AGENT" --output json "$@" 2>"$work/bake.log" \
    | python3 -c 'import json, os, sys; print(os.path.dirname(json.load(sys.stdin)["image"]))' \
    || { cat "$work/bake.log" >&2; exit 1; }
}
baked=$(bake)
plain=$(bake --plain)

# One lab at a time; each `up` log keeps the lab's own timings.
run_lab() {
  local image=$1 log=$2 t0 t1
  t0=$(date +%s.%N)
  "$BIN" lab up -c "$work/lab.yaml" --image "$image" --state "$state" --moto-server "$MOTO" --timeout 1200 2>"$log" \
    || { cat "$log" >&2; exit 1; }
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "whole %.1f\n", b - a }' >>"$log"
  if [ "$image" = "$plain" ]; then
    # Each node's install: from its first step to its last line, in the node's journal.
    for n in m1 m2 m3 w1; do
      journalctl --directory "$state/nodes/$n/root/var/log/journal" -o short-unix --no-pager 2>/dev/null \
        | awk -v n="$n" '/==> \[1\// && !a { a = $1 } /haimg-provision: OK/ && !b { b = $1 }
            END { if (a && b) printf "install-%s %.1f\n", n, b - a }' >>"$log"
    done
  fi
  "$BIN" lab down -c "$work/lab.yaml" --state "$state" 2>/dev/null
}
run_lab "$baked" "$work/baked.log"
run_lab "$plain" "$work/plain.log"

row() { # label, sed expression printing a number from an up log
  printf '| %s | %s | %s |\n' "$1" "$(sed -n "$2" "$work/baked.log" | head -1)" "$(sed -n "$2" "$work/plain.log" | head -1)"
}
echo "| measure (seconds from \`lab up\`) | baked image | plain base, installed at boot |"
echo "|---|---|---|"
row "nodes started (image converted, roots prepared)" 's/^haimg lab: [0-9]* nodes started in \([0-9.]*\) s.*/\1/p'
# The worker is named as EC2 names it (its address).
w1=ip-10-0-0-201.us-west-2.compute.internal
for n in m1 m2 m3 w1; do
  name=$n; [ "$n" = w1 ] && name=$w1
  row "$n: kubeadm init or join done" "s/^haimg lab: $name: kubeadm [a-z]* done at \([0-9.]*\) s/\1/p"
done
for n in m1 m2 m3 w1; do
  name=$n; [ "$n" = w1 ] && name=$w1
  row "$n Ready" "s/^haimg lab: $name Ready at \([0-9.]*\) s/\1/p"
done
for n in m1 m2 m3 w1; do
  row "$n: install at boot (first step to done)" "s/^install-$n \([0-9.]*\)/\1/p"
done
row "every node Ready (\`lab up\`, whole process)" 's/^whole \([0-9.]*\)/\1/p'
echo
echo "images: baked $baked ($(du -sh "$baked/disk.qcow2" | cut -f1)), plain $plain ($(du -sh "$plain/disk.qcow2" | cut -f1))"
