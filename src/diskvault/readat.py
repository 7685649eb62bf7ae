"""One read-only, seekable file class over a ``read_at(offset, length)`` function: partitions of a
device or image file (fs.base.Window), a disk inside an image (format.chain.ChainWindow) and files
inside a filesystem (browse trees) are all read through it, so every reader takes a BinaryIO."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from typing import BinaryIO


class ReadAtFile(io.RawIOBase):
    """``size`` bytes served by ``read_at`` (short only at the end of the underlying data: what is
    missing reads as nothing, like a file's end). ``ranges`` are the (offset, length) pieces that
    may hold data (the rest reads as zeros), for sparse copies."""

    def __init__(self, size: int, read_at: Callable[[int, int], bytes],
                 ranges: list[tuple[int, int]] | None = None) -> None:
        super().__init__()
        self._size, self._read_at, self._pos = size, read_at, 0
        self._ranges = [(0, size)] if ranges is None else ranges

    def data_ranges(self) -> list[tuple[int, int]]:
        return [r for r in self._ranges if r[1] > 0]

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
        n = max(0, min(len(view), self._size - self._pos))
        if n:
            data = self._read_at(self._pos, n)
            n = len(data)
            view[:n] = data
            self._pos += n
        return n

    def readall(self) -> bytes:
        return self.read(max(0, self._size - self._pos)) or b""

    def pread(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` (fewer only at the end), without moving the position."""
        length = max(0, min(length, self._size - offset))
        return self._read_at(offset, length) if length else b""

    @property
    def size(self) -> int:
        return self._size


def read_at(fh: BinaryIO, offset: int, length: int) -> bytes:
    """Read from any file-like: pread when it has one (thread-safe), else seek + read."""
    pread = getattr(fh, "pread", None)
    if pread is not None:
        return pread(offset, length)
    fh.seek(offset)
    return fh.read(length) or b""


def pread_full(fd: int, offset: int, length: int) -> bytes:
    """os.pread until ``length`` bytes or the end of the file."""
    parts, done = [], 0
    while done < length:
        chunk = os.pread(fd, length - done, offset + done)
        if not chunk:
            break
        parts.append(chunk)
        done += len(chunk)
    return b"".join(parts)
