"""The one small protocol every filesystem reader implements, and the probe order."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import BinaryIO, ClassVar, Protocol

import numpy as np

from diskvault.readat import ReadAtFile, pread_full


@dataclass
class FsInfo:
    """What a filesystem says about itself (from its superblock / boot sector)."""

    fstype: str  # "ext4", "raw", ...
    size: int  # bytes covered by the filesystem
    used_bytes: int  # used space as the filesystem's own counters report it
    block_size: int = 512
    label: str = ""
    uuid: str = ""
    note: str = ""  # why a reader fell back, or what it could not check

    def to_dict(self) -> dict:
        return asdict(self)


class FsReader(Protocol):
    """A filesystem opened read-only from a file-like window on its partition."""

    name: ClassVar[str]

    @classmethod
    def probe(cls, fh: BinaryIO, size: int) -> bool:
        """True when the signature at the start of ``fh`` is this filesystem's."""

    def info(self) -> FsInfo: ...

    def used_extents(self) -> np.ndarray:
        """Sorted, merged (start, length) uint64 pairs, bytes from the filesystem's start."""


class Window(ReadAtFile):
    """A read-only file-like view of ``size`` bytes at ``offset`` of a file descriptor.

    Readers get one of these so the same code reads a device, an image file or a partition
    inside either (this kernel has no partition devices; every partition is an offset).
    """

    def __init__(self, fd: int, offset: int, size: int) -> None:
        super().__init__(size, lambda pos, n: pread_full(fd, offset + pos, n))


def probe(fh: Window) -> type[FsReader] | None:
    """The reader class whose signature matches, or None (the caller falls back to raw)."""
    from diskvault.fs import registry

    for reader in registry.READERS:
        fh.seek(0)
        try:
            if reader.probe(fh, fh.size):
                return reader
        except (OSError, ValueError):
            continue
    return None
