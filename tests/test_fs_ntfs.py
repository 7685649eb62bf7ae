"""NtfsReader against real NTFS volumes made by mkntfs and filled through ntfs-3g.

Oracles: ntfscat's copy of $Bitmap (libntfs-3g decodes the run list), blkid -p, ntfsinfo -m,
df of an ntfs-3g mount, ntfsfix -n on the restored partition and ntfs-3g read-only mounts of
the source and restored partitions.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from diskutil import garbage_file, gpt_disk, loop_device, open_fd, open_fs_reader, patch, sha256_file

from diskvault.errors import FilesystemError
from diskvault.fs import base
from diskvault.fs import extents as X
from diskvault.fs.ntfs import NtfsReader

MiB = 1 << 20
TOOLS = ("mkntfs", "ntfs-3g", "ntfsfix", "ntfscat", "ntfsinfo", "blkid")
pytestmark = pytest.mark.skipif(not all(shutil.which(t) for t in TOOLS), reason="needs ntfs-3g/ntfsprogs")
ENV = {**os.environ, "LC_ALL": "C"}


def run(*args: str | Path, check: bool = True) -> str:
    r = subprocess.run([str(a) for a in args], check=False, capture_output=True, text=True, env=ENV)
    if check and r.returncode:
        raise AssertionError(f"{args[0]} exited {r.returncode}: {r.stdout}{r.stderr}")
    return r.stdout


def make_ntfs(path: Path, size: int, *args: str, label: str = "DVTEST", garbage: bool = True) -> Path:
    """mkntfs -f (fast: free space keeps the random bytes written before, as on a used disk)."""
    if garbage:
        garbage_file(path, size, seed=size)
    else:
        with open(path, "wb") as f:
            f.truncate(size)
    run("mkntfs", "-F", "-q", "-f", "-L", label, *args, path)
    return path


def open_reader(img: Path, offset: int = 0, size: int | None = None) -> NtfsReader:
    return open_fs_reader(NtfsReader, img, offset, size)


def ntfscat_bitmap(img: Path, clusters: int) -> np.ndarray:
    raw = subprocess.run(["ntfscat", str(img), "$Bitmap"], capture_output=True, check=True).stdout
    return np.unpackbits(np.frombuffer(raw, np.uint8), bitorder="little")[:clusters].astype(bool)


def assert_matches_ntfscat(img: Path) -> NtfsReader:
    """used_extents() = ntfscat's $Bitmap + $Boot + the backup boot sector, nothing else."""
    r = open_reader(img)
    ext = r.used_extents()
    assert ext.dtype == np.uint64 and ext.ndim == 2 and ext.shape[1] == 2 and np.all(ext[:, 1] > 0)
    assert np.all(ext[1:, 0] > ext[:-1, 0] + ext[:-1, 1]), "extents must be sorted and merged"
    want_bits = ntfscat_bitmap(img, r.clusters)
    want = X.from_bitmap(want_bits, r.cluster_size)
    bps, size = r.sector_size, img.stat().st_size
    always = [[0, 8192], [r.total_sectors * bps, bps], [size - bps, bps]]
    want = X.clip(X.merge(np.concatenate([want, np.array(always, dtype=np.uint64)])), 0, size)
    assert np.array_equal(ext, want), (ext[:8], want[:8])
    assert r.info().used_bytes == int(want_bits.sum()) * r.cluster_size
    return r


def ntfsinfo_m(img: Path) -> dict[str, str]:
    return dict(re.findall(r"^\s*([A-Za-z][^:\n]*?):\s*(.*)$", run("ntfsinfo", "-m", img), re.MULTILINE))


# ----------------------------------------------------------------------------- bitmap and info


MATRIX = {
    # id: (size, mkntfs args, bytes per sector, cluster size)
    "16M-c512": (16 * MiB, ("-c", "512"), 512, 512),
    "16M-default": (16 * MiB, (), 512, 4096),
    "64M-c16k": (64 * MiB, ("-c", "16384"), 512, 16384),
    "64M-c64k": (64 * MiB, ("-c", "65536"), 512, 65536),
    "512M-c2M-negative-spc": (512 * MiB, ("-c", str(2 * MiB)), 512, 2 * MiB),
    "32M-4k-sectors": (32 * MiB, ("-s", "4096"), 4096, 4096),
    "odd-size": (24 * MiB + 3 * 512, ("-c", "2048"), 512, 2048),
}


@pytest.mark.parametrize("case", list(MATRIX))
def test_fresh_volume_matches_ntfscat_blkid_ntfsinfo(tmp_path, case):
    size, args, bps, cs = MATRIX[case]
    img = make_ntfs(tmp_path / "fs.img", size, *args, label=f"L{cs}", garbage=size <= 64 * MiB)
    r = assert_matches_ntfscat(img)
    assert (r.sector_size, r.cluster_size) == (bps, cs)
    if cs > 64 * 1024:
        assert r.boot["sectors_per_cluster"] == 256 - 12  # 0xF4: 2^12 sectors of 512
    m = ntfsinfo_m(img)
    assert int(m["Cluster Size"]) == cs and int(m["Sector Size"]) == bps
    assert int(m["Volume Size in Clusters"]) == r.clusters
    info = r.info()
    lines = run("blkid", "-p", "-o", "export", img).splitlines()
    blk = dict(line.split("=", 1) for line in lines if "=" in line)
    assert (blk["TYPE"], blk["UUID"], blk["LABEL"]) == (info.fstype, info.uuid, info.label)
    assert (info.fstype, info.label) == ("ntfs", f"L{cs}")
    assert re.fullmatch(r"[0-9A-F]{16}", info.uuid)
    # the volume covers all but the tail sectors; the backup boot sector is the partition's last
    assert info.size == (r.total_sectors + 1) * bps and size - info.size < cs + bps
    assert info.block_size == cs and info.note == ""
    with open(img, "rb") as f:
        primary = f.read(bps)
        f.seek(r.total_sectors * bps)
        assert f.read(bps) == primary  # mkntfs writes an identical backup there


def test_unicode_label_and_no_label(tmp_path):
    img = make_ntfs(tmp_path / "a.img", 8 * MiB, label="Données-✓", garbage=False)
    blk = run("blkid", "-p", "-o", "value", "-s", "LABEL", img).strip()
    assert open_reader(img).info().label == "Données-✓" == blk
    img2 = make_ntfs(tmp_path / "b.img", 8 * MiB, label="", garbage=False)
    assert open_reader(img2).info().label == ""


def test_big_sparse_volume_is_fast(tmp_path):
    img = tmp_path / "big.img"
    with open(img, "wb") as f:
        f.truncate(64 << 30)
    run("mkntfs", "-F", "-q", "-f", "-c", "4096", img)  # 16 Mi clusters: a 2 MiB $Bitmap
    elapsed = []
    for _ in range(2):  # the best of two: the first also pays for the page cache
        t0 = time.perf_counter()
        r = open_reader(img)
        ext = r.used_extents()
        elapsed.append(time.perf_counter() - t0)
    elapsed = min(elapsed)
    assert r.clusters == (64 << 30) // 4096 - 1 and ext.shape[0] >= 3
    assert elapsed < 1.0, f"used_extents took {elapsed:.3f}s"


def test_fs_inside_a_larger_window_at_an_offset(tmp_path):
    img = make_ntfs(tmp_path / "fs.img", 16 * MiB)
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.write(b"\xaa" * MiB + img.read_bytes() + b"\x55" * MiB)
    r = open_reader(disk, MiB, 17 * MiB)
    own = open_reader(img).used_extents()
    # same extents, plus the window's last sector (a backup boot sector's place if the volume
    # had been made for the whole partition)
    assert np.array_equal(r.used_extents(), X.merge(np.concatenate([own, [[17 * MiB - 512, 512]]])))


def test_probe(tmp_path, monkeypatch):
    from diskvault.fs import registry

    monkeypatch.setattr(registry, "READERS", [NtfsReader, *registry.READERS])
    zero = tmp_path / "zero.img"
    zero.write_bytes(bytes(4 * MiB))
    others = {"zero": zero}
    for name, cmd in (("ext4", ["mke2fs", "-q", "-F", "-t", "ext4"]), ("vfat", ["mkfs.vfat"]),
                      ("exfat", ["mkfs.exfat"])):
        if shutil.which(cmd[0]):
            p = tmp_path / f"{name}.img"
            p.write_bytes(bytes(16 * MiB))
            run(*cmd, p)
            others[name] = p
    for name, p in others.items():
        fd = open_fd(p)
        win = base.Window(fd, 0, os.fstat(fd).st_size)
        assert not NtfsReader.probe(win, win.size), name
        assert base.probe(win) is not NtfsReader
        with pytest.raises(FilesystemError):
            NtfsReader(win, win.size)
    img = make_ntfs(tmp_path / "n.img", 8 * MiB, garbage=False)
    fd = open_fd(img)
    assert base.probe(base.Window(fd, 0, 8 * MiB)) is NtfsReader
    assert not NtfsReader.probe(base.Window(fd, 0, 300), 300)
    with open(img, "rb") as f:  # any seekable binary file, not only a Window
        assert NtfsReader.probe(f, 8 * MiB)
        assert NtfsReader(f, 8 * MiB).used_extents().shape[0] > 0


# ----------------------------------------------------------------------------- MFT record editing


class Record:
    """One MFT record of an image, fixups undone for editing and redone by ``write()``.

    The test's own minimal parser (not the reader's), assuming mkntfs's layout: the first 16
    records are contiguous from the boot sector's mft_lcn."""

    def __init__(self, img: Path, recno: int) -> None:
        self.img = img
        with open(img, "rb") as f:
            boot = f.read(512)
            bps, spc = struct.unpack_from("<HB", boot, 11)
            self.cs = bps * (spc if spc <= 128 else 1 << (256 - spc))
            mft_lcn, mirr_lcn = struct.unpack_from("<qq", boot, 0x30)
            v = struct.unpack_from("<b", boot, 0x40)[0]
            self.rs = v * self.cs if v > 0 else 1 << -v
            self.offset = mft_lcn * self.cs + recno * self.rs
            # $MFTMirr holds a copy of records 0-3: keep it equal, as ntfs-3g checks
            self.mirror = mirr_lcn * self.cs + recno * self.rs if recno < 4 else None
            f.seek(self.offset)
            self.buf = bytearray(f.read(self.rs))
        assert self.buf[:4] == b"FILE"
        usa = self.usa_ofs
        for i in range(self.rs // 512):
            self.buf[(i + 1) * 512 - 2 : (i + 1) * 512] = self.buf[usa + 2 + 2 * i : usa + 4 + 2 * i]

    usa_ofs = property(lambda self: struct.unpack_from("<H", self.buf, 4)[0])

    def attrs(self) -> list[tuple[int, int, int]]:
        """(offset, type, length) of each attribute."""
        out, off = [], struct.unpack_from("<H", self.buf, 0x14)[0]
        while (t := struct.unpack_from("<I", self.buf, off)[0]) != 0xFFFFFFFF:
            n = struct.unpack_from("<I", self.buf, off + 4)[0]
            out.append((off, t, n))
            off += n
        return out

    def attr(self, typ: int) -> tuple[int, int]:
        (hit,) = [(o, n) for o, t, n in self.attrs() if t == typ]
        return hit

    def set_attrs(self, blobs: list[bytes]) -> None:
        off = struct.unpack_from("<H", self.buf, 0x14)[0]
        body = b"".join(blobs) + struct.pack("<II", 0xFFFFFFFF, 0)
        assert off + len(body) <= self.rs - 2
        self.buf[off:] = body + bytes(self.rs - off - len(body))
        struct.pack_into("<I", self.buf, 0x18, off + len(body))  # bytes_in_use

    def write(self) -> None:
        buf, usa = bytearray(self.buf), self.usa_ofs
        usn = buf[usa : usa + 2]
        for i in range(self.rs // 512):
            tail = (i + 1) * 512 - 2
            buf[usa + 2 + 2 * i : usa + 4 + 2 * i] = buf[tail : tail + 2]
            buf[tail : tail + 2] = usn
        with open(self.img, "r+b") as f:
            for off in (self.offset, self.mirror):
                if off is not None:
                    f.seek(off)
                    f.write(buf)


def encode_runs(runs: list[tuple[int, int]]) -> bytes:
    """Mapping pairs for (lcn or -1 for sparse, clusters) runs."""
    out, prev = bytearray(), 0

    def sbytes(v: int) -> bytes:
        n = 1
        while not -(1 << (8 * n - 1)) <= v < 1 << (8 * n - 1):
            n += 1
        return v.to_bytes(n, "little", signed=True)

    for lcn, count in runs:
        c = sbytes(count)
        d = b"" if lcn < 0 else sbytes(lcn - prev)
        out += bytes([len(d) << 4 | len(c)]) + c + d
        if lcn >= 0:
            prev = lcn
    return bytes(out + b"\0")


def nonresident_data(runs: list[tuple[int, int]], lowest: int, highest: int, sizes: tuple[int, int, int],
                     instance: int) -> bytes:
    mp = encode_runs(runs)
    length = 0x40 + -(-len(mp) // 8) * 8
    head = struct.pack("<IIBBHHHqqHB5xqqq", 0x80, length, 1, 0, 0x40, 0, instance, lowest, highest,
                       0x40, 0, *sizes)
    return head + mp + bytes(length - 0x40 - len(mp))


def resident_attr(typ: int, value: bytes, instance: int) -> bytes:
    pad = -(-len(value) // 8) * 8 - len(value)
    length = 0x18 + len(value) + pad
    head = struct.pack("<IIBBHHHIHBx", typ, length, 0, 0, 0x18, 0, instance, len(value), 0x18, 0)
    return head + value + bytes(pad)


def bitmap_run(rec: Record) -> tuple[int, int, tuple[int, int, int]]:
    """(lcn, clusters, (allocated, data, initialized size)) of a one-run $DATA."""
    off, _ = rec.attr(0x80)
    sizes = struct.unpack_from("<qqq", rec.buf, off + 0x28)
    mp = off + struct.unpack_from("<H", rec.buf, off + 0x20)[0]
    h = rec.buf[mp]
    nl, no = h & 15, h >> 4
    count = int.from_bytes(rec.buf[mp + 1 : mp + 1 + nl], "little")
    lcn = int.from_bytes(rec.buf[mp + 1 + nl : mp + 1 + nl + no], "little", signed=True)
    assert rec.buf[mp + 1 + nl + no] == 0, "expected a one-run $Bitmap"
    return lcn, count, sizes


def test_fragmented_bitmap_with_sparse_run_and_negative_delta(tmp_path):
    """$Bitmap's $DATA rewritten as 2-cluster runs: one moved below (negative LCN delta), an
    all-zero one sparse, the rest in place; libntfs-3g (ntfscat) must read the same bitmap."""
    img = make_ntfs(tmp_path / "fs.img", 64 * MiB, "-c", "512")
    rec = Record(img, 6)
    lcn, count, sizes = bitmap_run(rec)
    cs = rec.cs
    with open(img, "rb") as f:
        f.seek(lcn * cs)
        bm = bytearray(f.read(count * cs))
    per = 2  # clusters per run
    blocks = count // per
    assert blocks >= 8
    bits = np.unpackbits(np.frombuffer(bytes(bm), np.uint8), bitorder="little")
    free = np.flatnonzero(np.convolve(bits[:lcn] == 0, np.ones(per, int), "valid") == per)
    target = int(free[len(free) // 2])  # free clusters below the bitmap
    for c in range(target, target + per):
        bm[c // 8] |= 1 << (c % 8)
    zero = [b for b in range(1, blocks) if not any(bm[b * per * cs : (b + 1) * per * cs])]
    assert zero, "need an all-zero piece of the bitmap to make sparse"
    moved = max(set(range(1, blocks)) - set(zero[:1]))
    runs = []
    for b in range(blocks):
        if b == zero[0]:
            runs.append((-1, per))
        elif b == moved:
            runs.append((target, per))
        else:
            runs.append((lcn + per * b, per))
    with open(img, "r+b") as f:
        f.seek(lcn * cs)
        f.write(bm)
        f.seek(target * cs)
        f.write(bm[moved * per * cs : (moved + 1) * per * cs])
    keep = [bytes(rec.buf[o : o + ln]) for o, t, ln in rec.attrs() if t != 0x80]
    rec.set_attrs(keep + [nonresident_data(runs, 0, count - 1, sizes, instance=2)])
    rec.write()
    r = assert_matches_ntfscat(img)  # ntfscat decodes our run list: proves it is valid NTFS
    assert ntfscat_bitmap(img, r.clusters)[target : target + per].all()


@pytest.mark.parametrize("recno,k", [(6, 8), (0, 32)], ids=["$Bitmap", "$MFT"])
def test_attribute_list_with_data_in_an_extension_record(tmp_path, recno, k):
    """$Bitmap's (or $MFT's own) $DATA split in two extents, the second in MFT record 15, listed
    by an $ATTRIBUTE_LIST in the base record (as Windows does once a record is full). For $MFT,
    record 15 lies in the first extent (records 0-15 are 32 clusters of 512), as NTFS requires."""
    img = make_ntfs(tmp_path / "fs.img", 64 * MiB, "-c", "512")
    before = assert_matches_ntfscat(img).used_extents()
    rec, ext = Record(img, recno), Record(img, 15)
    lcn, count, sizes = bitmap_run(rec)
    assert count > k
    seq = struct.unpack_from("<H", rec.buf, 0x10)[0]
    seq15 = struct.unpack_from("<H", ext.buf, 0x10)[0]
    attrs = [(t, bytes(rec.buf[o : o + n])) for o, t, n in rec.attrs()]
    inst = {t: struct.unpack_from("<H", blob, 0x0E)[0] for t, blob in attrs}

    def entry(typ: int, vcn: int, ref: int, seq: int, instance: int) -> bytes:
        return struct.pack("<IHBBqQH6x", typ, 0x20, 0, 0x1A, vcn, ref | seq << 48, instance)

    entries, blobs = [], []
    alist_instance = max(inst.values()) + 1
    for t, blob in attrs:  # both lists in type order
        entries.append(entry(t, 0, recno, seq, inst[t]))
        if t == 0x80:
            entries.append(entry(0x80, k, 15, seq15, 0))
            blob = nonresident_data([(lcn, k)], 0, k - 1, sizes, inst[0x80])
        blobs.append(blob)
        if t == 0x10:
            blobs.append(b"")  # the list's place, right after $STANDARD_INFORMATION
    blobs[blobs.index(b"")] = resident_attr(0x20, b"".join(entries), instance=alist_instance)
    rec.set_attrs(blobs)
    struct.pack_into("<H", rec.buf, 0x28, alist_instance + 1)  # next_attr_instance
    rec.write()
    struct.pack_into("<Q", ext.buf, 0x20, recno | seq << 48)  # base_mft_record
    struct.pack_into("<H", ext.buf, 0x12, 0)  # link count
    ext.set_attrs([nonresident_data([(lcn + k, count - k)], k, count - 1, (0, 0, 0), 0)])
    struct.pack_into("<H", ext.buf, 0x28, 1)
    ext.write()
    r = assert_matches_ntfscat(img)  # libntfs-3g follows our list too
    assert np.array_equal(r.used_extents(), before)
    if recno == 0:
        assert r._mft.runs == [(0, lcn, k), (k, lcn + k, count - k)]
    # a broken reference to the extension record is refused, not guessed around
    struct.pack_into("<Q", ext.buf, 0x20, 5 | seq << 48)
    ext.write()
    with pytest.raises(FilesystemError, match="base record"):
        open_reader(img).used_extents()


def test_resident_bitmap_on_a_tiny_volume(tmp_path):
    img = make_ntfs(tmp_path / "fs.img", 2 * MiB)
    r0 = open_reader(img)
    want = r0.used_extents()
    rec = Record(img, 6)
    lcn, count, (_, data_size, _) = bitmap_run(rec)
    with open(img, "rb") as f:
        f.seek(lcn * rec.cs)
        value = f.read(data_size)
    keep = [bytes(rec.buf[o : o + n]) for o, t, n in rec.attrs() if t != 0x80]
    rec.set_attrs(keep + [resident_attr(0x80, value, instance=2)])
    rec.write()
    with open(img, "r+b") as f:  # the old bitmap clusters now hold junk: they must not be read
        f.seek(lcn * rec.cs)
        f.write(b"\xff" * count * rec.cs)
    r = open_reader(img)
    assert np.array_equal(r.used_extents(), want)
    assert r.info().used_bytes == r0.info().used_bytes


# ----------------------------------------------------------------------------- corruption


BOOT_CORRUPTIONS = {
    "bytes_per_sector_300": (0x0B, "<H", 300),
    "bytes_per_sector_8192": (0x0B, "<H", 8192),
    "sectors_per_cluster_3": (0x0D, "<B", 3),
    "sectors_per_cluster_0": (0x0D, "<B", 0),
    "sectors_per_cluster_neg_too_big": (0x0D, "<B", 0xE0),
    "fats": (0x10, "<B", 2),
    "reserved_sectors": (0x0E, "<H", 32),
    "total_sectors_beyond_partition": (0x28, "<q", 1 << 40),
    "total_sectors_zero": (0x28, "<q", 0),
    "mft_lcn_beyond": (0x30, "<q", 1 << 30),
    "mftmirr_lcn_zero": (0x38, "<q", 0),
    "mft_record_size": (0x40, "<b", 3),
    "mft_record_size_neg": (0x40, "<b", -40),
}


@pytest.mark.parametrize("case", list(BOOT_CORRUPTIONS))
def test_corrupt_boot_sector(tmp_path, case):
    img = make_ntfs(tmp_path / "fs.img", 8 * MiB, garbage=False)
    patch(img, *BOOT_CORRUPTIONS[case])
    fd = open_fd(img)
    win = base.Window(fd, 0, 8 * MiB)
    assert not NtfsReader.probe(win, win.size)
    with pytest.raises(FilesystemError):
        NtfsReader(win, win.size)


def record_offset(img: Path, recno: int) -> int:
    return Record(img, recno).offset


def corrupt_torn_bitmap_record(img: Path) -> None:
    patch(img, record_offset(img, 6) + 1022, "<H", 0x1234)


def corrupt_mft_magic(img: Path) -> None:
    patch(img, record_offset(img, 0), "4s", b"BAAD")


def corrupt_bitmap_run_outside(img: Path) -> None:
    rec = Record(img, 6)
    off, _ = rec.attr(0x80)
    mp = off + 0x40
    rec.buf[mp : mp + 8] = encode_runs([(1 << 30, 4)]).ljust(8, b"\0")
    rec.write()


def corrupt_bitmap_zeroed(img: Path) -> None:
    rec = Record(img, 6)
    lcn, count, _ = bitmap_run(rec)
    patch(img, lcn * rec.cs, f"{count * rec.cs}s", bytes(count * rec.cs))


def corrupt_bitmap_compressed(img: Path) -> None:
    rec = Record(img, 6)
    off, _ = rec.attr(0x80)
    struct.pack_into("<H", rec.buf, off + 0x0C, 0x0001)
    rec.write()


def corrupt_bitmap_no_data(img: Path) -> None:
    rec = Record(img, 6)
    off, _ = rec.attr(0x80)
    struct.pack_into("<I", rec.buf, off, 0x90)  # turn $DATA into another attribute type
    rec.write()


def corrupt_attr_length(img: Path) -> None:
    rec = Record(img, 6)
    off, _ = rec.attr(0x80)
    struct.pack_into("<I", rec.buf, off + 4, 0x4000)
    rec.write()


def corrupt_bitmap_too_small(img: Path) -> None:
    rec = Record(img, 6)
    off, _ = rec.attr(0x80)
    struct.pack_into("<qq", rec.buf, off + 0x30, 8, 8)  # data_size, initialized_size
    rec.write()


def corrupt_record_not_in_use(img: Path) -> None:
    rec = Record(img, 6)
    struct.pack_into("<H", rec.buf, 0x16, 0)
    rec.write()


def corrupt_usa_count(img: Path) -> None:
    patch(img, record_offset(img, 6) + 6, "<H", 9)


RECORD_CORRUPTIONS = {f.__name__[8:]: f for f in (
    corrupt_torn_bitmap_record, corrupt_mft_magic, corrupt_bitmap_run_outside, corrupt_bitmap_zeroed,
    corrupt_bitmap_compressed, corrupt_bitmap_no_data, corrupt_attr_length, corrupt_bitmap_too_small,
    corrupt_record_not_in_use, corrupt_usa_count,
)}


@pytest.mark.parametrize("case", list(RECORD_CORRUPTIONS))
def test_corrupt_mft_records_raise(tmp_path, case):
    img = make_ntfs(tmp_path / "fs.img", 8 * MiB, garbage=False)
    RECORD_CORRUPTIONS[case](img)
    fd = open_fd(img)
    win = base.Window(fd, 0, 8 * MiB)
    assert NtfsReader.probe(win, win.size)  # the boot sector is fine
    with pytest.raises(FilesystemError):
        NtfsReader(win, win.size).info()


def test_random_damage_is_refused_not_a_crash(tmp_path):
    """Random bytes in records 0, 3 and 6 (fixups redone, so the damage gets past them) and in
    the BPB: each try ends in a result or a FilesystemError, never another exception."""
    img = make_ntfs(tmp_path / "fs.img", 8 * MiB, garbage=False)
    rng = random.Random(5)
    outcomes = {"ok": 0, "refused": 0, "not ntfs": 0}
    for _ in range(200):
        rec = Record(img, rng.choice([0, 3, 6, 6]))
        saved = [(off, bytes(rec.buf)) for off in (rec.offset, rec.mirror) if off is not None]
        boot = img.read_bytes()[:512]
        for _ in range(rng.randint(1, 4)):
            rec.buf[rng.randrange(0, 0x150)] = rng.randrange(256)
        rec.write()
        if rng.random() < 0.2:
            patch(img, rng.randrange(0x0B, 0x50), "B", rng.randrange(256))
        with open(img, "rb") as f:
            try:
                if not NtfsReader.probe(f, 8 * MiB):
                    outcomes["not ntfs"] += 1
                    continue
                r = NtfsReader(f, 8 * MiB)
                r.info()
                r.used_extents()
                outcomes["ok"] += 1
            except FilesystemError:
                outcomes["refused"] += 1
            finally:
                for off, buf in saved:  # undo (the saved buffers are fixed up: protect again)
                    rec.buf, rec.offset, rec.mirror = bytearray(buf), off, None
                    rec.write()
                patch(img, 0, "512s", boot)
    assert outcomes["refused"] > 20 and outcomes["ok"] > 20, outcomes


def test_dirty_volume_is_noted_not_refused(tmp_path):
    img = make_ntfs(tmp_path / "fs.img", 8 * MiB, garbage=False)
    want = open_reader(img).used_extents()
    rec = Record(img, 3)
    off, _ = rec.attr(0x70)
    voff = off + struct.unpack_from("<H", rec.buf, off + 0x14)[0]
    struct.pack_into("<H", rec.buf, voff + 10, struct.unpack_from("<H", rec.buf, voff + 10)[0] | 1)
    rec.write()
    with pytest.raises(AssertionError, match="scheduled for check"):
        ntfsinfo_m(img)  # libntfs-3g sees the flag too (and refuses the volume without -f)
    r = open_reader(img)
    assert np.array_equal(r.used_extents(), want)
    assert r.info().note == "volume is marked dirty: run chkdsk/ntfsfix"


# ----------------------------------------------------------------------------- end to end


@contextlib.contextmanager
def ntfs3g(source: str | Path, mnt: Path, ro: bool = True) -> Iterator[Path]:
    """An ntfs-3g mount kept in the foreground so unmounting waits for it to finish writing."""
    mnt.mkdir(exist_ok=True)
    opts = "no_detach,ro" if ro else "no_detach"
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(["ntfs-3g", "-o", opts, str(source), str(mnt)],
                                stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + 20
            while not os.path.ismount(mnt):
                if proc.poll() is not None or time.monotonic() > deadline:
                    err.seek(0)
                    raise AssertionError(f"ntfs-3g did not mount {source}: {err.read().decode()}")
                time.sleep(0.02)
            yield mnt
        finally:
            if os.path.ismount(mnt):
                subprocess.run(["umount", str(mnt)], check=False, capture_output=True)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert not os.path.ismount(mnt)


def tree_manifest(root: Path) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("l", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("d",)
            else:
                out[rel] = ("f", p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


class Writer:
    """Writes files into a mounted volume and remembers what they must read back as."""

    def __init__(self, root: Path, seed: int) -> None:
        self.root, self.rng, self.want = root, np.random.default_rng(seed), {}

    def file(self, rel: str, data: bytes) -> None:
        p = self.root / rel
        self._dirs(p.parent)
        p.write_bytes(data)
        self.want[rel] = ("f", len(data), hashlib.sha256(data).hexdigest())

    def _dirs(self, d: Path) -> None:
        d.mkdir(parents=True, exist_ok=True)
        while d != self.root:
            self.want[str(d.relative_to(self.root))] = ("d",)
            d = d.parent

    def remove(self, rel: str) -> None:
        (self.root / rel).unlink()
        del self.want[rel]

    def fill(self, rel: str) -> int:
        """One file grown until the volume is full; returns its size."""
        p, h, done = self.root / rel, hashlib.sha256(), 0
        chunk = self.rng.bytes(64 * 1024)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                try:
                    n = os.write(fd, chunk)
                except OSError:
                    break
                h.update(chunk[:n])
                done += n
                if n < len(chunk):
                    break
        finally:
            os.close(fd)
        self.want[rel] = ("f", done, h.hexdigest())
        return done


def populate(w: Writer, kind: str) -> None:
    rng = w.rng
    if kind == "empty":
        return
    if kind in ("varied", "full"):
        for i, size in enumerate([0, 1, 300, 511, 700, 4095, 4096, 65537, 300_000, 1_500_000, 3_000_000]):
            w.file(f"rand/r{i}.bin", rng.bytes(size))
        w.file("text.txt", b"hello ntfs\n" * 20_000)
        w.file("zeros.bin", bytes(700_000))
        w.file("Données/ünïcödé ✓.txt", "ünïcödé\n".encode() * 1000)
        for d in range(3):
            for j in range(25):  # small files: many stay resident in their MFT records
                w.file(f"d{d}/nested/f{j}", rng.bytes(int(rng.integers(1, 20_000))))
        with open(w.root / "sparse.bin", "wb") as f:
            f.write(b"head")
            f.seek(2 * MiB)
            f.write(b"tail")
        w.want["sparse.bin"] = ("f", 2 * MiB + 4,
                                hashlib.sha256(b"head" + bytes(2 * MiB - 4) + b"tail").hexdigest())
        os.symlink("text.txt", w.root / "link")
        w.want["link"] = ("l", "text.txt")
        (w.root / "empty-dir").mkdir()
        w.want["empty-dir"] = ("d",)
    if kind == "full":
        w.fill("filler.bin")
        w.remove("rand/r8.bin")  # a little free space again (~2 %)
    if kind == "fragmented":
        for i in range(320):
            w.file(f"frag/f{i:04d}", rng.bytes(512 * 1024 - int(rng.integers(0, 4096))))
        for i in range(0, 320, 2):
            w.remove(f"frag/f{i:04d}")
        w.file("big.bin", rng.bytes(60 * MiB))  # more than the free space left in one piece


E2E = {
    # id: (volume size, mkntfs args, content)
    "empty-16M-c16k": (16 * MiB, ("-c", "16384"), "empty"),
    "nearly-full-16M": (16 * MiB, (), "full"),
    "varied-64M-c512": (64 * MiB, ("-c", "512"), "varied"),
    "fragmented-200M": (200 * MiB, (), "fragmented"),
}


@pytest.mark.root
@pytest.mark.parametrize("case", list(E2E))
def test_image_restore_roundtrip(tmp_path, monkeypatch, case):
    from diskvault.fs import registry
    from diskvault.imaging.create import ImageOptions, create_image
    from diskvault.imaging.inspect import describe_image
    from diskvault.imaging.restore import RestoreOptions, restore_image
    from diskvault.imaging.verify import verify_image

    monkeypatch.setattr(registry, "READERS", [NtfsReader, *registry.READERS])
    size, args, kind = E2E[case]
    fs = make_ntfs(tmp_path / "fs.img", size, *args, label=case[:20])
    with ntfs3g(fs, tmp_path / "mnt", ro=False) as mnt:
        w = Writer(mnt, seed=size)
        populate(w, kind)
    disk, start, size = gpt_disk(tmp_path, fs, "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7")

    with loop_device(str(disk), start, size, read_only=True) as dev, ntfs3g(dev, tmp_path / "src") as mnt:
        st = os.statvfs(mnt)
        df_used = (st.f_blocks - st.f_bfree) * st.f_frsize
        assert tree_manifest(mnt) == w.want
    (tmp_path / "img").mkdir()
    res = create_image(ImageOptions(source=str(disk), to=str(tmp_path / "img")))
    assert verify_image(res.image).ok
    (p,) = describe_image(res.image)["partitions"]
    assert p["method"] == "used-blocks" and p["fs"]["fstype"] == "ntfs" and p["fs"]["label"] == case[:20]
    assert p["fs"]["used_bytes"] == df_used  # ntfs-3g counts free clusters from $Bitmap too
    if kind == "full":
        assert df_used > 0.9 * size
    print(f"{case}: used {df_used} read {res.bytes_read} ({res.bytes_read / df_used:.3f}x)")
    assert df_used <= res.bytes_read <= 1.05 * df_used + 2 * MiB

    restored = tmp_path / "restored.img"
    restore_image(RestoreOptions(image=res.image, target=str(restored)))
    assert restored.stat().st_size == disk.stat().st_size
    # the backup boot sector (the partition's last sector, outside $Bitmap) came back
    last = start + size - 512
    assert sha256_file(str(restored), last, 512) == sha256_file(str(disk), last, 512)
    assert sha256_file(str(restored), last, 512) == sha256_file(str(disk), start, 512)
    # free space was garbage in the source and is not carried over
    r = open_reader(disk, start, size)
    free = X.complement(r.used_extents(), size)
    if len(free):
        s, n = (int(v) for v in free[-1])
        n = min(n, MiB)
        with open(disk, "rb") as a, open(restored, "rb") as b:
            a.seek(start + s)
            b.seek(start + s)
            assert a.read(n) != bytes(n) and b.read(n) == bytes(n)
    with loop_device(str(restored), start, size, read_only=True) as dev:
        out = run("ntfsfix", "-n", dev)
        assert "Checking the alternate boot sector... OK" in out and "processed successfully" in out
        with ntfs3g(dev, tmp_path / "dst") as mnt:
            assert tree_manifest(mnt) == w.want
    if kind == "fragmented":
        assert r.used_extents().shape[0] > 50  # the deleted files left holes all over
