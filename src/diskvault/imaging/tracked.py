"""Incremental imaging that trusts change tracking (``diskvault.changes``): a cell whose bytes are
all known unchanged since the parent is not read - its parent's hash stands for it. A cell only
partly known is read whole, as without tracking: taking the known part from the parent's cell
instead was measured slower here (it reads and decompresses the parent)."""

from __future__ import annotations

import numpy as np

from diskvault.format import codec
from diskvault.format.chain import Chain
from diskvault.fs import extents as ext
from diskvault.imaging.pipeline import CellEncoder, EncodedCell, cells_for


class SkipKnownCells:
    """Worker job: the parent's hash for a cell that is entirely known unchanged, else ``encoder``."""

    def __init__(self, encoder: CellEncoder, parent: Chain, skip: np.ndarray, disk_size: int) -> None:
        self.encoder, self.parent, self.skip, self.disk_size = encoder, parent, skip, disk_size
        self.chunk_size = encoder.reader.chunk_size
        self._zero_hash: dict[int, bytes] = {}

    def __call__(self, cell: int) -> EncodedCell:
        i = int(np.searchsorted(self.skip, cell))
        if i == len(self.skip) or self.skip[i] != cell:
            return self.encoder(cell)
        start = cell * self.chunk_size
        length = min(self.chunk_size, self.disk_size - start)
        j = self.parent.state.lookup(start)
        if j < 0:  # all zeros then, so all zeros now
            if length not in self._zero_hash:
                self._zero_hash[length] = codec.content_hash(bytes(length), self.encoder.hash_key)
            return EncodedCell(cell, start, length, 0, self._zero_hash[length], all_zero=True)
        return EncodedCell(cell, start, length, 0, bytes(self.parent.state.hashes[j]), in_parent=True)


def cells_to_skip(cells: np.ndarray, extents: np.ndarray, parent_extents: np.ndarray, known: np.ndarray,
                  chunk_size: int, disk_size: int) -> np.ndarray:
    """The cells whose bytes used now or in the parent are all ``known`` unchanged."""
    either = ext.merge(np.concatenate([extents, parent_extents]))
    unknown = ext.intersect(either, ext.complement(known, disk_size))
    return np.setdiff1d(cells, cells_for(unknown, chunk_size))
