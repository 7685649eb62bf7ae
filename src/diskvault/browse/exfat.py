"""exFAT file tree: directory entry sets (File 0x85, Stream Extension 0xC0, File Name 0xC1) whose
set checksum is checked; data either contiguous (NoFatChain) or along the FAT. Boot region, FAT
and root directory come from ``diskvault.fs.exfat``; chains and pieces from ``browse.fat``.

Bytes at or past a file's ValidDataLength read as zeros. Timestamps carry 10 ms increments
(creation, modification) and a UTC offset; a timestamp without a valid offset is read as UTC.
There is no change time (``ctime_ns`` is None). Entry sets with a bad checksum are skipped.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO, ClassVar, NamedTuple

from diskvault.browse.base import Entry, ReadAtFile, WalkedTree
from diskvault.browse.fat import Pieces, dos_time, follow
from diskvault.errors import FilesystemError
from diskvault.fs import c_fat as C
from diskvault.fs.exfat import ExfatReader
from diskvault.readat import read_at as _read_at

ENTRY = C.EXFAT_ENTRY_SIZE
FILE, STREAM, NAME = 0x85, 0xC0, 0xC1  # entry types (InUse bit set)
ATTR_DIRECTORY = 0x10
NO_FAT_CHAIN = 0x02  # GeneralSecondaryFlags: the data is contiguous, the FAT is not used
OFFSET_VALID = 0x80  # UtcOffset: bits 0-6 are a signed count of 15 minutes
EOC = 0xFFFFFFF8  # FAT values from here on end a chain (0xFFFFFFFF is the end mark)
FILE_ENTRY = struct.Struct("<BBHH2xIIIBBBBB")
STREAM_ENTRY = struct.Struct("<BBxBHxxQxxxxIQ")


class FileEntry(NamedTuple):
    type: int
    secondary_count: int
    checksum: int
    attributes: int
    created: int  # DOS date << 16 | time, local time
    modified: int
    accessed: int
    created_centis: int  # 10 ms increments, 0..199
    modified_centis: int
    created_offset: int  # UtcOffset bytes
    modified_offset: int
    accessed_offset: int


class StreamEntry(NamedTuple):
    type: int
    flags: int
    name_length: int
    name_hash: int
    valid_length: int
    first_cluster: int
    length: int


def set_checksum(raw: bytes) -> int:
    """The SetChecksum of an entry set: every byte but the checksum field itself (bytes 2-3)."""
    c = 0
    for i, b in enumerate(raw):
        if i not in (2, 3):
            c = ((c >> 1) | (c & 1) << 15) + b & 0xFFFF
    return c


def exfat_time(stamp: int, centis: int, offset: int) -> int | None:
    """ns since the epoch of an exFAT timestamp, its 10 ms increment and its UtcOffset byte."""
    ns = dos_time(stamp >> 16, stamp & 0xFFFF, centis)
    if ns is None or not offset & OFFSET_VALID:
        return ns
    quarters = offset & 0x7F
    quarters -= 128 if quarters & 0x40 else 0
    return ns - quarters * 15 * 60 * 10**9


def entry_sets(raw: bytes) -> Iterator[tuple[str, FileEntry, StreamEntry]]:
    """(name, File entry, Stream Extension) of each live, intact entry set of a directory."""
    off = 0
    while off + ENTRY <= len(raw) and raw[off] != C.EXFAT_ENTRY_EOD:
        if raw[off] != FILE:
            off += ENTRY
            continue
        f = FileEntry._make(FILE_ENTRY.unpack_from(raw, off))
        end = off + ENTRY * (f.secondary_count + 1)
        body = raw[off:end]
        if f.secondary_count < 2 or end > len(raw) or raw[off + ENTRY] != STREAM \
                or set_checksum(body) != f.checksum:
            off += ENTRY
            continue
        s = StreamEntry._make(STREAM_ENTRY.unpack_from(raw, off + ENTRY))
        names = range(2 * ENTRY, len(body), ENTRY)
        units = b"".join(body[i + 2 : i + ENTRY] for i in names if body[i] == NAME)
        name = units[: 2 * s.name_length].decode("utf-16-le", "replace")
        if len(units) >= 2 * s.name_length > 0:
            yield name, f, s
        off = end


class ExfatTree(WalkedTree):
    """An exFAT volume's files, read-only; see the module docstring."""

    name: ClassVar[str] = "exfat"

    @classmethod
    def probe(cls, fh: BinaryIO, size: int) -> bool:
        return ExfatReader.probe(fh, size)

    def __init__(self, fh: BinaryIO, size: int) -> None:
        super().__init__()
        self._fh = fh
        self._vol = ExfatReader(fh, size)

    def _pieces(self, s: StreamEntry | None, what: str) -> list[tuple[int, int]]:
        """Where the data of a Stream Extension lies (the root directory when ``s`` is None)."""
        v = self._vol
        cs = v.cluster_size
        if s is None:
            runs = [(c, 1) for c in v.root_chain]
        elif s.length == 0:
            return []
        elif s.flags & NO_FAT_CHAIN:
            runs = [(s.first_cluster, -(-s.length // cs))]
            if s.first_cluster < 2 or sum(runs[0]) - 1 > v.clusters + 1:
                raise FilesystemError(f"{what} lies outside the cluster heap")
        else:
            runs = follow(s.first_cluster, v._next_cluster, v.clusters + 1, EOC, what,
                          need=-(-s.length // cs))
        return [(v._cluster_offset(c), n * cs) for c, n in runs]

    def _root(self) -> tuple[Entry, StreamEntry | None]:
        return Entry(name="", path="/", kind="dir"), None

    def _read_dir(self, entry: Entry, handle: StreamEntry | None) -> Iterator[tuple[Entry, StreamEntry]]:
        what = f"exFAT directory {entry.path}"
        if handle is not None and handle.length > C.EXFAT_MAX_DIR_BYTES:
            raise FilesystemError(f"{what} claims {handle.length} bytes (more than 256 MiB)")
        raw = b"".join(_read_at(self._fh, off, n) for off, n in self._pieces(handle, what))
        for name, f, s in entry_sets(raw):
            kind = "dir" if f.attributes & ATTR_DIRECTORY else "file"
            yield Entry(
                name=name,
                path=entry.path.rstrip("/") + "/" + name,
                kind=kind,
                size=s.length if kind == "file" else 0,
                mtime_ns=exfat_time(f.modified, f.modified_centis, f.modified_offset),
                atime_ns=exfat_time(f.accessed, 0, f.accessed_offset),
                btime_ns=exfat_time(f.created, f.created_centis, f.created_offset),
            ), s

    def _open(self, entry: Entry, handle: StreamEntry) -> BinaryIO:
        what = f"exFAT file {entry.path}"
        if handle.valid_length > handle.length:
            raise FilesystemError(f"{what}: ValidDataLength {handle.valid_length} exceeds its size")
        pieces = Pieces(self._fh, self._pieces(handle, what), handle.valid_length, what)
        return ReadAtFile(handle.length, pieces.read_at, [(0, handle.valid_length)])
