"""Rapid Delta Restore / Clone: write only what differs on the target.

The target is read in large runs of cells (the image's grid, ``chunk_size``), its free bytes masked
to zero exactly as the image hashed them, and each cell hashed with the image's key. A cell whose
hash differs from the source's is compared with the source's bytes block by block (4 KiB), and only
the differing blocks are written. Works for layouts that keep every partition in place.

Cells whose bytes the target's filesystems vouch for are skipped unread: file data whose inodes are
the same on the target as in the source (diskvault.changes). Restores write each ext superblock
last (disk.target.HeldBack), so a target left by an interrupted restore vouches for nothing.
"""

from __future__ import annotations

import mmap
import os
import threading
from dataclasses import dataclass

import numpy as np

from diskvault.changes import known_unchanged, open_trackers, partition_spans
from diskvault.disk.target import Target
from diskvault.format import codec
from diskvault.fs import extents as ext
from diskvault.imaging.pipeline import CellReader, cells_for, ordered_map
from diskvault.ui.progress import Progress

RUN_BYTES = 16 << 20  # target bytes read per job
BLOCK = 4096


@dataclass
class DeltaResult:
    bytes_compared: int = 0
    bytes_written: int = 0
    cells_changed: int = 0


def _runs(cells: np.ndarray, per_run: int) -> list[np.ndarray]:
    """Consecutive cells grouped, at most ``per_run`` to a group."""
    groups = np.split(cells, np.flatnonzero(np.diff(cells) != 1) + 1) if len(cells) else []
    return [g[i:i + per_run] for g in groups for i in range(0, len(g), per_run)]


def known_on_target(source, target: Target) -> np.ndarray:
    """Bytes of the target that its filesystems show hold what ``source`` holds there: the data of
    files whose inodes on the target are as in a member of the source's chain (diskvault.changes)
    and that no newer member changed, inside what the source uses."""
    trackers = open_trackers(target.fd, partition_spans(source.table, source.size))
    known = [ext.intersect(known_unchanged(trackers, snaps), ext.complement(newer, source.size))
             for snaps, newer in source.tracking_history()] if trackers else []
    return ext.intersect(ext.merge(np.concatenate(known)), source.used) if known else ext.EMPTY.copy()


def delta_copy(source, target: Target, ranges: np.ndarray, progress: Progress,
               known: np.ndarray | None = None) -> DeltaResult:
    """Make ``ranges`` (disk = target coordinates) of the target hold what ``source`` holds there.
    Cells whose bytes are all ``known`` to be equal already are neither read nor compared."""
    cs, size = source.chunk_size, source.size
    wanted = ext.intersect(source.used, ranges)
    cells = cells_for(wanted, cs)
    if known is not None and len(known):
        cells = cells_for(ext.intersect(wanted, ext.complement(known, size)), cs)
    mask = CellReader(target.fd, source.used, cs, size)  # its used_in() tells which bytes count
    result = DeltaResult()
    per_run = max(1, RUN_BYTES // cs)
    local = threading.local()
    zeros = bytes(cs * per_run)

    def compare(run: np.ndarray) -> list[tuple[int, int, int | None]]:
        """(cell, length, bytes written when the target's masked bytes differed from the source's).
        Differing cells are decoded and written here, on a worker: cells do not overlap."""
        start, end = int(run[0]) * cs, min((int(run[-1]) + 1) * cs, size)
        buf = getattr(local, "buf", None)
        if buf is None:  # one reused buffer per worker: no page faults for fresh memory per run
            buf = local.buf = memoryview(mmap.mmap(-1, len(zeros)))
        view, got = buf[:end - start], 0
        while got < len(view):
            n = os.preadv(target.fd, [view[got:]], start + got)
            if n == 0:
                view[got:] = zeros[:len(view) - got]  # past the end of the target
                break
            got += n
        pos = 0
        for a, b in mask.used_in(start, end) + [(end - start, end - start)]:  # free bytes read as zeros
            view[pos:a] = zeros[:a - pos]
            pos = b
        out = []
        for cell in run.tolist():
            cell_view = view[cell * cs - start:min(cell * cs + cs, size) - start]
            have = codec.content_hash(cell_view, source.key)
            if have == source.digest(cell, len(cell_view)):
                out.append((cell, len(cell_view), None))
            else:  # the target often holds the cell a patch applies to: then that is not decoded
                want = source.cell_bytes(cell, len(cell_view), (have, cell_view))
                out.append((cell, len(cell_view), _write_blocks(target, cell * cs, cell_view, want, ranges)))
        return out

    progress.start("comparing", ext.total(wanted))
    progress.advance(ext.total(wanted) - ext.total(ext.intersect(wanted, _cell_extents(cells, cs, size))))
    for found in ordered_map(compare, _runs(cells, per_run)):
        for _cell, length, written in found:
            result.bytes_compared += length
            progress.advance(length)
            if written is not None:
                result.cells_changed += 1
                result.bytes_written += written
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
