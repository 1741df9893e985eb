#!/bin/bash
# haimg 0.1.0 provisioning script: recipe test-k8s, Kubernetes 1.30.4, Ubuntu focal
#
# Provisions the `haimg bake` builder through SSM Run Command (no SSH), as root. Every
# version is pinned; every step is checked by `verify` before the image is taken; the
# instance is cleaned so each node boots as new. Progress lines start with `==> [i/N]`.
#
# Run-time inputs (exported by haimg in the Run Command, not part of the recipe hash):
#   HAIMG_BINARY_URL      presigned URL of the staged haimg binary (its sha256 is pinned below)
#   HAIMG_RECIPE_SHA256   the recipe hash, recorded in the image manifest
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
umask 022

: "${HAIMG_BINARY_URL:?HAIMG_BINARY_URL is not set}"
: "${HAIMG_RECIPE_SHA256:?HAIMG_RECIPE_SHA256 is not set}"

readonly RECIPE='test-k8s'
readonly HAIMG_VERSION='0.1.0'
readonly HAIMG_SHA256='<haimg-sha256>'
readonly UBUNTU_CODENAME='focal'
readonly ARCH='amd64'
readonly KUBERNETES_VERSION='1.30.4'
readonly KUBERNETES_MINOR='v1.30'
readonly KUBERNETES_KEY_FINGERPRINT='DE15B14486CD377B9E876E1A234654DA9A296436'
readonly CNI_URL='https://raw.githubusercontent.com/projectcalico/calico/v3.28.1/manifests/calico.yaml'
readonly CNI_SHA256='9a0e3e4e4b1c5f0a3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f70819a2b'
readonly APT_SNAPSHOT='20241101T000000Z'
readonly CNI_MANIFEST=/usr/share/haimg/cni/manifest.yaml
readonly IMAGE_MANIFEST=/etc/haimg/image-manifest.json
readonly STEPS='13'
# name=version, exactly as apt installs them; all held afterwards.
readonly PINS=(
    'kubeadm=1.30.4-1.1'
    'kubelet=1.30.4-1.1'
    'kubectl=1.30.4-1.1'
    'containerd=1.7.12-0ubuntu2~20.04.1'
    'haproxy=2.0.33-0ubuntu0.1'
    'keepalived=1:2.0.19-2ubuntu0.2'
)
readonly EXTRA_IMAGES=(
    'docker.io/library/haproxy:2.8.14'
)
readonly UNITS=(
    'haimg-watch.service'
    'haimg-refresh.service'
    'haimg-refresh.timer'
    'haimg-reconcile.service'
    'haimg-reconcile.timer'
)

step_no=0
step() {
    step_no=$((step_no + 1))
    echo "==> [${step_no}/${STEPS}] $*"
}
die() {
    echo "haimg-provision: FAILED: $*" >&2
    exit 1
}
retry() {
    local n
    for n in 1 2 3 4 5; do
        if "$@"; then
            return 0
        fi
        echo "attempt ${n} of: $* failed; retrying" >&2
        sleep $((n * 5))
    done
    return 1
}

step "apt sources"
# The base image must be the release the recipe pins (its packages are for it).
# shellcheck source=/dev/null
. /etc/os-release
[ "${VERSION_CODENAME:-}" = "${UBUNTU_CODENAME}" ] || die "the base image is ${PRETTY_NAME:-unknown}, not Ubuntu ${UBUNTU_CODENAME}"
[ "$(dpkg --print-architecture)" = "${ARCH}" ] || die "the base image is $(dpkg --print-architecture), not ${ARCH}"
# cloud-init may still be configuring apt on first boot.
cloud-init status --wait >/dev/null || true
if [ -n "${APT_SNAPSHOT}" ]; then
    # The whole archive as it was at APT_SNAPSHOT: superseded pins stay installable.
    sed -i -E "s#https?://[^ ]*(archive|security|ports)\.ubuntu\.com/ubuntu(-ports)?/?#https://snapshot.ubuntu.com/ubuntu/${APT_SNAPSHOT}/#" /etc/apt/sources.list
    grep -q "snapshot.ubuntu.com/ubuntu/${APT_SNAPSHOT}" /etc/apt/sources.list || die "could not point apt at the snapshot ${APT_SNAPSHOT}"
fi
retry apt-get update -q
retry apt-get install -y -q --no-install-recommends ca-certificates curl gnupg python3

step "kubernetes apt repository ${KUBERNETES_MINOR}"
install -d -m 0755 /etc/apt/keyrings
key=$(mktemp)
retry curl -fsSL --proto '=https' "https://pkgs.k8s.io/core:/stable:/${KUBERNETES_MINOR}/deb/Release.key" -o "${key}"
fingerprints=$(gpg --batch --show-keys --with-colons "${key}" | awk -F: '$1 == "fpr" { print $10 }')
echo "${fingerprints}" | grep -qx "${KUBERNETES_KEY_FINGERPRINT}" \
    || die "the Kubernetes repository key has fingerprint(s) ${fingerprints}, not ${KUBERNETES_KEY_FINGERPRINT}"
gpg --batch --yes --dearmor -o /etc/apt/keyrings/kubernetes-apt-keyring.gpg "${key}"
rm -f "${key}"
echo "deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.gpg] https://pkgs.k8s.io/core:/stable:/${KUBERNETES_MINOR}/deb/ /" \
    >/etc/apt/sources.list.d/kubernetes.list
retry apt-get update -q

step "pinned packages"
retry apt-get install -y -q --no-install-recommends --allow-downgrades "${PINS[@]}"
names=()
for pin in "${PINS[@]}"; do
    names+=("${pin%%=*}")
done
apt-mark hold "${names[@]}"

step "kernel modules and sysctls"
printf '%s\n' overlay br_netfilter >/etc/modules-load.d/haimg-k8s.conf
modprobe overlay
modprobe br_netfilter
cat >/etc/sysctl.d/90-haimg-k8s.conf <<'SYSCTL'
net.bridge.bridge-nf-call-iptables = 1
net.bridge.bridge-nf-call-ip6tables = 1
net.ipv4.ip_forward = 1
SYSCTL
sysctl --system >/dev/null

step "swap off"
swapoff -a
sed -i -E '/^[^#].*[[:space:]]swap[[:space:]]/ s/^/# disabled by haimg: /' /etc/fstab

step "cgroup v2 on the kernel command line"
# Ubuntu 20.04 boots cgroup v1; kubelet ${KUBERNETES_VERSION} wants the unified hierarchy.
cat >/etc/default/grub.d/90-haimg-cgroup-v2.cfg <<'GRUB'
GRUB_CMDLINE_LINUX="${GRUB_CMDLINE_LINUX} systemd.unified_cgroup_hierarchy=1"
GRUB
update-grub

step "containerd"
install -d -m 0755 /etc/containerd
pause=$(kubeadm config images list --kubernetes-version "v${KUBERNETES_VERSION}" | grep '/pause:') \
    || die "kubeadm ${KUBERNETES_VERSION} lists no pause image"
containerd config default >/etc/containerd/config.toml
sed -i -E 's/^([[:space:]]*SystemdCgroup[[:space:]]*=[[:space:]]*)false/\1true/' /etc/containerd/config.toml
sed -i -E "s#^([[:space:]]*sandbox_image[[:space:]]*=[[:space:]]*).*#\1\"${pause}\"#" /etc/containerd/config.toml
sed -i -E 's/^(disabled_plugins[[:space:]]*=[[:space:]]*).*/\1[]/' /etc/containerd/config.toml
systemctl enable containerd
systemctl restart containerd
systemctl enable kubelet

step "pre-pull images"
install -d -m 0755 "$(dirname "${CNI_MANIFEST}")"
retry curl -fsSL --proto '=https' "${CNI_URL}" -o "${CNI_MANIFEST}"
cni_sha=$(sha256sum "${CNI_MANIFEST}" | cut -d' ' -f1)
if [ -n "${CNI_SHA256}" ] && [ "${cni_sha}" != "${CNI_SHA256}" ]; then
    die "CNI manifest ${CNI_URL} has sha256 ${cni_sha}, the recipe pins ${CNI_SHA256}"
fi
# Calico must never pick a VIP (seed 002 §6.8): use the node's InternalIP, which the kubelet
# takes from its node-ip (the node's own address).
python3 - "${CNI_MANIFEST}" <<'PY'
import re, sys
path = sys.argv[1]
text = open(path).read()
pattern = re.compile(r'^(?P<indent>[ ]+)- name: IP\n(?P=indent)  value: "autodetect"\n', re.M)
m = pattern.search(text)
if not m or "IP_AUTODETECTION_METHOD" in text:
    sys.exit("calico manifest: no calico-node `IP: autodetect` entry to extend, or autodetection already set")
i = m.group("indent")
text = text[:m.end()] + f'{i}- name: IP_AUTODETECTION_METHOD\n{i}  value: "kubernetes-internal-ip"\n' + text[m.end():]
open(path, "w").write(text)
PY
mapfile -t images < <(
    kubeadm config images list --kubernetes-version "v${KUBERNETES_VERSION}"
    grep -E '^[[:space:]]*image:' "${CNI_MANIFEST}" | awk '{ print $2 }' | tr -d '"'"'"
    printf '%s\n' "${EXTRA_IMAGES[@]}"
)
mapfile -t images < <(printf '%s\n' "${images[@]}" | sed '/^$/d' | sort -u)
for image in "${images[@]}"; do
    retry ctr --namespace k8s.io images pull --platform "linux/${ARCH}" "${image}" >/dev/null
    echo "pulled ${image}"
done

step "haimg and its systemd units (haimg ${HAIMG_VERSION})"
retry curl -fsSL "${HAIMG_BINARY_URL}" -o /usr/local/bin/haimg.download
echo "${HAIMG_SHA256}  /usr/local/bin/haimg.download" | sha256sum -c --quiet - || die "the staged haimg binary does not match its sha256"
install -m 0755 /usr/local/bin/haimg.download /usr/local/bin/haimg
rm -f /usr/local/bin/haimg.download
cat >/etc/systemd/system/'haimg-watch.service' <<'UNIT'
# Installed into the image by `haimg bake`; enabled by the user-data on every node.
[Unit]
Description=haimg: drain and leave the cluster when the Auto Scaling group terminates this instance
Documentation=https://haimg.dev/docs/node-agent
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart=/usr/local/bin/haimg node watch
# Polling IMDS is cheap; a crash must not leave a scale-in without its drain.
Restart=always
RestartSec=5
Environment=HAIMG_LOG=info
NoNewPrivileges=yes
PrivateTmp=yes

[Install]
WantedBy=multi-user.target
UNIT
cat >/etc/systemd/system/'haimg-refresh.service' <<'UNIT'
[Unit]
Description=haimg: rotate the cluster's join material in SSM before it expires
Documentation=https://haimg.dev/docs/node-agent
# Only an initialized control-plane node can create tokens and upload certificates.
ConditionPathExists=/etc/kubernetes/admin.conf
After=network-online.target
Wants=network-online.target

[Service]
Type=oneshot
ExecStart=/usr/local/bin/haimg node refresh
Environment=HAIMG_LOG=info
NoNewPrivileges=yes
PrivateTmp=yes
TimeoutStartSec=10min
UNIT
cat >/etc/systemd/system/'haimg-refresh.timer' <<'UNIT'
[Unit]
Description=haimg: rotate join material every 10 minutes (it is replaced at half-life, 1 h)
Documentation=https://haimg.dev/docs/node-agent

[Timer]
OnBootSec=2min
OnUnitActiveSec=10min
# Every master runs the timer; the rotation lock makes one of them rotate. The jitter
# keeps them from racing at the same second.
RandomizedDelaySec=60
Persistent=true

[Install]
WantedBy=timers.target
UNIT
cat >/etc/systemd/system/'haimg-reconcile.service' <<'UNIT'
[Unit]
Description=haimg: remove etcd members and Node objects of instances that are gone
Documentation=https://haimg.dev/docs/node-agent
ConditionPathExists=/etc/kubernetes/admin.conf
After=network-online.target
Wants=network-online.target

[Service]
Type=oneshot
ExecStart=/usr/local/bin/haimg node reconcile
Environment=HAIMG_LOG=info
NoNewPrivileges=yes
PrivateTmp=yes
TimeoutStartSec=5min
UNIT
cat >/etc/systemd/system/'haimg-reconcile.timer' <<'UNIT'
[Unit]
Description=haimg: membership reconciliation every minute (a replacement master waits for it)
Documentation=https://haimg.dev/docs/node-agent

[Timer]
OnBootSec=1min
OnUnitActiveSec=1min
RandomizedDelaySec=10

[Install]
WantedBy=timers.target
UNIT
systemctl daemon-reload

step "hardening: no SSH"
systemctl disable --now ssh.service ssh.socket 2>/dev/null || true
apt-get purge -y -q openssh-server
systemctl mask ssh.service ssh.socket sshd.service
rm -f /root/.ssh/authorized_keys /home/*/.ssh/authorized_keys
cat >/etc/cloud/cloud.cfg.d/90-haimg-no-ssh.cfg <<'CLOUD'
# haimg: no SSH on any node; never install keys from instance metadata.
ssh_pwauth: false
disable_root: true
ssh_deletekeys: true
ssh_genkeytypes: []
allow_public_ssh_keys: false
CLOUD

step "image manifest"
install -d -m 0755 "$(dirname "${IMAGE_MANIFEST}")"
python3 - "${IMAGE_MANIFEST}" "${RECIPE}" "${HAIMG_RECIPE_SHA256}" "${HAIMG_VERSION}" "${CNI_URL}" "${cni_sha}" "${images[@]}" <<'PY'
import json, subprocess, sys
out, recipe, recipe_sha, version, cni_url, cni_sha, *images = sys.argv[1:]
packages = dict(
    line.split("\t", 1)
    for line in subprocess.run(["dpkg-query", "-W", "-f", "${Package}\t${Version}\n"],
                               check=True, capture_output=True, text=True).stdout.splitlines()
)
digests = {}
listing = subprocess.run(["ctr", "--namespace", "k8s.io", "images", "list"],
                         check=True, capture_output=True, text=True).stdout.splitlines()[1:]
for row in listing:
    cols = row.split()
    if len(cols) >= 3:
        digests[cols[0]] = cols[2]
missing = [i for i in images if i not in digests]
if missing:
    sys.exit(f"image manifest: not in containerd: {missing}")
held = subprocess.run(["apt-mark", "showhold"], check=True, capture_output=True, text=True).stdout.split()
manifest = {
    "recipe": recipe,
    "recipeSha256": recipe_sha,
    "haimgVersion": version,
    "heldPackages": sorted(held),
    "packages": dict(sorted(packages.items())),
    "images": [{"image": i, "digest": digests[i]} for i in images],
    "cniManifest": {"url": cni_url, "sha256": cni_sha},
}
json.dump(manifest, open(out, "w"), indent=2, sort_keys=False)
open(out, "a").write("\n")
PY

step "verify"
fail=0
check() {
    if ! "$@" >/dev/null 2>&1; then
        echo "verify: FAILED: $*" >&2
        fail=1
    fi
}
for pin in "${PINS[@]}"; do
    check test "$(dpkg-query -W -f '${Version}' "${pin%%=*}")" = "${pin#*=}"
    check grep -qx "${pin%%=*}" <(apt-mark showhold)
done
for image in "${images[@]}"; do
    check ctr --namespace k8s.io images check "name==${image}"
done
check grep -q 'SystemdCgroup = true' /etc/containerd/config.toml
check grep -qF "sandbox_image = \"${pause}\"" /etc/containerd/config.toml
check grep -q 'kubernetes-internal-ip' "${CNI_MANIFEST}"
check grep -qx overlay /etc/modules-load.d/haimg-k8s.conf
check grep -qx br_netfilter /etc/modules-load.d/haimg-k8s.conf
check test "$(sysctl -n net.ipv4.ip_forward)" = 1
check test -z "$(swapon --show --noheadings)"
check test "$(/usr/local/bin/haimg --version)" = "haimg ${HAIMG_VERSION}"
for unit in "${UNITS[@]}"; do
    check test -f "/etc/systemd/system/${unit}"
    check systemd-analyze verify "/etc/systemd/system/${unit}"
done
check test "$(systemctl is-enabled ssh.service 2>/dev/null)" = masked
check test ! -e /usr/sbin/sshd
check python3 -c 'import json, sys; json.load(open(sys.argv[1]))' "${IMAGE_MANIFEST}"
check grep -q 'systemd.unified_cgroup_hierarchy=1' /boot/grub/grub.cfg
[ "${fail}" -eq 0 ] || die "verification failed: the image would not be what the recipe says"

step "clean for imaging"
apt-get clean
rm -rf /var/lib/apt/lists/* /tmp/* /var/tmp/*
cloud-init clean --logs --seed
truncate -s 0 /etc/machine-id
rm -f /var/lib/dbus/machine-id
ln -s /etc/machine-id /var/lib/dbus/machine-id
journalctl --rotate >/dev/null 2>&1 || true
journalctl --vacuum-time=1s >/dev/null 2>&1 || true
rm -f /root/haimg-provision.sh
echo "haimg-provision: OK ${RECIPE} ${HAIMG_RECIPE_SHA256}"
