"""Clone a disk to another disk (or file) directly, reading only used blocks, at the source's
layout or resized to fit the target; what was copied is re-read and compared."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from diskvault.disk import devices
from diskvault.disk.source import Source
from diskvault.disk.target import Target
from diskvault.errors import TargetError, UsageError
from diskvault.imaging.plan import make_plan
from diskvault.imaging.restore import describe_target
from diskvault.resize.sources import FdDisk
from diskvault.resize.transfer import TransferOptions, TransferResult, transfer
from diskvault.ui.progress import Progress


@dataclass
class CloneOptions:
    source: str
    target: str
    layout: str = "exact"
    resizes: dict[int, int] = field(default_factory=dict)
    dry_run: bool = False
    delta: bool = False
    trim: bool = True
    verify: bool = True
    target_size: int | None = None
    temp_dir: str | None = None


def _identity(path: str) -> tuple[str, int, int]:
    st = os.stat(path)
    if stat.S_ISBLK(st.st_mode):
        return "dev", os.major(st.st_rdev), os.minor(st.st_rdev)
    return "file", st.st_dev, st.st_ino


def check_not_source(source: str, target: str) -> None:
    """Refuse a target that is the source, or the file behind a loop device that is the source
    (and the other way round)."""
    if not os.path.exists(target):
        return
    if _identity(source) == _identity(target):
        raise TargetError(target, "it is the source")
    if target in devices.loop_devices_of(source) or source in devices.loop_devices_of(target):
        raise TargetError(target, "it is the source (through a loop device)")


def clone_disk(opts: CloneOptions, confirm: Callable[[str], bool] | None = None,
               progress: Progress | None = None) -> TransferResult:
    devices.check_target_path(opts.target)
    check_not_source(opts.source, opts.target)
    exists = os.path.exists(opts.target)
    if exists:
        devices.check_target_free(opts.target)
    elif opts.delta:
        raise UsageError("--delta compares with an existing target; the target does not exist")
    if exists and opts.target_size:
        raise UsageError(f"--size is for a target file that does not exist yet; {opts.target} exists")
    with Source.open(opts.source) as src:
        plan = make_plan(src)
        fs = {p.partition.number: p.fs.to_dict() if p.fs else None for p in plan.partitions}
        disk = FdDisk(src.path, src.fd, src.size, plan.extents(), plan.table, fs)
        target_size = opts.target_size or src.size
        if exists:
            probe = Target(opts.target)
            target_size = probe.size
            probe.close()
        question = f"Overwrite {opts.target} ({describe_target(opts.target)}) with {opts.source}?" if exists else ""
        return transfer(disk, opts.target, target_size, exists,
                        TransferOptions(layout=opts.layout, resizes=opts.resizes, dry_run=opts.dry_run,
                                        delta=opts.delta, trim=opts.trim, verify=opts.verify,
                                        temp_dir=opts.temp_dir, needs_word="the source needs"),
                        question, confirm, progress)
