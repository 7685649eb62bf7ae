"""Incremental imaging that trusts change tracking (``diskvault.changes``): a cell whose bytes are
all known unchanged since the parent is not read - its parent's hash stands for it. A cell partly
known, and mostly so, is read only where it is not known; its known bytes come from the parent's
cell, decoded once for that and for the patch of a changed cell. A cell mostly unknown is read
whole, as without tracking: for it the decode would cost more CPU than the read it saves."""

from __future__ import annotations

import numpy as np

from diskvault.format import codec
from diskvault.format.chain import Chain
from diskvault.fs import extents as ext
from diskvault.imaging.pipeline import CellEncoder, EncodedCell, cells_for, pairs_within

# Read only the unknown bytes of a cell the parent holds when they are at most this share of its
# used bytes. Most such cells changed (then the parent's cell is decoded for the patch anyway); for
# an unchanged one the decode is extra CPU, paid for by the bytes not read.
MAX_UNKNOWN_SHARE = 0.5


class SkipKnownCells:
    """Worker job: the parent's hash for a cell that is entirely known unchanged; the known bytes
    of a mostly known cell from the parent's cell; else ``encoder``."""

    def __init__(self, encoder: CellEncoder, parent: Chain, skip: np.ndarray, known: np.ndarray,
                 disk_size: int) -> None:
        self.encoder, self.parent, self.skip, self.disk_size = encoder, parent, skip, disk_size
        self.chunk_size = encoder.reader.chunk_size
        self._known_starts = known[:, 0].astype(np.int64)
        self._known_ends = self._known_starts + known[:, 1].astype(np.int64)
        self._zero_hash: dict[int, bytes] = {}

    def __call__(self, cell: int) -> EncodedCell:
        i = int(np.searchsorted(self.skip, cell))
        if i == len(self.skip) or self.skip[i] != cell:
            return self._partly_known(cell)
        start = cell * self.chunk_size
        length = min(self.chunk_size, self.disk_size - start)
        j = self.parent.state.lookup(start)
        if j < 0:  # all zeros then, so all zeros now
            if length not in self._zero_hash:
                self._zero_hash[length] = codec.content_hash(bytes(length), self.encoder.hash_key)
            return EncodedCell(cell, start, length, 0, self._zero_hash[length], all_zero=True)
        return EncodedCell(cell, start, length, 0, bytes(self.parent.state.hashes[j]), in_parent=True)

    def _partly_known(self, cell: int) -> EncodedCell:
        """A cell with unknown bytes: read only those when the parent holds the cell and they are
        at most MAX_UNKNOWN_SHARE of its used bytes, else read it whole."""
        reader = self.encoder.reader
        start, end = reader.cell_range(cell)
        given = pairs_within(self._known_starts, self._known_ends, start, end)
        j = self.parent.state.lookup(start) if given else -1
        if j < 0:
            return self.encoder(cell)
        used = sum(b - a for a, b in reader.used_in(start, end))
        unknown = used - sum(b - a for a, b in given)
        if unknown > used * MAX_UNKNOWN_SHARE:
            return self.encoder(cell)
        before = self.parent.decode(j)
        return self.encoder.encode(cell, *reader.read(cell, given, before), before_cell=before)


def cells_to_skip(cells: np.ndarray, extents: np.ndarray, parent_extents: np.ndarray, known: np.ndarray,
                  chunk_size: int, disk_size: int) -> np.ndarray:
    """The cells whose bytes used now or in the parent are all ``known`` unchanged."""
    either = ext.merge(np.concatenate([extents, parent_extents]))
    unknown = ext.intersect(either, ext.complement(known, disk_size))
    return cells[~np.isin(cells, cells_for(unknown, chunk_size))]
