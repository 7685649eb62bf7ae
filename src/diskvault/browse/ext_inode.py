"""ext2/3/4 inodes and what hangs off them, decoded from bytes: the inode itself (names as in the
kernel's struct ext4_inode), extent trees and block maps as runs, directory entries, and extended
attributes (in the inode after i_extra_isize, and in the xattr block) with ACLs in the xattr ABI.

Pure decoding: reading blocks is left to the caller through ``read_block``.
"""

from __future__ import annotations

import stat
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from diskvault.browse.runs import ZERO, Run
from diskvault.errors import FilesystemError

ROOT_INODE = 2
GOOD_OLD_INODE_SIZE = 128
N_BLOCKS = 15  # i_block[]: 12 direct, indirect, double indirect, triple indirect
N_DIRECT = 12

# i_flags
EXT4_ENCRYPT_FL = 0x00000800
EXT4_EXTENTS_FL = 0x00080000
EXT4_INLINE_DATA_FL = 0x10000000

# struct ext4_inode up to 0x80, and the extra fields after it
INODE = struct.Struct("<HHIIIIIHHIII60sIIIIHHHHHH")
INODE_EXTRA = struct.Struct("<HHIIIII")  # i_extra_isize .. i_crtime_extra
EXTRA_FIELD_END = {"ctime": 8, "mtime": 12, "atime": 16, "crtime": 20, "crtime_extra": 24}

# extent tree (struct ext4_extent_header, ext4_extent, ext4_extent_idx)
EXTENT_MAGIC = 0xF30A
EXTENT_HEADER = struct.Struct("<HHHHI")
EXTENT_LEAF = struct.Struct("<IHHI")
EXTENT_INDEX = struct.Struct("<IIHH")
EXT_INIT_MAX_LEN = 1 << 15  # ee_len above this: an unwritten extent of ee_len - 32768 blocks
MAX_EXTENT_DEPTH = 5

# directory entries (struct ext4_dir_entry_2; name_len is 16 bits without the filetype feature)
DIRENT = struct.Struct("<IHBB")

# extended attributes
XATTR_MAGIC = 0xEA020000
XATTR_BLOCK_HEADER = 32  # struct ext4_xattr_header
XATTR_ENTRY = struct.Struct("<BBHIII")  # name_len, name_index, value_offs, value_inum, value_size, hash
XATTR_PREFIXES = {1: "user.", 2: "system.posix_acl_access", 3: "system.posix_acl_default",
                  4: "trusted.", 6: "security."}  # what listxattr shows on Linux
XATTR_INDEX_SYSTEM = 7  # "system.data": the rest of an inline file, hidden from listxattr

# ACLs: ext4 keeps a compact form; getxattr/setxattr speak posix_acl_xattr (version 2, 8-byte entries)
EXT4_ACL_VERSION = 1
POSIX_ACL_XATTR_VERSION = 2
ACL_USER, ACL_GROUP = 0x02, 0x08  # the tags that carry an id
ACL_UNDEFINED_ID = 0xFFFFFFFF


def _signed(v: int) -> int:
    return v - (1 << 32) if v & 0x80000000 else v


def _time_ns(seconds: int, extra: int | None) -> int:
    """i_*time plus i_*time_extra: 2 epoch bits above the signed 32-bit seconds, 30 bits of ns."""
    s = _signed(seconds)
    if extra is None:
        return s * 1_000_000_000
    return (s + ((extra & 3) << 32)) * 1_000_000_000 + min(extra >> 2, 999_999_999)


@dataclass
class Inode:
    number: int
    mode: int  # type and permission bits
    uid: int
    gid: int
    size: int
    nlink: int
    flags: int
    atime_ns: int
    ctime_ns: int
    mtime_ns: int
    btime_ns: int | None  # i_crtime, in inodes large enough to hold it
    block: bytes  # i_block[]: extent tree root, block map, inline data or a fast symlink
    file_acl: int  # xattr block, 0 for none
    inline_xattrs: bytes  # the in-inode xattr area after its magic ("" for none)

    @property
    def kind(self) -> str:
        fmt = stat.S_IFMT(self.mode)
        return {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink"}.get(fmt, "other")

    @property
    def is_inline(self) -> bool:
        return bool(self.flags & EXT4_INLINE_DATA_FL)

    @property
    def is_fast_symlink(self) -> bool:
        """Target kept in i_block (the kernel's and e2fsprogs' rule: shorter than i_block)."""
        return self.kind == "symlink" and not self.is_inline and 0 < self.size < N_BLOCKS * 4


def parse_inode(number: int, raw: bytes, inode_size: int) -> Inode:
    (mode, uid_lo, size_lo, atime, ctime, mtime, _dtime, gid_lo, links, _blocks_lo, flags, _osd1, block,
     _gen, acl_lo, size_hi, _faddr, _blocks_hi, acl_hi, uid_hi, gid_hi, _csum, _res) = INODE.unpack_from(raw, 0)
    extra: dict[str, int] = {}
    xattrs = b""
    if inode_size > GOOD_OLD_INODE_SIZE:
        isize = struct.unpack_from("<H", raw, GOOD_OLD_INODE_SIZE)[0]
        if isize % 4 or GOOD_OLD_INODE_SIZE + isize > inode_size:
            raise FilesystemError(f"ext inode {number} is corrupt: i_extra_isize {isize}")
        values = INODE_EXTRA.unpack_from(raw, GOOD_OLD_INODE_SIZE)
        names = ("extra_isize", "checksum_hi", "ctime", "mtime", "atime", "crtime", "crtime_extra")
        extra = {n: v for n, v in zip(names, values) if n in ("extra_isize", "checksum_hi")
                 or EXTRA_FIELD_END[n] <= isize}
        area = raw[GOOD_OLD_INODE_SIZE + isize:inode_size]
        if len(area) >= 4 and struct.unpack_from("<I", area, 0)[0] == XATTR_MAGIC:
            xattrs = area[4:]
    crtime = extra.get("crtime")
    return Inode(
        number=number, mode=mode, uid=uid_lo | uid_hi << 16, gid=gid_lo | gid_hi << 16,
        size=size_lo | size_hi << 32, nlink=links, flags=flags,
        atime_ns=_time_ns(atime, extra.get("atime")), ctime_ns=_time_ns(ctime, extra.get("ctime")),
        mtime_ns=_time_ns(mtime, extra.get("mtime")),
        btime_ns=None if crtime is None else _time_ns(crtime, extra.get("crtime_extra")),
        block=block, file_acl=acl_lo | acl_hi << 32, inline_xattrs=xattrs,
    )


# ----------------------------------------------------------------------------- data runs

def extent_runs(node: bytes, read_block: Callable[[int], bytes], what: str, depth: int | None = None) -> list[Run]:
    """Runs of an extent (sub)tree rooted in ``node`` (i_block or a tree block)."""
    magic, entries, _max, node_depth, _gen = EXTENT_HEADER.unpack_from(node, 0)
    if magic != EXTENT_MAGIC:
        raise FilesystemError(f"{what}: bad extent header")
    if node_depth > MAX_EXTENT_DEPTH or (depth is not None and node_depth != depth):
        raise FilesystemError(f"{what}: extent tree depth {node_depth} is corrupt")
    if 12 + 12 * entries > len(node):
        raise FilesystemError(f"{what}: {entries} extents do not fit their node")
    runs: list[Run] = []
    for i in range(entries):
        off = 12 + 12 * i
        if node_depth == 0:
            first, length, start_hi, start_lo = EXTENT_LEAF.unpack_from(node, off)
            if length > EXT_INIT_MAX_LEN:
                runs.append(Run(first, ZERO, length - EXT_INIT_MAX_LEN))
            else:
                runs.append(Run(first, start_hi << 32 | start_lo, length))
        else:
            _first, leaf_lo, leaf_hi, _unused = EXTENT_INDEX.unpack_from(node, off)
            runs += extent_runs(read_block(leaf_hi << 32 | leaf_lo), read_block, what, node_depth - 1)
    return runs


def blockmap_runs(i_block: bytes, read_block: Callable[[int], bytes], block_size: int, nblocks: int) -> list[Run]:
    """Runs of a classic block map: 12 direct pointers, then single, double and triple indirect."""
    per = block_size // 4
    logical: list[np.ndarray] = []
    physical: list[np.ndarray] = []

    def collect(ptrs: np.ndarray, base: int, level: int) -> None:
        """Pointers that each map per**level file blocks from ``base`` on (level 0: data blocks)."""
        if level == 0:
            idx = np.flatnonzero(ptrs)
            keep = base + idx < nblocks
            logical.append(base + idx[keep])
            physical.append(ptrs[idx[keep]])
            return
        span = per ** level
        for k in np.flatnonzero(ptrs):
            first = base + int(k) * span
            if first >= nblocks:
                break
            collect(np.frombuffer(read_block(int(ptrs[k])), dtype="<u4").astype(np.int64), first, level - 1)

    top = np.frombuffer(i_block, dtype="<u4").astype(np.int64)
    collect(top[:N_DIRECT], 0, 0)
    base = N_DIRECT
    for level in (1, 2, 3):
        collect(top[N_DIRECT + level - 1:N_DIRECT + level], base, level)
        base += per ** level
    lg, ph = np.concatenate(logical), np.concatenate(physical)
    if lg.size == 0:
        return []
    breaks = np.flatnonzero((np.diff(lg) != 1) | (np.diff(ph) != 1)) + 1
    starts = np.concatenate([[0], breaks])
    counts = np.diff(np.concatenate([starts, [lg.size]]))
    return [Run(int(a), int(b), int(c)) for a, b, c in zip(lg[starts], ph[starts], counts)]


# ----------------------------------------------------------------------------- directories

def dirents(buf: bytes, filetype: bool) -> Iterator[tuple[int, bytes]]:
    """(inode, name) of the live entries of one directory block (or inline area); inode-0 entries
    (deleted slots, htree dx_node fillers, checksum tails) are skipped."""
    pos, end = 0, len(buf)
    while pos + DIRENT.size <= end:
        ino, rec_len, name_len, ftype = DIRENT.unpack_from(buf, pos)
        if not filetype:
            name_len |= ftype << 8
        rec_len = end - pos if rec_len in (0, 0xFFFF) else (rec_len & 0xFFFC) | (rec_len & 3) << 16
        if rec_len < DIRENT.size or pos + rec_len > end or DIRENT.size + name_len > rec_len:
            return  # corrupt: the rest of this block cannot be trusted
        if ino:
            yield ino, buf[pos + DIRENT.size:pos + DIRENT.size + name_len]
        pos += rec_len


# ----------------------------------------------------------------------------- xattrs

@dataclass
class RawXattr:
    index: int
    name: bytes
    value: bytes | None  # None: stored in the EA inode ``value_inum``
    value_inum: int
    value_size: int


def xattr_entries(buf: bytes, first: int, value_base: int) -> list[RawXattr]:
    """Entries from ``first`` up to the 4 zero bytes that end them; values at value_base + offset."""
    out, pos = [], first
    while pos + XATTR_ENTRY.size <= len(buf) and struct.unpack_from("<I", buf, pos)[0]:
        name_len, index, value_offs, value_inum, value_size, _hash = XATTR_ENTRY.unpack_from(buf, pos)
        name = buf[pos + XATTR_ENTRY.size:pos + XATTR_ENTRY.size + name_len]
        value = None
        if not value_inum:
            start = value_base + value_offs
            if start + value_size > len(buf):
                raise FilesystemError(f"xattr {name!r}: value lies outside its block")
            value = buf[start:start + value_size]
        out.append(RawXattr(index, name, value, value_inum, value_size))
        pos += (XATTR_ENTRY.size + name_len + 3) & ~3
    return out


def inline_xattrs(inode: Inode) -> list[RawXattr]:
    return xattr_entries(inode.inline_xattrs, 0, 0) if inode.inline_xattrs else []


def block_xattrs(block: bytes) -> list[RawXattr]:
    if len(block) < XATTR_BLOCK_HEADER or struct.unpack_from("<I", block, 0)[0] != XATTR_MAGIC:
        raise FilesystemError("xattr block has a bad magic number")
    return xattr_entries(block, XATTR_BLOCK_HEADER, 0)


def xattr_name(x: RawXattr) -> str | None:
    """Full name as listxattr shows it, or None for those Linux does not list."""
    prefix = XATTR_PREFIXES.get(x.index)
    if prefix is None:
        return None
    return prefix + x.name.decode("utf-8", "surrogateescape")


def acl_to_xattr(raw: bytes) -> bytes:
    """ext4's compact ACL (4-byte entries without an id) as the posix_acl_xattr form."""
    if len(raw) < 4 or struct.unpack_from("<I", raw, 0)[0] != EXT4_ACL_VERSION:
        raise FilesystemError("ACL has an unknown version")
    out, pos = [struct.pack("<I", POSIX_ACL_XATTR_VERSION)], 4
    while pos + 4 <= len(raw):
        tag, perm = struct.unpack_from("<HH", raw, pos)
        if tag in (ACL_USER, ACL_GROUP):
            ident = struct.unpack_from("<I", raw, pos + 4)[0]
            pos += 8
        else:
            ident, pos = ACL_UNDEFINED_ID, pos + 4
        out.append(struct.pack("<HHI", tag, perm, ident))
    return b"".join(out)
