"""BtrfsReader against real btrfs images made by mkfs.btrfs and written by the kernel.

Oracle: ``btrfs inspect-internal dump-tree`` (chunk and extent trees) gives the allocated extents
independently of our parser; ``btrfs check`` and a read-only mount judge the restored copies.
btrfs identifies devices by fsid: the source and its restored copy are never mounted together,
and every loop device is forgotten by the btrfs module before it is detached.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from diskutil import LINUX, loop_device, make_tree, manifest, mounted, open_fd, open_fs_reader
from diskutil import patch as patch_bytes

from diskvault.errors import FilesystemError
from diskvault.fs import base
from diskvault.fs import c_btrfs as C
from diskvault.fs.btrfs import BtrfsReader, crc32c, crc32c_many
from diskvault.fs.extents import complement, merge
from diskvault.imaging.pipeline import READ_THROUGH_GAP

MiB = 1 << 20
# read beyond the used bytes: the GPT areas outside the partition (1 MiB before, 1 MiB after) and
# btrfs's own first MiB (boot loader area, never allocated) + the superblock copies
ALLOWANCE = 3 * MiB + 2 * C.SUPER_INFO_SIZE

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("mkfs.btrfs", "btrfs", "sfdisk")), reason="needs btrfs-progs"
)


def run(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], check=check, capture_output=True, text=True,
                          env={**os.environ, "LC_ALL": "C"})


def garbage_file(path: Path, size: int) -> None:
    """``size`` bytes of non-zero junk (a random MiB repeated), as on a used disk."""
    block = np.random.default_rng(99).bytes(MiB)
    with open(path, "wb") as f:
        f.writelines(block for _ in range(size // MiB))


def make_btrfs(path: Path, size_mib: int, *args: str, rootdir: Path | None = None) -> Path:
    garbage_file(path, size_mib * MiB)
    extra = ["--rootdir", str(rootdir)] if rootdir else []
    run("mkfs.btrfs", "-f", "-q", "-K", *args, *extra, path)  # -K: no discard, the junk stays
    return path


@contextlib.contextmanager
def btrfs_loop(path: Path, offset: int = 0, size: int | None = None, read_only: bool = False):
    with loop_device(str(path), offset, size, read_only) as dev:
        try:
            yield dev
        finally:
            run("btrfs", "device", "scan", "--forget", dev, check=False)


def open_reader(img: Path, offset: int = 0, size: int | None = None) -> BtrfsReader:
    return open_fs_reader(BtrfsReader, img, offset, size)


def dump_super(img: Path) -> dict[str, str]:
    out = run("btrfs", "inspect-internal", "dump-super", img).stdout
    return dict(m.groups() for m in re.finditer(r"^(\S+)\s+(.*?)\s*$", out, re.MULTILINE))


def oracle_extents(img: Path) -> np.ndarray:
    """Used physical bytes per btrfs-progs' dump-tree: every EXTENT_ITEM / METADATA_ITEM mapped
    through every stripe of its chunk, the first MiB and the superblock copies."""
    nodesize = int(dump_super(img)["nodesize"])
    size = os.path.getsize(img)
    text = run("btrfs", "inspect-internal", "dump-tree", "-t", "chunk", img).stdout
    chunks = []
    for m in re.finditer(r"CHUNK_ITEM (\d+)\).*?length (\d+) .*?(?=\n\titem |\Z)", text, re.DOTALL):
        stripes = [int(s) for s in re.findall(r"stripe \d+ devid 1 offset (\d+)", m.group(0))]
        chunks.append((int(m.group(1)), int(m.group(2)), stripes))
    assert chunks
    text = run("btrfs", "inspect-internal", "dump-tree", "-t", "extent", img).stdout
    out = [(0, MiB)] + [(o, 4096) for o in (64 * 1024, 64 * MiB, 256 << 30) if o + 4096 <= size]
    for start, kind, off in re.findall(r"key \((\d+) (EXTENT_ITEM|METADATA_ITEM) (\d+)\)", text):
        start, length = int(start), (int(off) if kind == "EXTENT_ITEM" else nodesize)
        (logical, clen, stripes), = [c for c in chunks if c[0] <= start < c[0] + c[1]]
        assert start + length <= logical + clen
        out += [(s + start - logical, length) for s in stripes]
    return merge(np.array(out, dtype=np.uint64))


def fs_usage(mnt: str) -> dict[str, int]:
    out = run("btrfs", "filesystem", "usage", "-b", mnt).stdout
    return {k: int(re.search(rf"^\s+{k}:\s+(\d+)", out, re.MULTILINE).group(1)) for k in ("Device size", "Used")}


# ----------------------------------------------------------------------------- crc32c


def test_crc32c_matches_a_bytewise_reference():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)

    def ref(data: bytes) -> int:
        c = 0xFFFFFFFF
        for b in data:
            c = table[(c ^ b) & 0xFF] ^ (c >> 8)
        return c ^ 0xFFFFFFFF

    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert crc32c(b"") == 0
    rng = np.random.default_rng(5)
    for n in (1, 15, 16, 17, 100, 4064, 5000, 16352):
        data = rng.bytes(n)
        assert crc32c(data) == ref(data), n
    rows = rng.integers(0, 256, (5, 4064), dtype=np.uint8)
    assert crc32c_many(rows).tolist() == [ref(r.tobytes()) for r in rows]


# ----------------------------------------------------------------------------- against dump-tree

ORACLE = {
    # id: (size MiB, mkfs args)
    "dup-default": (128, ["-L", "dup"]),
    "single": (128, ["-m", "single", "-d", "single"]),
    "mixed": (64, ["--mixed"]),
    "nodesize-64k": (128, ["-n", "65536"]),
    "sectorsize-16k": (128, ["-s", "16384"]),
    "no-skinny-metadata": (128, ["-O", "^skinny-metadata"]),
    "sha256": (128, ["--csum", "sha256"]),
    "blake2": (128, ["--csum", "blake2"]),
    "xxhash": (128, ["--csum", "xxhash"]),
}


@pytest.fixture(scope="module")
def rootdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rootdir")
    make_tree(str(root), seed=3, files=40)
    rng = np.random.default_rng(8)
    (root / "big.bin").write_bytes(rng.bytes(6 * MiB))
    (root / "text.txt").write_text("btrfs text\n" * 20000)
    return root


@pytest.mark.parametrize("case", list(ORACLE))
def test_used_extents_match_dump_tree(tmp_path, rootdir, case):
    size, args = ORACLE[case]
    img = make_btrfs(tmp_path / "fs.img", size, *args, rootdir=rootdir)
    reader = open_reader(img)
    got = reader.used_extents()
    assert got.dtype == np.uint64 and got.shape[1] == 2
    assert np.all(got[1:, 0] > got[:-1, 0] + got[:-1, 1]), "sorted and merged"
    assert np.array_equal(got, oracle_extents(img))
    info = reader.info()
    assert info.note == ("btrfs xxhash64 checksums are not verified" if case == "xxhash" else "")
    if case == "dup-default":
        assert 2 in reader.chunk_nstripes.tolist()  # both DUP copies are in the oracle too


def test_info_matches_blkid_and_dump_super(tmp_path):
    img = make_btrfs(tmp_path / "fs.img", 128, "-L", "my-btrfs", "-U", "0123abcd-4567-89ab-cdef-0123456789AB")
    info = open_reader(img).info()
    sup = dump_super(img)
    blk = dict(line.split("=", 1) for line in run("blkid", "-p", "-o", "export", img).stdout.splitlines())
    assert (blk["TYPE"], blk["LABEL"], blk["UUID"]) == ("btrfs", "my-btrfs", info.uuid)
    assert info.uuid == "0123abcd-4567-89ab-cdef-0123456789ab" == sup["fsid"]
    assert (info.fstype, info.label, info.note) == ("btrfs", "my-btrfs", "")
    assert info.block_size == int(blk["BLOCK_SIZE"]) == int(sup["sectorsize"]) == 4096
    assert info.size == int(sup["dev_item.total_bytes"]) == 128 * MiB
    assert info.used_bytes == int(sup["bytes_used"]) > 0


def test_metadata_uuid(tmp_path):
    img = make_btrfs(tmp_path / "fs.img", 128, "-L", "muuid")
    run("btrfstune", "-m", img)  # new fsid; tree blocks keep the old one as metadata_uuid
    reader = open_reader(img)
    assert reader.sb["incompat_flags"] & C.INCOMPAT_METADATA_UUID
    assert reader.info().uuid == dump_super(img)["fsid"] != _uuid(reader.meta_fsid)
    assert np.array_equal(reader.used_extents(), oracle_extents(img))


def _uuid(raw: bytes) -> str:
    u = raw.hex()
    return f"{u[:8]}-{u[8:12]}-{u[12:16]}-{u[16:20]}-{u[20:]}"


def test_probe(tmp_path, monkeypatch):
    from diskvault.fs import registry

    monkeypatch.setattr(registry, "READERS", [BtrfsReader, *registry.READERS])
    zero = tmp_path / "zero.img"
    zero.write_bytes(bytes(2 * MiB))
    ext4 = tmp_path / "ext4.img"
    garbage_file(ext4, 32 * MiB)
    run("mkfs.ext4", "-q", "-F", ext4)
    vfat = tmp_path / "vfat.img"
    garbage_file(vfat, 32 * MiB)
    if shutil.which("mkfs.vfat"):
        run("mkfs.vfat", vfat)
    img = make_btrfs(tmp_path / "fs.img", 128)
    for path, want in ((zero, None), (ext4, "ext"), (vfat, "fat"), (img, "btrfs")):
        fd = open_fd(path)
        win = base.Window(fd, 0, os.path.getsize(path))
        assert BtrfsReader.probe(win, win.size) == (want == "btrfs"), path.name
        found = base.probe(win)
        assert (found.name if found else None) == want, path.name
        if want != "btrfs":
            with pytest.raises(FilesystemError):
                BtrfsReader(win, win.size)
    # too small a window for the superblock
    assert not BtrfsReader.probe(base.Window(fd, 0, 68 * 1024 - 1), 68 * 1024 - 1)  # fd: the btrfs image


def test_fs_inside_a_larger_window_at_an_offset(tmp_path):
    img = make_btrfs(tmp_path / "fs.img", 128)
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.write(b"\xAA" * MiB + img.read_bytes() + b"\x55" * MiB)
    assert np.array_equal(open_reader(disk, MiB, 129 * MiB).used_extents(), open_reader(img).used_extents())
    with pytest.raises(FilesystemError, match="partition"):  # the partition is smaller than the device
        open_reader(disk, MiB, 100 * MiB)


# ----------------------------------------------------------------------------- refusals / corruption


def fix_super_csum(img: Path) -> None:
    with open(img, "r+b") as f:
        f.seek(C.SUPER_INFO_OFFSET + 32)
        body = f.read(C.SUPER_INFO_SIZE - 32)
        f.seek(C.SUPER_INFO_OFFSET)
        f.write(struct.pack("<I", crc32c(body)))


def patch(img: Path, offset: int, fmt: str, value, fix: bool = True) -> None:
    patch_bytes(img, offset, fmt, value)
    if fix and C.SUPER_INFO_OFFSET <= offset < C.SUPER_INFO_OFFSET + C.SUPER_INFO_SIZE:
        fix_super_csum(img)


def sb_field(name: str) -> tuple[int, str]:
    (f,) = [f for f in C.SUPERBLOCK_FIELDS if f.name == name]
    return C.SUPER_INFO_OFFSET + f.offset, "<" + f.fmt


SUPER_CORRUPTIONS = {
    # id: (field, value or callable(sb) -> value, match)
    "sectorsize": ("sectorsize", 12345, "sector size"),
    "nodesize": ("nodesize", 2048, "node size"),
    "csum_type": ("csum_type", 9, "checksum type"),
    "bytenr": ("bytenr", 4096, "lives at"),
    "device_beyond_partition": ("dev_item_total_bytes", 1 << 40, "device size"),
    "root_unaligned": ("root", lambda sb: sb["root"] + 1, "aligned"),
    "root_level": ("root_level", 1, "level"),
    "chunk_root_elsewhere": ("chunk_root", lambda sb: sb["root"], "no chunk"),
    "chunk_root_generation": ("chunk_root_generation", lambda sb: sb["chunk_root_generation"] + 1, "generation"),
    "sys_chunk_array_empty": ("sys_chunk_array_size", 0, "sys_chunk_array"),
    "sys_chunk_array_huge": ("sys_chunk_array_size", 4000, "sys_chunk_array"),
    "sys_chunk_array_short": ("sys_chunk_array_size", 60, "truncated"),
    "num_devices": ("num_devices", 0, "num_devices"),
    "incompat_unknown": ("incompat_flags", lambda sb: sb["incompat_flags"] | 1 << 40, "unknown incompat"),
    "changing_fsid": ("flags", lambda sb: sb["flags"] | C.SUPER_FLAG_CHANGING_FSID, "btrfstune"),
    "dev_fsid": ("dev_item_fsid", b"\x11" * 16, "another filesystem"),
}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, rootdir) -> Path:
    return make_btrfs(tmp_path_factory.mktemp("pristine") / "fs.img", 128, rootdir=rootdir)


def fresh_copy(pristine: Path, tmp_path: Path) -> Path:
    img = tmp_path / "fs.img"
    shutil.copyfile(pristine, img)
    return img


@pytest.mark.parametrize("case", list(SUPER_CORRUPTIONS))
def test_corrupt_superblock_raises(tmp_path, pristine, case):
    img = fresh_copy(pristine, tmp_path)
    name, value, match = SUPER_CORRUPTIONS[case]
    if callable(value):
        value = value(open_reader(img).sb)
    patch(img, *sb_field(name), value)
    fd = open_fd(img)
    win = base.Window(fd, 0, os.path.getsize(img))
    with pytest.raises(FilesystemError, match=match):
        BtrfsReader(win, win.size).used_extents()


def test_bad_superblock_checksum(tmp_path, pristine):
    img = fresh_copy(pristine, tmp_path)
    patch(img, *sb_field("label"), b"changed", fix=False)
    fd = open_fd(img)
    win = base.Window(fd, 0, os.path.getsize(img))
    assert not BtrfsReader.probe(win, win.size)
    with pytest.raises(FilesystemError, match="checksum"):
        BtrfsReader(win, win.size)


def test_bytes_used_mismatch_images_whole_chunks(tmp_path, pristine):
    img = fresh_copy(pristine, tmp_path)
    reader = open_reader(img)
    patch(img, *sb_field("bytes_used"), reader.sb["bytes_used"] + 4096)
    reader = open_reader(img)
    ext = reader.used_extents()
    assert "warning" in reader.info().note and "every allocated chunk" in reader.info().note
    chunks = merge(reader._physical(reader.chunk_start, reader.chunk_len))
    assert int(ext[:, 1].sum()) >= int(chunks[:, 1].sum())


def node_physical(reader: BtrfsReader, logical: int) -> list[int]:
    i = int(np.searchsorted(reader.chunk_start, logical, side="right") - 1)
    rel = logical - int(reader.chunk_start[i])
    return [int(s) + rel for s in reader.chunk_stripes[i, : reader.chunk_nstripes[i]]]


def test_damaged_dup_copy_is_read_from_the_other(tmp_path, pristine):
    img = fresh_copy(pristine, tmp_path)
    reader = open_reader(img)
    want = reader.used_extents()
    root = reader.sb["root"]  # root tree block: DUP metadata
    first, second = node_physical(reader, root)
    patch(img, first + 200, "<Q", 0xDEADBEEF)
    assert np.array_equal(open_reader(img).used_extents(), want)
    patch(img, second + 200, "<Q", 0xDEADBEEF)
    with pytest.raises(FilesystemError, match="checksum mismatch"):
        open_reader(img).used_extents()


def test_node_header_checked_beyond_checksum(tmp_path, pristine):
    """A tree block with a valid checksum but the wrong address in its header is refused."""
    img = fresh_copy(pristine, tmp_path)
    reader = open_reader(img)
    reader.used_extents()
    ns = reader.nodesize
    with open(img, "r+b") as f:
        for phys in node_physical(reader, reader.sb["chunk_root"]):
            f.seek(phys)
            node = bytearray(f.read(ns))
            struct.pack_into("<Q", node, 0x30, struct.unpack_from("<Q", node, 0x30)[0] + ns)
            struct.pack_into("<I", node, 0, crc32c(bytes(node[32:])))
            f.seek(phys)
            f.write(node)
    with pytest.raises(FilesystemError, match="header names"):
        open_reader(img).used_extents()


def test_raid_profile_refused(tmp_path, pristine):
    img = make_btrfs(tmp_path / "fs.img", 128, "-d", "raid0", "-m", "single")
    with pytest.raises(FilesystemError, match="RAID profile RAID0: imaging every block"):
        open_reader(img).used_extents()
    # the system chunk in the superblock's bootstrap array, marked RAID1
    img = fresh_copy(pristine, tmp_path)
    off = C.SUPER_INFO_OFFSET + 0x32B + C.DISK_KEY.size + 0x18
    kind = open_reader(img).sb["sys_chunk_array"][C.DISK_KEY.size + 0x18]
    patch(img, off, "<Q", (kind & C.BLOCK_GROUP_TYPE_MASK) | C.BLOCK_GROUP_RAID1)
    with pytest.raises(FilesystemError, match="RAID profile RAID1"):
        open_reader(img).used_extents()


def test_several_devices_refused(tmp_path):
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    garbage_file(b, 128 * MiB)
    make_btrfs(a, 128, "-L", "two", str(b))
    reader = open_reader(a)
    info = reader.info()
    assert (info.fstype, info.label) == ("btrfs", "two") and "several devices" in info.note
    with pytest.raises(FilesystemError, match="several devices"):
        reader.used_extents()


# ----------------------------------------------------------------------------- end to end


def random_file(path: Path, size: int, seed: int) -> None:
    path.write_bytes(np.random.default_rng(seed).bytes(size))


def populate_tree(mnt: Path) -> None:
    make_tree(str(mnt), seed=11, files=60)
    random_file(mnt / "big1.bin", 20 * MiB, 1)
    random_file(mnt / "dir0" / "big2.bin", 9 * MiB + 12345, 2)
    (mnt / "text.txt").write_text("some text in a btrfs file\n" * 40000)


def populate_small(mnt: Path) -> None:
    make_tree(str(mnt), seed=12, files=30, max_size=200_000)
    random_file(mnt / "big.bin", 12 * MiB, 3)


def populate_fragmented(mnt: Path) -> None:
    rng = np.random.default_rng(4)
    for i in range(400):
        random_file(mnt / f"f{i:03d}", int(rng.integers(1, 120_000)), 100 + i)
    os.sync()
    for i in range(0, 400, 2):
        (mnt / f"f{i:03d}").unlink()
    os.sync()
    random_file(mnt / "big-after-delete.bin", 30 * MiB, 5)


def populate_nearly_full(mnt: Path) -> None:
    make_tree(str(mnt), seed=13, files=20, max_size=100_000)
    block = np.random.default_rng(6).bytes(MiB)
    fd = os.open(mnt / "fill.bin", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, block)
    except OSError as e:
        assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)


E2E = {
    # id: (size MiB, mkfs args, populate)
    "dup-256-populated": (256, ["-m", "dup", "-d", "single", "-L", "dv-dup"], populate_tree),
    "single-128-fragmented": (128, ["-m", "single", "-d", "single", "-L", "frag"], populate_fragmented),
    "single-128-nearly-full": (128, ["-m", "single", "-d", "single"], populate_nearly_full),
    "mixed-64": (64, ["--mixed", "-L", "mixed"], populate_small),
    "dup-128-empty": (128, [], None),
}
FIGURES: dict[str, str] = {}


@pytest.mark.root
@pytest.mark.parametrize("case", list(E2E))
def test_image_restore_roundtrip(tmp_path, monkeypatch, case):
    from diskvault.fs import registry
    from diskvault.imaging.create import ImageOptions, create_image
    from diskvault.imaging.inspect import describe_image
    from diskvault.imaging.restore import RestoreOptions, restore_image
    from diskvault.imaging.verify import verify_image

    size_mib, args, populate = E2E[case]
    size = size_mib * MiB
    fs = make_btrfs(tmp_path / "fs.img", size_mib, *args)
    mnt = tmp_path / "mnt"
    want: dict = {}
    if populate is not None:
        with btrfs_loop(fs) as dev, mounted(dev, str(mnt), "rw"):
            populate(mnt)
            os.sync()
            want = manifest(str(mnt))
    assert np.array_equal(open_reader(fs).used_extents(), oracle_extents(fs))

    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(size + 2 * MiB)
    table = f"label: gpt\nstart=2048, size={size // 512}, type={LINUX}\n"
    subprocess.run(["sfdisk", "-q", str(disk)], input=table, text=True, check=True, capture_output=True)
    run("dd", f"if={fs}", f"of={disk}", "bs=4M", f"seek={MiB}", "oflag=seek_bytes", "conv=notrunc,sparse")
    fs.unlink()  # from here on only the disk is the source

    monkeypatch.setattr(registry, "READERS", [BtrfsReader, *registry.READERS])
    (tmp_path / "img").mkdir()
    res = create_image(ImageOptions(source=str(disk), to=str(tmp_path / "img")))
    assert verify_image(res.image).ok
    (part,) = describe_image(res.image)["partitions"]
    assert part["method"] == "used-blocks" and part["fs"]["fstype"] == "btrfs", part
    restored = tmp_path / "restored.img"
    restore_image(RestoreOptions(image=res.image, target=str(restored)))
    src_reader = open_reader(disk, MiB, size)
    source_extents = src_reader.used_extents()
    whole_chunks = int(merge(src_reader._physical(src_reader.chunk_start, src_reader.chunk_len))[:, 1].sum())
    assert np.array_equal(open_reader(restored, MiB, size).used_extents(), source_extents)

    with btrfs_loop(restored, MiB, size, read_only=True) as dev:
        chk = run("btrfs", "check", "--readonly", dev, check=False)
        assert chk.returncode == 0, chk.stdout + chk.stderr
        with mounted(dev, str(mnt), "ro"):
            got = manifest(str(mnt))
            usage = fs_usage(str(mnt))
    assert got == want
    # imaged: what the reader asked for; read: what the imager read (it also reads through free
    # gaps shorter than READ_THROUGH_GAP instead of seeking, so bound that part by those gaps)
    used, imaged, read = usage["Used"], part["imaged_bytes"], res.bytes_read
    gaps = complement(source_extents, size)
    read_through = int(gaps[gaps[:, 1] < READ_THROUGH_GAP, 1].sum())
    FIGURES[case] = (f"partition {size_mib} MiB: used {used / MiB:.2f} MiB, imaged {imaged / MiB:.2f} MiB "
                     f"(+{(imaged - used) / MiB:.2f}), read {read / MiB:.2f} MiB (+{(read - used) / MiB:.2f}; "
                     f"{read_through / MiB:.2f} MiB of short gaps); whole chunks would be {whole_chunks / MiB:.2f} MiB")
    print(case, FIGURES[case])
    assert used <= imaged <= used * 1.05 + ALLOWANCE - 2 * MiB, FIGURES[case]
    assert read <= imaged + 2 * MiB + read_through, FIGURES[case]
    if case != "single-128-fragmented":
        assert read <= used * 1.05 + ALLOWANCE + 256 * 1024, FIGURES[case]
    if case.endswith("nearly-full"):
        assert used > 0.9 * usage["Device size"]
    if case == "single-128-fragmented":
        assert source_extents.shape[0] > 50  # the deleted files left holes


@pytest.mark.root
def test_log_tree_images_whole_chunks(tmp_path, monkeypatch):
    """A copy taken while mounted after an fsync holds a log tree: every allocated chunk is imaged,
    and the restored copy replays the log (the fsync'd file is there)."""
    fs = make_btrfs(tmp_path / "fs.img", 128)
    crash = tmp_path / "crash.img"
    mnt = tmp_path / "mnt"
    with btrfs_loop(fs) as dev, mounted(dev, str(mnt), "rw,commit=300"):
        random_file(mnt / "committed.bin", 3 * MiB, 7)
        os.sync()
        random_file(mnt / "logged.bin", 2 * MiB, 8)
        fd = os.open(mnt / "logged.bin", os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        shutil.copyfile(fs, crash)  # the loop device writes through the backing file's page cache
    reader = open_reader(crash)
    if not reader.sb["log_root"]:
        pytest.skip("the kernel committed the transaction before the copy")
    ext = reader.used_extents()
    assert "log tree" in reader.info().note
    chunks = merge(reader._physical(reader.chunk_start, reader.chunk_len))
    assert int(ext[:, 1].sum()) >= int(chunks[:, 1].sum())
    # the restored bytes (used extents only, junk elsewhere) mount and replay the log
    restored = tmp_path / "restored.img"
    garbage_file(restored, 128 * MiB)
    with open(crash, "rb") as src, open(restored, "r+b") as dst:
        for start, length in ext.tolist():
            src.seek(start)
            dst.seek(start)
            dst.write(src.read(length))
    crash.unlink()
    with btrfs_loop(restored) as dev, mounted(dev, str(mnt), "rw"):
        assert (mnt / "logged.bin").read_bytes() == np.random.default_rng(8).bytes(2 * MiB)
        assert (mnt / "committed.bin").read_bytes() == np.random.default_rng(7).bytes(3 * MiB)
