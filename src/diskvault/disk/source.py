"""Open a disk to read: a block device or a disk-image file, with its size and identity."""

from __future__ import annotations

import fcntl
import os
import stat
import struct
from dataclasses import dataclass

from diskvault.errors import SourceError

BLKGETSIZE64 = 0x80081272
BLKSSZGET = 0x1268


@dataclass
class Source:
    path: str
    fd: int
    size: int
    is_block: bool
    sector_size: int = 512

    @classmethod
    def open(cls, path: str) -> "Source":
        try:
            st = os.stat(path)
        except OSError as e:
            raise SourceError(path, e.strerror) from None
        if not (stat.S_ISBLK(st.st_mode) or stat.S_ISREG(st.st_mode)):
            raise SourceError(path, "not a block device or a disk-image file")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise SourceError(path, e.strerror) from None
        is_block = stat.S_ISBLK(st.st_mode)
        size, sector = (block_device_size(fd), block_sector_size(fd)) if is_block else (st.st_size, 512)
        if size == 0:
            os.close(fd)
            raise SourceError(path, "it is empty")
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        return cls(path=path, fd=fd, size=size, is_block=is_block, sector_size=sector)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def pread(self, offset: int, length: int) -> bytes:
        return os.pread(self.fd, length, offset)


def block_device_size(fd: int) -> int:
    buf = fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8)
    return struct.unpack("<Q", buf)[0]


def block_sector_size(fd: int) -> int:
    buf = fcntl.ioctl(fd, BLKSSZGET, b"\0" * 4)
    return struct.unpack("<I", buf)[0]
