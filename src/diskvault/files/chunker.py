"""Content-defined chunking with FastCDC 2020 (pyfastcdc, Cython, releases the GIL while cutting).

Boundaries depend on content, not offsets, so an insertion early in a file changes one or two
chunks, not every chunk after it. In an encrypted set the gear table is XORed with a seed derived
from the set key, so chunk lengths do not reveal which well-known files a backup holds.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import blake3
from pyfastcdc import FastCDC

from diskvault.files.layout import CHUNK_AVG, CHUNK_MAX, CHUNK_MIN

SEED_CONTEXT = "diskvault 2026-11 files chunker seed"


def chunker_seed(hash_key: bytes | None) -> int:
    """0 (the default gear table) for a plain set; a key-derived 63-bit seed for an encrypted one
    (pyfastcdc shifts the seed left by one in 64 bits)."""
    if not hash_key:
        return 0
    raw = int.from_bytes(blake3.blake3(hash_key, derive_key_context=SEED_CONTEXT).digest(8), "little")
    return (raw & (2**63 - 1)) or 1


class Chunker:
    """Cuts buffers and streams into chunks; one FastCDC object per thread (they are not shared)."""

    def __init__(self, seed: int = 0, min_size: int = CHUNK_MIN, avg_size: int = CHUNK_AVG,
                 max_size: int = CHUNK_MAX) -> None:
        self.seed, self.min_size, self.avg_size, self.max_size = seed, min_size, avg_size, max_size
        self._local = threading.local()

    def _cdc(self) -> FastCDC:
        cdc = getattr(self._local, "cdc", None)
        if cdc is None:
            cdc = self._local.cdc = FastCDC(self.avg_size, min_size=self.min_size, max_size=self.max_size,
                                            seed=self.seed)
        return cdc

    def cut(self, data: bytes | memoryview) -> Iterator[tuple[int, memoryview]]:
        """(offset, view) of each chunk of an in-memory buffer."""
        view = memoryview(data)
        if len(view) <= self.min_size:
            if len(view):
                yield 0, view
            return
        for c in self._cdc().cut_buf(view):
            yield c.offset, c.data

    def cut_stream(self, stream) -> Iterator[tuple[int, bytes]]:
        """(offset, bytes) of each chunk of a stream with ``readinto``; bytes are copies (the
        stream buffer is reused)."""
        for c in self._cdc().cut_stream(stream):
            yield c.offset, bytes(c.data)
