#!/usr/bin/env bash
# Install the Debian packages diskvault, its tests and (with --bench) its benchmarks use.
# Runs apt-get only when something is missing, so repeated runs are instant.
set -euo pipefail
packages=(e2fsprogs fdisk gdisk util-linux mount zstd python3-venv ntfs-3g dosfstools mtools exfatprogs exfat-fuse xfsprogs btrfs-progs fuse3 cryptsetup-bin acl systemd qemu-utils)
if [[ "${1:-}" == "--bench" ]]; then
    packages+=(partclone fsarchiver time restic borgbackup)
fi
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "installing Debian packages: ${missing[*]}"
    [[ $(id -u) == 0 ]] || { echo "run as root (apt-get needs it)" >&2; exit 1; }
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
