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
#   HAIMG_LOG_URL         (optional) presigned PUT URL for this script's whole log: SSM keeps
#                         only the first 24,000 characters of stdout, and only at the end
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

# ---- provision-lib.sh (verbatim) ----
# haimg provisioning library: the helpers every provisioning script shares.
#
# Plain bash, no templating: `haimg bake` puts this file verbatim at the top of the rendered
# script, and the tests source it on their own to run each helper against the real tools
# (apt-cache on a local repository, containerd's ctr on a real image store).
#
# Globals the caller may set: APT_SNAPSHOT (the archive snapshot the sources point at, shown
# when a pin is missing), APT_LOCK_TIMEOUT (seconds an apt or dpkg call waits for the lock).

: "${APT_LOCK_TIMEOUT:=600}"

die() {
    echo "haimg-provision: FAILED: $*" >&2
    exit 1
}

# Runs a command up to 5 times, 5, 10, 15, 20 s apart. A failed attempt names the program
# only: arguments can carry URLs with credentials in them.
retry() {
    local n
    for n in 1 2 3 4 5; do
        if "$@"; then
            return 0
        fi
        echo "attempt ${n} of ${1} failed; retrying" >&2
        [ "${n}" -eq 5 ] || sleep $((n * 5))
    done
    return 1
}

# apt-get that waits for the dpkg lock (apt-daily, unattended-upgrades or cloud-init may hold
# it on a fresh instance) instead of failing at once, and never asks a question.
apt_get() {
    DEBIAN_FRONTEND=noninteractive apt-get \
        -o DPkg::Lock::Timeout="${APT_LOCK_TIMEOUT}" \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        -y -q "$@"
}

# apt-mark and dpkg take the dpkg lock without waiting: wait until it is free first.
dpkg_locked() {
    local lock
    for lock in /var/lib/dpkg/lock-frontend /var/lib/dpkg/lock; do
        [ -e "${lock}" ] || continue
        # flock and dpkg's fcntl locks do not see each other: ask the kernel who holds it.
        if [ -r /proc/locks ] && grep -q ":$(stat -c '%i' "${lock}") " /proc/locks; then
            return 0
        fi
    done
    return 1
}
wait_dpkg_unlocked() {
    local waited=0
    while dpkg_locked; do
        [ "${waited}" -lt "${APT_LOCK_TIMEOUT}" ] || die "the dpkg lock is still held after ${APT_LOCK_TIMEOUT}s"
        sleep 2
        waited=$((waited + 2))
    done
}
apt_mark() {
    wait_dpkg_unlocked
    apt-mark "$@"
}

# Stops and disables what changes packages behind the bake's back: the apt timers and
# unattended-upgrades. `systemctl stop` waits for a running job to end (unattended-upgrades
# finishes the package it is on); then nothing may hold the dpkg lock.
apt_quiesce() {
    local units=(apt-daily.timer apt-daily-upgrade.timer apt-daily.service apt-daily-upgrade.service unattended-upgrades.service)
    systemctl stop "${units[@]}" 2>/dev/null || true
    systemctl disable apt-daily.timer apt-daily-upgrade.timer unattended-upgrades.service 2>/dev/null || true
    systemctl mask apt-daily.service apt-daily-upgrade.service apt-daily.timer apt-daily-upgrade.timer 2>/dev/null || true
    wait_dpkg_unlocked
}

# Every name=version pin must be installable from the configured sources before anything
# is installed: a missing one fails here, at once, naming what is there instead.
check_pins_available() {
    local pin name want have missing=0
    for pin in "$@"; do
        name=${pin%%=*}
        want=${pin#*=}
        have=$(apt-cache madison "${name}" 2>/dev/null | awk -F'|' '{ gsub(/ /, "", $2); print $2 }' | sort -u | paste -sd, -)
        if ! printf '%s\n' "${have//,/$'\n'}" | grep -qxF -- "${want}"; then
            echo "haimg-provision: ${name} ${want} is not available from the configured sources (available: ${have:-none}; apt snapshot: ${APT_SNAPSHOT:-none})" >&2
            missing=1
        fi
    done
    [ "${missing}" -eq 0 ] || die "pinned package versions are missing from the apt sources"
}

# Whether containerd's k8s.io namespace holds IMAGE, every blob of it present (`ctr images
# check` exits 0 for a missing or incomplete image: read what it prints) and unpacked.
image_complete() {
    local image=$1 rows
    rows=$(ctr --namespace k8s.io images check "name==${image}" | tail -n +2)
    [ -n "${rows}" ] || { echo "image ${image}: not in containerd" >&2; return 1; }
    [ "$(printf '%s\n' "${rows}" | wc -l)" -eq 1 ] || { echo "image ${image}: ambiguous" >&2; return 1; }
    # REF TYPE DIGEST STATUS SIZE UNPACKED, e.g. "… complete (3/3) 1.2 MiB/1.2 MiB true"
    if ! printf '%s\n' "${rows}" | grep -Eq '[[:space:]]complete \(([0-9]+)/\1\)[[:space:]]'; then
        echo "image ${image}: incomplete: ${rows}" >&2
        return 1
    fi
    if ! printf '%s\n' "${rows}" | grep -Eq '[[:space:]]true[[:space:]]*$'; then
        echo "image ${image}: not unpacked: ${rows}" >&2
        return 1
    fi
}

# Downloads URL (a presigned URL: never printed) to FILE and checks it has SHA256; WHAT
# names it in an error.
fetch_verified() {
    local url=$1 sha=$2 file=$3 what=$4 got
    if ! retry curl -fsSL "${url}" -o "${file}"; then
        rm -f "${file}"
        die "could not download ${what}"
    fi
    got=$(sha256sum "${file}" | cut -d' ' -f1)
    if [ "${got}" != "${sha}" ]; then
        rm -f "${file}"
        die "${what} has sha256 ${got}, the recipe pins ${sha}"
    fi
}

# Imports an image archive (OCI layout or docker-save tar) into containerd's k8s.io
# namespace instead of pulling: for bakes with no registry in reach. URL is where the bake
# staged it (a presigned URL: never printed), SHA256 the digest the recipe pins, NAME the
# image the archive must carry. Fails naming the image, never the URL.
import_image_archive() {
    local url=$1 sha=$2 name=$3 tmp
    tmp=$(mktemp /var/tmp/haimg-image.XXXXXX)
    fetch_verified "${url}" "${sha}" "${tmp}" "the archive of ${name}"
    if ! ctr --namespace k8s.io images import --all-platforms "${tmp}" >/dev/null; then
        rm -f "${tmp}"
        die "containerd could not import the archive of ${name}"
    fi
    rm -f "${tmp}"
    # Not `grep -q`: it would exit at the first match, ctr's next line would meet a closed
    # pipe (SIGPIPE), and pipefail would fail an import that worked.
    ctr --namespace k8s.io images ls -q | grep -xF "${name}" >/dev/null \
        || die "the archive with sha256 ${sha} does not hold ${name}"
}

# Downloads a staged .deb into DIR, checked by the recipe's SHA256 and by what the package
# says it is (dpkg-deb), and prints its path: the Kubernetes packages of a bake that does
# not reach pkgs.k8s.io. Fails naming the package, never the URL.
fetch_deb() {
    local url=$1 sha=$2 package=$3 version=$4 dir=$5 file
    file="${dir}/${package}_${version}.deb"
    install -d -m 0755 "${dir}"
    fetch_verified "${url}" "${sha}" "${file}" "the ${package} package"
    local is
    is="$(dpkg-deb -f "${file}" Package) $(dpkg-deb -f "${file}" Version)"
    [ "${is}" = "${package} ${version}" ] || die "the file pinned as ${package} ${version} is ${is}"
    echo "${file}"
}

# Points the Ubuntu archive and security sources of SOURCES (a sources.list) at MIRROR,
# whose Release files must be signed by the key in KEY (signed-by: apt trusts nothing else
# for them).
use_apt_mirror() {
    local sources=$1 mirror=$2 key=$3
    sed -i -E "s#^deb[[:space:]]+https?://[^ ]*(archive|security|ports)\.ubuntu\.com/ubuntu(-ports)?/?[[:space:]]#deb [signed-by=${key}] ${mirror%/}/ #" "${sources}"
    grep -q "signed-by=${key}" "${sources}" || die "no Ubuntu archive source in ${sources} to point at the mirror"
}

# Writes SOURCES (a sources.list) anew for a Debian release, signed by the key in KEY only:
# one `deb` line (main component) per "URL SUITE" argument; the release's own deb822
# sources go.
use_debian_mirror() {
    local sources=$1 key=$2 source
    shift 2
    [ "$#" -gt 0 ] || die "use_debian_mirror: no sources"
    : >"${sources}"
    for source in "$@"; do
        echo "deb [signed-by=${key}] ${source% *} ${source##* } main" >>"${sources}"
    done
    rm -f /etc/apt/sources.list.d/debian.sources
}

# Where no service manager runs (a chroot): containerd started by hand for the image
# imports, its socket waited for (bounded), and stopped before the root is imaged.
start_containerd() {
    local i
    install -d -m 0711 /run/containerd
    containerd --config /etc/containerd/config.toml >/run/haimg-containerd.log 2>&1 &
    HAIMG_CONTAINERD_PID=$!
    for i in $(seq 1 100); do
        ctr version >/dev/null 2>&1 && return 0
        kill -0 "${HAIMG_CONTAINERD_PID}" 2>/dev/null || break
        sleep 0.2
    done
    tail -n 20 /run/haimg-containerd.log >&2 || true
    die "containerd did not start (${i} tries)"
}
stop_containerd() {
    [ -n "${HAIMG_CONTAINERD_PID:-}" ] || return 0
    kill "${HAIMG_CONTAINERD_PID}" 2>/dev/null || true
    wait "${HAIMG_CONTAINERD_PID}" 2>/dev/null || true
    HAIMG_CONTAINERD_PID=
}

# Points a Calico manifest's images at quay.io/calico (the same images Calico publishes to
# Docker Hub, without Docker Hub's anonymous pull limit of a few per hour per address).
prefer_quay_for_calico() {
    local manifest=$1
    sed -i -E "s#^([[:space:]]*(- )?image:[[:space:]]*[\"']?)(docker\.io/)?calico/#\1quay.io/calico/#" "${manifest}"
}

# Sends everything the script prints from here on to LOG and uploads LOG to URL (a presigned
# PUT) every 10 s and once more as the script exits, whatever its status: haimg shows the
# steps as they happen and, on failure, the real end of the log (SSM keeps only the first
# 24,000 characters, and only at the end). Keep LOG in /run so none of it is imaged. The
# URL is never printed: its signature is a credential.
log_to_url() {
    PROVISION_LOG=$1
    PROVISION_LOG_URL=$2
    : >"${PROVISION_LOG}"
    chmod 0600 "${PROVISION_LOG}"
    exec > >(tee -a "${PROVISION_LOG}") 2>&1
    PROVISION_TEE=$!
    # Its output goes nowhere: a leftover `sleep` must never hold tee's pipe open.
    (while sleep "${LOG_UPLOAD_INTERVAL:-10}"; do upload_log; done) </dev/null >/dev/null 2>&1 &
    PROVISION_UPLOADER=$!
    trap finish_log EXIT
}
upload_log() {
    curl -fsS --max-time 30 -X PUT -H 'Content-Type: text/plain' \
        --upload-file "${PROVISION_LOG}" "${PROVISION_LOG_URL}" >/dev/null 2>&1 || true
}
finish_log() {
    local status=$?
    kill "${PROVISION_UPLOADER}" 2>/dev/null || true
    # Let tee write the last lines before the final upload.
    exec >&- 2>&-
    wait "${PROVISION_TEE}" 2>/dev/null || true
    upload_log
    exit "${status}"
}

# ---- end of provision-lib.sh ----

# The whole log goes to HAIMG_LOG_URL as it grows (see log_to_url in the library).
if [ -n "${HAIMG_LOG_URL:-}" ]; then
    log_to_url /run/haimg-provision.log "${HAIMG_LOG_URL}"
fi

step "apt sources"
# The base image must be the release the recipe pins (its packages are for it).
# shellcheck source=/dev/null
. /etc/os-release
[ "${VERSION_CODENAME:-}" = "${UBUNTU_CODENAME}" ] || die "the base image is ${PRETTY_NAME:-unknown}, not Ubuntu ${UBUNTU_CODENAME}"
[ "$(dpkg --print-architecture)" = "${ARCH}" ] || die "the base image is $(dpkg --print-architecture), not ${ARCH}"
# cloud-init may still be configuring apt on first boot; apt-daily and unattended-upgrades
# start on a fresh instance too: wait for them, then keep them off for good (the image
# never changes its packages at run time).
cloud-init status --wait >/dev/null || true
apt_quiesce
if [ -n "${APT_SNAPSHOT}" ]; then
    # The whole archive as it was at APT_SNAPSHOT: superseded pins stay installable.
    sed -i -E "s#https?://[^ ]*(archive|security|ports)\.ubuntu\.com/ubuntu(-ports)?/?#https://snapshot.ubuntu.com/ubuntu/${APT_SNAPSHOT}/#" /etc/apt/sources.list
    grep -q "snapshot.ubuntu.com/ubuntu/${APT_SNAPSHOT}" /etc/apt/sources.list || die "could not point apt at the snapshot ${APT_SNAPSHOT}"
fi
retry apt_get update
retry apt_get install --no-install-recommends ca-certificates curl gnupg python3

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
retry apt_get update

step "pinned packages"
# Every pin must be in the sources before anything is installed (a late failure would
# leave half the list installed and a less useful message).
check_pins_available "${PINS[@]}"
retry apt_get install --no-install-recommends --allow-downgrades "${PINS[@]}"
names=()
for pin in "${PINS[@]}"; do
    names+=("${pin%%=*}")
done
apt_mark hold "${names[@]}"
# VIP masters run keepalived and haproxy as static pods, on the ports and the address the
# host services would take as soon as cloud-init writes their configs: the packages are in
# the image for external load-balancer nodes, which unmask them (see the README).
systemctl disable --now keepalived.service haproxy.service 2>/dev/null || true
systemctl mask keepalived.service haproxy.service

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
# Registry mirrors (the recipe's registryMirrors): the CRI plugin and the bake's own pulls
# read the same hosts.toml files.
sed -i -E 's#^([[:space:]]*config_path[[:space:]]*=[[:space:]]*)""#\1"/etc/containerd/certs.d"#' /etc/containerd/config.toml
install -d -m 0755 /etc/containerd/certs.d
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
# Calico's images from quay.io, not Docker Hub (anonymous pulls there are limited per address).
prefer_quay_for_calico "${CNI_MANIFEST}"
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
    retry ctr --namespace k8s.io images pull --hosts-dir /etc/containerd/certs.d --platform "linux/${ARCH}" "${image}" >/dev/null
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
# A crash or a failed leave must not lose a scale-in's drain: restart on failure. The
# watcher exits 0 when there is nothing to watch (a node outside any Auto Scaling group,
# such as a fixed VIP master) and after it has left; neither is restarted.
Restart=on-failure
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

step "hardening: no SSH, no package changes at run time"
systemctl disable --now ssh.service ssh.socket 2>/dev/null || true
# Only what is installed: apt refuses to purge a package its mirror does not carry (a
# frozen mirror holds only what the image installs).
# dpkg-query exits 1 when it knows neither name; that is an answer, not a failure.
unwanted=$( { dpkg-query -W -f '${Package} ${db:Status-Abbrev}\n' openssh-server unattended-upgrades 2>/dev/null || true; } \
    | awk '$2 ~ /^.i/ {print $1}')
if [ -n "${unwanted}" ]; then
    # shellcheck disable=SC2086 # one package name per word
    apt_get purge ${unwanted}
fi
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
# An immutable node: cloud-init must not rewrite the apt sources on first boot, nor update
# or upgrade anything; apt's periodic jobs are off (apt_quiesce masked their units).
cat >/etc/cloud/cloud.cfg.d/91-haimg-immutable.cfg <<'CLOUD'
# haimg: the image's packages are fixed at bake time.
apt_preserve_sources_list: true
apt:
  preserve_sources_list: true
package_update: false
package_upgrade: false
package_reboot_if_required: false
# The locale is the image's too: minimal bases carry no en_US.UTF-8 for cloud-init to set,
# and its locale module then fails the whole config stage (found booting debian-12).
locale: false
CLOUD
cat >/etc/apt/apt.conf.d/99-haimg-no-periodic <<'APT'
// haimg: the image's packages are fixed at bake time.
APT::Periodic::Enable "0";
APT::Periodic::Update-Package-Lists "0";
APT::Periodic::Unattended-Upgrade "0";
APT
# The Kubernetes repository served the bake only: a node has no use for it.
rm -f /etc/apt/sources.list.d/kubernetes.list

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
    check image_complete "${image}"
done
check grep -q 'SystemdCgroup = true' /etc/containerd/config.toml
check grep -q 'config_path = "/etc/containerd/certs.d"' /etc/containerd/config.toml
check test -z "$(grep -E '^[[:space:]]*image:[[:space:]]*["'"'"']?(docker\.io/)?calico/' "${CNI_MANIFEST}")"
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
for unit in keepalived.service haproxy.service apt-daily.timer apt-daily-upgrade.timer; do
    check test "$(systemctl is-enabled "${unit}" 2>/dev/null)" = masked
done
check test ! -e /usr/bin/unattended-upgrade
check test ! -e /etc/apt/sources.list.d/kubernetes.list
check grep -qx 'apt_preserve_sources_list: true' /etc/cloud/cloud.cfg.d/91-haimg-immutable.cfg
check test ! -e /usr/sbin/sshd
check python3 -c 'import json, sys; json.load(open(sys.argv[1]))' "${IMAGE_MANIFEST}"
check grep -q 'systemd.unified_cgroup_hierarchy=1' /boot/grub/grub.cfg
[ "${fail}" -eq 0 ] || die "verification failed: the image would not be what the recipe says"

step "clean for imaging"
apt_get clean
rm -rf /var/lib/apt/lists/* /tmp/* /var/tmp/*
cloud-init clean --logs --seed
truncate -s 0 /etc/machine-id
rm -f /var/lib/dbus/machine-id
ln -s /etc/machine-id /var/lib/dbus/machine-id
journalctl --rotate >/dev/null 2>&1 || true
journalctl --vacuum-time=1s >/dev/null 2>&1 || true
rm -f /root/haimg-provision.sh
echo "haimg-provision: OK ${RECIPE} ${HAIMG_RECIPE_SHA256}"
