"""The one small protocol every filesystem reader implements, and the probe order."""

from __future__ import annotations

import io
import os
from dataclasses import asdict, dataclass
from typing import BinaryIO, ClassVar, Protocol

import numpy as np


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


class Window(io.RawIOBase):
    """A read-only file-like view of ``size`` bytes at ``offset`` of a file descriptor.

    Readers get one of these so the same code reads a device, an image file or a partition
    inside either (this kernel has no partition devices; every partition is an offset).
    """

    def __init__(self, fd: int, offset: int, size: int) -> None:
        super().__init__()
        self._fd, self._base, self._size, self._pos = fd, offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        want = max(0, min(len(view), self._size - self._pos))
        done = 0
        while done < want:
            n = os.preadv(self._fd, [view[done:want]], self._base + self._pos + done)
            if n == 0:
                break
            done += n
        self._pos += done
        return done

    def pread(self, offset: int, length: int) -> bytes:
        """Read exactly ``length`` bytes at ``offset`` (short only at the end of the window)."""
        self.seek(offset)
        return self.read(length) or b""

    @property
    def size(self) -> int:
        return self._size


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
