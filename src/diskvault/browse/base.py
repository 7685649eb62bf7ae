"""The protocol every in-process file tree reader implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import BinaryIO, ClassVar, Protocol


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
