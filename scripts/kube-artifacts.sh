#!/usr/bin/env bash
# Turns the upstream Kubernetes programs in ../shared/kubernetes into what a mirror would
# serve, for the local-image tests and benchmarks: Debian packages of kubeadm, kubelet,
# kubectl and cri-tools, and OCI image archives of every image `kubeadm config images list`
# names (plus kindnetd, the lab's pod network, and keepalived and haproxy for the VIP static
# pods, from Debian's packages). Elsewhere the same recipe fields point at
# pkgs.k8s.io and registry.k8s.io, or at a mirror of them.
#
#   scripts/kube-artifacts.sh [VERSION]     (default v1.30.0)
#
# Prints the output directory, $CACHE/kube-artifacts/VERSION-<scripts' hash>, holding debs/
# (a flat directory of .deb files) and images/ (one archive per image, and images.tsv: name,
# archive, sha256): OCI image layouts, but pause's is a `docker save` archive, so that bakes
# prove both formats. Idempotent: a complete output directory is reused as it is. Everything
# is reproducible (fixed timestamps and owners), so the digests are content addresses.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
SHARED="${HAIMG_SHARED:-$here/../shared}"
CACHE="${HAIMG_CACHE:-$HOME/.cache/haimg}"
VERSION="${1:-v1.30.0}"
# Keyed by the scripts that make it too: a changed script makes a new directory.
made_by=$(cat "$here/scripts/kube-artifacts.sh" "$here/scripts/oci-archive.py" | sha256sum | cut -c1-12)
OUT="$CACHE/kube-artifacts/$VERSION-$made_by"
[ -f "$OUT/.complete" ] && { echo "$OUT"; exit 0; }
# Concurrent callers (tests run in parallel) wait for the first to finish, then reuse it.
install -d "$CACHE/kube-artifacts"
exec 9>"$CACHE/kube-artifacts/.lock"
flock 9
[ -f "$OUT/.complete" ] && { echo "$OUT"; exit 0; }

src="$SHARED/kubernetes/$VERSION"
[ -d "$src" ] || { echo "kube-artifacts: $src is missing" >&2; exit 1; }
work=$(mktemp -d "$CACHE/kube-artifacts.XXXXXX")
trap 'rm -rf "$work"' EXIT
install -d "$work/bin" "$work/debs" "$work/images"

# The binaries, checked against the sha256 the shared README publishes.
readme="$SHARED/kubernetes/README.md"
for f in "$src"/*.xz; do
  name=$(basename "$f" .xz)
  want=$(awk -F'|' -v n="$VERSION/$name" '$2 ~ "^ *" n " *$" {gsub(/[ `]/, "", $4); print $4}' "$readme")
  [ -n "$want" ] || { echo "kube-artifacts: $VERSION/$name has no sha256 in $readme" >&2; exit 1; }
  xz -dc "$f" >"$work/bin/$name"
  echo "$want  $work/bin/$name" | sha256sum -c --quiet - || { echo "kube-artifacts: $name does not match its published sha256" >&2; exit 1; }
  chmod 0755 "$work/bin/$name"
done
v="${VERSION#v}"

# --- Debian packages: what pkgs.k8s.io serves, built from the same programs -------------
deb() { # name version description depends files...(src:dst)
  local name=$1 ver=$2 desc=$3 depends=$4 root
  shift 4
  root="$work/deb-$name"
  install -d "$root/DEBIAN"
  for m in "$@"; do
    install -D -m 0755 "${m%%:*}" "$root/${m#*:}"
  done
  cat >"$root/DEBIAN/control" <<EOF
Package: $name
Version: $ver
Architecture: amd64
Maintainer: haimg tests <haimg@localhost>
Depends: $depends
Section: admin
Priority: optional
Description: $desc
 Built by haimg's scripts/kube-artifacts.sh from the upstream $VERSION programs.
EOF
  find "$root" -exec touch -h -d @0 {} +
  SOURCE_DATE_EPOCH=0 dpkg-deb --root-owner-group -Zxz --build "$root" "$work/debs/${name}_${ver}_amd64.deb" >/dev/null
}

# kubelet's unit and kubeadm's drop-in, as the upstream packages install them: the kubelet
# restarts until kubeadm has written its config and flags.
unit="$work/kubelet.service"
cat >"$unit" <<'EOF'
[Unit]
Description=kubelet: The Kubernetes Node Agent
Documentation=https://kubernetes.io/docs/
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/usr/bin/kubelet
Restart=always
StartLimitInterval=0
RestartSec=10

[Install]
WantedBy=multi-user.target
EOF
dropin="$work/10-kubeadm.conf"
cat >"$dropin" <<'EOF'
[Service]
Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf"
Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
EnvironmentFile=-/etc/default/kubelet
ExecStart=
ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
EOF
chmod 0644 "$unit" "$dropin"
deb kubeadm "$v-1.1" "Kubernetes cluster bootstrapping tool" "cri-tools (>= 1.30.0), kubelet, kubectl" \
  "$work/bin/kubeadm:usr/bin/kubeadm"
deb kubectl "$v-1.1" "Kubernetes command line tool" "" "$work/bin/kubectl:usr/bin/kubectl"
deb kubelet "$v-1.1" "Kubernetes node agent" "iptables, iproute2, mount, util-linux, conntrack, ethtool, socat" \
  "$work/bin/kubelet:usr/bin/kubelet"
# The unit files are not executables: add them with their own modes.
root="$work/deb-kubelet"
install -D -m 0644 "$unit" "$root/usr/lib/systemd/system/kubelet.service"
install -D -m 0644 "$dropin" "$root/usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf"
find "$root" -exec touch -h -d @0 {} +
SOURCE_DATE_EPOCH=0 dpkg-deb --root-owner-group -Zxz --build "$root" "$work/debs/kubelet_$v-1.1_amd64.deb" >/dev/null
crictl_v=$("$work/bin/crictl" --version | awk '{print $3}' | sed 's/^v//')
deb cri-tools "$crictl_v-1.1" "CLI tool for CRI-compatible container runtimes" "" "$work/bin/crictl:usr/bin/crictl"

# --- Image archives: what registry.k8s.io serves ------------------------------------------
oci() { python3 "$here/scripts/oci-archive.py" "$@" >/dev/null; }
images="$work/images"
for c in kube-apiserver kube-controller-manager kube-scheduler; do
  oci --name "registry.k8s.io/$c:$VERSION" --out "$images/$c.tar" \
    --env PATH=/usr/local/bin:/usr/bin:/bin --add "$work/bin/$c:/usr/local/bin/$c"
done
oci --name "registry.k8s.io/pause:3.9" --out "$images/pause.tar" --format docker --entrypoint /pause \
  --add "$work/bin/pause:/pause"
# The etcd binary is 3.5.21: its image says so, and the kubeadm config names that tag
# (ClusterConfiguration.etcd.local.imageTag) instead of pretending to be 3.5.12.
etcd_v=$("$work/bin/etcd" --version | awk '/^etcd Version/ {print $3}')
oci --name "registry.k8s.io/etcd:$etcd_v-0" --out "$images/etcd.tar" \
  --env PATH=/usr/local/bin:/usr/bin:/bin --add "$work/bin/etcd:/usr/local/bin/etcd"
oci --name "registry.k8s.io/coredns/coredns:v1.11.1" --out "$images/coredns.tar" --entrypoint /coredns \
  --add "$work/bin/coredns:/coredns"

# kube-proxy and kindnetd need iptables and its libraries, and the C library: from
# Debian's packages, unpacked into one root as dpkg would lay them out.
debian="$work/debian"
install -d "$debian/pkgs" "$debian/root"
(cd "$debian/pkgs" && apt-get download -q -o APT::Sandbox::User=root \
  iptables libip4tc2 libip6tc2 libxtables12 libnftnl11 libmnl0 libnetfilter-conntrack3 libnfnetlink0 libc6 >/dev/null)
for p in "$debian/pkgs"/*.deb; do dpkg-deb -x "$p" "$debian/root"; done
# The iptables-nft alternative, as Debian's postinst would set it.
for t in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
  ln -sf "xtables-nft-multi" "$debian/root/usr/sbin/$t"
done
[ -e "$debian/root/lib64/ld-linux-x86-64.so.2" ] || { echo "kube-artifacts: libc6 has no /lib64/ld-linux-x86-64.so.2" >&2; exit 1; }
adds=()
for d in "$debian/root"/*; do
  adds+=(--add "$d:/$(basename "$d")")
done
oci --name "registry.k8s.io/kube-proxy:$VERSION" --out "$images/kube-proxy.tar" \
  --env PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "${adds[@]}" \
  --add "$work/bin/kube-proxy:/usr/local/bin/kube-proxy"
if [ -x "$work/bin/kindnetd" ]; then
  oci --name "docker.io/kindest/kindnetd:v20240513-cd2ac642" --out "$images/kindnetd.tar" \
    --entrypoint /usr/local/bin/kindnetd --env PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "${adds[@]}" \
    --add "$work/bin/kindnetd:/usr/local/bin/kindnetd"
fi

# keepalived and haproxy for the VIP static pods, from Debian's packages: one root with both
# programs and what keepalived's check script calls (sh, curl, ip, grep). apt resolves the
# closure against an empty dpkg status (nothing counts as installed); maintainer scripts do
# not run, so what they would make is made here.
vip="$work/vip"
install -d "$vip/pkgs" "$vip/root"
vip_pkgs=(keepalived haproxy curl iproute2 grep dash)
closure=$(apt-get install --print-uris -qq --no-install-recommends -o Dir::State::status=/dev/null \
  -o Debug::NoLocking=1 "${vip_pkgs[@]}" | awk '{split($2, f, "_"); print f[1] "=" f[2]}' | sed 's/%3a/:/g')
# shellcheck disable=SC2086 # one package=version per word
(cd "$vip/pkgs" && apt-get download -q -o APT::Sandbox::User=root $closure >/dev/null)
for p in "$vip/pkgs"/*.deb; do dpkg-deb -x "$p" "$vip/root"; done
ln -sf dash "$vip/root/bin/sh"
install -d -m 0755 "$vip/root/run" "$vip/root/usr/local/etc/keepalived" "$vip/root/usr/local/etc/haproxy"
install -d -m 1777 "$vip/root/tmp"
# keepalived's script_user is root: getpwnam needs the entry.
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$vip/root/etc/passwd"
printf 'root:x:0:\n' >"$vip/root/etc/group"
# The tag says which Debian build it is: 1:2.2.7-1+b2 -> 2.2.7-1-b2.
debtag() { dpkg-deb -f "$(ls "$vip/pkgs/$1"_*.deb)" Version | sed -e 's/^[0-9]*://' -e 's/[^A-Za-z0-9._-]/-/g'; }
vip_adds=()
for d in "$vip/root"/*; do
  vip_adds+=(--add "$d:/$(basename "$d")")
done
oci --name "localhost/haimg/keepalived:$(debtag keepalived)" --out "$images/keepalived.tar" \
  --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "${vip_adds[@]}" \
  --entrypoint /usr/sbin/keepalived --cmd=--dont-fork --cmd=--log-console \
  --cmd=--use-file=/usr/local/etc/keepalived/keepalived.conf
oci --name "localhost/haimg/haproxy:$(debtag haproxy)" --out "$images/haproxy.tar" \
  --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "${vip_adds[@]}" \
  --entrypoint /usr/sbin/haproxy --cmd=-W --cmd=-db --cmd=-f --cmd=/usr/local/etc/haproxy/haproxy.cfg

# The index a recipe's `images` list is written from: name, archive, sha256.
(
  cd "$images"
  for a in *.tar; do
    if tar -tf "$a" manifest.json >/dev/null 2>&1; then
      name=$(tar -xOf "$a" manifest.json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["RepoTags"][0])')
    else
      name=$(tar -xOf "$a" index.json | python3 -c 'import json,sys; print(json.load(sys.stdin)["manifests"][0]["annotations"]["io.containerd.image.name"])')
    fi
    printf '%s\t%s\t%s\n' "$name" "$a" "$(sha256sum "$a" | cut -d' ' -f1)"
  done
) | sort >"$images/images.tsv"

# Publish whole or not at all.
install -d "$OUT.new"
mv "$work/debs" "$work/images" "$OUT.new/"
touch "$OUT.new/.complete"
rm -rf "$OUT"
mv "$OUT.new" "$OUT"
echo "$OUT"
