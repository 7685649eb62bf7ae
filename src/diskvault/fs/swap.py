"""Linux swap: only the header page matters (signature, UUID, label); the rest is scratch space.
Restoring the header page recreates the same UUID and label, as mkswap -U would."""

from __future__ import annotations

import struct
import uuid
from typing import BinaryIO

import numpy as np

from diskvault.errors import FilesystemError
from diskvault.fs.base import FsInfo

PAGE_SIZES = (4096, 8192, 16384, 65536)
# union swap_header (linux/swap.h), after the 1024-byte boot block
_INFO = struct.Struct("<III16s16s")  # version, last_page, nr_badpages, sws_uuid, sws_volume


class SwapReader:
    name = "swap"

    @classmethod
    def _page_size(cls, fh: BinaryIO, size: int) -> int | None:
        for page in PAGE_SIZES:
            if page > size:
                break
            fh.seek(page - 10)
            if fh.read(10) in (b"SWAPSPACE2", b"SWAP-SPACE"):
                return page
        return None

    @classmethod
    def probe(cls, fh: BinaryIO, size: int) -> bool:
        return cls._page_size(fh, size) is not None

    def __init__(self, fh: BinaryIO, size: int) -> None:
        page = self._page_size(fh, size)
        if page is None:
            raise FilesystemError("not a Linux swap area")
        fh.seek(1024)
        version, last_page, _bad, raw_uuid, raw_label = _INFO.unpack(fh.read(_INFO.size))
        if version not in (1, 0x01000000):
            raise FilesystemError(f"swap header version {version} is not supported")
        self.page, self.size = page, size
        self.last_page = last_page if version == 1 else int.from_bytes(last_page.to_bytes(4, "little"), "big")
        self._uuid = str(uuid.UUID(bytes=raw_uuid)) if any(raw_uuid) else ""
        self._label = raw_label.split(b"\0", 1)[0].decode("utf-8", "replace")

    def info(self) -> FsInfo:
        return FsInfo(fstype="swap", size=min(self.size, (self.last_page + 1) * self.page), used_bytes=self.page,
                      block_size=self.page, label=self._label, uuid=self._uuid,
                      note="swap: only the header page is imaged")

    def used_extents(self) -> np.ndarray:
        return np.array([[0, self.page]], dtype=np.uint64)
