"""A browse FileTree served by the mount's own FUSE filesystem at MOUNTPOINT/N, for filesystems
this machine cannot mount (FAT: no vfat driver in the kernel here; NTFS/exFAT without their FUSE
drivers). One lock: a tree's caches and the chain window under it are not thread-safe, and
libfuse calls from several threads."""

from __future__ import annotations

import errno
import stat
import threading
from typing import BinaryIO

from diskvault.browse.base import Entry, FileTree
from diskvault.errors import DiskvaultError
from diskvault.readat import read_at

KIND_BITS = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK}
DEFAULT_MODE = {"dir": 0o755, "symlink": 0o777}  # where the filesystem keeps none (FAT); files 0o644


class TreeView:
    """FUSE-shaped answers (stat dicts, names, bytes) for paths inside one tree."""

    def __init__(self, tree: FileTree, fallback_ns: int) -> None:
        self.tree = tree
        self._fallback_ns = fallback_ns
        self._lock = threading.Lock()
        self._files: dict[int, BinaryIO] = {}
        self._next = 1

    def _call(self, fn, *args):
        """Run a tree call under the lock; damaged or unreadable structures become EIO."""
        with self._lock:
            try:
                return fn(*args)
            except DiskvaultError:
                raise OSError(errno.EIO, "unreadable filesystem structure") from None

    def _attrs(self, e: Entry) -> dict:
        mode = e.mode if e.mode is not None else DEFAULT_MODE.get(e.kind, 0o644)
        t = e.mtime_ns if e.mtime_ns is not None else self._fallback_ns
        return {"st_mode": KIND_BITS.get(e.kind, stat.S_IFREG) | mode, "st_nlink": e.nlink,
                "st_size": len(e.link_target or "") if e.kind == "symlink" else e.size,
                "st_uid": e.uid or 0, "st_gid": e.gid or 0, "st_mtime": t,
                "st_atime": e.atime_ns if e.atime_ns is not None else t,
                "st_ctime": e.ctime_ns if e.ctime_ns is not None else t}

    def getattr(self, path: str) -> dict:
        return self._attrs(self._call(self.tree.stat, path))

    def readdir(self, path: str) -> list[str]:
        return [".", "..", *(e.name for e in self._call(self.tree.listdir, path))]

    def readlink(self, path: str) -> str:
        e = self._call(self.tree.stat, path)
        if e.kind != "symlink" or e.link_target is None:
            raise OSError(errno.EINVAL, "not a symbolic link")
        return e.link_target

    def open(self, path: str) -> int:
        f = self._call(self.tree.open, path)
        with self._lock:
            fh, self._next = self._next, self._next + 1
            self._files[fh] = f
        return fh

    def read(self, fh: int, size: int, offset: int) -> bytes:
        f = self._files.get(fh)
        if f is None:
            raise OSError(errno.EBADF, "file not open")
        return self._call(read_at, f, offset, size)

    def release(self, fh: int) -> None:
        with self._lock:
            f = self._files.pop(fh, None)
        if f is not None:
            f.close()
