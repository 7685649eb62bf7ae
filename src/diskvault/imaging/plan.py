"""Decide what an image stores: the partition table regions, each partition's used bytes (from
its filesystem reader, or every block when unknown) and the unpartitioned space (every block)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from diskvault.disk.source import Source
from diskvault.disk.table import Partition, PartitionTable, read_partition_table
from diskvault.errors import FilesystemError, UsageError
from diskvault.fs import extents as ext
from diskvault.fs.base import FsInfo, Window, probe

log = logging.getLogger(__name__)


@dataclass
class PartitionPlan:
    partition: Partition
    fs: FsInfo | None  # None: unknown content (imaged raw)
    method: str  # "used-blocks", "raw" or "skipped"
    extents: np.ndarray  # disk coordinates
    note: str = ""
    compressible: bool = True  # False for ciphertext (LUKS, BitLocker): the compressor is skipped

    def to_dict(self) -> dict:
        d = self.partition.to_dict()
        d.update(fs=self.fs.to_dict() if self.fs else None, method=self.method,
                 imaged_bytes=ext.total(self.extents), note=self.note)
        return d


@dataclass
class ImagePlan:
    table: PartitionTable
    partitions: list[PartitionPlan] = field(default_factory=list)
    outside: np.ndarray = field(default_factory=lambda: ext.EMPTY.copy())  # unpartitioned space

    def extents(self) -> np.ndarray:
        """All bytes to store, disk coordinates, merged."""
        parts = [p.extents for p in self.partitions] + [self.outside]
        return ext.merge(np.concatenate(parts)) if parts else ext.EMPTY.copy()

    def incompressible(self) -> np.ndarray:
        """Bytes not worth compressing (encrypted volumes)."""
        parts = [p.extents for p in self.partitions if not p.compressible]
        return ext.merge(np.concatenate(parts)) if parts else ext.EMPTY.copy()


@dataclass
class Probed:
    info: FsInfo | None
    used: np.ndarray | None  # relative to the partition start; None: image every block
    note: str
    compressible: bool = True


def probe_filesystem(fd: int, start: int, size: int) -> Probed:
    """What is in [start, start+size) of ``fd``. Unknown or unreadable → used None, with the reason."""
    window = Window(fd, start, size)
    reader_cls = probe(window)
    if reader_cls is None:
        return Probed(None, None, "unknown content: every block imaged")
    compressible = getattr(reader_cls, "compressible", True)
    info = None
    try:
        reader = reader_cls(window, size)
        info = reader.info()
        used = reader.used_extents()
    except FilesystemError as e:
        return Probed(info, None, f"{e}; every block imaged", compressible)
    if len(used) and int(used[-1, 0] + used[-1, 1]) > size:
        used = ext.clip(used, 0, size)
    return Probed(info, used, info.note, compressible)


def make_plan(source: Source, partitions: list[int] | None = None, forensic: bool = False) -> ImagePlan:
    """What to image. ``forensic``: every sector of the chosen partitions (zero cells still skipped)."""
    table = read_partition_table(Window(source.fd, 0, source.size), source.size, source.sector_size)
    data_parts = table.data_partitions()
    if table.kind == "none":
        data_parts = [Partition(number=0, start=0, size=source.size, type="", kind="whole-disk")]
    known = {p.number for p in data_parts}
    if partitions:
        missing = sorted(set(partitions) - known)
        if missing:
            raise UsageError(f"no partition {', '.join(map(str, missing))} on {source.path} "
                             f"(partitions: {', '.join(map(str, sorted(known))) or 'none'})")
    plan = ImagePlan(table=table)
    for part in data_parts:
        if partitions and part.number not in partitions:
            plan.partitions.append(PartitionPlan(part, None, "skipped", ext.EMPTY.copy(), "not selected"))
            continue
        found = probe_filesystem(source.fd, part.start, part.size)
        if forensic:
            found.used, found.note = None, "forensic: every sector imaged"
        method = "raw" if found.used is None else "used-blocks"
        used = ext.whole(part.size) if found.used is None else found.used
        plan.partitions.append(PartitionPlan(part, found.info, method, ext.shift(used, part.start), found.note,
                                             found.compressible))
    # Everything outside data partitions (table, boot loader gap, EBRs, tail) is kept, zeros skipped.
    covered = ext.merge(np.array([[p.start, p.size] for p in data_parts], dtype=np.uint64).reshape(-1, 2))
    plan.outside = ext.complement(covered, source.size)
    return plan

