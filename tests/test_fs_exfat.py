"""ExfatReader against real exFAT volumes made by mkfs.exfat and filled through exfat-fuse.

Oracles: dump.exfat's cluster counts and statvfs on the FUSE mount (used bytes), blkid -p and
tune.exfat (label, uuid), and end to end: image a GPT disk holding the volume, restore it,
fsck.exfat -n the restored partition and read every file back through exfat-fuse (read-only).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from diskutil import (extract_range, garbage_file, gpt_disk, loop_device, make_fat_tree, open_fd,
                      open_fs_reader, patch, tree_hashes)

from diskvault.errors import FilesystemError
from diskvault.fs import base, registry
from diskvault.fs.exfat import ExfatReader, boot_checksum
from diskvault.fs.extents import total

MiB = 1 << 20
TOOLS = ("mkfs.exfat", "fsck.exfat", "dump.exfat", "tune.exfat", "mount.exfat-fuse", "losetup", "sfdisk", "blkid")
pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in TOOLS) or not os.path.exists("/dev/fuse"),
    reason="needs exfatprogs, exfat-fuse and /dev/fuse",
)
ENV = {**os.environ, "LC_ALL": "C.UTF-8"}
MS_BASIC_DATA = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"


def run(*args, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], input=input, text=True, capture_output=True,
                          check=check, env=ENV)


# ----------------------------------------------------------------------------- FUSE


@contextlib.contextmanager
def fuse_mount(img: Path, mnt: Path, offset: int = 0, size: int | None = None, ro: bool = False) -> Iterator[Path]:
    """exfat-fuse needs a block device: mount a loop device on ``img``; always unmounted."""
    with loop_device(img, offset, size, read_only=ro) as dev:
        mnt.mkdir(exist_ok=True)
        run("mount.exfat-fuse", *(["-o", "ro"] if ro else []), dev, mnt)
        try:
            yield mnt
        finally:
            r = run("umount", mnt, check=False)
            if r.returncode != 0:
                time.sleep(0.5)
                run("umount", "-l", mnt, check=False)


# ----------------------------------------------------------------------------- building volumes


def mkfs(tmp_path: Path, size_mib: int, *args: str, name: str = "fs.img") -> Path:
    """mkfs.exfat on a file first filled with random bytes: mkfs.exfat writes only the boot
    regions, FAT, bitmap, up-case table and root directory, so free clusters hold garbage."""
    img = tmp_path / name
    garbage_file(img, size_mib * MiB, seed=size_mib)
    run("mkfs.exfat", *args, img)
    return img


def copy_in(src: Path, dest: Path) -> None:
    """Copy a tree's files (content only: exFAT keeps no owners or modes)."""
    for p in sorted(src.rglob("*")):
        target = dest / p.relative_to(src)
        if p.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            shutil.copyfile(p, target)


def populate(img: Path, tmp_path: Path, variant: str, size_mib: int) -> int:
    """Fill a fresh volume through exfat-fuse: "empty", "tree", "fragmented" (many files, every
    other one deleted) or "full" (a tree, then a file taking 95 % of the free space). Returns the
    used bytes statvfs reports on the mount (df's "Used")."""
    with fuse_mount(img, tmp_path / "mnt") as mnt:
        if variant != "empty":
            copy_in(make_fat_tree(tmp_path / "tree", seed=len(variant), files=30 if variant == "full" else 40,
                                  max_size=min(200_000, size_mib * 10_000), unicode=True), mnt)
        if variant == "fragmented":
            (mnt / "frag").mkdir()
            rng = np.random.default_rng(5)
            n = min(80, size_mib * 2)
            for i in range(n):  # deleted ones are larger than the imager's read-through gap (64 KiB)
                size = int(rng.integers(70_000, 160_000)) if i % 2 == 0 else int(rng.integers(1, 90_000))
                (mnt / "frag" / f"frag{i:03d}.bin").write_bytes(rng.bytes(size))
            for i in range(0, n, 2):
                (mnt / "frag" / f"frag{i:03d}.bin").unlink()
        elif variant == "full":
            st = os.statvfs(mnt)
            (mnt / "BIG.BIN").write_bytes(np.random.default_rng(9).bytes(int(st.f_bavail * st.f_frsize * 0.95)))
        os.sync()
        st = os.statvfs(mnt)
        return (st.f_blocks - st.f_bfree) * st.f_frsize


def dump(img: Path) -> dict[str, int]:
    out = run("dump.exfat", img).stdout

    def num(pattern: str) -> int:
        return int(re.search(pattern, out, re.MULTILINE).group(1))

    return {
        "fat_offset": num(r"^FAT Offset\(sector offset\):\s+(\d+)"),
        "fat_length": num(r"^FAT Length\(sectors\):\s+(\d+)"),
        "heap": num(r"^Cluster Heap Offset \(sector offset\):\s+(\d+)"),
        "clusters": num(r"^Total Clusters:\s+(\d+)"),
        "free": num(r"^Free Clusters:\s+(\d+)"),
        "cluster_size": num(r"^Cluster size:\s+(\d+)"),
        "sector_bits": num(r"^Sector Size Bits:\s+(\d+)"),
    }


def exfat_used_bytes(img: Path) -> int:
    """Used bytes by dump.exfat's numbers: boot regions + FAT + the allocated clusters."""
    d = dump(img)
    ss = 1 << d["sector_bits"]
    return 24 * ss + d["fat_length"] * ss + (d["clusters"] - d["free"]) * d["cluster_size"]


def fix_checksum(img: Path, sector_size: int = 512) -> None:
    """Recompute the main boot region's checksum sector after patching the boot sector."""
    with open(img, "r+b") as f:
        region = f.read(12 * sector_size)
        f.seek(11 * sector_size)
        f.write(struct.pack("<I", boot_checksum(region, sector_size)) * (sector_size // 4))


def open_reader(img: Path, size: int | None = None, offset: int = 0) -> ExfatReader:
    return open_fs_reader(ExfatReader, img, offset, size)


# ----------------------------------------------------------------------------- end to end

ROUNDTRIP = {
    # id: (size MiB, mkfs.exfat args, how it is filled)
    "exfat-16M-nearly-full": (16, ["-L", "DV exFAT"], "full"),
    "exfat-64M-c4K-fragmented": (64, ["-c", "4K", "-L", "Fragmented"], "fragmented"),
    "exfat-200M-c128K": (200, ["-c", "128K", "-L", "BigClusters"], "tree"),
    "exfat-64M-empty": (64, [], "empty"),
}


@pytest.mark.root
@pytest.mark.parametrize("case", list(ROUNDTRIP))
def test_image_restore_roundtrip(tmp_path, monkeypatch, case):
    from diskvault.imaging.create import ImageOptions, create_image
    from diskvault.imaging.inspect import describe_image
    from diskvault.imaging.restore import RestoreOptions, restore_image
    from diskvault.imaging.verify import verify_image

    size_mib, args, variant = ROUNDTRIP[case]
    fs_img = mkfs(tmp_path, size_mib, *args)
    df_used = populate(fs_img, tmp_path, variant, size_mib)
    if variant == "full":
        assert df_used > 0.9 * size_mib * MiB
    fs_used = exfat_used_bytes(fs_img)
    assert open_reader(fs_img).info().used_bytes == fs_used
    disk, start, size = gpt_disk(tmp_path, fs_img, MS_BASIC_DATA)

    monkeypatch.setattr(registry, "READERS", [ExfatReader, *registry.READERS])
    (tmp_path / "img").mkdir()
    res = create_image(ImageOptions(source=str(disk), to=str(tmp_path / "img")))
    assert verify_image(res.image).ok
    restored = tmp_path / "restored.img"
    restore_image(RestoreOptions(image=res.image, target=str(restored)))

    part = describe_image(res.image)["partitions"][0]
    assert part["method"] == "used-blocks", part["note"]
    assert part["fs"]["fstype"] == "exfat" and part["fs"]["used_bytes"] == fs_used
    # only used blocks were read: df's used space (which counts the ~2 MiB in front of the
    # cluster heap) within 5 %, plus the GPT areas (1 MiB at each end of the disk)
    print(f"{case}: df used {df_used}, reader used {fs_used}, bytes read {res.bytes_read}")
    assert abs(res.bytes_read - df_used) <= 0.05 * df_used + 2 * MiB
    assert abs(res.bytes_read - 2 * MiB - fs_used) <= 0.05 * fs_used
    if variant != "full":
        assert res.bytes_read < size // 2

    out_part = extract_range(restored, start, size, tmp_path / "out-part.img")
    fsck = run("fsck.exfat", "-n", out_part, check=False)
    assert fsck.returncode == 0 and "clean" in fsck.stdout, fsck.stdout + fsck.stderr
    with fuse_mount(disk, tmp_path / "src", start, size, ro=True) as mnt:
        want = tree_hashes(mnt)
    with fuse_mount(restored, tmp_path / "dst", start, size, ro=True) as mnt:
        got = tree_hashes(mnt)
    assert got == want
    assert (len(want) > 20) == (variant != "empty")
    if variant != "empty":
        assert want == tree_hashes(tmp_path / "tree") | {
            k: v for k, v in want.items() if k.startswith("frag") or k == "BIG.BIN"
        }


# ----------------------------------------------------------------------------- used clusters


@pytest.mark.parametrize(
    "size_mib,args",
    [
        (16, ["-c", "512"]),
        (32, []),
        (48, ["-c", "32K"]),
        (64, ["-c", "1M"]),
        (24, ["--pack-bitmap"]),
        (40, ["-b", "64K"]),
    ],
)
def test_used_bytes_match_dump_exfat(tmp_path, size_mib, args):
    img = mkfs(tmp_path, size_mib, *args)
    reader = open_reader(img)
    ext = reader.used_extents()
    assert ext.dtype == np.uint64 and ext.ndim == 2 and ext.shape[1] == 2
    assert np.all(ext[:, 1] > 0) and np.all(ext[1:, 0] > ext[:-1, 0] + ext[:-1, 1]), "sorted and merged"
    d = dump(img)
    assert (reader.clusters, reader.cluster_size) == (d["clusters"], d["cluster_size"])
    assert total(ext) == reader.info().used_bytes == exfat_used_bytes(img)
    assert ext[0, 0] == 0 and ext[0, 1] >= 24 * 512  # both boot regions
    ss = reader.sector_size
    fat = np.array([[d["fat_offset"] * ss, d["fat_length"] * ss]], dtype=np.uint64)
    assert total(ext) - total(np.vstack([ext[:1], fat])) == (d["clusters"] - d["free"]) * d["cluster_size"]


@pytest.mark.root
def test_populated_volume_used_bytes_match(tmp_path):
    img = mkfs(tmp_path, 32, "-c", "2K")
    df_used = populate(img, tmp_path, "fragmented", 32)
    reader = open_reader(img)
    d = dump(img)
    used_clusters = d["clusters"] - d["free"]
    assert reader.info().used_bytes == exfat_used_bytes(img)
    # statvfs counts everything in front of the cluster heap as used
    assert df_used == d["heap"] * 512 + used_clusters * d["cluster_size"]
    assert reader.used_extents().shape[0] > 10  # the deleted files left holes
    assert reader.info().note == ""


@pytest.mark.root
def test_4k_sectors(tmp_path):
    img = tmp_path / "fs.img"
    with open(img, "wb") as f:
        f.truncate(64 * MiB)
    with loop_device(img, sector_size=4096) as dev:
        run("mkfs.exfat", "-L", "Sect4K", dev)
    reader = open_reader(img)
    assert reader.sector_size == 4096 and reader.info().label == "Sect4K"
    ext = reader.used_extents()
    assert ext[0, 0] == 0 and ext[0, 1] == 24 * 4096
    assert total(ext) == exfat_used_bytes(img)


# ----------------------------------------------------------------------------- info


def blkid(img: Path) -> dict[str, str]:
    out = run("blkid", "-p", "-o", "export", img).stdout  # export escapes spaces etc. with "\\"
    return {k: re.sub(r"\\(.)", r"\1", v) for k, v in (ln.split("=", 1) for ln in out.splitlines() if "=" in ln)}


def test_info_matches_blkid_and_tune_exfat(tmp_path):
    img = mkfs(tmp_path, 16, "-L", "My Volume")
    run("tune.exfat", "-I", "0x1234ABCD", img)
    info = open_reader(img).info()
    blk = blkid(img)
    assert (blk["TYPE"], blk["LABEL"], blk["UUID"]) == ("exfat", info.label, info.uuid)
    assert (info.fstype, info.label, info.uuid, info.note) == ("exfat", "My Volume", "1234-ABCD", "")
    assert info.size == 16 * MiB and info.block_size == 4096
    assert "My Volume" in run("tune.exfat", "-l", img).stdout


def test_unicode_label_and_no_label(tmp_path):
    img = mkfs(tmp_path, 8, "-L", "Café Ωmega")
    assert open_reader(img).info().label == "Café Ωmega"
    assert "Café Ωmega" in run("tune.exfat", "-l", img).stdout
    img = mkfs(tmp_path, 8, name="nolabel.img")
    assert open_reader(img).info().label == "" and "LABEL" not in blkid(img)


def test_fs_inside_a_larger_window_at_an_offset(tmp_path):
    img = mkfs(tmp_path, 16, "-L", "Offset")
    disk, start, size = gpt_disk(tmp_path, img, MS_BASIC_DATA)
    reader = open_reader(disk, offset=start, size=size + MiB // 2)
    assert np.array_equal(reader.used_extents(), open_reader(img).used_extents())
    assert reader.info().label == "Offset"
    with open(img, "rb") as f:  # any seekable binary file works, not only a Window
        assert ExfatReader.probe(f, size)
        assert np.array_equal(ExfatReader(f, size).used_extents(), reader.used_extents())


# ----------------------------------------------------------------------------- probe


def test_probe(tmp_path):
    def probes(img: Path, size: int | None = None) -> bool:
        fd = os.open(img, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size if size is None else size
            return ExfatReader.probe(base.Window(fd, 0, size), size)
        finally:
            os.close(fd)

    img = mkfs(tmp_path, 8)
    assert probes(img) and not probes(img, 100)
    zero = tmp_path / "zero.img"
    zero.write_bytes(bytes(MiB))
    assert not probes(zero)
    other = {
        "ext4": ["mke2fs", "-q", "-F", "-t", "ext4"],
        "vfat": ["mkfs.fat", "-F", "16"],
        "ntfs": ["mkntfs", "-q", "-F", "-f"],
    }
    for name, cmd in other.items():
        if shutil.which(cmd[0]):
            other_img = tmp_path / f"{name}.img"
            with open(other_img, "wb") as f:
                f.truncate(16 * MiB)
            run(*cmd, other_img)
            assert not probes(other_img), name


def test_probe_through_the_registry(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "READERS", [ExfatReader, *registry.READERS])
    img = mkfs(tmp_path, 8)
    fd = os.open(img, os.O_RDONLY)
    try:
        assert base.probe(base.Window(fd, 0, 8 * MiB)) is ExfatReader
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- corruption

CORRUPT_BOOT = {  # boot sector field (offset, format, value, message); the checksum is fixed after
    "jump": (0, "<B", 0xE9, "jump"),
    "must_be_zero": (20, "<B", 1, "MustBeZero"),
    "sector_shift_8": (108, "<B", 8, "BytesPerSectorShift"),
    "sector_shift_13": (108, "<B", 13, "BytesPerSectorShift"),
    "cluster_shift": (109, "<B", 17, "SectorsPerClusterShift"),
    "revision": (104, "<H", 0x0200, "revision 2"),
    "no_fats": (110, "<B", 0, "NumberOfFats"),
    "three_fats": (110, "<B", 3, "NumberOfFats"),
    "volume_too_small": (72, "<Q", 100, "below 1 MiB"),
    "volume_beyond_partition": (72, "<Q", 1 << 40, "partition has only"),
    "fat_in_boot_region": (80, "<I", 12, "boot regions"),
    "fat_too_short": (84, "<I", 1, "too small"),
    "fat_overlaps_heap": (80, "<I", 4090, "ClusterHeapOffset"),
    "heap_beyond_volume": (88, "<I", 1 << 30, "beyond the volume"),
    "cluster_count": (92, "<I", 1 << 20, "ClusterCount"),
    "cluster_count_zero": (92, "<I", 0, "ClusterCount"),
    "root_cluster_0": (96, "<I", 0, "root directory cluster"),
    "root_cluster_big": (96, "<I", 1 << 20, "root directory cluster"),
    "root_cluster_is_bitmap": (96, "<I", 2, "Allocation Bitmap"),  # cluster 2 holds the bitmap
}


@pytest.mark.parametrize("case", list(CORRUPT_BOOT))
def test_corrupt_boot_sector_raises(tmp_path, case):
    img = mkfs(tmp_path, 16)
    off, fmt, value, msg = CORRUPT_BOOT[case]
    patch(img, off, fmt, value)
    if not case.startswith(("sector_shift", "cluster_shift")):  # (needed to find the checksum)
        with pytest.raises(FilesystemError, match="checksum"):  # first the boot checksum catches it
            open_reader(img)
    fix_checksum(img)
    with pytest.raises(FilesystemError, match=msg):
        open_reader(img)


def test_boot_checksum_matches_mkfs(tmp_path):
    img = mkfs(tmp_path, 8)
    raw = img.read_bytes()
    assert struct.unpack_from("<I", raw, 11 * 512)[0] == boot_checksum(raw, 512)
    # the backup boot region is a copy (and is imaged too)
    assert raw[: 12 * 512] == raw[12 * 512 : 24 * 512]


def root_dir_offset(reader: ExfatReader) -> int:
    return reader._cluster_offset(reader.boot["FirstClusterOfRootDirectory"])


def find_entry(img: Path, reader: ExfatReader, entry_type: int) -> int:
    off = root_dir_offset(reader)
    raw = img.read_bytes()[off : off + reader.cluster_size]
    for i in range(0, len(raw), 32):
        if raw[i] == entry_type:
            return off + i
    raise AssertionError(f"no entry 0x{entry_type:02X}")


def test_corrupt_root_directory_raises(tmp_path):
    img = mkfs(tmp_path, 16)
    reader = open_reader(img)
    bitmap = find_entry(img, reader, 0x81)
    upcase = find_entry(img, reader, 0x82)
    root = reader.boot["FirstClusterOfRootDirectory"]
    fat = reader.boot["FatOffset"] * 512
    good = img.read_bytes()

    def case(offset: int, fmt: str, value, msg: str) -> None:
        img.write_bytes(good)
        patch(img, offset, fmt, value)
        with pytest.raises(FilesystemError, match=msg):
            open_reader(img)

    case(bitmap, "<B", 0x01, "no Allocation Bitmap")  # the bitmap entry marked deleted
    case(upcase, "<B", 0x02, "no Up-case Table")
    case(bitmap + 20, "<I", 1 << 20, "outside the cluster heap")
    case(bitmap + 20, "<I", 0, "outside the cluster heap")
    case(bitmap + 24, "<Q", 3, "Allocation Bitmap has 3 bytes")
    case(upcase + 24, "<Q", 1 << 40, "outside the cluster heap")
    case(fat + root * 4, "<I", 0, "chain is broken")  # the root directory's FAT entry freed
    case(fat + root * 4, "<I", root, "too long")  # a loop
    img.write_bytes(good)
    end = find_entry(img, reader, 0x00)  # the end-of-directory slot
    with open(img, "r+b") as f:  # a second bitmap entry although there is one FAT
        f.seek(end)
        f.write(good[bitmap : bitmap + 32])
    with pytest.raises(FilesystemError, match="2 Allocation Bitmaps for 1 FATs"):
        open_reader(img)


def test_dirty_volume_is_a_warning(tmp_path):
    img = mkfs(tmp_path, 16)
    assert open_reader(img).info().note == ""
    patch(img, 106, "<H", 0x0002)  # VolumeFlags is not covered by the checksum
    assert "dirty" in open_reader(img).info().note
    patch(img, 106, "<H", 0x0004)
    assert "media failures" in open_reader(img).info().note


def test_system_clusters_missing_from_the_bitmap_are_imaged_anyway(tmp_path):
    img = mkfs(tmp_path, 16)
    reader = open_reader(img)
    before = reader.used_extents()
    bitmap = reader._cluster_offset(reader.bitmaps[0]["FirstCluster"])
    patch(img, bitmap, "<B", 0)  # clear the bits of clusters 2..9 (bitmap, up-case, root)
    reader = open_reader(img)
    assert np.array_equal(reader.used_extents(), before)
    assert "Allocation Bitmap does not mark" in reader.info().note


def test_truncated_partition_raises(tmp_path):
    img = mkfs(tmp_path, 16)
    with pytest.raises(FilesystemError, match="partition has only"):
        open_reader(img, size=8 * MiB)
    fd = open_fd(img)
    with pytest.raises(FilesystemError, match="truncated"):
        ExfatReader(base.Window(fd, 0, 4096), 4096)


def test_2gib_exfat_is_fast(tmp_path):
    img = tmp_path / "big.img"
    with open(img, "wb") as f:
        f.truncate(2048 * MiB)
    run("mkfs.exfat", "-c", "512", img)  # 4 million clusters: a 512 KiB bitmap
    t0 = time.perf_counter()
    reader = open_reader(img)
    ext = reader.used_extents()
    elapsed = time.perf_counter() - t0
    assert reader.clusters > 4_000_000 and ext.shape[0] <= 3  # boot regions, FAT, system clusters
    assert elapsed < 1.0, f"used_extents took {elapsed:.3f}s"
