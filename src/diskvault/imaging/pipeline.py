"""Cells and the parallel read -> hash -> compress stage.

A cell is the ``chunk_size`` slice of the disk at a multiple of ``chunk_size``. A cell is read only
where it holds used bytes (small gaps are read through, then zeroed), so free blocks read as zeros
and compress to nothing. Workers are threads: os.preadv, blake3 and zstd release the GIL.

A source opened read-only is read with O_DIRECT where it can be: the bytes are read once, so
copying them through the page cache only costs CPU (a fifth of the kernel time of an image) and
evicts other files' pages. The source's own descriptor stays as it is (buffered).
"""

from __future__ import annotations

import fcntl
import mmap
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from diskvault.crypto.aead import Sealer
from diskvault.format import codec
from diskvault.format.chain import Chain
from diskvault.format.layout import CHUNK_PATCH
from diskvault.format.patch import make_patch

READ_THROUGH_GAP = 64 << 10  # read a free gap smaller than this instead of seeking over it
DIRECT_ALIGN = 4096  # O_DIRECT offsets, lengths and buffers: a multiple of every logical block size
DEFAULT_WORKERS = max(2, (os.cpu_count() or 2) + 1)

T = TypeVar("T")
R = TypeVar("R")


def cells_for(extents: np.ndarray, chunk_size: int) -> np.ndarray:
    """Sorted unique indices of the cells that ``extents`` (merged, disk coordinates) touch."""
    if len(extents) == 0:
        return np.zeros(0, dtype=np.int64)
    starts = extents[:, 0].astype(np.int64)
    ends = starts + extents[:, 1].astype(np.int64)
    first, last = starts // chunk_size, (ends - 1) // chunk_size
    counts = last - first + 1
    offsets = np.repeat(np.cumsum(counts) - counts, counts)
    cells = np.repeat(first, counts) + (np.arange(int(counts.sum()), dtype=np.int64) - offsets)
    return unique(cells)


def unique(values: np.ndarray) -> np.ndarray:
    """Sorted distinct ``values``, as np.unique gives them; np.unique (and setdiff1d, union1d) import
    numpy.ma on first use, 8 ms of every command's start."""
    values = np.sort(values)
    return values[np.concatenate(([True], values[1:] != values[:-1]))] if len(values) else values


class CellReader:
    """Reads cells of a source: used bytes from disk, every other byte zero. Thread-safe."""

    def __init__(self, fd: int, extents: np.ndarray, chunk_size: int, disk_size: int) -> None:
        self.fd, self.chunk_size, self.disk_size = fd, chunk_size, disk_size
        self._starts = extents[:, 0].astype(np.int64)
        self._ends = self._starts + extents[:, 1].astype(np.int64)
        self._local = threading.local()
        self._zeros = memoryview(bytes(chunk_size))
        self._direct_fd = _open_direct(fd) if chunk_size % DIRECT_ALIGN == 0 else None
        self._closer = weakref.finalize(self, os.close, self._direct_fd) if self._direct_fd is not None else None

    def close(self) -> None:
        """Close the O_DIRECT descriptor now, not when the reader is collected."""
        if self._closer is not None:
            self._closer()

    def _buffer(self) -> memoryview:
        buf = getattr(self._local, "buf", None)
        if buf is None:  # page-aligned (O_DIRECT), and reused: no page faults for fresh memory
            buf = self._local.buf = memoryview(mmap.mmap(-1, self.chunk_size))
        return buf

    def _read_span(self, buf: memoryview, a: int, b: int, start: int, length: int) -> int:
        """Read [a, b) of the cell at ``start`` into ``buf``; bytes of [a, b) read. Direct reads
        cover the span's aligned bounds: the bytes around it are zeroed after when not used."""
        if self._direct_fd is not None:
            a0, b0 = a - a % DIRECT_ALIGN, -(-b // DIRECT_ALIGN) * DIRECT_ALIGN
            if b0 <= length:  # not for a disk's unaligned tail
                try:
                    n = _pread_full(self._direct_fd, buf[a0:b0], start + a0)
                    return max(0, min(a0 + n, b) - a)
                except OSError:  # a source that takes O_DIRECT at open but not at read
                    self._direct_fd = None
        return _pread_full(self.fd, buf[a:b], start + a)

    def cell_range(self, cell: int) -> tuple[int, int]:
        start = cell * self.chunk_size
        return start, min(start + self.chunk_size, self.disk_size)

    def used_in(self, start: int, end: int) -> list[tuple[int, int]]:
        """Used (start, end) pairs within [start, end), relative to ``start``."""
        return pairs_within(self._starts, self._ends, start, end)

    def read(self, cell: int, given: list[tuple[int, int]] | None = None,
             base: bytes | memoryview = b"") -> tuple[memoryview, int]:
        """(cell bytes, bytes read from the source). The view is valid until this thread's next read.
        ``given``: used pairs (as ``used_in`` gives them) whose bytes are copied from ``base``, the
        cell as an earlier image holds it, instead of read: bytes known unchanged since then."""
        start, end = self.cell_range(cell)
        length = end - start
        buf = self._buffer()
        used = self.used_in(start, end)
        spans: list[list[int]] = []
        for a, b in _outside(used, given) if given else used:
            if spans and a - spans[-1][1] < READ_THROUGH_GAP:
                spans[-1][1] = b
            else:
                spans.append([a, b])
        read = 0
        for a, b in spans:
            n = self._read_span(buf, a, b, start, length)
            read += n
            if n < b - a:
                buf[a + n:b] = self._zeros[:b - a - n]
        known = memoryview(base)  # sliced without copying
        for a, b in given or ():
            buf[a:b] = known[a:b]
        # zero what is not used: gaps read through and space outside every span
        pos = 0
        for a, b in used:
            if a > pos:
                buf[pos:a] = self._zeros[:a - pos]
            pos = b
        if pos < length:
            buf[pos:length] = self._zeros[:length - pos]
        return buf[:length], read


def pairs_within(starts: np.ndarray, ends: np.ndarray, start: int, end: int) -> list[tuple[int, int]]:
    """The parts of the sorted, disjoint extents [starts, ends) within [start, end), relative to ``start``."""
    i0 = int(np.searchsorted(ends, start, side="right"))
    i1 = int(np.searchsorted(starts, end, side="left"))
    return [(max(int(s), start) - start, min(int(e), end) - start) for s, e in zip(starts[i0:i1], ends[i0:i1])]


def _outside(pairs: list[tuple[int, int]], cut: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of sorted, disjoint (start, end) ``pairs`` that no pair of the sorted, disjoint ``cut`` covers."""
    out, k = [], 0
    for a, b in pairs:
        while k < len(cut) and cut[k][1] <= a:
            k += 1
        i = k
        while i < len(cut) and cut[i][0] < b:
            if cut[i][0] > a:
                out.append((a, cut[i][0]))
            a = max(a, cut[i][1])
            i += 1
        if a < b:
            out.append((a, b))
    return out


def _open_direct(fd: int) -> int | None:
    """A second, O_DIRECT descriptor of what the read-only ``fd`` reads, or None."""
    try:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY:
            return None
        return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
    except (OSError, AttributeError):  # no O_DIRECT here (tmpfs, other systems)
        return None


def _pread_full(fd: int, view: memoryview, offset: int) -> int:
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            break
        done += n
    return done


@dataclass
class EncodedCell:
    cell: int
    disk_offset: int
    length: int
    bytes_read: int
    content_hash: bytes
    all_zero: bool = False
    in_parent: bool = False  # the parent state has data for this cell
    codec_id: int = 0
    flags: int = 0  # CHUNK_PATCH when only the changed blocks are stored
    stored: bytes = b""  # set when the cell must be stored: not zero, and changed since the parent


class CellEncoder:
    """Worker job: read a cell once, hash it, and compress (and encrypt) it only when it must be
    stored: not all-zero, and different from what the parent state holds for that cell.

    ``parent`` is the parent chain (None for a Full); a changed cell the parent holds is stored as a
    patch of its changed 64 KiB blocks when that is smaller. A
    change-tracking source (btrfs generations, dm-era) can pass fewer cells to the same path.
    ``raw_cells`` (sorted) are stored without trying to compress them (ciphertext)."""

    def __init__(self, reader: CellReader, level: str, hash_key: bytes | None = None,
                 sealer: Sealer | None = None, parent: Chain | None = None,
                 raw_cells: np.ndarray | None = None) -> None:
        self.reader, self.level, self.hash_key, self.sealer = reader, level, hash_key, sealer
        self.parent = parent
        self._raw_cells = raw_cells if raw_cells is not None else np.zeros(0, np.int64)
        self._parent_offsets = parent.state.offsets if parent else np.zeros(0, np.int64)
        self._parent_hashes = parent.state.hashes if parent else None
        sizes = {reader.chunk_size, reader.disk_size % reader.chunk_size} - {0}
        self._zero_hash = {n: codec.content_hash(bytes(n), hash_key) for n in sizes}

    def _parent_hash(self, disk_offset: int) -> bytes | None:
        i = int(np.searchsorted(self._parent_offsets, disk_offset))
        if i < len(self._parent_offsets) and self._parent_offsets[i] == disk_offset:
            return bytes(self._parent_hashes[i])
        return None

    def __call__(self, cell: int) -> EncodedCell:
        return self.encode(cell, *self.reader.read(cell))

    def encode(self, cell: int, data: memoryview, nread: int, before_cell: bytes | None = None) -> EncodedCell:
        """The cell's bytes ``data`` (``nread`` of them read) hashed, and compressed if they must be
        stored. ``before_cell``: the parent's bytes of the cell when the caller has decoded them
        (decoding is the costly part of a patch)."""
        start = cell * self.reader.chunk_size
        digest = codec.content_hash(data, self.hash_key)
        before = self._parent_hash(start)
        out = EncodedCell(cell, start, len(data), nread, digest, all_zero=digest == self._zero_hash.get(len(data)),
                          in_parent=before is not None)
        if out.all_zero or digest == before:
            return out
        i = int(np.searchsorted(self._raw_cells, cell))
        store_raw = i < len(self._raw_cells) and self._raw_cells[i] == cell
        payload = data
        if before is not None:
            old = before_cell if before_cell is not None else self.parent.state_cell(start)
            patch = make_patch(data, old, self.reader.chunk_size)
            if patch is not None:
                payload, out.flags = patch, CHUNK_PATCH
        out.codec_id, out.stored = codec.compress(payload, "none" if store_raw else self.level)
        if self.sealer:
            out.stored = self.sealer.seal(out.stored, self.sealer.chunk_aad(start, len(data), out.codec_id))
        return out


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int = DEFAULT_WORKERS,
                window: int | None = None) -> Iterator[R]:
    """``map`` on a thread pool, results in input order, at most ``window`` jobs in flight."""
    window = window or workers * 3
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dv-worker") as pool:
        pending: deque = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()
