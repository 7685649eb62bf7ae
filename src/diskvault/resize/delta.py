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
from dataclasses import dataclass, field

import numpy as np

from diskvault.changes import candidates, known_unchanged, open_trackers, partition_spans
from diskvault.disk.target import Target
from diskvault.format import codec
from diskvault.fs import extents as ext
from diskvault.imaging.pipeline import CellReader, cells_for, ordered_map, pairs_within, unique
from diskvault.ui.progress import Progress

BLOCK = 4096


@dataclass
class DeltaResult:
    bytes_compared: int = 0
    bytes_written: int = 0
    cells_changed: int = 0


@dataclass
class Vouched:
    """What a target's filesystems vouch for: ``equal`` bytes hold what the source holds there;
    ``as_member[k]`` bytes hold what member k of the source's chain holds there (a newer member's
    patch of a cell is then written onto them unread)."""

    equal: np.ndarray
    as_member: dict[int, np.ndarray] = field(default_factory=dict)


@dataclass
class Tracked:
    """What a target's filesystems can say: ``possible`` bytes they could vouch for (found by
    reading the target, before anything is written to it), and ``known()``, what they do vouch
    for: it only computes, so it runs while the other cells are compared and written."""

    possible: np.ndarray
    known: Callable[[], Vouched]


def tracked_on_target(source, target: Target) -> Tracked:
    """What the target's filesystems show it holds of ``source``, inside what the source uses: what
    a member of the source's chain holds there (diskvault.changes). Reads the target now, before
    anything is written to it."""
    trackers = open_trackers(target.fd, partition_spans(source.table, source.size))
    history = source.tracking_history() if trackers else []
    could = [ext.intersect(candidates(trackers, snaps), source.used) for snaps, _newer in history]

    def known() -> Vouched:
        """Members that could vouch for most first (a whole unwritten filesystem), then the others
        only about what is still unknown: fingerprints are worked out for fewer files."""
        unknown, as_member = source.used, {}
        for k in sorted(range(len(history)), key=lambda k: -ext.total(could[k])):
            snaps, newer = history[k]
            within = ext.intersect(unknown, could[k])
            if len(within):
                found = as_member[k] = known_unchanged(trackers, snaps, within)
                equal = ext.intersect(found, ext.complement(newer, source.size))  # no newer member changed
                unknown = ext.intersect(unknown, ext.complement(equal, source.size))
        return Vouched(ext.intersect(source.used, ext.complement(unknown, source.size)), as_member)

    return Tracked(ext.merge(np.concatenate(could)) if could else ext.EMPTY.copy(), known)


def delta_copy(source, target: Target, ranges: np.ndarray, progress: Progress,
               tracked: Tracked | None = None) -> DeltaResult:
    """Make ``ranges`` (disk = target coordinates) of the target hold what ``source`` holds there.
    Cells whose bytes are all ``tracked`` as equal already are neither read nor compared, and a
    cell that a patch turns from what the target is vouched to hold into the source's gets the
    patch written; the cells no tracker could vouch for are compared while the trackers work that
    out."""
    cs, size = source.chunk_size, source.size
    wanted = ext.intersect(source.used, ranges)
    tracked = tracked or Tracked(ext.EMPTY, lambda: Vouched(ext.EMPTY))
    first = cells_for(ext.intersect(wanted, ext.complement(tracked.possible, size)), cs)
    read_fd = os.open(target.path, os.O_RDONLY | os.O_CLOEXEC)  # read-only: CellReader adds O_DIRECT
    reader = CellReader(read_fd, source.used, cs, size)  # free bytes read as zeros, as the image hashed them
    result = DeltaResult()

    def compare(cell: int) -> tuple[int, int | None]:
        """(bytes compared, bytes written when the target's bytes differed from the source's).
        Differing cells are decoded and written here, on a worker: cells do not overlap."""
        view, _ = reader.read(cell)
        have = codec.content_hash(view, source.key)
        if have == source.digest(cell, len(view)):
            return len(view), None
        # the target often holds the cell a patch applies to: then that is not decoded
        want = source.cell_bytes(cell, len(view), (have, view))
        return len(view), _write_blocks(target, cell * cs, view, want, ranges)

    wanted_starts = wanted[:, 0].astype(np.int64)
    wanted_ends = wanted_starts + wanted[:, 1].astype(np.int64)

    def update(job: tuple[int, Vouched | None]) -> tuple[int, int, int | None]:
        """(bytes of ``wanted`` in the cell, bytes compared, bytes written or None)."""
        cell, vouched = job
        start = cell * cs
        pairs = pairs_within(wanted_starts, wanted_ends, start, min(start + cs, size))
        need = np.array([(start + a, b - a) for a, b in pairs], dtype=np.uint64).reshape(-1, 2)
        written = _patched(source, target, cell, need, vouched) if vouched else None
        return (ext.total(need), 0, written) if written is not None else (ext.total(need), *compare(cell))

    def jobs(known: Future) -> Iterator[tuple[int, Vouched | None]]:
        yield from ((cell, None) for cell in first.tolist())
        vouched = known.result()
        rest = cells_for(ext.intersect(wanted, ext.complement(vouched.equal, size)), cs)
        rest = rest[~np.isin(rest, first)]
        touched = ext.intersect(wanted, _cell_extents(unique(np.concatenate([first, rest])), cs, size))
        progress.advance(ext.total(wanted) - ext.total(touched))  # known equal: not compared
        yield from ((cell, vouched) for cell in rest.tolist())

    progress.start("comparing", ext.total(wanted))
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="dv-tracker") as side:
            for done, compared, written in ordered_map(update, jobs(side.submit(tracked.known))):
                result.bytes_compared += compared
                progress.advance(done)
                if written is not None:
                    result.cells_changed += 1
                    result.bytes_written += written
    finally:
        reader.close()
        os.close(read_fd)
    progress.finish()
    return result


def _patched(source, target: Target, cell: int, need: np.ndarray, vouched: Vouched) -> int | None:
    """Bytes written when a patch of the source turns what the target holds in ``cell`` into what
    the source holds there: when every byte ``need``ed there is vouched to hold the state of a
    member the patch applies to (or the source's already). None when no patch can."""
    members = source.patch_base(cell) or ()
    if not any(k in vouched.as_member and _covers(need, vouched.as_member[k], vouched.equal) for k in members):
        return None
    start = cell * source.chunk_size
    return sum(_write_blocks(target, start + a, None, data, need) for a, data in _runs(source.patch_blocks(cell)))


def _runs(blocks: list[tuple[int, memoryview]]) -> Iterator[tuple[int, bytes]]:
    """Adjacent patch blocks joined: one write each."""
    i = 0
    while i < len(blocks):
        j, end = i + 1, blocks[i][0] + len(blocks[i][1])
        while j < len(blocks) and blocks[j][0] == end:
            end += len(blocks[j][1])
            j += 1
        yield blocks[i][0], b"".join(data for _a, data in blocks[i:j])
        i = j


def _covers(need: np.ndarray, *extents: np.ndarray) -> bool:
    """Whether ``extents`` cover every byte of ``need`` (small merged extents)."""
    if not len(need):
        return True
    lo, hi = int(need[0, 0]), int(need[-1, 0] + need[-1, 1])
    have = ext.merge(np.concatenate([ext.clip(e, lo, hi) for e in extents]))
    return ext.total(ext.intersect(need, have)) == ext.total(need)


def _cell_extents(cells: np.ndarray, chunk_size: int, size: int) -> np.ndarray:
    starts = cells.astype(np.uint64) * np.uint64(chunk_size)
    return ext.clip(ext.merge(np.stack([starts, np.full(len(cells), chunk_size, np.uint64)], axis=1)), 0, size)


def _blocks(data: bytes | memoryview, blocks: int) -> np.ndarray:
    """``data`` as rows of 4 KiB (u64 words), zero-padded to ``blocks`` rows."""
    if len(data) != blocks * BLOCK:
        data = bytes(data) + bytes(blocks * BLOCK - len(data))
    return np.frombuffer(data, dtype=np.uint64).reshape(blocks, BLOCK // 8)


def _write_blocks(target: Target, offset: int, have: bytes | memoryview | None, want: bytes | memoryview,
                  ranges: np.ndarray) -> int:
    """Write the 4 KiB blocks of ``want`` that differ from ``have`` (all of them without it), inside
    ``ranges``; in a file, blocks that become all zero are punched out instead (holes, as a full
    restore leaves them)."""
    n = len(want)
    blocks = -(-n // BLOCK)
    b = _blocks(want, blocks)
    changed = (_blocks(have, blocks) != b).any(axis=1) if have is not None else np.ones(blocks, dtype=bool)
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
