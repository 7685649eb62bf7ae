"""What a restore or clone copies from: an image chain or a disk, behind one small interface.

A segment ``(src, length, dst)`` says: the bytes at ``src`` go to ``dst`` on the target. Only used
bytes are read from a disk (its used-block map), only stored chunks from an image; everything
else in a segment is free space the caller clears or discards. Both sources give cells on the
image's grid with their content hash, so Rapid Delta compares hashes, never whole copies.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import blake3
import numpy as np

from diskvault.changes import METADATA_KEY as TRACKING_KEY, open_trackers, partition_spans, snapshots
from diskvault.disk.table import PartitionTable
from diskvault.disk.target import Target
from diskvault.format import codec
from diskvault.format.chain import Chain, ChainWindow
from diskvault.fs import extents as ext
from diskvault.fs.base import Window
from diskvault.imaging.pipeline import CellReader, ordered_map
from diskvault.ui.progress import Progress

Segment = tuple[int, int, int]
RUN = 8 << 20  # bytes read per job when copying or verifying a disk


def mapped(extents: np.ndarray, segments: list[Segment]) -> np.ndarray:
    """``extents`` (source coordinates) inside the segments, moved to target coordinates."""
    rows = []
    for s, n, d in segments:
        part = ext.clip(extents, s, s + n).astype(np.int64)
        part[:, 0] += d - s
        rows.append(part)
    return ext.merge(np.concatenate(rows).astype(np.uint64)) if rows else ext.EMPTY.copy()


def pieces(extents: np.ndarray, limit: int = RUN) -> Iterator[tuple[int, int]]:
    for start, length in extents.tolist():
        for off in range(0, length, limit):
            yield start + off, min(limit, length - off)


class ImageDisk:
    """The disk an image chain describes."""

    def __init__(self, chain: Chain) -> None:
        self.chain, self.path = chain, chain.head.path
        self.size, self.chunk_size = chain.disk_size, chain.chunk_size
        self.table = PartitionTable.from_dict(chain.metadata["table"])
        self.used = chain.extents
        self._fs = {p["number"]: p.get("fs") for p in chain.metadata["partitions"]}
        self.key = chain.head.hash_key
        self._zero = {}

    def fs(self, number: int) -> dict | None:
        return self._fs.get(number)

    def window(self, start: int, size: int) -> ChainWindow:
        return ChainWindow(self.chain, start, size)

    def read(self, offset: int, length: int) -> bytes:
        return self.chain.read(offset, length)

    def covered(self) -> np.ndarray:
        """Bytes the image stores (the rest of the disk reads as zeros)."""
        st = self.chain.state
        return ext.merge(np.stack([st.offsets, st.lengths], axis=1).astype(np.uint64))

    def copy(self, target: Target, segments: list[Segment], progress: Progress) -> int:
        st = self.chain.state
        offs, ends = st.offsets, st.offsets + st.lengths
        hit = np.zeros(len(offs), dtype=bool)
        for s, n, _d in segments:
            hit |= (offs < s + n) & (ends > s)
        chunks = np.flatnonzero(hit).tolist()
        progress.start("restoring", int(st.lengths[hit].sum()))
        written = 0
        for j, data in ordered_map(lambda j: (j, self.chain.decode(j)), chunks):
            off = int(offs[j])
            for s, n, d in segments:
                a, b = max(s, off), min(s + n, off + len(data))
                if a < b:
                    written += target.write(d + a - s, memoryview(data)[a - off:b - off])
            progress.advance(len(data))
        progress.finish()
        return written

    def digest(self, cell: int, length: int) -> bytes:
        j = self.chain.state.lookup(cell * self.chunk_size)
        return bytes(self.chain.state.hashes[j]) if j >= 0 else self._zero_hash(length)

    def tracking_history(self) -> list[tuple[dict, np.ndarray]]:
        """Per member of the chain, oldest first: (its change-tracking snapshots, disk extents of
        the cells newer members store); bytes a snapshot vouches for outside those cells are as
        this image gives them."""
        history, later = [], []
        for m in reversed(self.chain.members):
            newer = ext.merge(np.concatenate(later)) if later else ext.EMPTY
            history.append((m.metadata.get(TRACKING_KEY, {}), newer))
            later.append(np.stack([m.index["disk_offset"], m.index["length"]], axis=1).astype(np.uint64))
        return history[::-1]

    def patch_base(self, cell: int) -> range | None:
        """When a patch gives the cell: the members (as tracking_history counts them) whose state
        of the cell it applies to (Chain.patch_base); else None."""
        j = self.chain.state.lookup(cell * self.chunk_size)
        return self.chain.patch_base(j) if j >= 0 else None

    def patch_blocks(self, cell: int) -> list[tuple[int, memoryview]]:
        """The blocks (offset in the cell, bytes) of the patch that gives the cell."""
        return self.chain.patch_blocks(self.chain.state.lookup(cell * self.chunk_size))

    def cell_bytes(self, cell: int, length: int, held: tuple[bytes, bytes | memoryview] | None = None) -> bytes:
        """The cell's bytes; ``held`` as for Chain.decode."""
        j = self.chain.state.lookup(cell * self.chunk_size)
        return self.chain.decode(j, held) if j >= 0 else bytes(length)

    def _zero_hash(self, length: int) -> bytes:
        if length not in self._zero:
            self._zero[length] = codec.content_hash(bytes(length), self.key)
        return self._zero[length]


class FdDisk:
    """A disk (or a stage file) read through its used-block map; free bytes read as zeros."""

    def __init__(self, path: str, fd: int, size: int, used: np.ndarray, table: PartitionTable | None = None,
                 fs: dict[int, dict | None] | None = None, chunk_size: int = 1 << 20) -> None:
        self.path, self.fd, self.size, self.used = path, fd, size, used
        self.table = table or PartitionTable(kind="none", disk_size=size)
        self._fs = fs or {}
        self.chunk_size, self.key = chunk_size, None
        self._cells = CellReader(fd, used, chunk_size, size)

    def fs(self, number: int) -> dict | None:
        return self._fs.get(number)

    def tracking_history(self) -> list[tuple[dict, np.ndarray]]:
        """This disk's change-tracking snapshots as it is now (see ImageDisk)."""
        return [(snapshots(open_trackers(self.fd, partition_spans(self.table, self.size))), ext.EMPTY)]

    def patch_base(self, cell: int) -> None:
        """A disk gives every cell whole (see ImageDisk)."""
        return None

    def covered(self) -> np.ndarray:
        return self.used

    def window(self, start: int, size: int) -> Window:
        return Window(self.fd, start, size)

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self.fd, length, offset).ljust(length, b"\0")

    def copy(self, target: Target, segments: list[Segment], progress: Progress) -> int:
        jobs = [(d + a - s, a, n) for s, length, d in segments
                for a, n in pieces(ext.clip(self.used, s, s + length))]
        progress.start("copying", sum(n for _, _, n in jobs))
        written = 0
        for dst, data in ordered_map(lambda job: (job[0], self.read(job[1], job[2])), jobs):
            written += target.write(dst, data)
            progress.advance(len(data))
        progress.finish()
        return written

    def verify(self, target: Target, segments: list[Segment]) -> list[tuple[int, int]]:
        """Re-read every copied range on both sides; the (target offset, length) that differ."""
        jobs = [(d + a - s, a, n) for s, length, d in segments
                for a, n in pieces(ext.clip(self.used, s, s + length))]

        def same(job: tuple[int, int, int]) -> tuple[tuple[int, int, int], bool]:
            dst, src, n = job
            return job, blake3.blake3(self.read(src, n)).digest() == blake3.blake3(target.read(dst, n)).digest()

        return [(job[0], job[2]) for job, ok in ordered_map(same, jobs) if not ok]

    def digest(self, cell: int, length: int) -> bytes:
        return codec.content_hash(self._cells.read(cell)[0], self.key)

    def cell_bytes(self, cell: int, length: int, held: tuple[bytes, bytes | memoryview] | None = None) -> bytes:
        return bytes(self._cells.read(cell)[0])
