"""AES-256-GCM sealing of chunks and sections. A random 96-bit nonce is stored before the
ciphertext; the associated data binds a chunk to its set and place on the disk."""

from __future__ import annotations

import os
import struct

NONCE_SIZE = 12
TAG_SIZE = 16
OVERHEAD = NONCE_SIZE + TAG_SIZE


class Sealer:
    def __init__(self, key: bytes, set_id: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # here: most images are not encrypted
        self._aead = AESGCM(key)
        self._set_id = set_id

    def chunk_aad(self, disk_offset: int, length: int, codec: int) -> bytes:
        return b"chunk" + self._set_id + struct.pack("<QIB", disk_offset, length, codec)

    def section_aad(self, name: str, increment: int) -> bytes:
        return b"section" + self._set_id + struct.pack("<H", increment) + name.encode()

    def seal(self, data: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, data, aad)

    def open(self, stored: bytes, aad: bytes) -> bytes:
        """Decrypt; raises ValueError when the bytes or their place were altered."""
        if len(stored) < OVERHEAD:
            raise ValueError("too short")
        from cryptography.exceptions import InvalidTag
        try:
            return self._aead.decrypt(stored[:NONCE_SIZE], stored[NONCE_SIZE:], aad)
        except InvalidTag:
            raise ValueError("authentication failed") from None
