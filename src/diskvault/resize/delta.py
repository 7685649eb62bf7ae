"""Rapid Delta Restore / Clone: write only the cells of the target that differ.

Cells are the image's grid (``chunk_size``). A target cell is read with its free bytes masked to
zero, exactly as the image hashed it, and hashed with the image's key; only cells whose hash
differs from the source's are written. Works for layouts that keep every partition in place.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diskvault.disk.target import Target
from diskvault.format import codec
from diskvault.fs import extents as ext
from diskvault.imaging.pipeline import CellReader, cells_for, ordered_map
from diskvault.ui.progress import Progress


@dataclass
class DeltaResult:
    bytes_compared: int = 0
    bytes_written: int = 0
    cells_changed: int = 0


def delta_copy(source, target: Target, ranges: np.ndarray, progress: Progress) -> DeltaResult:
    """Make ``ranges`` (disk = target coordinates) of the target hold what ``source`` holds there,
    reading the target's used bytes and writing only cells that differ."""
    cs, size = source.chunk_size, source.size
    wanted = ext.intersect(source.used, ranges)
    cells = cells_for(wanted, cs).tolist()
    mine = CellReader(target.fd, source.used, cs, size)
    result = DeltaResult()
    starts = ranges[:, 0].astype(np.int64)
    ends = starts + ranges[:, 1].astype(np.int64)

    def compare(cell: int) -> tuple[int, int, bool]:
        data, _ = mine.read(cell)
        length = len(data)
        return cell, length, codec.content_hash(data, source.key) != source.digest(cell, length)

    progress.start("comparing", ext.total(wanted))
    for cell, length, differs in ordered_map(compare, cells):
        result.bytes_compared += length
        progress.advance(length)
        if not differs:
            continue
        result.cells_changed += 1
        off = cell * cs
        data = memoryview(source.cell_bytes(cell, length))
        i0, i1 = int(np.searchsorted(ends, off, side="right")), int(np.searchsorted(starts, off + length))
        for s, e in zip(starts[i0:i1].tolist(), ends[i0:i1].tolist()):
            a, b = max(s, off), min(e, off + length)
            if not target.is_block:
                target.zero(a, b - a)  # a file leaves zero blocks as holes: punch before writing
            result.bytes_written += target.write(a, data[a - off:b - off])
    progress.finish()
    return result
