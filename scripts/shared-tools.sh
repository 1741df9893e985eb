#!/usr/bin/env bash
# Unpacks the programs in ../shared that the tests run for real into a cache outside the
# clone, checking each against the sha256 its README publishes:
#   - haproxy 2.0.33 and keepalived 2.0.19 (what Ubuntu 20.04 pins), to check rendered
#     configs against the versions an image carries, not only Debian's newer ones;
#   - upstream kubeadm 1.30.0 (kubeadm.k8s.io/v1beta3) and 1.31.2 (v1beta4), for
#     `kubeadm config validate` on every config the agent writes;
#   - pause, a small static x86-64 ELF (a stand-in agent binary in the bake tests).
# Prints the directory; idempotent (a checked file is not unpacked again).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
SHARED="${HAIMG_SHARED:-$here/../shared}"
TOOLS="${HAIMG_TOOLS:-$HOME/.cache/haimg/tools}"
install -d "$TOOLS"

# name in $TOOLS | source under $SHARED | sha256 of the unpacked file
while read -r name src sha; do
  dst="$TOOLS/$name"
  if [ -x "$dst" ] && echo "$sha  $dst" | sha256sum -c --quiet - 2>/dev/null; then
    continue
  fi
  [ -f "$SHARED/$src" ] || { echo "shared-tools: $SHARED/$src is missing" >&2; exit 1; }
  xz -dc "$SHARED/$src" >"$dst.part"
  echo "$sha  $dst.part" | sha256sum -c --quiet - || { rm -f "$dst.part"; echo "shared-tools: $src does not match its published sha256" >&2; exit 1; }
  chmod 0755 "$dst.part"
  mv "$dst.part" "$dst"
done <<'LIST'
haproxy-2.0.33 validators/haproxy-2.0.33.xz 993d11d87e3b7e44b4082519ea04796de787eaba4c7bdaa62f40d1fdd050a3f4
keepalived-2.0.19 validators/keepalived-2.0.19.xz 76efcb31b5d291e762e4b3457677796e886617386dd26724c6fa76df0464b066
kubeadm-1.30.0 kubernetes/v1.30.0/kubeadm.xz 691440763c955fae1257d3fce192dfae657b3903e5bb1e45b79e28a838cb48aa
pause-3.9 kubernetes/v1.30.0/pause.xz b99369bc2934df2103ab8a2d3946b9d3976be718f87c82307b9cde94a547a253
kubeadm-1.31.2 kubernetes/v1.31.2/kubeadm.xz 4ca21ac8e92f5a1615678ba1cda83fa64ee945411c8846dae4f81cdcc655d16b
LIST
echo "$TOOLS"
