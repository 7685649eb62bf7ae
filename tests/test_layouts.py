"""Disk layouts and special partitions: MBR with logical partitions, boot-loader gap, swap,
LUKS (stored uncompressed), forensic mode."""

import json
import os
import subprocess

import pytest
from diskutil import MiB, Part, build_disk, fsck_clean, partition_manifest, sh, sha256_file
from test_roundtrip import dv, image

from diskvault.format.layout import CODEC_NONE
from diskvault.format.reader import ImageFile

pytestmark = pytest.mark.root


def mbr_disk(path: str, tmp_path) -> list[Part]:
    """2 primary + extended with 3 logical: ext4, ext3 | ext2, swap, unknown."""
    with open(path, "wb") as f:
        f.truncate(80 * MiB)
    lines = ["start=2048, size=16MiB, type=83, bootable", "size=12MiB, type=83", "size=40MiB, type=5", None,
             "size=12MiB, type=83", "size=6MiB, type=82", "size=8MiB, type=83"]
    sh("sfdisk", "-q", path, input="label: dos\n" + "".join(f"{path}{n} : {line}\n"
                                                          for n, line in enumerate(lines, 1) if line))
    layout = json.loads(sh("sfdisk", "--json", path).stdout)["partitiontable"]["partitions"]
    parts = {int(p["node"][len(path):]): Part(0, None, start=p["start"] * 512, size=p["size"] * 512) for p in layout}
    for number, fs, seed in ((1, "ext4", 1), (2, "ext3", 2), (5, "ext2", 3)):
        tree = tmp_path / f"tree{number}"
        from diskutil import make_tree
        make_tree(str(tree), seed=seed, files=25)
        parts[number].fs = fs
        sh("mke2fs", "-q", "-F", "-t", fs, "-E", f"offset={parts[number].start}", "-d", str(tree), path,
           f"{parts[number].size // 1024}k")
    with open(path, "r+b") as f:
        f.seek(parts[6].start)
        f.write(os.urandom(MiB))  # a swap header comes next
        f.seek(parts[7].start)
        f.write(os.urandom(3 * MiB))
    return parts


def test_mbr_with_logical_partitions_round_trips_exactly(tmp_path):
    disk = str(tmp_path / "disk.img")
    parts = mbr_disk(disk, tmp_path)
    swap_part = str(tmp_path / "swap.part")
    sh("dd", f"if={disk}", f"of={swap_part}", "bs=512", f"skip={parts[6].start // 512}",
       f"count={parts[6].size // 512}", "status=none")
    sh("mkswap", "-L", "myswap", "-U", "4a7f3c1e-0b6a-4d7e-9b8c-2f1e0d3c4b5a", swap_part)
    sh("dd", f"if={swap_part}", f"of={disk}", "bs=512", f"seek={parts[6].start // 512}", "conv=notrunc", "status=none")
    res = image(disk, str(tmp_path / "images"))
    info = json.loads(dv("info", res["image"], "--json").stdout)
    assert info["table"] == "mbr"
    by_number = {p["number"]: p for p in info["partitions"]}
    assert sorted(by_number) == [1, 2, 5, 6, 7]
    assert {n: (p["fs"] or {}).get("fstype") for n, p in by_number.items()} == \
        {1: "ext4", 2: "ext3", 5: "ext2", 6: "swap", 7: None}
    assert by_number[6]["fs"]["label"] == "myswap" and by_number[6]["fs"]["uuid"] == "4a7f3c1e-0b6a-4d7e-9b8c-2f1e0d3c4b5a"
    assert by_number[6]["imaged_bytes"] == 4096
    restored = str(tmp_path / "restored.img")
    dv("restore", res["image"], restored, "--yes")
    assert sh("sfdisk", "--dump", restored).stdout.replace(restored, "D") == sh("sfdisk", "--dump", disk).stdout.replace(disk, "D")
    for n in (1, 2, 5):
        fsck_clean(restored, parts[n])
        assert partition_manifest(restored, parts[n], str(tmp_path / "a")) == partition_manifest(disk, parts[n], str(tmp_path / "b"))
    assert sha256_file(restored, parts[7].start, parts[7].size) == sha256_file(disk, parts[7].start, parts[7].size)
    blkid = sh("blkid", "-p", "-o", "export", "--offset", str(parts[6].start), restored).stdout
    assert "TYPE=swap" in blkid and "LABEL=myswap" in blkid and "UUID=4a7f3c1e-0b6a-4d7e-9b8c-2f1e0d3c4b5a" in blkid
    # every EBR is kept exactly
    with open(disk, "rb") as a, open(restored, "rb") as b:
        for off in (0, parts[5].start - 512, parts[6].start - 512, parts[7].start - 512):
            a.seek(off), b.seek(off)
            assert a.read(512) == b.read(512)


def test_boot_loader_gap_and_unpartitioned_tail_are_kept(tmp_path):
    disk = str(tmp_path / "disk.img")
    (part,) = build_disk(disk, [Part(16, "ext4")], workdir=str(tmp_path), disk_mib=24)
    gap = os.urandom(2048 * 512 - 34 * 512)
    tail = os.urandom(MiB)
    with open(disk, "r+b") as f:
        f.seek(34 * 512)
        f.write(gap)
        f.seek(part.start + part.size + MiB)
        f.write(tail)
    res = image(disk, str(tmp_path / "images"))
    restored = str(tmp_path / "restored.img")
    dv("restore", res["image"], restored, "--yes")
    assert sha256_file(restored) == sha256_file(disk)


def test_luks_is_imaged_whole_without_compression(tmp_path):
    disk = str(tmp_path / "disk.img")
    (part,) = build_disk(disk, [Part(20, None)], workdir=str(tmp_path))
    vol = str(tmp_path / "luks.part")
    with open(vol, "wb") as f:
        f.write(os.urandom(part.size))  # ciphertext looks like this
    subprocess.run(["cryptsetup", "luksFormat", "--batch-mode", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations",
                    "1000", "--label", "vault", vol, "-"], input=b"pw", check=True)
    sh("dd", f"if={vol}", f"of={disk}", "bs=1M", f"seek={part.start // MiB}", "conv=notrunc", "status=none")
    res = image(disk, str(tmp_path / "images"))
    info = json.loads(dv("info", res["image"], "--json").stdout)
    (p,) = info["partitions"]
    assert p["fs"]["fstype"] == "crypto_LUKS" and p["fs"]["label"] == "vault"
    with ImageFile(res["image"]) as img:
        inside = img.index[(img.index["disk_offset"] >= part.start) & (img.index["disk_offset"] < part.start + part.size)]
        assert len(inside) >= part.size // img.chunk_size and (inside["codec"] == CODEC_NONE).all()
    restored = str(tmp_path / "restored.img")
    dv("restore", res["image"], restored, "--yes")
    assert sha256_file(restored) == sha256_file(disk)


def test_forensic_mode_keeps_every_sector(tmp_path):
    disk = str(tmp_path / "disk.img")
    (part,) = build_disk(disk, [Part(32, "ext4")], workdir=str(tmp_path), garbage=True)
    normal = image(disk, str(tmp_path / "normal"))
    forensic = image(disk, str(tmp_path / "forensic"), "--forensic")
    assert forensic["bytes_read"] >= part.size > normal["bytes_read"]
    info = json.loads(dv("info", forensic["image"], "--json").stdout)
    assert info["partitions"][0]["method"] == "raw" and "forensic" in info["partitions"][0]["note"]
    for name, res in (("normal", normal), ("forensic", forensic)):
        restored = str(tmp_path / f"{name}.img")
        dv("restore", res["image"], restored, "--yes")
        fsck_clean(restored, part)
        same = sha256_file(restored) == sha256_file(disk)
        assert same == (name == "forensic")


def test_gpt_with_ntfs_esp_ext4_swap_round_trips(tmp_path):
    from diskutil import build_mixed_disk, mixed_disk_state

    disk = str(tmp_path / "disk.img")
    parts = build_mixed_disk(disk, str(tmp_path))
    before = mixed_disk_state(disk, parts, str(tmp_path))
    assert len(before["ntfs"]) > 20 and len(before["esp"]) > 20 and "TYPE=swap" in before["swap"]
    res = image(disk, str(tmp_path / "images"))
    info = json.loads(dv("info", res["image"], "--json").stdout)
    assert [(p["fs"]["fstype"], p["method"]) for p in info["partitions"]] == \
        [("vfat", "used-blocks"), ("ntfs", "used-blocks"), ("ext4", "used-blocks"), ("swap", "used-blocks")]
    assert info["partitions"][1]["fs"]["label"] == "WINDOWS"
    used = sum(p["fs"]["used_bytes"] for p in info["partitions"])
    assert res["bytes_read"] <= used * 1.05 + 3 * MiB
    restored = str(tmp_path / "restored.img")
    dv("restore", res["image"], restored, "--yes")
    assert mixed_disk_state(restored, parts, str(tmp_path)) == before
