"""Restore an image to a block device or an image file.

    check target (exists / block device / not mounted / not in use / big enough / same layout)
    -> confirm -> zero the ranges to restore -> chunks in disk order, checked and decompressed
    by workers -> written (holes in files) -> fsync
Nothing is written before every check has passed and the user has confirmed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from diskvault.disk import devices
from diskvault.disk.table import PartitionTable, read_partition_table
from diskvault.disk.target import Target
from diskvault.errors import TargetError, UsageError
from diskvault.crypto.keys import PasswordSource
from diskvault.format.chain import Chain
from diskvault.format.reader import KeyRing
from diskvault.fs import extents as ext
from diskvault.fs.base import Window
from diskvault.imaging.pipeline import ordered_map
from diskvault.ui.progress import NullProgress, Progress
from diskvault.units import human_size


@dataclass
class RestoreOptions:
    image: str
    target: str
    partitions: list[int] | None = None
    password: PasswordSource | None = None


@dataclass
class RestoreResult:
    image: str
    target: str
    bytes_restored: int
    bytes_written: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def _ranges(img: Chain, opts: RestoreOptions, target_table: PartitionTable | None) -> np.ndarray:
    """Disk byte ranges to restore: the whole disk, or chosen partitions (+ the table when the
    target has none)."""
    if not opts.partitions:
        return ext.whole(img.disk_size)
    table = PartitionTable.from_dict(img.metadata["table"])
    by_number = {p.number: p for p in table.data_partitions()}
    missing = sorted(set(opts.partitions) - set(by_number))
    if missing:
        raise UsageError(f"image has no partition {', '.join(map(str, missing))} "
                         f"(it has {', '.join(map(str, sorted(by_number))) or 'none'})")
    imaged = {p["number"]: p["method"] for p in img.metadata["partitions"]}
    skipped = [n for n in opts.partitions if imaged.get(n) == "skipped"]
    if skipped:
        raise UsageError(f"partition {', '.join(map(str, skipped))} was not imaged")
    wanted = [[by_number[n].start, by_number[n].size] for n in opts.partitions]
    if target_table is None or target_table.kind == "none":
        wanted += [[r.start, r.size] for r in table.regions]
    else:
        for n in opts.partitions:
            src = by_number[n]
            try:
                dst = target_table.partition(n)
            except KeyError:
                raise TargetError(opts.target, f"it has no partition {n} (restore the whole disk instead)") from None
            if dst.start != src.start or dst.size < src.size:
                raise TargetError(opts.target, f"its partition {n} is at {dst.start} size {dst.size}, "
                                               f"the image's is at {src.start} size {src.size}")
    return ext.merge(np.array(wanted, dtype=np.uint64))


def restore_image(opts: RestoreOptions, confirm: Callable[[str], bool] | None = None,
                  progress: Progress | None = None) -> RestoreResult:
    progress = progress or NullProgress()
    started = time.monotonic()
    with Chain(opts.image, KeyRing(opts.password)) as img:
        devices.check_target_path(opts.target)
        exists = os.path.exists(opts.target)
        if exists:
            devices.check_target_free(opts.target)
        target_table = None
        if exists:
            probe = Target(opts.target)
            try:
                target_table = read_partition_table(Window(probe.fd, 0, probe.size), probe.size)
                target_size = probe.size
            finally:
                probe.close()
        ranges = _ranges(img, opts, target_table)
        needed = int(ranges[-1, 0] + ranges[-1, 1]) if len(ranges) else 0
        if exists and target_size < needed:
            raise TargetError(opts.target, f"it is {human_size(target_size)} ({target_size} bytes), "
                                           f"the image needs {human_size(needed)} ({needed} bytes)")
        if confirm is not None and exists:
            what = "the whole disk" if not opts.partitions else \
                "partition " + ", ".join(map(str, opts.partitions))
            if not confirm(f"Overwrite {what} on {opts.target} ({describe_target(opts.target)})?"):
                raise TargetError(opts.target, "not confirmed")
        target = Target(opts.target, create_size=None if exists else img.disk_size)
        try:
            written = _write(img, target, ranges, progress)
            target.flush()
        finally:
            target.close()
    return RestoreResult(image=opts.image, target=opts.target, bytes_restored=ext.total(ranges),
                         bytes_written=written, seconds=round(time.monotonic() - started, 3))


def _write(img: Chain, target: Target, ranges: np.ndarray, progress: Progress) -> int:
    """Zero what no chunk covers (in a file: all of it, so zeros become holes), then write every
    stored chunk's bytes that fall inside the ranges."""
    starts = ranges[:, 0].astype(np.int64)
    ends = starts + ranges[:, 1].astype(np.int64)
    offs, lens = img.state.offsets, img.state.lengths
    # chunks overlapping any range
    hit = np.searchsorted(ends, offs, side="right") < np.searchsorted(starts, offs + lens, side="left")
    chunks = np.flatnonzero(hit).tolist()
    if target.is_block:
        to_zero = ext.intersect(ranges, ext.complement(np.stack([offs[hit], lens[hit]], axis=1), img.disk_size))
    else:
        to_zero = ranges
    for start, length in to_zero.tolist():
        target.zero(start, length)
    progress.start("restoring", int(lens[hit].sum()))
    written = 0

    def decode(j: int) -> tuple[int, bytes]:
        return j, img.decode(j)

    for i, data in ordered_map(decode, chunks):
        off = int(offs[i])
        for s, e in zip(starts.tolist(), ends.tolist()):
            a, b = max(s, off), min(e, off + len(data))
            if a < b:
                written += target.write(a, memoryview(data)[a - off:b - off])
        progress.advance(len(data))
    progress.finish()
    return written


def describe_target(path: str) -> str:
    try:
        info = devices.device_info(path) if devices.is_block_device(path) else None
    except OSError:
        info = None
    if info:
        parts = [info.get("model") or "", info.get("serial") or "", human_size(info["size"])]
        return ", ".join(p for p in parts if p)
    return f"file, {human_size(os.path.getsize(path))}"
