"""The protocol every in-process file tree reader implements."""

from __future__ import annotations

import errno
import os
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, BinaryIO, ClassVar, Protocol

from diskvault.readat import ReadAtFile  # noqa: F401 - the trees' file class


@dataclass
class Entry:
    """One directory entry with the metadata the filesystem keeps (None where it keeps none)."""

    name: str
    path: str  # absolute inside the filesystem, "/" separated, "/" for the root
    kind: str  # "file", "dir", "symlink" or "other"
    size: int = 0
    mode: int | None = None  # permission bits (and setuid/setgid/sticky)
    uid: int | None = None
    gid: int | None = None
    mtime_ns: int | None = None
    atime_ns: int | None = None
    ctime_ns: int | None = None
    nlink: int = 1
    inode: int | None = None
    link_target: str | None = None
    xattrs: dict[str, bytes] = field(default_factory=dict)
    btime_ns: int | None = None  # creation (birth) time, where the filesystem keeps one


class FileTree(Protocol):
    """A filesystem opened read-only from a BinaryIO window on its partition."""

    name: ClassVar[str]

    @classmethod
    def probe(cls, fh: BinaryIO, size: int) -> bool: ...

    def stat(self, path: str) -> Entry:
        """Entry for ``path``; FileNotFoundError / NotADirectoryError like the os module."""

    def listdir(self, path: str) -> list[Entry]:
        """Entries of a directory (without "." and ".."), sorted by name."""

    def open(self, path: str) -> BinaryIO:
        """A read-only, seekable file object for a regular file's data."""


MAX_SYMLINK_HOPS = 40  # as Linux: more is a loop (ELOOP)


class WalkedTree:
    """Path lookup for trees that read a directory whole (FAT, exFAT, NTFS): subclasses give the
    root and read one directory into (Entry, handle) pairs; the last directories read are kept, so
    a walk reads each parent once. Names match exactly, else case-insensitively (as those
    filesystems look names up)."""

    DIRS_KEPT = 256

    def __init__(self) -> None:
        self._dirs: OrderedDict[str, dict[str, tuple[Entry, Any]]] = OrderedDict()

    def _root(self) -> tuple[Entry, Any]:
        raise NotImplementedError

    def _read_dir(self, entry: Entry, handle: Any) -> Iterable[tuple[Entry, Any]]:
        raise NotImplementedError

    def _open(self, entry: Entry, handle: Any) -> BinaryIO:
        raise NotImplementedError

    def _children(self, entry: Entry, handle: Any) -> dict[str, tuple[Entry, Any]]:
        kids = self._dirs.get(entry.path)
        if kids is None:
            kids = {e.name: (e, h) for e, h in self._read_dir(entry, handle)}
            self._dirs[entry.path] = kids
            while len(self._dirs) > self.DIRS_KEPT:
                self._dirs.popitem(last=False)
        else:
            self._dirs.move_to_end(entry.path)
        return kids

    def _lookup(self, entry: Entry, handle: Any, name: str, path: str) -> tuple[Entry, Any]:
        if entry.kind != "dir":
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
        kids = self._children(entry, handle)
        hit = kids.get(name)
        if hit is None:
            folded = name.casefold()
            hit = next((v for k, v in kids.items() if k.casefold() == folded), None)
        if hit is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        return hit

    def _resolve(self, path: str, follow_last: bool = False) -> tuple[Entry, Any]:
        """(Entry, handle) at ``path``; symlinks on the way are followed inside this filesystem
        (absolute targets from its root), the last one only with ``follow_last``."""
        todo = [p for p in path.split("/") if p][::-1]
        stack = [self._root()]
        hops = 0
        while todo:
            name = todo.pop()
            if name == ".":
                continue
            if name == "..":
                del stack[max(1, len(stack) - 1):]
                continue
            hit = self._lookup(*stack[-1], name, path)
            target = hit[0].link_target
            if hit[0].kind == "symlink" and target is not None and (todo or follow_last):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
                if target.startswith("/"):
                    del stack[1:]
                todo.extend(p for p in reversed(target.split("/")) if p)
                continue
            stack.append(hit)
        return stack[-1]

    def stat(self, path: str) -> Entry:
        return self._resolve(path)[0]

    def listdir(self, path: str) -> list[Entry]:
        entry, handle = self._resolve(path, follow_last=True)
        if entry.kind != "dir":
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
        return sorted((e for e, _ in self._children(entry, handle).values()), key=lambda e: e.name)

    def open(self, path: str) -> BinaryIO:
        entry, handle = self._resolve(path, follow_last=True)
        if entry.kind == "dir":
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        if entry.kind != "file":
            raise OSError(errno.EINVAL, f"not a regular file ({entry.kind})", path)
        return self._open(entry, handle)
