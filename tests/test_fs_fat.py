"""FatReader against real FAT12/16/32 volumes made by mkfs.fat and filled with mtools.

Oracles: fsck.fat -v's used-cluster count and minfo's layout (used bytes), mshowfat's cluster
lists (every file's clusters are imaged), blkid -p (type, label, uuid), and end to end: image a GPT
disk holding the volume, restore it, fsck.fat -n the restored partition and read every file back
with mcopy.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from diskutil import (extract_range, garbage_file, gpt_disk, make_fat_tree, open_fd, open_fs_reader, patch,
                      tree_hashes)

from diskvault.errors import FilesystemError
from diskvault.fs import base, registry
from diskvault.fs.extents import total
from diskvault.fs.fat import FatReader, fat_entries

MiB = 1 << 20
TOOLS = ("mkfs.fat", "fsck.fat", "mcopy", "mdir", "mdel", "mmd", "minfo", "mshowfat", "sfdisk", "blkid")
pytestmark = pytest.mark.skipif(not all(shutil.which(t) for t in TOOLS), reason="needs dosfstools + mtools")
ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1", "LC_ALL": "C"}
MS_BASIC_DATA = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"


def run(*args, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], input=input, text=True, capture_output=True,
                          check=check, env=ENV)


# ----------------------------------------------------------------------------- building volumes


def mkfs(tmp_path: Path, size_mib: int, *args: str, name: str = "fs.img") -> Path:
    """mkfs.fat on a file first filled with random bytes: mkfs.fat leaves the data area as it is,
    so free clusters hold garbage (which an image must not need)."""
    img = tmp_path / name
    garbage_file(img, size_mib * MiB, seed=size_mib)
    run("mkfs.fat", *args, img)
    return img


def put(img: Path, src: Path, dest: str = "::/") -> None:
    """Copy the contents of ``src`` into the volume with mcopy."""
    entries = sorted(src.iterdir())
    if entries:
        run("mcopy", "-i", img, "-s", *entries, dest)


def free_bytes(img: Path) -> int:
    out = run("mdir", "-i", img, "::/").stdout
    return int(re.search(r"([\d ]+) bytes free", out).group(1).replace(" ", ""))


def populate(img: Path, tmp_path: Path, variant: str, size_mib: int) -> None:
    """Fill a fresh volume: "empty", "tree", "fragmented" (many files, every other one deleted)
    or "full" (a tree, then one file taking 95 % of the free space)."""
    if variant == "empty":
        return
    put(img, make_fat_tree(tmp_path / "tree", seed=len(variant), files=30 if variant == "full" else 40,
                       max_size=min(200_000, size_mib * 15_000)))
    if variant == "fragmented":
        frag = tmp_path / "frag"
        frag.mkdir()
        rng = np.random.default_rng(5)
        n = min(80, size_mib * 4)
        for i in range(n):  # deleted ones are larger than the imager's read-through gap (64 KiB)
            size = int(rng.integers(70_000, 160_000)) if i % 2 == 0 else int(rng.integers(1, 90_000))
            (frag / f"frag{i:03d}.bin").write_bytes(rng.bytes(size))
        run("mmd", "-i", img, "::/frag")
        put(img, frag, "::/frag")
        run("mdel", "-i", img, *[f"::/frag/frag{i:03d}.bin" for i in range(0, n, 2)])
    elif variant == "full":
        big = tmp_path / "big.bin"
        big.write_bytes(np.random.default_rng(9).bytes(int(free_bytes(img) * 0.95)))
        run("mcopy", "-i", img, big, "::/BIG.BIN")


def fsck_layout(img: Path) -> dict[str, int]:
    """fsck.fat -n -v's view: data area start, cluster size and count, FAT width, used clusters."""
    out = run("fsck.fat", "-n", "-v", img).stdout

    def num(pattern: str) -> int:
        return int(re.search(pattern, out, re.MULTILINE).group(1))

    return {
        "data_start": num(r"Data area starts at byte (\d+)"),
        "cluster_size": num(r"(\d+) bytes per cluster"),
        "clusters": num(r"(\d+) data clusters"),
        "bits": num(r"FATs, (\d+) bit entries"),
        "used": num(r"(\d+)/\d+ clusters"),
    }


def fat_used_bytes(img: Path) -> int:
    """Used bytes by fsck.fat's own numbers: everything before the data area + the used clusters."""
    lay = fsck_layout(img)
    return lay["data_start"] + lay["used"] * lay["cluster_size"]


def listing(img: Path) -> list[str]:
    r = run("mdir", "-i", img, "-/", "-b", "::/", check=False)
    return sorted(r.stdout.split("\n")) if r.returncode == 0 else []


def contents(img: Path, dest: Path) -> dict[str, str]:
    """Every file read back with mcopy: relative path -> sha256 ('dir' for directories)."""
    dest.mkdir()
    if listing(img):
        run("mcopy", "-i", img, "-s", "-n", "::/*", dest)
    return tree_hashes(dest)


def open_reader(img: Path, size: int | None = None, offset: int = 0) -> FatReader:
    return open_fs_reader(FatReader, img, offset, size)


def covered(ext: np.ndarray, start: int, length: int) -> bool:
    i = int(np.searchsorted(ext[:, 0], start, side="right")) - 1
    return i >= 0 and int(ext[i, 0] + ext[i, 1]) >= start + length


# ----------------------------------------------------------------------------- end to end

ROUNDTRIP = {
    # id: (size MiB, mkfs.fat args, how it is filled, expected FAT width)
    "fat12-4M-nearly-full": (4, ["-F", "12", "-n", "DV FAT12"], "full", 12),
    "fat16-32M-fragmented": (32, ["-F", "16", "-n", "DV FAT16"], "fragmented", 16),
    "fat16-32M-empty": (32, ["-F", "16"], "empty", 16),
    "fat32-64M": (64, ["-F", "32", "-n", "DV FAT32"], "tree", 32),
    "fat32-256M-fragmented": (256, ["-F", "32", "-n", "BIG FAT32"], "fragmented", 32),
}


@pytest.mark.root
@pytest.mark.parametrize("case", list(ROUNDTRIP))
def test_image_restore_roundtrip(tmp_path, monkeypatch, case):
    from diskvault.imaging.create import ImageOptions, create_image
    from diskvault.imaging.inspect import describe_image
    from diskvault.imaging.restore import RestoreOptions, restore_image
    from diskvault.imaging.verify import verify_image

    size_mib, args, variant, bits = ROUNDTRIP[case]
    fs_img = mkfs(tmp_path, size_mib, *args)
    populate(fs_img, tmp_path, variant, size_mib)
    fs_used = fat_used_bytes(fs_img)
    if variant == "full":
        assert fs_used > 0.9 * size_mib * MiB
    reader = open_reader(fs_img)
    assert reader.bits == bits
    assert reader.info().used_bytes == fs_used
    disk, start, size = gpt_disk(tmp_path, fs_img, MS_BASIC_DATA)

    monkeypatch.setattr(registry, "READERS", [FatReader, *registry.READERS])
    (tmp_path / "img").mkdir()
    res = create_image(ImageOptions(source=str(disk), to=str(tmp_path / "img")))
    assert verify_image(res.image).ok
    restored = tmp_path / "restored.img"
    restore_image(RestoreOptions(image=res.image, target=str(restored)))

    part = describe_image(res.image)["partitions"][0]
    assert part["method"] == "used-blocks", part["note"]
    assert part["fs"]["fstype"] == "vfat" and part["fs"]["used_bytes"] == fs_used
    # only used blocks were read: the volume's used bytes + the GPT areas (1 MiB each end)
    slack = 0.05 * fs_used + 2 * MiB
    print(f"{case}: fs used {fs_used}, bytes read {res.bytes_read}")
    assert fs_used - slack <= res.bytes_read <= fs_used + slack
    if variant != "full":
        assert res.bytes_read < size // 2

    src_part = extract_range(disk, start, size, tmp_path / "src-part.img")
    out_part = extract_range(restored, start, size, tmp_path / "out-part.img")
    fsck = run("fsck.fat", "-n", out_part, check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert listing(out_part) == listing(src_part)
    want = contents(src_part, tmp_path / "want")
    assert contents(out_part, tmp_path / "got") == want
    assert (len(want) > 20) == (variant != "empty")
    # the garbage in the free clusters was not imaged: the restored volume differs from the source
    if variant != "full":
        assert hashlib.sha256(out_part.read_bytes()).digest() != hashlib.sha256(src_part.read_bytes()).digest()


# ----------------------------------------------------------------------------- used clusters


@pytest.mark.parametrize(
    "size_mib,args,bits",
    [
        (4, ["-F", "12"], 12),
        (16, ["-F", "12", "-s", "16"], 12),
        (32, ["-F", "16"], 16),
        (64, ["-F", "16", "-S", "4096"], 16),
        (64, ["-F", "32"], 32),
        (128, ["-F", "32", "-s", "2", "-f", "1"], 32),
    ],
)
def test_every_file_cluster_is_used(tmp_path, size_mib, args, bits):
    img = mkfs(tmp_path, size_mib, *args)
    populate(img, tmp_path, "fragmented", size_mib)
    reader = open_reader(img)
    lay = fsck_layout(img)
    assert (reader.bits, reader.clusters, reader.cluster_size) == (bits, lay["clusters"], lay["cluster_size"])
    assert reader.bits == lay["bits"] and reader.data_start * reader.sector_size == lay["data_start"]
    ext = reader.used_extents()
    assert ext.dtype == np.uint64 and ext.ndim == 2 and ext.shape[1] == 2
    assert np.all(ext[:, 1] > 0) and np.all(ext[1:, 0] > ext[:-1, 0] + ext[:-1, 1]), "sorted and merged"
    assert ext.shape[0] > 5  # the deleted files left holes
    assert total(ext) == reader.info().used_bytes == fat_used_bytes(img)
    assert int(ext[-1, 0] + ext[-1, 1]) <= reader.total_sectors * reader.sector_size
    paths = [p for p in listing(img) if p and not p.endswith("/")]
    out = run("mshowfat", "-i", img, *paths).stdout
    cs, base_off = reader.cluster_size, reader.data_start * reader.sector_size
    checked = 0
    for a, b in re.findall(r"<(\d+)(?:-(\d+))?>", out):
        first, last = int(a), int(b or a)
        assert covered(ext, base_off + (first - 2) * cs, (last - first + 1) * cs), (first, last)
        checked += 1
    assert checked > 20
    assert covered(ext, 0, base_off)  # boot sector, FATs, root directory


def test_fat12_decoding_matches_a_scalar_decoder(tmp_path):
    img = mkfs(tmp_path, 4, "-F", "12")
    populate(img, tmp_path, "fragmented", 4)
    reader = open_reader(img)
    raw = img.read_bytes()[reader.reserved * 512 : (reader.reserved + reader.fat_sectors) * 512]
    n = reader.clusters + 2
    want = []
    for i in range(n):
        v = raw[i * 3 // 2] | raw[i * 3 // 2 + 1] << 8
        want.append(v >> 4 if i & 1 else v & 0xFFF)
    got = fat_entries(raw, 12, n)
    assert got.tolist() == want
    assert fat_entries(raw, 12, 7).tolist() == want[:7]  # odd counts too


# ----------------------------------------------------------------------------- info


def blkid(img: Path) -> dict[str, str]:
    out = run("blkid", "-p", "-o", "export", img).stdout  # export escapes spaces etc. with "\\"
    return {k: re.sub(r"\\(.)", r"\1", v) for k, v in (ln.split("=", 1) for ln in out.splitlines() if "=" in ln)}


@pytest.mark.parametrize("fat", ["12", "16", "32"])
def test_info_matches_blkid(tmp_path, fat):
    size_mib = {"12": 4, "16": 32, "32": 64}[fat]
    img = mkfs(tmp_path, size_mib, "-F", fat, "-n", f"LABEL {fat}", "-i", "1234ABCD")
    put(img, make_fat_tree(tmp_path / "tree", seed=3, files=12))
    reader = open_reader(img)
    info = reader.info()
    blk = blkid(img)
    assert (blk["TYPE"], blk["LABEL"], blk["UUID"], blk["VERSION"]) == ("vfat", info.label, info.uuid, f"FAT{fat}")
    assert (info.fstype, info.label, info.uuid, info.note) == ("vfat", f"LABEL {fat}", "1234-ABCD", "")
    assert info.size == size_mib * MiB and reader.bits == int(fat)
    assert info.block_size == reader.cluster_size and info.used_bytes == fat_used_bytes(img)


@pytest.mark.parametrize("fat", ["16", "32"])
def test_label_comes_from_the_root_directory_like_blkid(tmp_path, fat):
    """libblkid (and Windows) take the label from the root directory's volume-label entry only;
    the boot sector's copy is shown as LABEL_FATBOOT and is not the label."""
    img = mkfs(tmp_path, 40, "-F", fat, "-n", "ROOTLABEL")
    off = 0x2B if fat == "16" else 0x47
    with open(img, "r+b") as f:  # a different, stale boot-sector label
        f.seek(off)
        f.write(b"BOOT LABEL ")
    blk = blkid(img)
    assert blk["LABEL"] == "ROOTLABEL" and blk["LABEL_FATBOOT"] == "BOOT LABEL"
    reader = open_reader(img)
    assert reader.info().label == "ROOTLABEL"
    entry = (reader.root_start if fat == "16" else reader.data_start) * 512
    patch(img, entry, "<B", 0x05)  # a label starting with byte 0xE5 is stored with 0x05
    assert open_reader(img).info().label == "\u00d5OOTLABEL"  # 0xE5 in code page 850
    patch(img, entry, "<B", 0xE5)  # the label entry deleted: no label
    assert "LABEL" not in blkid(img) and open_reader(img).info().label == ""


def test_uuid_needs_the_extended_boot_signature_on_fat16(tmp_path):
    img = mkfs(tmp_path, 16, "-F", "16", "-i", "0BADF00D")
    assert blkid(img)["UUID"] == "0BAD-F00D" == open_reader(img).info().uuid
    patch(img, 0x26, "<B", 0x28)  # serial number only
    assert blkid(img)["UUID"] == "0BAD-F00D" == open_reader(img).info().uuid
    patch(img, 0x26, "<B", 0)  # an old boot sector: no serial number
    assert "UUID" not in blkid(img) and open_reader(img).info().uuid == ""


def test_no_label(tmp_path):
    img = mkfs(tmp_path, 16, "-F", "16")
    assert "LABEL" not in blkid(img)
    info = open_reader(img).info()
    assert info.label == "" and re.fullmatch(r"[0-9A-F]{4}-[0-9A-F]{4}", info.uuid)
    assert info.uuid == blkid(img)["UUID"]


def test_small_fat32_is_read_as_fat32_with_a_warning(tmp_path):
    img = mkfs(tmp_path, 32, "-F", "32", "-s", "1")  # (mtools refuses to write to it)
    reader = open_reader(img)
    assert reader.bits == 32 and reader.clusters < 65525
    info = reader.info()
    assert "warning" in info.note and "65525" in info.note
    assert info.used_bytes == fat_used_bytes(img)


def test_fs_inside_a_larger_window_at_an_offset(tmp_path):
    img = mkfs(tmp_path, 16, "-F", "16")
    put(img, make_fat_tree(tmp_path / "tree", seed=5, files=10))
    disk, start, size = gpt_disk(tmp_path, img, MS_BASIC_DATA)
    reader = open_reader(disk, offset=start, size=size + MiB // 2)
    assert np.array_equal(reader.used_extents(), open_reader(img).used_extents())
    with open(img, "rb") as f:  # any seekable binary file works, not only a Window
        assert FatReader.probe(f, size)
        assert np.array_equal(FatReader(f, size).used_extents(), reader.used_extents())


# ----------------------------------------------------------------------------- probe


def test_probe(tmp_path):
    def probes(img: Path, size: int | None = None) -> bool:
        fd = os.open(img, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size if size is None else size
            return FatReader.probe(base.Window(fd, 0, size), size)
        finally:
            os.close(fd)

    for fat, mib in (("12", 4), ("16", 16), ("32", 40)):
        assert probes(mkfs(tmp_path, mib, "-F", fat, name=f"f{fat}.img"))
    assert not probes(tmp_path / "f12.img", 100)
    zero = tmp_path / "zero.img"
    zero.write_bytes(bytes(MiB))
    assert not probes(zero)
    junk = tmp_path / "junk.img"
    junk.write_bytes(np.random.default_rng(1).bytes(MiB))
    assert not probes(junk)
    other = {
        "ext4": ["mke2fs", "-q", "-F", "-t", "ext4"],
        "exfat": ["mkfs.exfat"],
        "ntfs": ["mkntfs", "-q", "-F", "-f"],
    }
    for name, cmd in other.items():
        if shutil.which(cmd[0]):
            img = tmp_path / f"{name}.img"
            with open(img, "wb") as f:
                f.truncate(16 * MiB)
            run(*cmd, img)
            assert not probes(img), name
    mbr = tmp_path / "mbr.img"
    with open(mbr, "wb") as f:
        f.truncate(8 * MiB)
    run("sfdisk", "-q", mbr, input="label: dos\nstart=2048, type=c\n")
    assert not probes(mbr)


def test_probe_through_the_registry(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "READERS", [FatReader, *registry.READERS])
    img = mkfs(tmp_path, 16, "-F", "16")
    fd = os.open(img, os.O_RDONLY)
    try:
        assert base.probe(base.Window(fd, 0, 16 * MiB)) is FatReader
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- corruption


CORRUPT_BPB = {  # BPB fields that the probe itself rejects
    "bytes_per_sector_0": (0x0B, "<H", 0),
    "bytes_per_sector_300": (0x0B, "<H", 300),
    "bytes_per_sector_8192": (0x0B, "<H", 8192),
    "sectors_per_cluster_3": (0x0D, "<B", 3),
    "sectors_per_cluster_0": (0x0D, "<B", 0),
    "no_reserved_sectors": (0x0E, "<H", 0),
    "no_fats": (0x10, "<B", 0),
    "media": (0x15, "<B", 0x12),
    "no_signature": (0x1FE, "<H", 0),
    "jump": (0x00, "<B", 0x00),
    "ntfs_oem": (0x03, "8s", b"NTFS    "),
    "bitlocker_oem": (0x03, "8s", b"-FVE-FS-"),
}


@pytest.mark.parametrize("case", list(CORRUPT_BPB))
def test_corrupt_bpb_is_not_fat(tmp_path, case):
    img = mkfs(tmp_path, 16, "-F", "16")
    patch(img, *CORRUPT_BPB[case])
    fd = os.open(img, os.O_RDONLY)
    try:
        win = base.Window(fd, 0, 16 * MiB)
        assert not FatReader.probe(win, win.size)
        if case not in ("no_signature", "jump", "ntfs_oem", "bitlocker_oem"):
            with pytest.raises(FilesystemError, match="not sane"):
                FatReader(win, win.size)
    finally:
        os.close(fd)


CORRUPT_GEOMETRY = {  # (mkfs args, offset, format, value, message)
    "total_sectors_zero": (["-F", "16"], 0x20, "<I", 0, "not sane"),
    "total_sectors16_beyond": (["-F", "16"], 0x13, "<H", 65000, "partition has only"),
    "beyond_partition": (["-F", "16"], 0x20, "<I", 1 << 30, "partition has only"),
    "fat_size_zero": (["-F", "16"], 0x16, "<H", 0, "not sane"),  # then read as a FAT32 BPB: junk
    "fat_too_small": (["-F", "16"], 0x16, "<H", 2, "too small"),
    "metadata_too_big": (["-F", "16"], 0x0E, "<H", 60000, "do not fit"),
    "no_root_dir": (["-F", "16"], 0x11, "<H", 0, "no root directory"),
    "fat16_too_many_clusters": (["-F", "16"], 0x0D, "<B", 1, "more than FAT16"),
    "fat32_root_cluster": (["-F", "32"], 0x2C, "<I", 1 << 27, "root directory cluster"),
    "fat32_root_cluster_1": (["-F", "32"], 0x2C, "<I", 1, "root directory cluster"),
    "fat32_version": (["-F", "32"], 0x2A, "<H", 0x0101, "version"),
    "fat32_root_entries": (["-F", "32"], 0x11, "<H", 512, "fixed root entries"),
    "fat32_active_fat": (["-F", "32"], 0x28, "<H", 0x0085, "active FAT 5"),
}


@pytest.mark.parametrize("case", list(CORRUPT_GEOMETRY))
def test_corrupt_geometry_raises(tmp_path, case):
    args, off, fmt, value, msg = CORRUPT_GEOMETRY[case]
    size_mib = {"fat16_too_many_clusters": 40, "metadata_too_big": 16, "total_sectors16_beyond": 16}.get(case, 36)
    img = mkfs(tmp_path, size_mib, *args)
    patch(img, off, fmt, value)
    fd = open_fd(img)
    win = base.Window(fd, 0, os.fstat(fd).st_size)
    with pytest.raises(FilesystemError, match=msg):
        FatReader(win, win.size)


def test_truncated_partition_raises(tmp_path):
    img = mkfs(tmp_path, 16, "-F", "16")
    with pytest.raises(FilesystemError, match="partition has only"):
        open_reader(img, size=8 * MiB)
    fd = open_fd(img)
    with pytest.raises(FilesystemError, match="truncated"):
        FatReader(base.Window(fd, 0, 100), 100)


def test_dirty_volume_is_a_warning(tmp_path):
    img = mkfs(tmp_path, 40, "-F", "32")
    assert open_reader(img).info().note == ""
    patch(img, 0x41, "<B", 1)  # Linux's dirty bit in BS_Reserved1
    assert "dirty" in open_reader(img).info().note
    patch(img, 0x41, "<B", 0)
    reader = open_reader(img)
    fat1 = reader.reserved * 512 + 4
    patch(img, fat1, "<I", 0x07FFFFFF)  # FAT[1] ClnShutBitMask cleared
    assert "not cleanly unmounted" in open_reader(img).info().note


def test_fat_copies_that_disagree_are_merged(tmp_path):
    img = mkfs(tmp_path, 16, "-F", "16")
    put(img, make_fat_tree(tmp_path / "tree", seed=6, files=8))
    reader = open_reader(img)
    before = reader.used_extents()
    stray = reader.clusters - 5  # mark a free cluster used in the second FAT only
    patch(img, (reader.reserved + reader.fat_sectors) * 512 + stray * 2, "<H", 0xFFFF)
    reader = open_reader(img)
    ext = reader.used_extents()
    assert total(ext) == total(before) + reader.cluster_size
    assert covered(ext, reader.data_start * 512 + (stray - 2) * reader.cluster_size, reader.cluster_size)
    assert "disagree about 1 clusters" in reader.info().note


@pytest.mark.parametrize("fields,bits", [((4084, 0), 12), ((4085, 0), 16), ((65524, 0), 16), ((65525, 1), 32)])
def test_fat_type_comes_from_the_cluster_count(tmp_path, fields, bits):
    """A hand-made boot sector right at the specification's FAT12/16/32 boundaries, with a lying
    BS_FilSysType string."""
    count, fat32 = fields
    rsvd, nfats, root_ent = 32 if fat32 else 1, 2, 0 if fat32 else 512
    fat_sz = -(-(count + 2) * bits // 8 // 512) + 1
    root_secs = root_ent * 32 // 512
    total_secs = rsvd + nfats * fat_sz + root_secs + count
    bs = bytearray(512)
    bs[0:3] = b"\xEB\x3C\x90"
    bs[3:11] = b"MSWIN4.1"
    struct.pack_into("<HBHBHHBH", bs, 0x0B, 512, 1, rsvd, nfats, root_ent, 0, 0xF8, 0 if fat32 else fat_sz)
    struct.pack_into("<I", bs, 0x20, total_secs)
    if fat32:
        struct.pack_into("<IHHIHH", bs, 0x24, fat_sz, 0, 0, 2, 1, 6)
        struct.pack_into("<BBBI11s8s", bs, 0x40, 0x80, 0, 0x29, 0xDEADBEEF, b"NO NAME    ", b"FAT12   ")
    else:
        struct.pack_into("<BBBI11s8s", bs, 0x24, 0x80, 0, 0x29, 0xDEADBEEF, b"NO NAME    ", b"FAT32   ")
    bs[510:512] = b"\x55\xAA"
    img = tmp_path / "synthetic.img"
    # FAT[0] = media byte + ones, FAT[1] = end of chain with the clean-shutdown bit
    fat = {12: b"\xF8\xFF\xFF", 16: b"\xF8\xFF\xFF\xFF", 32: b"\xF8\xFF\xFF\x0F\xFF\xFF\xFF\x0F"}[bits]
    with open(img, "wb") as f:
        f.truncate(total_secs * 512)
        f.write(bs)
        for copy in range(nfats):
            f.seek((rsvd + copy * fat_sz) * 512)
            f.write(fat)
    reader = open_reader(img)
    assert (reader.clusters, reader.bits) == (count, bits)
    info = reader.info()
    assert info.uuid == "DEAD-BEEF" and info.label == "" and info.note == ""
    # an empty FAT: only the metadata in front of the data area is used
    assert np.array_equal(reader.used_extents(), [[0, reader.data_start * 512]])


def test_2gib_fat32_is_fast(tmp_path):
    img = tmp_path / "big.img"
    with open(img, "wb") as f:
        f.truncate(2048 * MiB)
    run("mkfs.fat", "-F", "32", "-s", "1", img)  # 4 million clusters, two 16 MiB FATs
    t0 = time.perf_counter()
    reader = open_reader(img)
    ext = reader.used_extents()
    elapsed = time.perf_counter() - t0
    assert reader.clusters > 4_000_000 and ext.shape[0] == 1
    assert elapsed < 1.0, f"used_extents took {elapsed:.3f}s"
