"""Catalog records: one binary record per entry (file, directory, link, ...), in walk order.

A record is self-delimiting (it starts with its length), so a backup can copy an unchanged entry's
record from the parent catalog byte for byte without decoding it, which is what makes an unchanged
re-run cheap.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from diskvault.files.layout import (
    CHUNK_REF,
    ENTRY,
    T_BLK,
    T_CHR,
    T_DIR,
    T_FIFO,
    T_FILE,
    T_SOCK,
    T_SYMLINK,
    XATTR,
)

ChunkRef = tuple[int, int, bytes]  # (offset in the file, length, content hash)


_TYPES = {stat.S_IFREG: T_FILE, stat.S_IFDIR: T_DIR, stat.S_IFLNK: T_SYMLINK, stat.S_IFIFO: T_FIFO,
          stat.S_IFCHR: T_CHR, stat.S_IFBLK: T_BLK, stat.S_IFSOCK: T_SOCK}


def entry_type(mode: int) -> int:
    """Catalog type of an lstat mode."""
    return _TYPES[stat.S_IFMT(mode)]


@dataclass
class Entry:
    path: bytes  # archive path: relative, '/'-separated
    type: int
    mode: int
    uid: int = 0
    gid: int = 0
    nlink: int = 1
    size: int = 0
    mtime_ns: int = 0
    atime_ns: int = 0
    ctime_ns: int = 0
    dev: int = 0
    ino: int = 0
    rdev: int = 0
    user: bytes = b""
    group: bytes = b""
    link: bytes = b""  # symlink target, or the archive path a hard link points to
    xattrs: list[tuple[bytes, bytes]] = field(default_factory=list)
    chunks: list[ChunkRef] = field(default_factory=list)
    flags: int = 0

    @classmethod
    def from_stat(cls, path: bytes, st: os.stat_result, **kw) -> Entry:
        return cls(path=path, type=kw.pop("type", None) or entry_type(st.st_mode), mode=st.st_mode,
                   uid=st.st_uid, gid=st.st_gid, nlink=st.st_nlink, size=st.st_size, mtime_ns=st.st_mtime_ns,
                   atime_ns=st.st_atime_ns, ctime_ns=st.st_ctime_ns, dev=st.st_dev, ino=st.st_ino,
                   rdev=st.st_rdev, **kw)

    @property
    def name(self) -> str:
        return os.fsdecode(self.path)

    def encode(self) -> bytes:
        parts = [b"", self.path, self.user, self.group, self.link]
        for name, value in self.xattrs:
            parts += [XATTR.pack(len(name), len(value)), name, value]
        parts += [CHUNK_REF.pack(*c) for c in self.chunks]
        body_len = sum(map(len, parts))
        parts[0] = ENTRY.pack(
            ENTRY.size + body_len, self.type, self.flags, 0, self.mode, self.uid, self.gid, self.nlink,
            self.size, self.mtime_ns, self.atime_ns, self.ctime_ns, self.dev, self.ino, self.rdev,
            len(self.path), len(self.user), len(self.group), len(self.link), len(self.xattrs), len(self.chunks))
        return b"".join(parts)


def decode(raw: bytes | memoryview, pos: int = 0) -> tuple[Entry, int]:
    """The record at ``pos`` and the position after it; ValueError when it is malformed."""
    if pos + ENTRY.size > len(raw):
        raise ValueError(f"truncated record at byte {pos}")
    (length, typ, flags, _, mode, uid, gid, nlink, size, mtime, atime, ctime, dev, ino, rdev,
     path_len, user_len, group_len, link_len, nx, nc) = ENTRY.unpack_from(raw, pos)
    end = pos + length
    if length < ENTRY.size or end > len(raw) or not T_FILE <= typ <= T_SOCK:
        raise ValueError(f"malformed record at byte {pos}")
    p = pos + ENTRY.size
    strings = []
    for n in (path_len, user_len, group_len, link_len):
        strings.append(bytes(raw[p:p + n]))
        p += n
    xattrs = []
    for _ in range(nx):
        if p + XATTR.size > end:
            raise ValueError(f"malformed record at byte {pos}")
        nl, vl = XATTR.unpack_from(raw, p)
        p += XATTR.size
        xattrs.append((bytes(raw[p:p + nl]), bytes(raw[p + nl:p + nl + vl])))
        p += nl + vl
    chunks = [CHUNK_REF.unpack_from(raw, p + i * CHUNK_REF.size) for i in range(nc)] \
        if p + nc * CHUNK_REF.size == end else None
    if chunks is None:
        raise ValueError(f"malformed record at byte {pos}")
    e = Entry(strings[0], typ, mode, uid, gid, nlink, size, mtime, atime, ctime, dev, ino, rdev,
              strings[1], strings[2], strings[3], xattrs, chunks, flags)
    return e, end


def iter_entries(raw: bytes | memoryview) -> Iterator[Entry]:
    pos = 0
    while pos < len(raw):
        entry, pos = decode(raw, pos)
        yield entry


class RecordRef(NamedTuple):
    """Where a record lies in a catalog, and what decides whether its file changed since."""

    start: int
    end: int
    type: int
    flags: int
    key: tuple[int, int, int, int]  # size, mtime_ns, ctime_ns, ino


def scan(raw: bytes | memoryview) -> dict[bytes, RecordRef]:
    """Path -> record position, reading only the fixed parts (fast: an unchanged re-run's parent)."""
    out: dict[bytes, RecordRef] = {}
    pos, unpack, n, fixed = 0, ENTRY.unpack_from, len(raw), ENTRY.size
    while pos < n:
        (length, typ, flags, _, _, _, _, _, size, mtime, _, ctime, _, ino, _, path_len, *_rest) = unpack(raw, pos)
        end = pos + length
        if length < fixed or end > n:
            raise ValueError(f"malformed record at byte {pos}")
        out[raw[pos + fixed:pos + fixed + path_len]] = RecordRef(pos, end, typ, flags, (size, mtime, ctime, ino))
        pos = end
    return out


def stat_key(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino



def select(entries: list[Entry], paths: list[str], with_parents: bool = False) -> list[Entry]:
    """Entries at or below any of ``paths`` (archive paths; a leading '/' is ignored), in catalog
    order, plus their parent directories when asked. ValueError names a path that matches nothing."""
    wanted = [os.fsencode(p).strip(b"/") for p in paths]
    if not wanted or b"" in wanted:
        return list(entries)
    hit = [False] * len(wanted)
    keep: set[bytes] = set()
    for e in entries:
        for n, w in enumerate(wanted):
            if e.path == w or e.path.startswith(w + b"/"):
                hit[n] = True
                keep.add(e.path)
                break
    missing = [paths[n] for n, h in enumerate(hit) if not h]
    if missing:
        raise ValueError(f"not in the archive: {', '.join(missing)}")
    if with_parents:
        for path in list(keep):
            head = path.rpartition(b"/")[0]
            while head and head not in keep:
                keep.add(head)
                head = head.rpartition(b"/")[0]
    return [e for e in entries if e.path in keep]
