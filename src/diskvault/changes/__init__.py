"""Change tracking: which used bytes of a filesystem are known to be unchanged since an earlier
image, found from the filesystem's own metadata without reading the data.

An image stores a tracker's ``snapshot()`` per partition (metadata key ``change_tracking``, keyed
by the partition's start offset). A later incremental, or a delta restore onto a disk that holds an
earlier state, asks the tracker of the filesystem in front of it which bytes are ``unchanged`` with
respect to that snapshot, and neither reads nor compares them. Anything a tracker cannot vouch for
is read and compared by hash, as without tracking. One tracker per filesystem type; ext2/3/4 only
for now (btrfs generations or dm-era would feed the same two calls).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from diskvault.errors import FilesystemError
from diskvault.fs.base import Window
from diskvault.fs import extents

METADATA_KEY = "change_tracking"


class Tracker(Protocol):
    def snapshot(self) -> dict:
        """What identifies the current content (JSON-able), to store in an image."""
        ...

    def unchanged(self, earlier: dict, within: np.ndarray | None = None) -> np.ndarray:
        """Byte extents (relative to the filesystem) whose content equals what they held when
        ``earlier`` was taken; empty when ``earlier`` is for another filesystem. ``within``: only
        these bytes are asked about (less to work out)."""
        ...

    def candidates(self, earlier: dict) -> np.ndarray:
        """Byte extents (relative to the filesystem) that ``unchanged(earlier)`` could return:
        everything else is always read. Opening a tracker reads all it needs, and this call may
        read a little more (a delta calls it before it writes anything); ``unchanged`` and
        ``snapshot`` only compute, so they may run while other threads write the filesystem's disk."""
        ...


def open_tracker(fd: int, start: int, size: int) -> Tracker | None:
    """The tracker for the filesystem at [start, start+size) of ``fd``, or None when there is none
    or the filesystem is not in a state a tracker can trust (mounted, needs recovery)."""
    from diskvault.changes.ext import ExtTracker
    window = Window(fd, start, size)
    if not ExtTracker.probe(window, size):
        return None
    try:
        return ExtTracker(window, size)
    except FilesystemError:
        return None


def partition_spans(table, disk_size: int) -> list[tuple[int, int]]:
    """(start, size) of each data partition of a PartitionTable, or the whole disk without one."""
    parts = table.data_partitions() if table.kind != "none" else []
    return [(p.start, p.size) for p in parts] or [(0, disk_size)]


def open_trackers(fd: int, partitions: list[tuple[int, int]]) -> dict[int, Tracker]:
    """A tracker for each partition (start, size) of the disk open as ``fd`` that has one."""
    found = {start: open_tracker(fd, start, size) for start, size in partitions}
    return {start: t for start, t in found.items() if t is not None}


def snapshots(trackers: dict[int, Tracker]) -> dict:
    """The metadata value to store in an image."""
    return {str(start): t.snapshot() for start, t in trackers.items()}


def candidates(trackers: dict[int, Tracker], earlier: dict) -> np.ndarray:
    """Disk byte extents the trackers could vouch for against the snapshots ``earlier`` (see
    Tracker.candidates)."""
    return _per_partition(trackers, earlier, lambda t, snap, _start: t.candidates(snap))


def known_unchanged(trackers: dict[int, Tracker], earlier: dict,
                    within: np.ndarray | None = None) -> np.ndarray:
    """Disk byte extents known unchanged since the snapshots ``earlier`` (an image's metadata
    value); ``within``: only these disk bytes are asked about."""
    def unchanged(t: Tracker, snap: dict, start: int) -> np.ndarray:
        if within is None:
            return t.unchanged(snap)
        return t.unchanged(snap, extents.shift(extents.clip(within, start, 1 << 63), -start))
    return _per_partition(trackers, earlier, unchanged)


def _per_partition(trackers: dict[int, Tracker], earlier: dict, extents_of) -> np.ndarray:
    found = [extents.shift(extents_of(t, earlier[str(start)], start), start)
             for start, t in trackers.items() if str(start) in earlier]
    return extents.merge(np.concatenate(found)) if found else extents.EMPTY.copy()
