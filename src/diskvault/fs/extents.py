"""Extent arrays: (N, 2) uint64 of (start, length) in bytes, sorted and merged. numpy throughout."""

from __future__ import annotations

import numpy as np

EMPTY = np.zeros((0, 2), dtype=np.uint64)


def from_bitmap(bits: np.ndarray, unit: int, base: int = 0) -> np.ndarray:
    """Turn a boolean array (True = used) of ``unit``-byte blocks into merged byte extents."""
    b = np.asarray(bits, dtype=np.int8)
    if b.size == 0:
        return EMPTY.copy()
    edges = np.diff(np.concatenate(([0], b, [0])))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    out = np.empty((starts.size, 2), dtype=np.uint64)
    out[:, 0] = starts.astype(np.uint64) * np.uint64(unit) + np.uint64(base)
    out[:, 1] = (ends - starts).astype(np.uint64) * np.uint64(unit)
    return out


def unpack_bits(raw: bytes | np.ndarray, count: int) -> np.ndarray:
    """Little-endian bitmap bytes (bit 0 of byte 0 = block 0, as ext/NTFS/exFAT use) -> bool array."""
    arr = np.frombuffer(raw, dtype=np.uint8) if isinstance(raw, (bytes, bytearray, memoryview)) else raw
    return np.unpackbits(arr, bitorder="little")[:count].astype(bool)


def merge(extents: np.ndarray) -> np.ndarray:
    """Sort and merge overlapping or touching extents."""
    ext = np.asarray(extents, dtype=np.uint64).reshape(-1, 2)
    ext = ext[ext[:, 1] > 0]
    if ext.shape[0] == 0:
        return EMPTY.copy()
    ext = ext[np.argsort(ext[:, 0], kind="stable")]
    starts, ends = ext[:, 0], ext[:, 0] + ext[:, 1]
    running_end = np.maximum.accumulate(ends)
    new_run = np.concatenate(([True], starts[1:] > running_end[:-1]))
    run_ids = np.cumsum(new_run) - 1
    out_starts = starts[new_run]
    out_ends = np.zeros(out_starts.size, dtype=np.uint64)
    np.maximum.at(out_ends, run_ids, ends)
    return np.stack([out_starts, out_ends - out_starts], axis=1).astype(np.uint64)


def clip(extents: np.ndarray, start: int, end: int) -> np.ndarray:
    """Extents intersected with [start, end)."""
    ext = np.asarray(extents, dtype=np.uint64).reshape(-1, 2)
    s = np.maximum(ext[:, 0], np.uint64(start))
    e = np.minimum(ext[:, 0] + ext[:, 1], np.uint64(end))
    keep = e > s
    return np.stack([s[keep], (e - s)[keep]], axis=1).astype(np.uint64)


def shift(extents: np.ndarray, delta: int) -> np.ndarray:
    out = np.asarray(extents, dtype=np.uint64).reshape(-1, 2).copy()
    if delta >= 0:
        out[:, 0] += np.uint64(delta)
    else:
        out[:, 0] -= np.uint64(-delta)
    return out


def total(extents: np.ndarray) -> int:
    return int(np.asarray(extents, dtype=np.uint64).reshape(-1, 2)[:, 1].sum())


def whole(size: int) -> np.ndarray:
    return np.array([[0, size]], dtype=np.uint64) if size > 0 else EMPTY.copy()


def complement(extents: np.ndarray, size: int) -> np.ndarray:
    """The bytes of [0, size) not covered by ``extents``."""
    e = clip(merge(extents), 0, size)
    starts = np.concatenate(([0], e[:, 0] + e[:, 1])).astype(np.uint64)
    ends = np.concatenate((e[:, 0], [size])).astype(np.uint64)
    keep = ends > starts
    return np.stack([starts[keep], (ends - starts)[keep]], axis=1).astype(np.uint64)


def intersect(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bytes covered by both merged extent arrays."""
    a, b = merge(a), merge(b)
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        s = max(int(a[i, 0]), int(b[j, 0]))
        ea, eb = int(a[i, 0] + a[i, 1]), int(b[j, 0] + b[j, 1])
        if min(ea, eb) > s:
            out.append((s, min(ea, eb) - s))
        if ea < eb:
            i += 1
        else:
            j += 1
    return np.array(out, dtype=np.uint64).reshape(-1, 2)
