#!/usr/bin/env bash
# Makes a frozen apt mirror in a local directory, the kind an air-gapped site serves as
# `aptMirror.url: file:///srv/mirror`: every package a Debian 12 bake installs (the base,
# the recipe's pins, what the Kubernetes packages depend on), in one signed suite. For the
# local-image tests; a site makes the same with aptly, reprepro or debmirror.
#
#   scripts/local-mirror.sh SOURCES_DIR PACKAGE[=VERSION]...
#
# SOURCES_DIR holds debs/ (scripts/kube-artifacts.sh): their dependencies go into the mirror,
# they do not. Prints the output directory, $CACHE/mirrors/<hash of the arguments>, holding
# mirror/ (dists/bookworm{,-updates}, pool/) and key.gpg, the key InRelease is signed with
# (made for this mirror, its secret thrown away). Idempotent, like kube-artifacts.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
CACHE="${HAIMG_CACHE:-$HOME/.cache/haimg}"
[ $# -ge 2 ] || { echo "usage: local-mirror.sh SOURCES_DIR PACKAGE[=VERSION]..." >&2; exit 2; }
sources=$1
shift
key=$( (cat "$here/scripts/local-mirror.sh"; printf '%s\n' "$@" | sort; sha256sum "$sources"/debs/*.deb | cut -d' ' -f1) | sha256sum | cut -c1-16)
OUT="$CACHE/mirrors/$key"
[ -f "$OUT/.complete" ] && { echo "$OUT"; exit 0; }
install -d "$CACHE/mirrors"
exec 9>"$CACHE/mirrors/.lock"
flock 9
[ -f "$OUT/.complete" ] && { echo "$OUT"; exit 0; }

work=$(mktemp -d "$CACHE/mirrors/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT
pool="$work/mirror/pool/main"
install -d "$pool" "$work/gnupg"
chmod 0700 "$work/gnupg"

# The closure, as apt resolves it: a throwaway minbase root whose apt downloads (and does
# not install) every package, the Kubernetes ones from their files so that their
# dependencies come too; its download cache is the pool. They are left out of it after.
printf '%s\n' "$@" >"$work/wanted"
# shellcheck disable=SC2016 # "$1" is the chroot, expanded when mmdebstrap runs the hook
download='chroot "$1" sh -c "xargs apt-get install --download-only --yes -q --no-install-recommends /tmp/*.deb </tmp/wanted"'
mmdebstrap --quiet --variant=minbase --mode=root --format=null \
  --skip=cleanup/apt/cache --skip=essential/unlink \
  --customize-hook="copy-in $work/wanted $(printf '%s ' "$sources"/debs/*.deb)/tmp" \
  --customize-hook="$download" \
  --customize-hook="sync-out /var/cache/apt/archives $pool" \
  bookworm /dev/null \
  "deb http://deb.debian.org/debian bookworm main" \
  "deb http://deb.debian.org/debian bookworm-updates main" \
  "deb http://deb.debian.org/debian-security bookworm-security main" >&2
rm -f "$pool"/lock "$pool"/kubeadm_* "$pool"/kubelet_* "$pool"/kubectl_* "$pool"/cri-tools_*
rm -rf "$pool/partial"

cd "$work/mirror"
for suite in bookworm bookworm-updates; do
  d="dists/$suite/main/binary-amd64"
  install -d "$d"
  if [ "$suite" = bookworm ]; then
    apt-ftparchive packages pool >"$d/Packages"
  else
    : >"$d/Packages" # nothing newer: the pins are frozen in bookworm
  fi
  gzip -9nk "$d/Packages"
  apt-ftparchive \
    -o APT::FTPArchive::Release::Origin=haimg-test \
    -o APT::FTPArchive::Release::Suite="$suite" \
    -o APT::FTPArchive::Release::Codename="$suite" \
    -o APT::FTPArchive::Release::Architectures=amd64 \
    -o APT::FTPArchive::Release::Components=main \
    release "dists/$suite" >"$work/Release"
  mv "$work/Release" "dists/$suite/Release"
done
export GNUPGHOME="$work/gnupg"
gpg --batch --quiet --passphrase '' --quick-gen-key 'haimg test mirror <mirror@haimg.invalid>' ed25519 sign never 2>/dev/null
for suite in bookworm bookworm-updates; do
  gpg --batch --quiet --clearsign -o "dists/$suite/InRelease" "dists/$suite/Release"
done
gpg --batch --export >"$work/key.gpg"
gpgconf --kill all 2>/dev/null || true
rm -rf "$work/gnupg" "$work/wanted"

touch "$work/.complete"
rm -rf "$OUT"
mv "$work" "$OUT"
trap - EXIT
echo "$OUT"
