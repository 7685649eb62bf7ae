"""CRC-32C (Castagnoli), the metadata checksum of btrfs and XFS, in numpy.

CRC is linear, so a 512-byte chunk's effect on the register is the XOR of its bytes' own
contributions (one lookup table per position), and the register itself is carried over a chunk by
four byte tables. ``crc32c`` runs the register as a Python int (fast for one buffer);
``crc32c_many`` runs one register per row of a (N, n) array (fast for a batch of tree blocks).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

_CHUNK = 512
_POLY = 0x82F63B78  # reflected Castagnoli polynomial


@lru_cache(maxsize=1)
def _tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Byte table (256), per-position contributions within a chunk (512, 256), and the shift of a
    register through 512 zero bytes, one table per register byte (4, 256)."""
    t = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        t = np.where(t & 1, (t >> np.uint32(1)) ^ np.uint32(_POLY), t >> np.uint32(1))

    def step(reg: np.ndarray) -> np.ndarray:  # one zero byte through the register
        return (reg >> np.uint32(8)) ^ t[reg & np.uint32(0xFF)]

    pos = np.empty((_CHUNK, 256), dtype=np.uint32)
    cur = t.copy()
    for p in range(_CHUNK - 1, -1, -1):
        pos[p] = cur
        cur = step(cur)
    byte_shifts = np.uint32(8) * np.arange(4, dtype=np.uint32)
    shift = np.arange(256, dtype=np.uint32)[None, :] << byte_shifts[:, None]
    for _ in range(_CHUNK):
        shift = step(shift)
    return t, pos, shift


@lru_cache(maxsize=1)
def _scalar_tables() -> tuple[list[int], list[list[int]]]:
    table, _, shift = _tables()
    return table.tolist(), shift.tolist()


def _chunk_contributions(rows: np.ndarray) -> np.ndarray:
    """(N, n) uint8 with n a multiple of 512 -> (N, n // 512): each chunk's XOR of contributions."""
    _, pos, _ = _tables()
    chunks = rows.reshape(rows.shape[0], -1, _CHUNK)
    return np.bitwise_xor.reduce(pos[np.arange(_CHUNK), chunks], axis=2)


def crc32c(data: bytes) -> int:
    """Standard CRC-32C of ``data`` (as btrfs and XFS store it, little-endian)."""
    table, (s0, s1, s2, s3) = _scalar_tables()
    n = len(data) // _CHUNK * _CHUNK
    reg = 0xFFFFFFFF
    if n:
        for c in _chunk_contributions(np.frombuffer(data, dtype=np.uint8, count=n)[None])[0].tolist():
            reg = s0[reg & 255] ^ s1[(reg >> 8) & 255] ^ s2[(reg >> 16) & 255] ^ s3[reg >> 24] ^ c
    for b in data[n:]:
        reg = (reg >> 8) ^ table[(reg ^ b) & 0xFF]
    return reg ^ 0xFFFFFFFF


def crc32c_many(blocks: np.ndarray) -> np.ndarray:
    """Standard CRC-32C of every row of a (N, n) uint8 array, numpy-parallel over the rows."""
    blocks = np.asarray(blocks, dtype=np.uint8)
    table, _, (s0, s1, s2, s3) = _tables()
    n = blocks.shape[1] // _CHUNK * _CHUNK
    reg = np.full(blocks.shape[0], 0xFFFFFFFF, dtype=np.uint32)
    if n:
        for c in _chunk_contributions(blocks[:, :n]).T:
            reg = s0[reg & 0xFF] ^ s1[(reg >> 8) & 0xFF] ^ s2[(reg >> 16) & 0xFF] ^ s3[reg >> 24] ^ c
    for column in blocks[:, n:].T:
        reg = (reg >> np.uint32(8)) ^ table[(reg ^ column) & 0xFF]
    return reg ^ np.uint32(0xFFFFFFFF)
