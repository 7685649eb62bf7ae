"""Copy a file or a whole tree out of a FileTree onto the local filesystem, keeping mode, owner,
times (ns), symlinks, hard links, xattrs and holes.

Safety: below DEST every step goes through directory file descriptors opened with O_NOFOLLOW, so
nothing is ever written through a symlink (one already there or one just extracted), and names
that are not a single path component (``..``, ``a/b``, empty) are refused, never joined.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import BinaryIO

from diskvault.browse.base import Entry, FileTree
from diskvault.errors import FilesystemError, UsageError

log = logging.getLogger(__name__)

POLICIES = ("never", "older", "always")
CHUNK = 1 << 20
PIECE = 64 << 10  # all-zero pieces of this size are left as holes
ZEROS = bytes(PIECE)
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class ExtractResult:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    bytes: int = 0
    skipped: int = 0  # existing items kept by the overwrite policy
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def safe_name(name: str) -> bool:
    return name not in ("", ".", "..") and "/" not in name and "\0" not in name


def copy_sparse(src: BinaryIO, fd: int, size: int) -> None:
    """Write ``src`` to ``fd``, seeking over holes the source names and over all-zero pieces."""
    ranges = src.data_ranges() if hasattr(src, "data_ranges") else [(0, size)]
    for start, length in ranges:
        pos, end = start, start + length
        src.seek(pos)
        while pos < end:
            buf = src.read(min(CHUNK, end - pos))
            if not buf:
                raise FilesystemError(f"file data ends early at byte {pos} of {size}")
            for i in range(0, len(buf), PIECE):
                piece = buf[i:i + PIECE]
                if piece != ZEROS[:len(piece)]:
                    os.pwrite(fd, piece, pos + i)
            pos += len(buf)
    os.ftruncate(fd, size)


class _Extractor:
    def __init__(self, tree: FileTree, overwrite: str, warn: Callable[[str], None]) -> None:
        self.tree, self.overwrite, self.result = tree, overwrite, ExtractResult()
        self._warn_cb = warn
        self._links: dict[int, str] = {}  # inode -> where its first copy was written
        self._can_chown = os.geteuid() == 0

    def warn(self, message: str) -> None:
        self.result.warnings.append(message)
        self._warn_cb(message)

    def _keep_existing(self, st: os.stat_result, entry: Entry) -> bool:
        if self.overwrite == "always":
            return False
        if self.overwrite == "older":
            return entry.mtime_ns is None or st.st_mtime_ns >= entry.mtime_ns
        return True

    def item(self, dir_fd: int, name: str, entry: Entry, where: str) -> None:
        if not safe_name(name):
            self.warn(f"{entry.path}: refusing the unsafe name {name!r}")
            return
        try:
            existing = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            existing = None
        if entry.kind == "dir":
            self._dir(dir_fd, name, entry, where, existing)
            return
        if existing is not None:
            if self._keep_existing(existing, entry):
                self.result.skipped += 1
                return
            if stat.S_ISDIR(existing.st_mode):
                self.warn(f"{where}: a directory is in the way of {entry.kind} {entry.path}; kept")
                self.result.skipped += 1
                return
            os.unlink(name, dir_fd=dir_fd)
        if entry.kind == "symlink":
            self._symlink(dir_fd, name, entry, where)
        elif entry.kind == "file":
            self._file(dir_fd, name, entry, where)
        else:
            self.warn(f"{entry.path}: special file not extracted")

    def _dir(self, dir_fd: int, name: str, entry: Entry, where: str, existing: os.stat_result | None) -> None:
        if existing is not None and not stat.S_ISDIR(existing.st_mode):
            if self._keep_existing(existing, entry):
                self.result.skipped += 1
                return
            os.unlink(name, dir_fd=dir_fd)
            existing = None
        if existing is None:
            os.mkdir(name, 0o700, dir_fd=dir_fd)
        fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
        try:
            for child in self.tree.listdir(entry.path):
                self.item(fd, child.name, child, os.path.join(where, child.name))
            if existing is None or not self._keep_existing(existing, entry):  # merged into: left as it was
                self._metadata(fd, entry, where)
        finally:
            os.close(fd)
        self.result.dirs += 1

    def _symlink(self, dir_fd: int, name: str, entry: Entry, where: str) -> None:
        os.symlink(entry.link_target or "", name, dir_fd=dir_fd)
        if self._can_chown and entry.uid is not None and entry.gid is not None:
            os.chown(name, entry.uid, entry.gid, dir_fd=dir_fd, follow_symlinks=False)
        for key, value in entry.xattrs.items():  # no fd for a symlink: the path through /proc, not followed
            self._setxattr(f"/proc/self/fd/{dir_fd}/{name}", key, value, where)
        if entry.mtime_ns is not None:
            atime = entry.atime_ns if entry.atime_ns is not None else entry.mtime_ns
            os.utime(name, ns=(atime, entry.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)
        self.result.symlinks += 1

    def _file(self, dir_fd: int, name: str, entry: Entry, where: str) -> None:
        first = self._links.get(entry.inode) if entry.inode is not None and entry.nlink > 1 else None
        if first is not None:
            os.link(first, name, dst_dir_fd=dir_fd, follow_symlinks=False)
            self.result.hardlinks += 1
            return
        with self.tree.open(entry.path) as src:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=dir_fd)
            try:
                copy_sparse(src, fd, entry.size)
                self._metadata(fd, entry, where)
            finally:
                os.close(fd)
        if entry.inode is not None and entry.nlink > 1:
            self._links[entry.inode] = os.path.abspath(where)
        self.result.files += 1
        self.result.bytes += entry.size

    def _metadata(self, fd: int, entry: Entry, where: str) -> None:
        """Owner, then xattrs (chown drops security.capability), then mode (chown drops setuid), then times."""
        if self._can_chown and entry.uid is not None and entry.gid is not None:
            os.fchown(fd, entry.uid, entry.gid)
        for key, value in entry.xattrs.items():
            self._setxattr(fd, key, value, where)
        if entry.mode is not None:
            os.fchmod(fd, entry.mode)
        if entry.mtime_ns is not None:
            atime = entry.atime_ns if entry.atime_ns is not None else entry.mtime_ns
            os.utime(fd, ns=(atime, entry.mtime_ns))

    def _setxattr(self, target: int | str, key: str, value: bytes, where: str) -> None:
        try:
            if isinstance(target, int):
                os.setxattr(target, key, value)
            else:
                os.setxattr(target, key, value, follow_symlinks=False)
        except OSError as e:
            self.warn(f"{where}: xattr {key} not kept ({e.strerror})")


def extract(tree: FileTree, path: str, dest: str, overwrite: str = "never",
            warn: Callable[[str], None] = log.warning) -> ExtractResult:
    """Extract ``path`` of ``tree`` to ``dest``. A directory ``dest`` that exists receives the item
    under its own name (the root's contents go straight into it); otherwise ``dest`` is the item.
    Existing files are kept or replaced by ``overwrite``; existing directories are merged into, their
    own metadata replaced only where the policy would replace a file."""
    if overwrite not in POLICIES:
        raise UsageError(f"--overwrite must be one of {', '.join(POLICIES)} (got {overwrite!r})")
    entry = tree.stat(path)
    job = _Extractor(tree, overwrite, warn)
    dest = os.path.realpath(dest)
    if os.path.isdir(dest) and entry.path != "/":
        parent, name = dest, entry.name
    else:
        parent, name = os.path.dirname(dest), os.path.basename(dest)
    if not safe_name(name):
        raise UsageError(f"cannot extract to {dest}: name a folder below it")
    os.makedirs(parent, exist_ok=True)
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        job.item(fd, name, entry, os.path.join(parent, name))
    finally:
        os.close(fd)
    return job.result
