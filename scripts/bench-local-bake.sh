#!/usr/bin/env bash
# Measures a local bake of the debian-12 recipe as a user runs it (a benchmark, not a test):
# a cold bake (base made by mmdebstrap, provisioning in the chroot, sealing and the disk), a
# warm bake (the cache hit), the image's size, and the boot to cloud-init's final stage under
# qemu (TCG here: no usable KVM) with no network and a NoCloud seed. Prints Markdown rows.
#
#   scripts/bench-local-bake.sh [path/to/haimg]     (default: a release build; run as root)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
BIN=$(haimg_bin "${1:-}")
sources=$(scripts/kube-artifacts.sh v1.30.0)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# A cache of its own: the base is made from the mirror, not taken from ~/.cache.
export XDG_CACHE_HOME="$work/cache"
bake() { "$BIN" bake debian-12 --target qemu --sources "$sources" --store "$work/store" --output json; }

t0=$(date +%s.%N)
bake >"$work/cold.json" 2>"$work/cold.log" || { tail -n 40 "$work/cold.log" >&2; exit 1; }
t1=$(date +%s.%N)
bake >"$work/warm.json" 2>/dev/null
t2=$(date +%s.%N)
read -r image base prov seal size < <(python3 -c '
import json, sys
o = json.load(open(sys.argv[1])); s = o["seconds"]
print(o["image"], s["base"], s["provision"], s["sealAndDisk"], o["size"])' "$work/cold.json")
python3 -c 'import json,sys; assert json.load(open(sys.argv[1]))["cached"]' "$work/warm.json"

# Boot: a copy-on-write overlay, a seed whose final stage prints a mark and powers off.
qemu-img create -q -f qcow2 -F qcow2 -b "$image" "$work/boot.qcow2"
printf 'instance-id: bench\nlocal-hostname: bench\n' >"$work/meta-data"
cat >"$work/user-data" <<'EOF'
#cloud-config
runcmd:
  - [sh, -c, 'echo HAIMG-FINAL-STAGE >/dev/ttyS0; systemctl --no-block poweroff']
EOF
truncate -s 4M "$work/seed.img"
mkfs.vfat -n CIDATA "$work/seed.img" >/dev/null
mcopy -i "$work/seed.img" "$work/user-data" "$work/meta-data" ::
cp /usr/share/OVMF/OVMF_VARS_4M.fd "$work/vars.fd"
b0=$(date +%s.%N)
qemu-system-x86_64 -machine q35 -m 2048 -smp 2 -accel tcg -nodefaults -display none -nic none -no-reboot \
  -serial "file:$work/serial.log" \
  -drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
  -drive "if=pflash,format=raw,file=$work/vars.fd" \
  -drive "file=$work/boot.qcow2,if=virtio,format=qcow2" \
  -drive "file=$work/seed.img,if=virtio,format=raw,readonly=on" &
qemu=$!
until grep -q HAIMG-FINAL-STAGE "$work/serial.log" 2>/dev/null; do
  kill -0 "$qemu" 2>/dev/null || { echo "qemu exited before cloud-init's final stage" >&2; exit 1; }
  sleep 0.2
done
b1=$(date +%s.%N)
wait "$qemu"

echo "| phase | seconds |"
echo "|---|---|"
printf '| cold bake, total | %.0f |\n' "$(echo "$t1 - $t0" | bc)"
printf '| - base (mmdebstrap from the mirror, unpacked) | %.0f |\n' "$base"
printf '| - provisioning script in the chroot | %.0f |\n' "$prov"
printf '| - seal and disk (ext4, ESP, qcow2) | %.0f |\n' "$seal"
printf '| warm bake (cache hit) | %.2f |\n' "$(echo "$t2 - $t1" | bc)"
printf '| boot to cloud-init final stage (TCG) | %.0f |\n' "$(echo "$b1 - $b0" | bc)"
printf '\nimage: %d MiB qcow2\n' "$((size >> 20))"
