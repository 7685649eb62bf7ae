"""Read-ahead over a Chain for FUSE: when reads walk forward through the disk, the next cells are
decoded by a thread pool before they are asked for (zstd, AES-GCM and BLAKE3 release the GIL), so
a sequential copy of ``disk.img`` overlaps decoding with serving."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from diskvault.format.chain import Chain

DEFAULT_AHEAD = 4  # cells decoded ahead of a sequential reader (4 MiB cells: 16 MiB)


class PrefetchReader:
    """``read(offset, length)`` like Chain.read, with the next ``ahead`` stored cells decoded in
    the background once reads move from one cell to the next."""

    def __init__(self, chain: Chain, ahead: int = DEFAULT_AHEAD, workers: int = 2) -> None:
        self.chain = chain
        self.ahead = ahead
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="diskvault-prefetch") if ahead else None
        self._lock = threading.Lock()
        self._inflight: dict[int, Future] = {}
        self._last_cell = -2  # state index of the cell the last read ended in
        self._scheduled_until = -1  # highest state index handed to the pool

    def close(self) -> None:
        if self._pool:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def read(self, offset: int, length: int) -> bytes:
        chain, cs = self.chain, self.chain.chunk_size
        end = min(offset + length, chain.disk_size)
        if end <= offset:
            return b""
        first = int(np.searchsorted(chain.state.offsets, offset - offset % cs))
        self._maybe_prefetch(first)
        pieces: list[bytes | memoryview] = []  # joined in one allocation; absent cells are zeros
        offsets, count = chain.state.offsets, len(chain.state.offsets)
        j, pos = first, offset
        while j < count and int(offsets[j]) < end:
            cell_start = int(offsets[j])
            data = self._cell(j)
            a, b = max(offset, cell_start), min(end, cell_start + len(data))
            if a < b:
                pieces += [bytes(a - pos), memoryview(data)[a - cell_start:b - cell_start]]
                pos = b
            j += 1
        pieces.append(bytes(end - pos))
        return b"".join(pieces)

    def _cell(self, j: int) -> bytes:
        with self._lock:
            fut = self._inflight.get(j)
        return fut.result() if fut is not None else self.chain.cell(j)

    def _maybe_prefetch(self, j: int) -> None:
        """A read entering the cell after the previous read's is sequential: keep ``ahead`` cells
        decoding beyond it. A jump elsewhere restarts the window (FUSE threads may reorder reads
        by one cell, which is neither)."""
        if self._pool is None:
            return
        with self._lock:
            prev, self._last_cell = self._last_cell, j
            if j <= prev and j >= prev - 1:
                return
            if j != prev + 1:
                self._scheduled_until = j
                return
            last = min(j + self.ahead, len(self.chain.state.offsets) - 1)
            started = {k: self._pool.submit(self.chain.cell, k)
                       for k in range(max(j + 1, self._scheduled_until + 1), last + 1)}
            self._inflight.update(started)
            self._scheduled_until = max(self._scheduled_until, last)
        for k, fut in started.items():  # outside the lock: a finished future calls back at once
            fut.add_done_callback(lambda _f, k=k: self._done(k))

    def _done(self, k: int) -> None:
        with self._lock:
            self._inflight.pop(k, None)
