"""Patches: a child image stores only the 64 KiB blocks of a 4 MiB cell that changed.

    payload = bitmap (u64le; bit i = block i stored) || the stored blocks, in order
    block i = bytes [i * bs, min((i + 1) * bs, cell length)) with bs = chunk_size / 64
"""

from __future__ import annotations

import numpy as np

from diskvault.format.layout import PATCH_BLOCKS

MAX_CHANGED_SHARE = 0.75  # above this a whole cell is smaller to store and faster to read


def _blocks(length: int, chunk_size: int) -> list[tuple[int, int]]:
    bs = chunk_size // PATCH_BLOCKS
    return [(a, min(a + bs, length)) for a in range(0, length, bs)]


def make_patch(new: bytes | memoryview, old: bytes, chunk_size: int) -> bytes | None:
    """The patch that turns ``old`` into ``new``, or None when most of the cell changed."""
    blocks = _blocks(len(new), chunk_size)
    bs, whole = chunk_size // PATCH_BLOCKS, len(new) // (chunk_size // PATCH_BLOCKS)
    a, b = np.frombuffer(new, np.uint8), np.frombuffer(old, np.uint8, count=len(new))
    differs = (a[:whole * bs].reshape(whole, bs) != b[:whole * bs].reshape(whole, bs)).any(axis=1).tolist()
    if whole < len(blocks):  # a short last block (the disk's last cell)
        differs.append(bool((a[whole * bs:] != b[whole * bs:]).any()))
    changed = [i for i, d in enumerate(differs) if d]
    if not changed or len(changed) > PATCH_BLOCKS * MAX_CHANGED_SHARE:
        return None
    bitmap = sum(1 << i for i in changed)
    return bitmap.to_bytes(8, "little") + b"".join(bytes(new[blocks[i][0]:blocks[i][1]]) for i in changed)


def patch_blocks(payload: bytes, length: int, chunk_size: int) -> list[tuple[int, memoryview]]:
    """The patch's blocks as (offset in the cell, bytes) for a cell of ``length`` bytes;
    ValueError when the patch does not fit."""
    bitmap = int.from_bytes(payload[:8], "little")
    new, pos, out = memoryview(payload), 8, []
    blocks = _blocks(length, chunk_size)
    for i, (a, b) in enumerate(blocks):
        if bitmap >> i & 1:
            out.append((a, new[pos:pos + b - a]))
            pos += b - a
    if pos != len(payload) or bitmap >> len(blocks):
        raise ValueError("patch does not match its cell")
    return out


def apply_patch(base: bytes | memoryview, payload: bytes, chunk_size: int) -> bytes:
    """``base`` with the patch's blocks written over it; ValueError when the patch does not fit.
    Joined from views in one allocation: a bytearray copied to bytes costs 15x more (page faults)."""
    old, pieces, pos = memoryview(base), [], 0
    for a, data in patch_blocks(payload, len(old), chunk_size):
        pieces += [old[pos:a], data]
        pos = a + len(data)
    pieces.append(old[pos:])
    return b"".join(pieces)
