"""Rapid Delta Restore / Clone: write only what differs on the target.

The target is read cell by cell (the image's grid, ``chunk_size``; used bytes only, O_DIRECT where
it can), its free bytes zero exactly as the image hashed them, and each cell hashed with the image's
key. A cell whose hash differs from the source's is compared with the source's bytes block by block
(4 KiB), and only the differing blocks are written. Works for layouts that keep every partition in
place.

Cells whose bytes the target's filesystems vouch for are skipped unread (diskvault.changes): file
data whose inodes are the same on the target as in a member of the source's chain, or a whole
filesystem whose superblock is, where no newer member changed it. The cells they could not vouch
for are compared while that is worked out. Restores write each ext superblock last
(disk.target.HeldBack), so a target left by an interrupted restore vouches for nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from diskvault.changes import candidates, known_unchanged, open_trackers, partition_spans
from diskvault.disk.target import Target
from diskvault.format import codec
from diskvault.fs import extents as ext
from diskvault.imaging.pipeline import CellReader, cells_for, ordered_map, unique
from diskvault.ui.progress import Progress

BLOCK = 4096


@dataclass
class DeltaResult:
    bytes_compared: int = 0
    bytes_written: int = 0
    cells_changed: int = 0


@dataclass
class Tracked:
    """What a target's filesystems can say: ``possible`` bytes they could vouch for (found by
    reading the target, before anything is written to it), and ``known()``, the bytes they do
    vouch for: it only computes, so it runs while the other cells are compared and written."""

    possible: np.ndarray
    known: Callable[[], np.ndarray]


def tracked_on_target(source, target: Target) -> Tracked:
    """Bytes of the target that its filesystems show hold what ``source`` holds there, inside what
    the source uses: what a member of the source's chain holds there (diskvault.changes) where no
    newer member changed it. Reads the target now, before anything is written to it."""
    trackers = open_trackers(target.fd, partition_spans(source.table, source.size))
    history = source.tracking_history() if trackers else []
    possible = [ext.intersect(ext.intersect(candidates(trackers, snaps), ext.complement(newer, source.size)),
                              source.used) for snaps, newer in history]

    def known() -> np.ndarray:
        """Members that could vouch for most first (a whole unwritten filesystem), then the others
        only about what is still unknown: fingerprints are worked out for fewer files."""
        unknown = source.used
        for k in sorted(range(len(history)), key=lambda k: -ext.total(possible[k])):
            within = ext.intersect(unknown, possible[k])
            if len(within):
                found = known_unchanged(trackers, history[k][0], within)
                unknown = ext.intersect(unknown, ext.complement(found, source.size))
        return ext.intersect(source.used, ext.complement(unknown, source.size))

    return Tracked(ext.merge(np.concatenate(possible)) if possible else ext.EMPTY.copy(), known)


def delta_copy(source, target: Target, ranges: np.ndarray, progress: Progress,
               tracked: Tracked | None = None) -> DeltaResult:
    """Make ``ranges`` (disk = target coordinates) of the target hold what ``source`` holds there.
    Cells whose bytes are all ``tracked`` as equal already are neither read nor compared; the cells
    no tracker could vouch for are compared while the trackers work that out."""
    cs, size = source.chunk_size, source.size
    wanted = ext.intersect(source.used, ranges)
    tracked = tracked or Tracked(ext.EMPTY, lambda: ext.EMPTY)
    first = cells_for(ext.intersect(wanted, ext.complement(tracked.possible, size)), cs)
    read_fd = os.open(target.path, os.O_RDONLY | os.O_CLOEXEC)  # read-only: CellReader adds O_DIRECT
    reader = CellReader(read_fd, source.used, cs, size)  # free bytes read as zeros, as the image hashed them
    result = DeltaResult()

    def compare(cell: int) -> tuple[int, int | None]:
        """(length, bytes written when the target's bytes differed from the source's). Differing
        cells are decoded and written here, on a worker: cells do not overlap."""
        view, _ = reader.read(cell)
        have = codec.content_hash(view, source.key)
        if have == source.digest(cell, len(view)):
            return len(view), None
        # the target often holds the cell a patch applies to: then that is not decoded
        want = source.cell_bytes(cell, len(view), (have, view))
        return len(view), _write_blocks(target, cell * cs, view, want, ranges)

    def cells(known: Future) -> Iterator[int]:
        yield from first.tolist()
        rest = cells_for(ext.intersect(wanted, ext.complement(known.result(), size)), cs)
        rest = rest[~np.isin(rest, first)]
        compared = ext.intersect(wanted, _cell_extents(unique(np.concatenate([first, rest])), cs, size))
        progress.advance(ext.total(wanted) - ext.total(compared))  # known equal: not compared
        yield from rest.tolist()

    progress.start("comparing", ext.total(wanted))
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="dv-tracker") as side:
            for length, written in ordered_map(compare, cells(side.submit(tracked.known))):
                result.bytes_compared += length
                progress.advance(length)
                if written is not None:
                    result.cells_changed += 1
                    result.bytes_written += written
    finally:
        reader.close()
        os.close(read_fd)
    progress.finish()
    return result


def _cell_extents(cells: np.ndarray, chunk_size: int, size: int) -> np.ndarray:
    starts = cells.astype(np.uint64) * np.uint64(chunk_size)
    return ext.clip(ext.merge(np.stack([starts, np.full(len(cells), chunk_size, np.uint64)], axis=1)), 0, size)


def _blocks(data: bytes | memoryview, blocks: int) -> np.ndarray:
    """``data`` as rows of 4 KiB (u64 words), zero-padded to ``blocks`` rows."""
    if len(data) != blocks * BLOCK:
        data = bytes(data) + bytes(blocks * BLOCK - len(data))
    return np.frombuffer(data, dtype=np.uint64).reshape(blocks, BLOCK // 8)


def _write_blocks(target: Target, offset: int, have: bytes | memoryview, want: bytes, ranges: np.ndarray) -> int:
    """Write the 4 KiB blocks of ``want`` that differ from ``have``, inside ``ranges``; in a file,
    blocks that become all zero are punched out instead (holes, as a full restore leaves them)."""
    n = len(want)
    blocks = -(-n // BLOCK)
    a, b = _blocks(have, blocks), _blocks(want, blocks)
    changed = (a != b).any(axis=1)
    zero = ~b.any(axis=1) if not target.is_block else np.zeros(blocks, dtype=bool)
    written = 0
    for mask, punch in ((changed & zero, True), (changed & ~zero, False)):
        runs = ext.intersect(ext.clip(ext.from_bitmap(mask, BLOCK, offset), offset, offset + n), ranges)
        for start, length in runs.tolist():
            if punch:
                target.zero(start, length)
            else:
                written += target.write(start, memoryview(want)[start - offset:start - offset + length])
    return written
