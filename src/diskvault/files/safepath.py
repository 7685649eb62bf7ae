"""Restore never writes outside its target folder.

Two layers: before anything is written, every name in the archive is checked (relative, no ``..``,
``.`` or empty components, no duplicates, no entry below a non-directory entry such as a symlink,
hard links only to earlier files); while writing, every parent is opened component by component
from the target's fd with O_NOFOLLOW|O_DIRECTORY and entries are created with *at() calls, so no
symlink — restored, pre-existing or raced in — is ever followed.
"""

from __future__ import annotations

import os
from collections import OrderedDict

from diskvault.files.catalog import Entry
from diskvault.files.errors import UnsafePathError
from diskvault.files.layout import T_DIR, T_HARDLINK, TYPE_CHARS

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_KIND = {"l": "symlink", "-": "file", "h": "hard link", "p": "FIFO", "c": "device", "b": "device", "s": "socket"}


def name_problem(path: bytes) -> str:
    """Why ``path`` is not a safe archive name, or ""."""
    if not path:
        return "empty name"
    if path.startswith(b"/"):
        return "absolute name"
    if b"\0" in path:
        return "NUL byte in name"
    parts = path.split(b"/")
    if b".." in parts:
        return "'..' component (would leave the target)"
    if b"" in parts or b"." in parts:
        return "empty or '.' component"
    return ""


def check_catalog(entries: list[Entry]) -> list[str]:
    """Every reason the archive's names are unsafe to restore (empty when they are all fine)."""
    problems: list[str] = []
    types: dict[bytes, int] = {}
    order: dict[bytes, int] = {}
    for n, e in enumerate(entries):
        why = name_problem(e.path)
        if why:
            problems.append(f"{e.path!r}: {why}")
        elif e.path in types:
            problems.append(f"{e.name}: appears twice")
        else:
            types[e.path], order[e.path] = e.type, n
    for n, e in enumerate(entries):
        if e.path not in types:
            continue
        parent = e.path.rpartition(b"/")[0]
        while parent:
            if parent in types and types[parent] != T_DIR:
                kind = _KIND[TYPE_CHARS[types[parent]]]
                problems.append(f"{e.name}: lies below {os.fsdecode(parent)}, which is a {kind} in the archive "
                                f"(writing through it could leave the target)")
                break
            parent = parent.rpartition(b"/")[0]
        if e.type == T_HARDLINK:
            target = types.get(e.link)
            if name_problem(e.link) or target in (None, T_DIR, T_HARDLINK) or order[e.link] > n:
                problems.append(f"{e.name}: hard link to {e.link!r}, which is not an earlier file of the archive")
    return problems


class SafeTree:
    """The restore target, opened once; directories below it are reached only through O_NOFOLLOW
    opens of each component, and kept open in a small LRU cache."""

    CACHE = 128

    def __init__(self, root: str) -> None:
        os.makedirs(root, exist_ok=True)
        self.root_fd = os.open(root, _DIR_FLAGS & ~os.O_NOFOLLOW)  # the target itself may be a symlink
        self._cache: OrderedDict[bytes, int] = OrderedDict()
        self.created: list[bytes] = []  # directories this restore made (mode 0700 until fixed)

    def dir_fd(self, rel: bytes, create: bool = True) -> int:
        """An fd of directory ``rel`` (made 0700 when missing and ``create``); UnsafePathError
        when a component is a symlink or not a directory."""
        if not rel:
            return self.root_fd
        fd = self._cache.get(rel)
        if fd is not None:
            self._cache.move_to_end(rel)
            return fd
        head, _, name = rel.rpartition(b"/")
        parent = self.dir_fd(head, create)
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise
            os.mkdir(name, 0o700, dir_fd=parent)
            self.created.append(rel)
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except OSError as e:
            raise UnsafePathError(os.fsdecode(rel), "is a symlink or not a directory in the target; "
                                  f"not following it ({e.strerror})") from None
        self._cache[rel] = fd
        while len(self._cache) > self.CACHE:
            os.close(self._cache.popitem(last=False)[1])
        return fd

    def parent(self, rel: bytes, create: bool = True) -> tuple[int, bytes]:
        """(fd of the parent directory, last component) of ``rel``."""
        head, _, name = rel.rpartition(b"/")
        return self.dir_fd(head, create), name

    def forget(self, rel: bytes) -> None:
        """Drop cached fds of ``rel`` and below (it was removed or replaced)."""
        for key in [k for k in self._cache if k == rel or k.startswith(rel + b"/")]:
            os.close(self._cache.pop(key))

    def close(self) -> None:
        for fd in self._cache.values():
            os.close(fd)
        self._cache.clear()
        os.close(self.root_fd)
