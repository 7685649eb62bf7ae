"""NTFS file tree: MFT records (with their $ATTRIBUTE_LIST extension records), directories from
the $I30 index ($INDEX_ROOT and the INDX blocks of $INDEX_ALLOCATION, walked as a B+tree), file
data from the unnamed $DATA: resident, runs (sparse runs and bytes past initialized_size read as
zeros) or LZNT1-compressed units. Boot sector, record fixups, attributes and run lists come from
``diskvault.fs.ntfs``.

What ntfs-3g shows is what we show: metadata files (records < 16) are hidden, a DOS 8.3 name is
dropped when the record has a long name in the directory, times come from
$STANDARD_INFORMATION, the inode is the record number, hard links share it. Symlinks are reparse
points (SYMLINK, MOUNT_POINT, WSL LX_SYMLINK) or Interix files; absolute targets (``\\??\\C:\\x``)
are given relative to this volume's root (``/x``), as ntfs-3g does below its mount point. mode,
uid and gid come from WSL's $LXMOD/$LXUID/$LXGID extended attributes when stored, else None; named
data streams up to 64 KiB are xattrs ``user.NAME`` (ntfs-3g's streams_interface=xattr).
"""

from __future__ import annotations

import bisect
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, ClassVar

from diskvault.browse.base import Entry, ReadAtFile, WalkedTree
from diskvault.errors import FilesystemError
from diskvault.fs import c_ntfs as C
from diskvault.fs.ntfs import NtfsReader, Stream
from diskvault.readat import read_at as _read_at

F = C.Field
STANDARD_INFORMATION = C.Layout((F(0x00, "created", "Q"), F(0x08, "modified", "Q"), F(0x10, "changed", "Q"),
                                 F(0x18, "accessed", "Q"), F(0x20, "attributes", "I")))
FILE_NAME = C.Layout((F(0x00, "parent", "Q"), F(0x40, "name_length", "B"), F(0x41, "namespace", "B")))
INDEX_ROOT = C.Layout((F(0x08, "block_size", "I"), F(0x10, "entries_offset", "I"),
                       F(0x14, "index_length", "I")))
INDEX_BLOCK = C.Layout((F(0x00, "magic", "4s"), F(0x10, "vcn", "q"), F(0x18, "entries_offset", "I"),
                        F(0x1C, "index_length", "I")))
INDEX_ENTRY = C.Layout((F(0x00, "mref", "Q"), F(0x08, "length", "H"), F(0x0C, "flags", "H")))
FILE_NAME_NAME = 0x42  # offset of the name in a $FILE_NAME value
INDEX_ROOT_HEADER, INDEX_BLOCK_HEADER = 0x10, 0x18  # where the INDEX_HEADER sits in each
INDEX_ENTRY_NODE, INDEX_ENTRY_END = 1, 2
AT_INDEX_ROOT, AT_INDEX_ALLOCATION, AT_REPARSE_POINT, AT_EA = 0x90, 0xA0, 0xC0, 0xE0
I30 = "$I30"
NAMESPACE_DOS = 2  # an 8.3 name that has a Win32 twin
FIRST_USER_RECORD = 16  # records below are $MFT ... $Extend and the root's "."
ROOT_RECORD = 5
FILE_ATTR_SYSTEM = 0x0004
NT_EPOCH = 116444736000000000  # 1970-01-01 in 100 ns units since 1601-01-01
TAG_MOUNT_POINT, TAG_SYMLINK, TAG_LX_SYMLINK = 0xA0000003, 0xA000000C, 0xA000001D
TAGS_SPECIAL = (0x80000023, 0x80000024, 0x80000025, 0x80000026)  # WSL socket, fifo, char, block
SYMLINK_FLAG_RELATIVE = 1
INTERIX_LINK = b"IntxLNK\x01"
INTERIX_DEVICES = (b"IntxCHR\x00", b"IntxBLK\x00")
INTERIX_MAX = 8 + 2 * 4096  # largest Interix symlink read
XATTR_MAX = 64 << 10  # larger named streams are not offered as xattrs
LZNT1_CHUNK = 4096


def nt_time(t: int) -> int | None:
    return (t - NT_EPOCH) * 100 if t else None


def lznt1(src: bytes, size: int) -> bytes:
    """Decompress one LZNT1 compression unit to ``size`` bytes. Each chunk (2-byte header: size
    - 3 in bits 0-11, bit 15 = compressed) stands for 4 KiB of output; what it leaves is zeros."""
    out, pos = bytearray(), 0
    while pos + 2 <= len(src) and len(out) < size:
        head = src[pos] | src[pos + 1] << 8
        if head == 0:
            break
        end = pos + 3 + (head & 0xFFF)
        if end > len(src):
            raise FilesystemError("NTFS compressed data: an LZNT1 chunk runs past its unit")
        chunk = _lznt1_chunk(src, pos + 2, end) if head & 0x8000 else src[pos + 2 : end]
        if len(chunk) > LZNT1_CHUNK:
            raise FilesystemError("NTFS compressed data: an LZNT1 chunk holds more than 4 KiB")
        out += chunk
        out.extend(bytes(-len(out) % LZNT1_CHUNK))
        pos = end
    return bytes(out[:size].ljust(size, b"\0"))


def _lznt1_chunk(src: bytes, pos: int, end: int) -> bytearray:
    out = bytearray()
    while pos < end:
        flags = src[pos]
        pos += 1
        if flags == 0:  # eight literal bytes
            out += src[pos : min(pos + 8, end)]
            pos += 8
            continue
        for bit in range(8):
            if pos >= end:
                break
            if not flags >> bit & 1:
                out.append(src[pos])
                pos += 1
                continue
            if pos + 2 > end:
                raise FilesystemError("NTFS compressed data: a truncated LZNT1 back reference")
            token = src[pos] | src[pos + 1] << 8
            pos += 2
            split = 16 - max(4, (len(out) - 1).bit_length())  # length bits shrink as output grows
            back, count = (token >> split) + 1, (token & ((1 << split) - 1)) + 3
            if back > len(out) or len(out) + count > LZNT1_CHUNK:
                raise FilesystemError("NTFS compressed data: an LZNT1 back reference is out of range")
            start = len(out) - back
            out += (out[start:] * (count // back + 1))[:count]
    return out


@dataclass
class Record:
    """A base record's attributes (its extension records' included), by (type, name)."""

    number: int
    flags: int
    attrs: dict[tuple[int, str], list[tuple[bytearray, dict]]]

    def all(self, typ: int, name: str = "") -> list[tuple[bytearray, dict]]:
        return self.attrs.get((typ, name), [])


class Compressed:
    """Reads an LZNT1-compressed value one compression unit at a time (the last one is kept)."""

    def __init__(self, fh: BinaryIO, st: Stream, unit: int, cluster_size: int, what: str) -> None:
        self._fh, self._st, self._unit, self._cs, self._what = fh, st, unit, cluster_size, what
        self._starts = [vcn for vcn, _, _ in st.runs]
        self._kept: tuple[int, bytes] = (-1, b"")

    def _load(self, u: int) -> bytes:
        lo, hi, cs = u * self._unit, (u + 1) * self._unit, self._cs
        pieces, i = [], max(0, bisect.bisect_right(self._starts, lo) - 1)
        while i < len(self._st.runs) and self._st.runs[i][0] < hi:
            vcn, lcn, count = self._st.runs[i]
            a, b = max(vcn, lo), min(vcn + count, hi)
            if a < b and lcn >= 0:
                pieces.append((lcn + a - vcn, b - a))
            i += 1
        clusters = sum(n for _, n in pieces)
        raw = b"".join(_read_at(self._fh, lcn * cs, n * cs) for lcn, n in pieces)
        if len(raw) != clusters * cs:
            raise FilesystemError(f"cannot read {self._what} at compression unit {u}")
        if clusters == 0:
            return bytes(self._unit * cs)
        return raw if clusters == self._unit else lznt1(raw, self._unit * cs)

    def read_at(self, offset: int, n: int) -> bytes:
        ub = self._unit * self._cs
        out = bytearray()
        for u in range(offset // ub, (offset + n - 1) // ub + 1):
            if self._kept[0] != u:
                self._kept = (u, self._load(u))
            out += self._kept[1]
        data = out[offset % ub : offset % ub + n]
        init = self._st.initialized_size - offset
        if init < n:
            data[max(0, init) :] = bytes(n - max(0, init))
        return bytes(data)


def data_ranges(st: Stream, unit: int, cluster_size: int) -> list[tuple[int, int]] | None:
    """(offset, length) of the value that may hold data: the units (clusters, or compression units)
    with a cluster on disk, below initialized_size. None for a resident value (all of it)."""
    if st.resident is not None:
        return None
    ub, end, out = unit * cluster_size, min(st.initialized_size, st.data_size), []
    for vcn, lcn, count in st.runs:
        lo, hi = vcn // unit * ub, min(end, -(-(vcn + count) // unit) * ub)
        if lcn < 0 or lo >= hi:
            continue
        if out and out[-1][1] >= lo:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return [(lo, hi - lo) for lo, hi in out]


def link_target(subst: str, relative: bool) -> str:
    """A Windows link target as a path on this volume: ``\\??\\C:\\a\\b`` -> ``/a/b``."""
    if relative:
        return subst.replace("\\", "/")
    m = re.fullmatch(r"\\\?\?\\[A-Za-z]:\\?(.*)", subst, re.DOTALL)
    return "/" + m.group(1).replace("\\", "/") if m else subst


def reparse_link(value: bytes) -> tuple[str, str | None]:
    """(kind, link target) a reparse point stands for; ("", None) for other tags."""
    if len(value) < 8:
        raise FilesystemError("NTFS reparse point is truncated")
    tag = struct.unpack_from("<I", value)[0]
    if tag == TAG_LX_SYMLINK:
        return "symlink", value[12:].decode("utf-8", "replace")
    if tag in TAGS_SPECIAL:
        return "other", None
    if tag not in (TAG_SYMLINK, TAG_MOUNT_POINT):
        return "", None
    head = 20 if tag == TAG_SYMLINK else 16
    if len(value) < head:
        raise FilesystemError("NTFS symlink reparse point is truncated")
    off, length = struct.unpack_from("<HH", value, 8)
    relative = tag == TAG_SYMLINK and bool(struct.unpack_from("<I", value, 16)[0] & SYMLINK_FLAG_RELATIVE)
    subst = value[head + off : head + off + length].decode("utf-16-le", "replace")
    return "symlink", link_target(subst, relative)


def lx_owner(ea: bytes) -> dict[str, int]:
    """$LXUID/$LXGID/$LXMOD (WSL) from an $EA value: entries of (offset of the next, flags, name
    length, value length, name, NUL, value)."""
    out, pos = {}, 0
    while pos + 8 <= len(ea):
        nxt, _, nlen, vlen = struct.unpack_from("<IBBH", ea, pos)
        name, value = ea[pos + 8 : pos + 8 + nlen], ea[pos + 9 + nlen : pos + 9 + nlen + vlen]
        if name in (b"$LXUID", b"$LXGID", b"$LXMOD") and len(value) >= 4:
            out[name.decode()] = struct.unpack_from("<I", value)[0]
        if nxt <= 0:
            break
        pos += nxt
    return out


class NtfsTree(WalkedTree):
    """An NTFS volume's files, read-only; see the module docstring."""

    name: ClassVar[str] = "ntfs"

    @classmethod
    def probe(cls, fh: BinaryIO, size: int) -> bool:
        return NtfsReader.probe(fh, size)

    def __init__(self, fh: BinaryIO, size: int) -> None:
        super().__init__()
        self._fh = fh
        self._vol = NtfsReader(fh, size)
        self._top = self._entry(self._load(ROOT_RECORD), "", "/"), ROOT_RECORD

    # ----------------------------------------------------------------- records and values

    def _load(self, recno: int) -> Record:
        v, what = self._vol, f"NTFS MFT record {recno}"
        buf, h = v._record(recno)
        found = [(buf, a) for a in v._attributes(buf, h, what)]
        lists = [a for _, a in found if a["type"] == C.AT_ATTRIBUTE_LIST]
        if lists:
            refs = {e["mft_reference"] & C.MREF_MASK for e in v._attribute_list(buf, lists[0], what)}
            for ref in sorted(refs - {recno}):
                xbuf, xh = v._record(ref, base=recno)
                found += [(xbuf, a) for a in v._attributes(xbuf, xh, f"NTFS MFT record {ref}")]
        attrs: dict[tuple[int, str], list[tuple[bytearray, dict]]] = {}
        for b, a in found:
            start = a["_off"] + a["name_offset"]
            name = b[start : start + 2 * a["name_length"]].decode("utf-16-le", "replace")
            attrs.setdefault((a["type"], name), []).append((b, a))
        return Record(recno, h["flags"], attrs)

    def _stream(self, pieces: list[tuple[bytearray, dict]], what: str) -> tuple[Stream, int]:
        """The value an attribute's pieces map, and its compression unit in clusters (0: none)."""
        if not pieces:
            raise FilesystemError(f"{what} is missing")
        first = _first(pieces)
        if not first["non_resident"]:
            return Stream(len(first["_value"]), len(first["_value"]), resident=first["_value"]), 0
        if first["flags"] & C.ATTR_IS_ENCRYPTED:
            raise FilesystemError(f"{what} is encrypted (EFS): it cannot be read without its owner's key")
        packed = first["flags"] & C.ATTR_COMPRESSION_MASK and first["compression_unit"]
        unit = 1 << first["compression_unit"] if packed else 0
        st = Stream(first["data_size"], first["initialized_size"])
        sizes_ok = 0 <= st.initialized_size <= st.data_size <= first["allocated_size"]
        if first["lowest_vcn"] != 0 or not sizes_ok:
            raise FilesystemError(f"{what}: attribute sizes are corrupt")
        vcn = 0
        for buf, a in sorted(pieces, key=lambda p: p[1].get("lowest_vcn", 0)):
            if not a["non_resident"] or a["lowest_vcn"] != vcn:
                raise FilesystemError(f"{what}: attribute extents do not follow each other at VCN {vcn}")
            st.runs += self._vol._runs(buf, a, what)
            vcn = st.runs[-1][0] + st.runs[-1][2] if st.runs else vcn
        if vcn * self._vol.cluster_size < st.data_size:
            raise FilesystemError(f"{what}: runs map {vcn} clusters, fewer than its {st.data_size} bytes")
        return st, unit

    def _reader(self, pieces: list[tuple[bytearray, dict]], what: str) -> tuple[int, ReadAtFile]:
        st, unit = self._stream(pieces, what)
        if unit:
            read_at = Compressed(self._fh, st, unit, self._vol.cluster_size, what).read_at
        else:
            def read_at(offset: int, n: int) -> bytes:
                return self._vol._read_stream(st, offset, n, what)
        ranges = data_ranges(st, unit or 1, self._vol.cluster_size)
        return st.data_size, ReadAtFile(st.data_size, read_at, ranges)

    def _value(self, rec: Record, typ: int, name: str = "", limit: int = 1 << 20) -> bytes | None:
        pieces = rec.all(typ, name)
        if not pieces:
            return None
        what = f"NTFS MFT record {rec.number} attribute 0x{typ:X}"
        size, f = self._reader(pieces, what)
        if size > limit:
            raise FilesystemError(f"{what} of {size} bytes is too large")
        return f.readall()

    # ----------------------------------------------------------------- directories

    def _index(self, rec: Record) -> Iterator[tuple[str, int, int]]:
        """(name, namespace, record) of every entry of a directory's $I30 index."""
        what = f"NTFS directory index of record {rec.number}"
        root = self._value(rec, AT_INDEX_ROOT, I30)
        if root is None or len(root) < INDEX_ROOT.size:
            raise FilesystemError(f"{what} has no $INDEX_ROOT")
        ir = INDEX_ROOT.parse(root)
        h = INDEX_ROOT_HEADER
        pending = yield from _node(root, h + ir["entries_offset"], h + ir["index_length"], what)
        if not pending:
            return
        size, alloc = self._reader(rec.all(AT_INDEX_ALLOCATION, I30), what)
        bs, cs = ir["block_size"], self._vol.cluster_size
        unit, seen = cs if bs >= cs else C.NTFS_BLOCK_SIZE, set()
        while pending:
            vcn = pending.pop()
            if vcn in seen or not 0 <= vcn * unit <= size - bs:
                raise FilesystemError(f"{what}: index block VCN {vcn} is out of range or loops")
            seen.add(vcn)
            alloc.seek(vcn * unit)
            buf = bytearray(alloc.read(bs))
            if buf[:4] != b"INDX":
                raise FilesystemError(f"{what}: block at VCN {vcn} is not an INDX block")
            self._vol._fixup(buf, f"{what} block {vcn}")
            ib = INDEX_BLOCK.parse(buf)
            h = INDEX_BLOCK_HEADER
            pending += yield from _node(buf, h + ib["entries_offset"], min(bs, h + ib["index_length"]), what)

    def _root(self) -> tuple[Entry, int]:
        return self._top

    def _read_dir(self, entry: Entry, handle: int) -> Iterator[tuple[Entry, int]]:
        names = [n for n in self._index(self._load(handle)) if n[2] >= FIRST_USER_RECORD]
        long = {ref for _, ns, ref in names if ns != NAMESPACE_DOS}
        for name, ns, ref in names:
            if ns != NAMESPACE_DOS or ref not in long:
                yield self._entry(self._load(ref), name, entry.path.rstrip("/") + "/" + name), ref

    def _entry(self, rec: Record, name: str, path: str) -> Entry:
        si_raw = self._value(rec, C.AT_STANDARD_INFORMATION) or b""
        if len(si_raw) < STANDARD_INFORMATION.size:
            raise FilesystemError(f"NTFS MFT record {rec.number} has no $STANDARD_INFORMATION")
        si = STANDARD_INFORMATION.parse(si_raw)
        spaces = [FILE_NAME.parse(a["_value"])["namespace"] for _, a in rec.all(C.AT_FILE_NAME)]
        links = sum(ns != NAMESPACE_DOS for ns in spaces)  # a Win32 + DOS pair is one link
        e = Entry(name=name, path=path, kind="file", inode=rec.number, nlink=max(1, links),
                  mtime_ns=nt_time(si["modified"]), atime_ns=nt_time(si["accessed"]),
                  ctime_ns=nt_time(si["changed"]), btime_ns=nt_time(si["created"]))
        data = rec.all(C.AT_DATA)
        if rec.flags & C.MFT_RECORD_IS_DIRECTORY:
            e.kind, e.nlink = "dir", 1
        else:
            e.size = _size(data)
        reparse = self._value(rec, AT_REPARSE_POINT)
        if reparse is not None:
            kind, e.link_target = reparse_link(reparse)
            e.kind = kind or e.kind
        elif si["attributes"] & FILE_ATTR_SYSTEM and e.kind == "file" and e.size <= INTERIX_MAX \
                and not _encrypted(data):
            head = self._reader(data, f"NTFS file {path}")[1].readall() if e.size > 1 else b""
            if head[:8] == INTERIX_LINK:
                e.kind, e.link_target = "symlink", head[8:].decode("utf-16-le", "replace")
            elif e.size < 2 or head[:8] in INTERIX_DEVICES:
                e.kind = "other"  # fifo (empty), socket (1 byte) or device, as ntfs-3g reads them
        if e.kind != "file":
            e.size = len(e.link_target.encode()) if e.link_target is not None else 0
        lx = lx_owner(self._value(rec, AT_EA) or b"")
        e.mode = lx["$LXMOD"] & 0o7777 if "$LXMOD" in lx else None
        e.uid, e.gid = lx.get("$LXUID"), lx.get("$LXGID")
        for (typ, stream), pieces in rec.attrs.items():
            if typ == C.AT_DATA and stream and _size(pieces) <= XATTR_MAX and not _encrypted(pieces):
                e.xattrs["user." + stream] = self._value(rec, C.AT_DATA, stream) or b""
        return e

    def _open(self, entry: Entry, handle: int) -> BinaryIO:
        pieces = self._load(handle).all(C.AT_DATA)
        if not pieces:
            return ReadAtFile(0, lambda offset, n: b"")
        return self._reader(pieces, f"NTFS file {entry.path}")[1]


def _first(pieces: list[tuple[bytearray, dict]]) -> dict:
    """The piece of an attribute holding its sizes and flags (the one mapping VCN 0)."""
    return min(pieces, key=lambda p: p[1].get("lowest_vcn", 0))[1]


def _size(pieces: list[tuple[bytearray, dict]]) -> int:
    """An attribute's value size, from its header (no run list decoded); 0 when absent."""
    if not pieces:
        return 0
    a = _first(pieces)
    return a["data_size"] if a["non_resident"] else len(a["_value"])


def _encrypted(pieces: list[tuple[bytearray, dict]]) -> bool:
    return bool(pieces) and bool(_first(pieces)["flags"] & C.ATTR_IS_ENCRYPTED)


def _node(buf: bytes | bytearray, pos: int, end: int, what: str) -> Iterator[tuple[str, int, int]]:
    """Yield the (name, namespace, record) keys of one index node; return its children's VCNs."""
    children = []
    while pos + 0x10 <= end:
        e = INDEX_ENTRY.parse(buf, pos)
        n = e["length"]
        if n < 0x10 or pos + n > end:
            raise FilesystemError(f"{what}: corrupt index entry at byte {pos}")
        if e["flags"] & INDEX_ENTRY_NODE:
            children.append(struct.unpack_from("<q", buf, pos + n - 8)[0])
        if e["flags"] & INDEX_ENTRY_END:
            break
        key = pos + 0x10
        fn = FILE_NAME.parse(buf, key)
        raw = buf[key + FILE_NAME_NAME : key + FILE_NAME_NAME + 2 * fn["name_length"]]
        yield raw.decode("utf-16-le", "replace"), fn["namespace"], e["mref"] & C.MREF_MASK
        pos += n
    return children
