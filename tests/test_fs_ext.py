"""ExtReader against real ext2/3/4 images made by mke2fs; dumpe2fs's free-block lists are the oracle."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from diskutil import garbage_file, open_fs_reader, patch

from diskvault.errors import FilesystemError
from diskvault.fs import base
from diskvault.fs.ext import ExtReader

MiB = 1 << 20

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("mke2fs", "dumpe2fs", "debugfs")), reason="needs e2fsprogs"
)

ENV = {**os.environ, "MKE2FS_CONFIG": os.environ.get("MKE2FS_CONFIG", "/etc/mke2fs.conf"), "LC_ALL": "C"}


def run(*args: str | Path) -> str:
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True, env=ENV).stdout


# ----------------------------------------------------------------------------- fixtures / helpers


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A directory of files of varied sizes (random data, text, a sparse file, nested dirs)."""
    root = tmp_path_factory.mktemp("tree")
    rng = np.random.default_rng(1234)
    for i, size in enumerate([0, 1, 700, 1024, 4095, 4096, 9000, 65536, 300_000, 1_500_000, 3_000_000]):
        (root / f"rand{i}.bin").write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    (root / "text.txt").write_text("hello ext\n" * 5000)
    with open(root / "sparse.bin", "wb") as f:
        f.write(b"head")
        f.seek(2 * MiB)
        f.write(b"tail")
    for d in range(3):
        sub = root / f"dir{d}" / "nested"
        sub.mkdir(parents=True)
        for j in range(20):
            (sub / f"f{j}").write_bytes(random_bytes(rng, int(rng.integers(1, 20_000))))
    os.symlink("text.txt", root / "link")
    return root


def random_bytes(rng: np.random.Generator, size: int) -> bytes:
    return rng.integers(0, 256, size, dtype=np.uint8).tobytes()


def make_fs(
    tmp_path: Path, size: int, *mkfs_args: str, src: Path | None = None, garbage: bool = False
) -> Path:
    """mke2fs on a fresh image file; ``garbage`` first fills it with random bytes (and keeps
    mke2fs from discarding them) so structures mke2fs leaves unwritten hold junk, as on a used disk."""
    img = tmp_path / "fs.img"
    if garbage:
        garbage_file(img, size, seed=99)
    else:
        with open(img, "wb") as f:
            f.truncate(size)
    args = ["mke2fs", "-q", "-F", *mkfs_args]
    if garbage:  # mke2fs keeps only the last -E: merge
        i = args.index("-E") + 1 if "-E" in args else None
        if i is None:
            args += ["-E", "nodiscard"]
        else:
            args[i] += ",nodiscard"
    if src is not None:
        args += ["-d", str(src)]
    run(*args, img)
    return img


def open_reader(img: Path) -> ExtReader:
    return open_fs_reader(ExtReader, img)


def dumpe2fs_used(img: Path) -> tuple[np.ndarray, int, str]:
    """Per-block used mask as dumpe2fs sees it (complement of its "Free blocks" lists)."""
    out = run("dumpe2fs", img)
    count = int(re.search(r"^Block count:\s+(\d+)", out, re.M).group(1))
    bs = int(re.search(r"^Block size:\s+(\d+)", out, re.M).group(1))
    used = np.ones(count, dtype=bool)
    lines = re.findall(r"^\s+Free blocks: ?(.*)$", out, re.M)
    assert len(lines) == len(re.findall(r"^Group \d+:", out, re.M))
    for line in lines:
        for part in filter(None, (p.strip() for p in line.split(","))):
            a, _, b = part.partition("-")
            used[int(a) : int(b or a) + 1] = False
    return used, bs, out


def extents_to_mask(ext: np.ndarray, bs: int, count: int) -> np.ndarray:
    mask = np.zeros(count, dtype=bool)
    for start, length in ext.tolist():
        assert start % bs == 0 and length % bs == 0, (start, length)
        mask[start // bs : (start + length) // bs] = True
    return mask


def assert_matches_dumpe2fs(img: Path) -> tuple[ExtReader, str]:
    reader = open_reader(img)
    ext = reader.used_extents()
    assert ext.dtype == np.uint64 and ext.ndim == 2 and ext.shape[1] == 2
    starts, ends = ext[:, 0], ext[:, 0] + ext[:, 1]
    assert np.all(ext[:, 1] > 0)
    assert np.all(starts[1:] > ends[:-1]), "extents must be sorted and merged"
    want, bs, out = dumpe2fs_used(img)
    assert reader.block_size == bs
    got = extents_to_mask(ext, bs, want.size)
    assert int(ends[-1]) <= want.size * bs
    diff = np.flatnonzero(got != want)
    assert diff.size == 0, f"{diff.size} blocks differ, first: {diff[:10].tolist()} (ours: {got[diff[:10]]})"
    info = reader.info()
    assert info.note == ""
    assert info.used_bytes == int(want.sum()) * bs
    return reader, out


# ----------------------------------------------------------------------------- the matrix

MATRIX = {
    # id: (image size, mke2fs args)
    "ext2-1k": (24 * MiB + 77 * 1024, ["-t", "ext2", "-b", "1024"]),
    "ext3": (40 * MiB, ["-t", "ext3", "-b", "4096", "-g", "4096"]),
    "ext4-default": (48 * MiB, ["-t", "ext4"]),
    "ext4-4k": (100 * MiB + 12 * 4096, ["-t", "ext4", "-b", "4096", "-g", "8192"]),
    "ext4-no-flex_bg": (48 * MiB + 5 * 1024, ["-t", "ext4", "-b", "1024", "-O", "^flex_bg"]),
    "ext4-meta_bg": (64 * MiB, ["-t", "ext4", "-b", "1024", "-g", "1024", "-O", "meta_bg,^resize_inode"]),
    "ext4-meta_bg-32bit": (
        40 * MiB,
        ["-t", "ext4", "-b", "1024", "-g", "512", "-O", "meta_bg,^resize_inode,^64bit"],
    ),
    "ext4-64bit": (64 * MiB, ["-t", "ext4", "-b", "4096", "-g", "2048", "-O", "64bit"]),
    "ext4-32bit": (64 * MiB, ["-t", "ext4", "-b", "4096", "-g", "2048", "-O", "^64bit"]),
    "ext4-uninit_bg": (32 * MiB, ["-t", "ext4", "-b", "1024", "-O", "^metadata_csum,uninit_bg"]),
    "ext4-sparse_super2": (64 * MiB, ["-t", "ext4", "-b", "1024", "-O", "sparse_super2"]),
    "ext4-no-sparse_super": (48 * MiB, ["-t", "ext4", "-b", "1024", "-O", "^sparse_super,^resize_inode"]),
    "ext4-2k": (56 * MiB + 2048, ["-t", "ext4", "-b", "2048"]),
    "ext4-64k": (128 * MiB, ["-t", "ext4", "-b", "65536"]),
    "ext2-nofeatures": (16 * MiB, ["-t", "ext2", "-b", "1024", "-O", "none"]),
    "ext2-rev0": (16 * MiB, ["-t", "ext2", "-b", "1024", "-r", "0"]),
}


@pytest.mark.parametrize("case", list(MATRIX))
def test_used_extents_match_dumpe2fs(tmp_path, tree, case):
    size, args = MATRIX[case]
    img = make_fs(tmp_path, size, *args, src=tree)
    reader, out = assert_matches_dumpe2fs(img)
    assert reader.groups > 1 or case == "ext4-64k"
    if case == "ext4-meta_bg":
        assert reader.meta_bg and reader.groups > 2 * reader.desc_per_block  # several metablock groups
    if case.endswith("32bit"):
        assert reader.desc_size == 32
    if case == "ext4-64bit":
        assert reader.desc_size == 64
    if case == "ext4-2k":
        assert reader.block_size == 2048


def test_empty_fs_without_files(tmp_path):
    assert_matches_dumpe2fs(make_fs(tmp_path, 16 * MiB, "-t", "ext4", "-b", "1024"))


def test_block_uninit_groups(tmp_path, tree):
    img = make_fs(
        tmp_path, 96 * MiB, "-t", "ext4", "-b", "1024", "-g", "2048", "-E", "lazy_itable_init=1",
        src=tree, garbage=True,
    )
    reader, out = assert_matches_dumpe2fs(img)
    # the on-disk bitmap blocks of BLOCK_UNINIT groups hold junk: reading them would be wrong
    group = int(re.findall(r"^Group (\d+):.*BLOCK_UNINIT", out, re.M)[0])
    bitmap = open_reader(img)._fh.pread(int(reader.block_bitmap[group]) * 1024, 1024)
    assert bitmap != bytes(1024)
    uninit_groups = re.findall(r"^Group (\d+):.*BLOCK_UNINIT", out, re.M)
    assert len(uninit_groups) >= 3, "the test must exercise BLOCK_UNINIT groups"
    # some of those groups carry a backup superblock (sparse_super: 1, 3, 5, 7, 9, 25, 27, 49)
    assert set(uninit_groups) & {"3", "5", "7", "9", "25", "27"}


def test_fragmented_fs(tmp_path):
    src = tmp_path / "many"
    src.mkdir()
    rng = np.random.default_rng(7)
    for i in range(400):
        (src / f"f{i:03d}").write_bytes(random_bytes(rng, int(rng.integers(1, 40_000))))
    img = make_fs(tmp_path, 32 * MiB, "-t", "ext4", "-b", "1024", src=src)
    cmds = tmp_path / "cmds"
    cmds.write_text("".join(f"rm /f{i:03d}\n" for i in range(0, 400, 2)))
    run("debugfs", "-w", "-f", cmds, img)
    reader, _ = assert_matches_dumpe2fs(img)
    assert reader.used_extents().shape[0] > 50  # many holes


def test_debugfs_write(tmp_path, tree):
    img = make_fs(tmp_path, 32 * MiB, "-t", "ext3", "-b", "1024", src=tree)
    big = tmp_path / "big.bin"
    big.write_bytes(np.random.default_rng(3).integers(0, 256, 2 * MiB, dtype=np.uint8).tobytes())
    run("debugfs", "-w", "-R", f"write {big} big.bin", img)
    assert_matches_dumpe2fs(img)


# ----------------------------------------------------------------------------- info / probe


@pytest.mark.parametrize(
    "args,fstype",
    [
        (["-t", "ext2", "-b", "1024"], "ext2"),
        (["-t", "ext3", "-b", "1024"], "ext3"),
        (["-t", "ext4", "-b", "1024"], "ext4"),
        (["-t", "ext2", "-b", "1024", "-O", "extent"], "ext4"),
        (["-t", "ext3", "-b", "1024", "-O", "^huge_file"], "ext3"),
    ],
)
def test_info_matches_dumpe2fs_and_blkid(tmp_path, args, fstype):
    img = make_fs(tmp_path, 16 * MiB, *args, "-L", "my-label", "-U", "0123abcd-4567-89ab-cdef-0123456789AB")
    info = open_reader(img).info()
    head = run("dumpe2fs", "-h", img)
    assert info.fstype == fstype
    assert info.label == "my-label" == re.search(r"^Filesystem volume name:\s+(.*)$", head, re.M).group(1)
    assert info.uuid == "0123abcd-4567-89ab-cdef-0123456789ab"
    assert info.uuid == re.search(r"^Filesystem UUID:\s+(\S+)", head, re.M).group(1)
    count = int(re.search(r"^Block count:\s+(\d+)", head, re.M).group(1))
    free = int(re.search(r"^Free blocks:\s+(\d+)", head, re.M).group(1))
    assert (info.block_size, info.size, info.used_bytes) == (1024, count * 1024, (count - free) * 1024)
    if shutil.which("blkid"):
        blk = dict(
            line.split("=", 1) for line in run("blkid", "-p", "-o", "export", img).splitlines() if "=" in line
        )
        assert (blk["TYPE"], blk["UUID"], blk["LABEL"]) == (info.fstype, info.uuid, info.label)


def test_info_without_label(tmp_path):
    info = open_reader(make_fs(tmp_path, 8 * MiB, "-t", "ext4")).info()
    assert info.label == "" and re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", info.uuid)


def test_probe(tmp_path):
    zero = tmp_path / "zero.img"
    zero.write_bytes(bytes(MiB))
    fd = os.open(zero, os.O_RDONLY)
    try:
        win = base.Window(fd, 0, MiB)
        assert not ExtReader.probe(win, win.size)
        assert base.probe(win) is None
        assert not ExtReader.probe(base.Window(fd, 0, 1500), 1500)
        with pytest.raises(FilesystemError):
            ExtReader(win, win.size)
    finally:
        os.close(fd)
    img = make_fs(tmp_path, 8 * MiB, "-t", "ext2")
    fd = os.open(img, os.O_RDONLY)
    try:
        assert base.probe(base.Window(fd, 0, 8 * MiB)) is ExtReader
    finally:
        os.close(fd)


def test_fs_inside_a_larger_window_at_an_offset(tmp_path, tree):
    """A partition is a window at an offset: extents stay relative to the filesystem start."""
    img = make_fs(tmp_path, 16 * MiB, "-t", "ext4", "-b", "1024", src=tree)
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.write(b"\xAA" * MiB)
        f.write(img.read_bytes())
        f.write(b"\x55" * MiB)
    fd = os.open(disk, os.O_RDONLY)
    try:
        win = base.Window(fd, MiB, 17 * MiB)  # 1 MiB more than the filesystem
        reader = ExtReader(win, win.size)
        assert np.array_equal(reader.used_extents(), open_reader(img).used_extents())
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- refusals


def test_bigalloc_refused(tmp_path):
    img = make_fs(tmp_path, 64 * MiB, "-t", "ext4", "-O", "bigalloc", "-C", "16384")
    reader = open_reader(img)
    with pytest.raises(FilesystemError, match="ext4 bigalloc is not supported; imaging every block"):
        reader.used_extents()
    info = reader.info()  # the superblock facts are still reported
    assert info.fstype == "ext4" and "bigalloc" in info.note


def test_external_journal_device(tmp_path):
    img = make_fs(tmp_path, 8 * MiB, "-O", "journal_dev", "-L", "jnl")
    reader = open_reader(img)
    info = reader.info()
    assert (info.fstype, info.label) == ("jbd", "jnl") and "imaging every block" in info.note
    with pytest.raises(FilesystemError, match="journal device"):
        reader.used_extents()


def test_plain_file_object(tmp_path):
    """Any seekable binary file works, not only a Window."""
    img = make_fs(tmp_path, 8 * MiB, "-t", "ext4", "-b", "1024")
    with open(img, "rb") as f:
        assert ExtReader.probe(f, 8 * MiB)
        ext = ExtReader(f, 8 * MiB).used_extents()
    assert np.array_equal(ext, open_reader(img).used_extents())


def test_needs_recovery_refused(tmp_path):
    img = make_fs(tmp_path, 16 * MiB, "-t", "ext4", "-b", "1024")
    run("debugfs", "-w", "-R", "feature needs_recovery", img)
    with pytest.raises(FilesystemError, match="needs recovery"):
        open_reader(img).used_extents()


def test_unclean_ext2_refused(tmp_path):
    img = make_fs(tmp_path, 16 * MiB, "-t", "ext2", "-b", "1024")
    run("debugfs", "-w", "-R", "ssv state 0", img)
    with pytest.raises(FilesystemError, match="not cleanly unmounted"):
        open_reader(img).used_extents()


def test_free_count_mismatch_is_a_warning(tmp_path, tree):
    img = make_fs(tmp_path, 16 * MiB, "-t", "ext4", "-b", "1024", src=tree)
    run("debugfs", "-w", "-R", "ssv free_blocks_count 5", img)
    reader = open_reader(img)
    want, bs, _ = dumpe2fs_used(img)
    assert np.array_equal(extents_to_mask(reader.used_extents(), bs, want.size), want)
    assert "warning" in reader.info().note and "superblock" in reader.info().note


SB = 1024
CORRUPTIONS = {
    "log_block_size": (SB + 0x18, "<I", 20),
    "blocks_per_group": (SB + 0x20, "<I", 1 << 30),
    "blocks_per_group_zero": (SB + 0x20, "<I", 0),
    "inodes_count": (SB + 0x00, "<I", 12345),
    "blocks_count_beyond_device": (SB + 0x04, "<I", 1 << 31),
    "blocks_count_zero": (SB + 0x04, "<I", 0),
    "first_data_block": (SB + 0x14, "<I", 7),
    "inode_size": (SB + 0x58, "<H", 100),
    "desc_size": (SB + 0xFE, "<H", 48),
    "reserved_gdt": (SB + 0xCE, "<H", 4000),
    "block_bitmap_pointer": (2048 + 0x00, "<I", 0xFFFFFF00),  # group 0's descriptor (1K blocks)
    "inode_table_pointer": (2048 + 0x08, "<I", 65000),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupt_superblock_raises(tmp_path, case):
    img = make_fs(tmp_path, 16 * MiB, "-t", "ext4", "-b", "1024")
    patch(img, *CORRUPTIONS[case])
    with pytest.raises(FilesystemError):
        open_reader(img).used_extents()


def test_corrupt_meta_bg_first_meta_bg(tmp_path):
    img = make_fs(tmp_path, 16 * MiB, "-t", "ext4", "-b", "1024", "-g", "256", "-O", "meta_bg,^resize_inode")
    patch(img, SB + 0x104, "<I", 999)
    with pytest.raises(FilesystemError):
        open_reader(img)


def test_truncated_image_raises(tmp_path):
    img = make_fs(tmp_path, 16 * MiB, "-t", "ext4", "-b", "1024")
    fd = os.open(img, os.O_RDONLY)
    try:
        win = base.Window(fd, 0, 8 * MiB)
        assert ExtReader.probe(win, win.size)
        with pytest.raises(FilesystemError, match="partition"):
            ExtReader(win, win.size)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- speed


def test_2gib_ext4_is_fast(tmp_path):
    img = make_fs(tmp_path, 2048 * MiB, "-t", "ext4", "-E", "lazy_itable_init=1,lazy_journal_init=1")
    fd = os.open(img, os.O_RDONLY)
    try:
        win = base.Window(fd, 0, 2048 * MiB)
        t0 = time.perf_counter()
        reader = ExtReader(win, win.size)
        ext = reader.used_extents()
        elapsed = time.perf_counter() - t0
    finally:
        os.close(fd)
    assert reader.info().note == "" and ext.shape[0] > 0
    assert elapsed < 0.5, f"used_extents took {elapsed:.3f}s"
