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
