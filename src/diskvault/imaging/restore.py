"""Restore an image to a block device or an image file, at the image's layout or another one.

    check target (exists / block device / not mounted / not in use / big enough / same layout)
    -> plan the layout (resize.layout) -> confirm -> resize.transfer: chunks in disk order,
    checked and decompressed by workers, written (holes in files), shrinks staged, free space
    discarded, new table, grows, checks -> fsync
Nothing is written before every check has passed and the user has confirmed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from diskvault.crypto.keys import PasswordSource
from diskvault.disk import devices
from diskvault.disk.table import PartitionTable, read_partition_table
from diskvault.disk.target import Target
from diskvault.errors import TargetError, UsageError
from diskvault.format.chain import Chain
from diskvault.format.reader import KeyRing
from diskvault.fs import extents as ext
from diskvault.fs.base import Window
from diskvault.resize.sources import ImageDisk
from diskvault.resize.transfer import TransferOptions, transfer
from diskvault.ui.progress import Progress
from diskvault.units import human_size


@dataclass
class RestoreOptions:
    image: str
    target: str
    partitions: list[int] | None = None
    password: PasswordSource | None = None
    layout: str = "exact"  # exact (byte for byte), keep, fit, or a layout file
    resizes: dict[int, int] = field(default_factory=dict)
    dry_run: bool = False
    delta: bool = False
    trim: bool = True
    target_size: int | None = None  # size of a target file that does not exist yet
    temp_dir: str | None = None


@dataclass
class RestoreResult:
    image: str
    target: str
    bytes_restored: int
    bytes_written: int
    seconds: float
    bytes_compared: int = 0
    bytes_discarded: int = 0
    dry_run: bool = False
    plan: dict = field(default_factory=dict)
    checked: list[str] = field(default_factory=list)

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
    if opts.partitions and opts.layout != "exact":
        raise UsageError("--partitions restores at the image's layout; it cannot be combined with --layout")
    with Chain(opts.image, KeyRing(opts.password)) as img:
        devices.check_target_path(opts.target)
        exists = os.path.exists(opts.target)
        if exists:
            devices.check_target_free(opts.target)
        elif opts.delta:
            raise UsageError("--delta compares with an existing target; the target does not exist")
        if exists and opts.target_size:
            raise UsageError(f"--size is for a target file that does not exist yet; {opts.target} exists")
        target_table, target_size = None, opts.target_size or img.disk_size
        if exists:
            probe = Target(opts.target)
            try:
                target_table = read_partition_table(Window(probe.fd, 0, probe.size), probe.size)
                target_size = probe.size
            finally:
                probe.close()
        ranges = _ranges(img, opts, target_table) if opts.partitions else None
        what = "the whole disk" if not opts.partitions else "partition " + ", ".join(map(str, opts.partitions))
        question = f"Overwrite {what} on {opts.target} ({describe_target(opts.target)})?" if exists else ""
        done = transfer(ImageDisk(img), opts.target, target_size, exists,
                        TransferOptions(layout=opts.layout, resizes=opts.resizes, ranges=ranges, dry_run=opts.dry_run,
                                        delta=opts.delta, trim=opts.trim, temp_dir=opts.temp_dir),
                        question, confirm, progress)
    return RestoreResult(image=opts.image, target=opts.target, bytes_restored=done.bytes_restored,
                         bytes_written=done.bytes_written, seconds=done.seconds, bytes_compared=done.bytes_compared,
                         bytes_discarded=done.bytes_discarded, dry_run=done.dry_run, plan=done.plan,
                         checked=done.checked)


def describe_target(path: str) -> str:
    try:
        info = devices.device_info(path) if devices.is_block_device(path) else None
    except OSError:
        info = None
    if info:
        parts = [info.get("model") or "", info.get("serial") or "", human_size(info["size"])]
        return ", ".join(p for p in parts if p)
    return f"file, {human_size(os.path.getsize(path))}"
