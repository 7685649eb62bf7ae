"""Image -> verify -> restore round trips on real ext2/3/4 disks: tables, files, fsck, bytes."""

import json
import os
import subprocess
import sys

import pytest
from diskutil import MiB, Part, build_disk, fsck_clean, loop_device, partition_manifest, sha256_file

pytestmark = pytest.mark.root


def dv(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "diskvault", *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"diskvault {' '.join(args)} exited {r.returncode}: {r.stderr}")
    return r


def image(disk: str, dest: str, *extra: str) -> dict:
    os.makedirs(dest, exist_ok=True)
    return json.loads(dv("image", disk, "--to", dest, "--json", *extra).stdout)


def table_bytes(path: str) -> bytes:
    """MBR + primary GPT (34 sectors) and backup GPT (last 33 sectors)."""
    with open(path, "rb") as f:
        head = f.read(34 * 512)
        f.seek(-33 * 512, os.SEEK_END)
        return head + f.read()


MATRIX = {
    "ext2-1k": [Part(20, "ext2", ("-b", "1024"))],
    "ext3": [Part(24, "ext3")],
    "ext4": [Part(40, "ext4")],
    "ext4-64bit-metabg": [Part(40, "ext4", ("-O", "64bit,meta_bg,^resize_inode"))],
    "ext4-noflex-2k": [Part(24, "ext4", ("-O", "^flex_bg", "-b", "2048"))],
    "mixed": [Part(24, "ext4", tree_seed=3), Part(6, "raw"), Part(16, "ext2", tree_seed=4)],
}


@pytest.mark.parametrize("name", sorted(MATRIX))
def test_roundtrip_file_target(tmp_path, name):
    disk = str(tmp_path / "disk.img")
    parts = build_disk(disk, MATRIX[name], workdir=str(tmp_path))
    result = image(disk, str(tmp_path / "images"))
    assert result["image"].endswith(f"{result['image_id']}-00-00.dvimg")
    assert len(result["image_id"]) == 16 and result["verified"] is True
    assert result["bytes_written"] < os.path.getsize(disk)
    dv("verify", result["image"])
    restored = str(tmp_path / "restored.img")
    dv("restore", result["image"], restored, "--yes")
    assert os.path.getsize(restored) == os.path.getsize(disk)
    assert table_bytes(restored) == table_bytes(disk)
    for part in parts:
        if part.fs and part.fs.startswith("ext"):
            fsck_clean(restored, part)
            assert partition_manifest(restored, part, str(tmp_path / "m1")) == \
                partition_manifest(disk, part, str(tmp_path / "m2"))
        else:
            assert sha256_file(restored, part.start, part.size) == sha256_file(disk, part.start, part.size)
    # the source's free space was zeros, so the whole disk must come back byte for byte
    assert sha256_file(restored) == sha256_file(disk)


def test_only_used_blocks_are_read_and_free_space_restores_as_zeros(tmp_path):
    disk = str(tmp_path / "disk.img")
    (part,) = build_disk(disk, [Part(64, "ext4")], workdir=str(tmp_path), garbage=True)
    result = image(disk, str(tmp_path / "images"))
    info = json.loads(dv("info", result["image"], "--json").stdout)
    (p,) = info["partitions"]
    used = p["fs"]["used_bytes"]
    assert p["method"] == "used-blocks" and p["fs"]["fstype"] == "ext4"
    # read: the used blocks plus the table areas (1 MiB before, 1 MiB after), never the free garbage
    assert result["bytes_read"] <= used + 3 * MiB
    assert result["bytes_read"] < part.size // 2
    restored = str(tmp_path / "restored.img")
    dv("restore", result["image"], restored, "--yes")
    fsck_clean(restored, part)
    assert partition_manifest(restored, part, str(tmp_path / "m1")) == \
        partition_manifest(disk, part, str(tmp_path / "m2"))
    # free space became holes: far less allocated than the apparent size
    assert os.stat(restored).st_blocks * 512 < used + 8 * MiB


def test_restore_to_loop_device_and_partition_subset(tmp_path):
    disk = str(tmp_path / "disk.img")
    parts = build_disk(disk, [Part(24, "ext4", tree_seed=5), Part(20, "ext3", tree_seed=6)],
                       workdir=str(tmp_path))
    result = image(disk, str(tmp_path / "images"))
    target = str(tmp_path / "target.img")
    with open(target, "wb") as f:
        f.truncate(os.path.getsize(disk) + 4 * MiB)
    with loop_device(target) as dev:
        dv("restore", result["image"], dev, "--yes")
    for part in parts:
        fsck_clean(target, part)
    assert table_bytes(disk)[:34 * 512] == table_bytes(target)[:34 * 512]
    # damage partition 2's files on the target, then restore only partition 2
    with open(target, "r+b") as f:
        f.seek(parts[1].start)
        f.write(os.urandom(2 * MiB))
    dv("restore", result["image"], target, "--partitions", "2", "--yes")
    fsck_clean(target, parts[1])
    assert partition_manifest(target, parts[1], str(tmp_path / "m1")) == \
        partition_manifest(disk, parts[1], str(tmp_path / "m2"))


def test_image_selected_partitions(tmp_path):
    disk = str(tmp_path / "disk.img")
    parts = build_disk(disk, [Part(16, "ext4", tree_seed=1), Part(16, "ext4", tree_seed=2)],
                       workdir=str(tmp_path))
    result = image(disk, str(tmp_path / "images"), "--partitions", "2")
    info = json.loads(dv("info", result["image"], "--json").stdout)
    assert [p["method"] for p in info["partitions"]] == ["skipped", "used-blocks"]
    restored = str(tmp_path / "restored.img")
    dv("restore", result["image"], restored, "--partitions", "2", "--yes")
    fsck_clean(restored, parts[1])
    r = dv("restore", result["image"], str(tmp_path / "r2.img"), "--partitions", "1", "--yes", check=False)
    assert r.returncode == 2 and "partition 1 was not imaged" in r.stderr


def test_bare_filesystem_without_partition_table(tmp_path):
    fs = str(tmp_path / "fs.img")
    with open(fs, "wb") as f:
        f.truncate(32 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "bare", fs], check=True)
    result = image(fs, str(tmp_path / "images"))
    info = json.loads(dv("info", result["image"], "--json").stdout)
    assert info["table"] == "none"
    assert info["partitions"][0]["fs"]["label"] == "bare"
    restored = str(tmp_path / "restored.img")
    dv("restore", result["image"], restored, "--yes")
    assert sha256_file(restored) == sha256_file(fs)
