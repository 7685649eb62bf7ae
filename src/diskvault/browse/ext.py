"""ext2/ext3/ext4 as a FileTree, read-only and in-process: paths are walked from the root inode
through directory blocks (htree directories read linearly), inodes are found through the group
descriptors that ``fs.ext.ExtReader`` parses, and file data comes from extent trees, block maps or
inline data (decoded in ``ext_inode``)."""

from __future__ import annotations

import errno
import math
import os
from collections import OrderedDict
from typing import Any, BinaryIO, ClassVar

from diskvault.browse import ext_inode as I
from diskvault.browse.base import Entry
from diskvault.browse.runs import ZERO, Run, RunFile
from diskvault.errors import FilesystemError
from diskvault.fs import c_ext as C
from diskvault.fs.ext import ExtReader
from diskvault.readat import read_at as _read_at

MAX_SYMLINK_HOPS = 40  # as the kernel's MAXSYMLINKS
INODE_CACHE = 4096
DIR_CACHE = 256


class _Lru(OrderedDict):
    """A cache that forgets the least recently used entry beyond ``limit``."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def lookup(self, key: int) -> Any:
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value

    def put(self, key: int, value: Any) -> None:
        self[key] = value
        if len(self) > self.limit:
            self.popitem(last=False)


def _missing(code: int, path: str) -> OSError:
    exc = {errno.ENOENT: FileNotFoundError, errno.ENOTDIR: NotADirectoryError,
           errno.EISDIR: IsADirectoryError}.get(code, OSError)
    return exc(code, os.strerror(code), path)


class ExtTree:
    """An ext2/3/4 filesystem opened for browsing (see the module docstring)."""

    name: ClassVar[str] = "ext"

    @classmethod
    def probe(cls, fh: BinaryIO, size: int) -> bool:
        return ExtReader.probe(fh, size)

    def __init__(self, fh: BinaryIO, size: int) -> None:
        sb = ExtReader(fh, size)
        if sb.incompat & C.INCOMPAT_JOURNAL_DEV:
            raise FilesystemError("this ext volume is an external journal: it holds no files")
        if sb.ro_compat & C.RO_COMPAT_BIGALLOC:
            raise FilesystemError("ext4 bigalloc filesystems cannot be browsed yet")
        if not hasattr(sb, "inode_table"):  # ExtReader skips them when the journal needs recovery
            sb._load_descriptors()
        # like a mount with noload: what the journal holds but the filesystem does not yet is not seen
        self.note = "the journal was not replayed (unclean filesystem)" if sb.unsupported else ""
        self._fh, self._sb = fh, sb
        self.block_size = sb.block_size
        self._inode_size = I.GOOD_OLD_INODE_SIZE if sb.sb["s_rev_level"] == 0 else sb.sb["s_inode_size"]
        self._per_group = sb.sb["s_inodes_per_group"]
        self._filetype = bool(sb.incompat & C.INCOMPAT_FILETYPE)
        self._inodes: _Lru = _Lru(INODE_CACHE)
        self._dirs: _Lru = _Lru(DIR_CACHE)

    # ----------------------------------------------------------------- blocks and inodes

    def _read_at(self, offset: int, length: int) -> bytes:
        return _read_at(self._fh, offset, length)

    def _read_block(self, block: int) -> bytes:
        if not 0 < block < self._sb.blocks_count:
            raise FilesystemError(f"ext block {block} lies outside the filesystem")
        data = self._read_at(block * self.block_size, self.block_size)
        if len(data) != self.block_size:
            raise FilesystemError(f"cannot read ext block {block}")
        return data

    def _inode(self, number: int) -> I.Inode:
        cached = self._inodes.lookup(number)
        if cached is not None:
            return cached
        if not 1 <= number <= self._sb.sb["s_inodes_count"]:
            raise FilesystemError(f"ext inode number {number} is out of range")
        group, index = divmod(number - 1, self._per_group)
        offset = int(self._sb.inode_table[group]) * self.block_size + index * self._inode_size
        raw = self._read_at(offset, self._inode_size)
        if len(raw) != self._inode_size:
            raise FilesystemError(f"cannot read ext inode {number}")
        inode = I.parse_inode(number, raw, self._inode_size)
        self._inodes.put(number, inode)
        return inode

    def _runs(self, inode: I.Inode) -> list[Run]:
        what = f"ext inode {inode.number}"
        if inode.flags & I.EXT4_EXTENTS_FL:
            runs = I.extent_runs(inode.block, self._read_block, what)
        else:
            runs = I.blockmap_runs(inode.block, self._read_block, self.block_size,
                                   math.ceil(inode.size / self.block_size))
        for r in runs:
            if r.physical != ZERO and not 0 < r.physical <= r.physical + r.count <= self._sb.blocks_count:
                raise FilesystemError(f"{what}: blocks {r.physical}+{r.count} lie outside the filesystem")
        return runs

    def _raw_xattrs(self, inode: I.Inode) -> list[I.RawXattr]:
        found = I.inline_xattrs(inode)
        if inode.file_acl:
            found += I.block_xattrs(self._read_block(inode.file_acl))
        return found

    def _inline_data(self, inode: I.Inode) -> bytes:
        """i_block followed by the "system.data" xattr: the whole of an inline file or directory."""
        rest = next((x.value for x in I.inline_xattrs(inode)
                     if x.index == I.XATTR_INDEX_SYSTEM and x.name == b"data"), b"")
        return inode.block + (rest or b"")

    def _data(self, inode: I.Inode) -> BinaryIO:
        if inode.flags & I.EXT4_ENCRYPT_FL:
            raise FilesystemError(f"ext inode {inode.number} is encrypted (fscrypt): its data cannot be read")
        if inode.is_inline:  # past the bytes kept inline, a file reads as zeros (as in the kernel)
            data = self._inline_data(inode)[:inode.size]
            return RunFile(lambda off, n: data[off:off + n], [Run(0, 0, len(data))], inode.size, 1)
        return RunFile(self._read_at, self._runs(inode), inode.size, self.block_size, f"ext inode {inode.number}")

    def _xattrs(self, inode: I.Inode) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for x in self._raw_xattrs(inode):
            name = I.xattr_name(x)
            if name is None:
                continue
            value = x.value if x.value is not None else self._data(self._inode(x.value_inum)).read(x.value_size)
            out[name] = I.acl_to_xattr(value) if name.startswith("system.posix_acl_") else value
        return out

    def _link_target(self, inode: I.Inode) -> str:
        if inode.is_fast_symlink:
            raw = inode.block[:inode.size]
        else:
            raw = self._data(inode).read()
        return os.fsdecode(raw)

    def _children(self, inode: I.Inode) -> dict[str, int]:
        """Name -> inode number of a directory's entries, without "." and ".."."""
        cached = self._dirs.lookup(inode.number)
        if cached is not None:
            return cached
        if inode.is_inline:  # parent inode number, then entries; the rest in "system.data"
            data = self._inline_data(inode)
            areas = [data[4:I.N_BLOCKS * 4], data[I.N_BLOCKS * 4:]]
        else:
            data = self._data(inode).read()
            bs = self.block_size
            areas = [data[i:i + bs] for i in range(0, len(data), bs)]
        found: dict[str, int] = {}
        for area in areas:
            for number, raw in I.dirents(area, self._filetype):
                if raw not in (b".", b".."):
                    found[os.fsdecode(raw)] = number
        self._dirs.put(inode.number, found)
        return found

    # ----------------------------------------------------------------- paths

    def _resolve(self, path: str, follow_last: bool) -> I.Inode:
        """The inode at ``path``; symlinks on the way are followed inside this filesystem (absolute
        targets from its root), the last one only with ``follow_last``."""
        todo = [p for p in path.split("/") if p][::-1]
        stack = [self._inode(I.ROOT_INODE)]
        hops = 0
        while todo:
            name = todo.pop()
            if name == ".":
                continue
            if name == "..":
                if len(stack) > 1:
                    stack.pop()
                continue
            if stack[-1].kind != "dir":
                raise _missing(errno.ENOTDIR, path)
            number = self._children(stack[-1]).get(name)
            if number is None:
                raise _missing(errno.ENOENT, path)
            node = self._inode(number)
            if node.kind == "symlink" and (todo or follow_last):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
                target = self._link_target(node)
                if target.startswith("/"):
                    del stack[1:]
                todo.extend(p for p in reversed(target.split("/")) if p)
                continue
            stack.append(node)
        return stack[-1]

    def _entry(self, name: str, path: str, inode: I.Inode) -> Entry:
        kind = inode.kind
        return Entry(
            name=name, path=path, kind=kind, size=inode.size, mode=inode.mode & 0o7777,
            uid=inode.uid, gid=inode.gid, mtime_ns=inode.mtime_ns, atime_ns=inode.atime_ns,
            ctime_ns=inode.ctime_ns, btime_ns=inode.btime_ns, nlink=inode.nlink, inode=inode.number,
            link_target=self._link_target(inode) if kind == "symlink" else None, xattrs=self._xattrs(inode),
        )

    # ----------------------------------------------------------------- FileTree

    def stat(self, path: str) -> Entry:
        clean = "/" + "/".join(p for p in path.split("/") if p)
        inode = self._resolve(clean, follow_last=False)
        return self._entry(clean.rsplit("/", 1)[1] or "/", clean, inode)

    def listdir(self, path: str) -> list[Entry]:
        inode = self._resolve(path, follow_last=True)
        if inode.kind != "dir":
            raise _missing(errno.ENOTDIR, path)
        base = path.rstrip("/")
        return [self._entry(name, f"{base}/{name}", self._inode(number))
                for name, number in sorted(self._children(inode).items())]

    def open(self, path: str) -> BinaryIO:
        inode = self._resolve(path, follow_last=True)
        if inode.kind == "dir":
            raise _missing(errno.EISDIR, path)
        if inode.kind != "file":
            raise OSError(errno.EINVAL, "not a regular file", path)
        return self._data(inode)
