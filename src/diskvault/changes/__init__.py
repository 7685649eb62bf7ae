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

    def unchanged(self, earlier: dict) -> np.ndarray:
        """Byte extents (relative to the filesystem) whose content equals what they held when
        ``earlier`` was taken; empty when ``earlier`` is for another filesystem."""
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


def known_unchanged(fd: int, partitions: list[tuple[int, int]], earlier: dict) -> tuple[np.ndarray, dict]:
    """(disk byte extents known unchanged since the snapshots in ``earlier``, the current snapshots)
    for the partitions (start, size) of the disk open as ``fd``."""
    known, now = [], {}
    for start, size in partitions:
        tracker = open_tracker(fd, start, size)
        if tracker is None:
            continue
        now[str(start)] = tracker.snapshot()
        if str(start) in earlier:
            known.append(extents.shift(extents.clip(tracker.unchanged(earlier[str(start)]), 0, size), start))
    return (extents.merge(np.concatenate(known)) if known else extents.EMPTY.copy()), now
