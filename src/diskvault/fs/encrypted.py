"""Encrypted volumes (LUKS1/2, BitLocker): recognised so they are named, imaged in full (there is
no free-space map to read without the key) and stored without compression (ciphertext does not
compress)."""

from __future__ import annotations

import uuid
from typing import BinaryIO

import numpy as np

from diskvault.fs import extents as ext
from diskvault.fs.base import FsInfo

BITLOCKER_OEM = b"-FVE-FS-"


class EncryptedVolumeReader:
    name = "encrypted"
    compressible = False

    @classmethod
    def _kind(cls, head: bytes) -> str | None:
        if head[:6] in (b"LUKS\xba\xbe", b"SKUL\xba\xbe"):
            return "crypto_LUKS"
        if head[3:11] == BITLOCKER_OEM:
            return "BitLocker"
        return None

    @classmethod
    def probe(cls, fh: BinaryIO, size: int) -> bool:
        fh.seek(0)
        return cls._kind(fh.read(512)) is not None

    def __init__(self, fh: BinaryIO, size: int) -> None:
        fh.seek(0)
        head = fh.read(4096)
        self.kind, self.size = self._kind(head), size
        self._uuid, self._label = "", ""
        if self.kind == "crypto_LUKS":
            self._uuid = head[168:208].split(b"\0", 1)[0].decode("ascii", "replace")
            if int.from_bytes(head[6:8], "big") == 2:
                self._label = head[24:72].split(b"\0", 1)[0].decode("utf-8", "replace")
        elif self.kind == "BitLocker" and len(head) >= 0xB8:
            self._uuid = str(uuid.UUID(bytes_le=head[0xA0:0xB0])) if any(head[0xA0:0xB0]) else ""

    def info(self) -> FsInfo:
        return FsInfo(fstype=self.kind or "encrypted", size=self.size, used_bytes=self.size, label=self._label,
                      uuid=self._uuid, note=f"{self.kind}: every block imaged, without compression")

    def used_extents(self) -> np.ndarray:
        return ext.whole(self.size)
