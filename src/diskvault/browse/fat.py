"""FAT12/16/32 file tree: directories of 32-byte entries (8.3 names, VFAT long names) in the fixed
root region (FAT12/16) or in cluster chains (subdirectories, the FAT32 root); file data along FAT
chains. Geometry and FAT decoding come from ``diskvault.fs.fat``.

FAT stores local time without a zone: times are reported as if they were UTC (what mtools shows
with TZ=UTC). Modification times have 2 s resolution, creation times 10 ms, access times a day;
there is no change time (``ctime_ns`` is None), no owner and no mode. A long name whose checksum
does not match its 8.3 entry is dropped for the 8.3 name, as Windows and Linux do. Files are
< 4 GiB.
"""

from __future__ import annotations

import bisect
import calendar
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import BinaryIO, ClassVar, NamedTuple

import numpy as np

from diskvault.browse.base import Entry, ReadAtFile, WalkedTree
from diskvault.errors import FilesystemError
from diskvault.fs import c_fat as C
from diskvault.fs.fat import FatReader, fat_entries
from diskvault.readat import read_at as _read_at

DIRENT = struct.Struct("<11sBBBHHHHHHHI")  # a whole 32-byte short entry, fields as in Dirent
LFN_CHARS = (slice(1, 11), slice(14, 26), slice(28, 32))  # where a long-name entry keeps its 13 chars
LFN_LAST = 0x40  # sequence-number flag of the first physical (last logical) long-name entry
LOWER_BASE, LOWER_EXT = 0x08, 0x10  # NTRes bits: the 8.3 base / extension is shown in lowercase
DOT_ENTRIES = (b".          ", b"..         ")
MAX_DIR_BYTES = 65536 * C.DIR_ENTRY_SIZE  # a directory holds at most 65536 entries
EOC = {12: 0xFF8, 16: 0xFFF8, 32: 0x0FFFFFF8}  # FAT values at or above these end a chain
FAT_PAGE = 1 << 16  # FAT bytes read at a time while following chains
PAGES_KEPT = 256


class Dirent(NamedTuple):
    short: bytes  # DIR_Name: 8.3, space padded
    attr: int  # DIR_Attr
    lower: int  # DIR_NTRes: LOWER_BASE / LOWER_EXT
    create_centis: int  # DIR_CrtTimeTenth: 10 ms units, 0..199
    create_time: int
    create_date: int
    access_date: int
    cluster_hi: int  # FAT32 only
    write_time: int
    write_date: int
    cluster_lo: int
    size: int


def dos_time(date: int, time: int = 0, centis: int = 0) -> int | None:
    """ns since the epoch of a DOS date/time (+ 10 ms units), read as UTC; None if unset or invalid."""
    y, mo, d = 1980 + (date >> 9), date >> 5 & 15, date & 31
    h, mi, s = time >> 11, time >> 5 & 63, (time & 31) * 2
    if date == 0 or not (1 <= mo <= 12 and 1 <= d <= 31 and h < 24 and mi < 60 and s < 60):
        return None
    return calendar.timegm((y, mo, d, h, mi, s)) * 10**9 + centis * 10**7


def follow(first: int, next_cluster: Callable[[int], int], last: int, eoc: int, what: str,
           need: int | None = None, most: int = 0) -> list[tuple[int, int]]:
    """(first cluster, count) runs of a cluster chain: ``need`` clusters (a file's size says how
    many), or up to the end mark but never more than ``most`` (a directory)."""
    runs: list[list[int]] = []
    n, c = 0, first
    while True:
        if not 2 <= c <= last:
            raise FilesystemError(f"{what}: the cluster chain is broken (cluster 0x{c:X})")
        if runs and runs[-1][0] + runs[-1][1] == c:
            runs[-1][1] += 1
        else:
            runs.append([c, 1])
        n += 1
        if n == need:
            break
        nxt = next_cluster(c)
        if nxt >= eoc:
            if need is not None:
                raise FilesystemError(f"{what}: the cluster chain ends after {n} of its {need} clusters")
            break
        if need is None and n >= most:
            raise FilesystemError(f"{what}: the cluster chain is longer than {most} clusters (a loop?)")
        c = nxt
    return [(a, b) for a, b in runs]


class Pieces:
    """A file's bytes as (volume offset, length) pieces in file order; bytes at or past ``valid``
    read as zeros (exFAT's ValidDataLength)."""

    def __init__(self, fh: BinaryIO, pieces: list[tuple[int, int]], valid: int, what: str) -> None:
        self._fh, self._pieces, self._valid, self._what = fh, pieces, valid, what
        self._starts = [0]
        for _, length in pieces:
            self._starts.append(self._starts[-1] + length)

    def read_at(self, offset: int, n: int) -> bytes:
        out = bytearray(n)
        pos, end = offset, min(offset + n, self._valid)
        i = bisect.bisect_right(self._starts, pos) - 1
        while pos < end:
            if i >= len(self._pieces):
                raise FilesystemError(f"{self._what}: byte {pos} lies past the clusters it owns")
            base, length = self._pieces[i]
            take = min(end, self._starts[i] + length) - pos
            data = _read_at(self._fh, base + pos - self._starts[i], take)
            if len(data) != take:
                raise FilesystemError(f"{self._what}: cannot read {take} bytes at volume offset {base}")
            out[pos - offset : pos - offset + take] = data
            pos += take
            i += 1
        return bytes(out)


class FatTree(WalkedTree):
    """A FAT12/16/32 volume's files, read-only; see the module docstring."""

    name: ClassVar[str] = "fat"

    @classmethod
    def probe(cls, fh: BinaryIO, size: int) -> bool:
        return FatReader.probe(fh, size)

    def __init__(self, fh: BinaryIO, size: int) -> None:
        super().__init__()
        self._fh = fh
        self._vol = FatReader(fh, size)
        self._pages: OrderedDict[int, np.ndarray] = OrderedDict()

    # ----------------------------------------------------------------- clusters

    def _next(self, cluster: int) -> int:
        v = self._vol
        per = FAT_PAGE * 8 // v.bits if v.bits != 12 else v.clusters + 2  # FAT12: one page, whole
        page = cluster // per
        entries = self._pages.get(page)
        if entries is None:
            count = min(per, v.clusters + 2 - page * per)
            width = (count * 3 + 1) // 2 if v.bits == 12 else count * v.bits // 8
            start = (v.reserved + v.fat_copies[0] * v.fat_sectors) * v.sector_size + page * FAT_PAGE
            raw = _read_at(self._fh, start, width)
            if len(raw) != width:
                raise FilesystemError(f"cannot read the FAT at byte {start}")
            entries = self._pages[page] = fat_entries(raw, v.bits, count)
            while len(self._pages) > PAGES_KEPT:
                self._pages.popitem(last=False)
        self._pages.move_to_end(page)
        return int(entries[cluster % per])

    def _pieces(self, runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
        v = self._vol
        heap = v.data_start * v.sector_size
        return [(heap + (c - 2) * v.cluster_size, n * v.cluster_size) for c, n in runs]

    def _chain(self, first: int, what: str, size: int | None = None) -> list[tuple[int, int]]:
        v = self._vol
        need = None if size is None else -(-size // v.cluster_size)
        most = max(1, MAX_DIR_BYTES // v.cluster_size)
        return self._pieces(follow(first, self._next, v.clusters + 1, EOC[v.bits], what, need, most))

    # ----------------------------------------------------------------- directories

    def _root(self) -> tuple[Entry, int]:
        return Entry(name="", path="/", kind="dir"), 0

    def _dir_bytes(self, first: int, path: str) -> bytes:
        v = self._vol
        if first == 0 and v.bits != 32:  # the fixed root directory region
            length = v.bpb["BPB_RootEntCnt"] * C.DIR_ENTRY_SIZE
            return _read_at(self._fh, v.root_start * v.sector_size, length)
        if first == 0:
            first = v.ext["BPB_RootClus"]
        pieces = self._chain(first, f"FAT directory {path}")
        return b"".join(_read_at(self._fh, off, n) for off, n in pieces)

    def _read_dir(self, entry: Entry, handle: int) -> Iterator[tuple[Entry, int]]:
        raw = self._dir_bytes(handle, entry.path)
        for name, d in _names(raw):
            kind = "dir" if d.attr & C.ATTR_DIRECTORY else "file"
            first = d.cluster_hi << 16 | d.cluster_lo if self._vol.bits == 32 else d.cluster_lo
            if kind == "dir" and first == 0:
                continue  # only ".." may point at the root: a corrupt entry
            yield Entry(
                name=name,
                path=entry.path.rstrip("/") + "/" + name,
                kind=kind,
                size=d.size if kind == "file" else 0,
                mtime_ns=dos_time(d.write_date, d.write_time),
                atime_ns=dos_time(d.access_date),
                btime_ns=dos_time(d.create_date, d.create_time, d.create_centis),
            ), first

    def _open(self, entry: Entry, handle: int) -> BinaryIO:
        what = f"FAT file {entry.path}"
        pieces = self._chain(handle, what, entry.size) if entry.size else []
        return ReadAtFile(entry.size, Pieces(self._fh, pieces, entry.size, what).read_at)


def lfn_checksum(short: bytes) -> int:
    s = 0
    for b in short:
        s = ((s & 1) << 7) + (s >> 1) + b & 0xFF
    return s


def short_name(raw: bytes, lower: int) -> str:
    base, ext = raw[:8].rstrip(b" "), raw[8:].rstrip(b" ")
    if base[:1] == b"\x05":  # a leading 0xE5 byte is stored as 0x05
        base = b"\xe5" + base[1:]
    b, e = base.decode("cp850", "replace"), ext.decode("cp850", "replace")
    b, e = b.lower() if lower & LOWER_BASE else b, e.lower() if lower & LOWER_EXT else e
    return f"{b}.{e}" if e else b


def _names(raw: bytes) -> Iterator[tuple[str, Dirent]]:
    """(name, short entry) of the live files and directories of a directory's bytes."""
    parts: dict[int, bytes] = {}
    expect, checksum = 0, -1
    for off in range(0, len(raw) - C.DIR_ENTRY_SIZE + 1, C.DIR_ENTRY_SIZE):
        first, attr = raw[off], raw[off + 11]
        if first == C.DIR_END:
            return
        if first == C.DIR_FREE:
            parts, expect = {}, 0
            continue
        if attr & C.ATTR_LONG_NAME_MASK == C.ATTR_LONG_NAME:
            seq = first & 0x1F
            if first & LFN_LAST:
                parts, expect, checksum = {}, seq + 1, raw[off + 13]
            if seq == 0 or seq != expect - 1 or raw[off + 13] != checksum:
                parts, expect = {}, 0
                continue
            parts[seq], expect = b"".join(raw[off + s.start : off + s.stop] for s in LFN_CHARS), seq
            continue
        d = Dirent._make(DIRENT.unpack_from(raw, off))
        long = parts if expect == 1 and lfn_checksum(d.short) == checksum else {}
        parts, expect = {}, 0
        if attr & C.ATTR_VOLUME_ID or d.short in DOT_ENTRIES:
            continue
        if long:
            units = b"".join(long[i] for i in sorted(long))
            name = units.decode("utf-16-le", "replace").split("\0", 1)[0]
        else:
            name = short_name(d.short, d.lower)
        yield name, d
