#!/usr/bin/env bash
# diskvault demo: build a small virtual disk with real filesystems and files, image it, show and
# verify the image, restore it to a new disk file, and prove the restored files equal the originals.
# Works only on files and loop devices it creates; detaches and removes them on exit.
set -euo pipefail
work=$(mktemp -d /tmp/diskvault-demo.XXXXXX)
loops=()
mounts=()
cleanup() {
    for m in "${mounts[@]}"; do umount "$m" 2>/dev/null || true; done
    for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

step "Collecting real files for the disk (from /usr/share and /etc), plus 8 MiB of random data"
mkdir -p "$work/files/docs" "$work/files/etc"
cp -r /usr/share/common-licenses "$work/files/docs/" 2>/dev/null || true
find /usr/share/doc -maxdepth 2 -type f -size -200k 2>/dev/null | head -400 | \
    xargs -r cp --parents -t "$work/files/docs" 2>/dev/null || true
cp -r /etc/apt /etc/default "$work/files/etc/" 2>/dev/null || true
head -c 8M /dev/urandom > "$work/files/random.bin"
ln -s random.bin "$work/files/link-to-random"
(cd "$work/files" && find . -type f -print0 | sort -z | xargs -0 sha256sum) > "$work/files.sha256"
echo "$(wc -l < "$work/files.sha256") files, $(du -sh "$work/files" | cut -f1)"

step "Building a 96 MiB GPT disk: partition 1 ext4 (64 MiB, those files), partition 2 unknown data"
disk="$work/disk.img"
truncate -s 96M "$disk"
sfdisk -q "$disk" <<'TABLE'
label: gpt
start=2048, size=131072, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="data"
start=133120, size=40960, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="raw"
TABLE
mkfs.ext4 -q -F -L demo-data -E offset=$((2048 * 512)) -d "$work/files" "$disk" 65536k
dd if=/dev/urandom of="$disk" bs=1M seek=$((133120 * 512 / 1048576)) count=4 conv=notrunc status=none
run diskvault disks "$disk"

step "Imaging the disk (only used blocks of the ext4 partition are read)"
mkdir -p "$work/images"
run diskvault image "$disk" --to "$work/images"
image=$(ls "$work"/images/*.dvimg)

step "What the image holds"
run diskvault info "$image"

step "Verifying every chunk's checksum"
run diskvault verify "$image"

step "Restoring to a new disk file"
run diskvault restore "$image" "$work/restored.img" --yes
echo "apparent size $(stat -c %s "$work/restored.img") bytes, on disk $(du -k "$work/restored.img" | cut -f1) KiB (free space left as holes)"

step "Checking the restored disk"
sfdisk --dump "$disk" | sed "s#$disk#DISK#" > "$work/source.table"
sfdisk --dump "$work/restored.img" | sed "s#$work/restored.img#DISK#" > "$work/restored.table"
diff "$work/source.table" "$work/restored.table"
cmp <(head -c $((34 * 512)) "$disk") <(head -c $((34 * 512)) "$work/restored.img")
cmp <(tail -c $((33 * 512)) "$disk") <(tail -c $((33 * 512)) "$work/restored.img")
echo "partition table identical (protective MBR, primary and backup GPT, byte for byte)"
loop=$(losetup -f --show -r -o $((2048 * 512)) --sizelimit $((131072 * 512)) "$work/restored.img")
loops+=("$loop")
run e2fsck -fn "$loop"
mkdir -p "$work/mnt"
mount -o ro "$loop" "$work/mnt"
mounts+=("$work/mnt")
(cd "$work/mnt" && sha256sum --quiet -c "$work/files.sha256") && \
    echo "all $(wc -l < "$work/files.sha256") restored files match their originals (sha256)"
cmp <(dd if="$disk" bs=1M skip=65 count=20 status=none) \
    <(dd if="$work/restored.img" bs=1M skip=65 count=20 status=none) && \
    echo "unknown partition 2 is byte-identical"

step "Demo finished: image, verify and restore all succeeded"
