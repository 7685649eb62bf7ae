"""One restore or clone run onto a target, shared by ``restore`` and ``clone``.

    plan the layout and the new table -> stage shrinking partitions in sparse temporary files,
    measure their minimum (refuse below it) and shrink them there -> confirm -> clear -> copy (or
    Rapid Delta) -> verify (clone) -> copy the shrunk stages' used blocks -> TRIM free space ->
    write the new table -> grow in place -> check every resized filesystem
Nothing touches the target before every check has passed and the user has confirmed.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from diskvault.disk import gpt, mbr
from diskvault.disk.target import HeldBack, Target, supports_discard
from diskvault.errors import IntegrityError, TargetError, UsageError
from diskvault.fs import extents as ext
from diskvault.fs.c_ext import SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE
from diskvault.fs.xfs import XfsReader
from diskvault.imaging.plan import probe_filesystem
from diskvault.resize import fstools
from diskvault.resize.delta import delta_copy, tracked_on_target
from diskvault.resize.layout import EBR_OFFSET, LayoutPlan, Placement, plan_layout, read_layout_file
from diskvault.resize.sources import FdDisk, Segment, mapped, pieces
from diskvault.ui.progress import NullProgress, Progress
from diskvault.units import human_size


@dataclass
class TransferOptions:
    layout: str = "exact"  # exact, keep, fit, or a layout file
    resizes: dict[int, int] = field(default_factory=dict)
    ranges: np.ndarray | None = None  # exact mode: the disk ranges to write (None: all of it)
    dry_run: bool = False
    delta: bool = False
    trim: bool = True
    verify: bool = False  # re-read and compare what was copied (clone)
    temp_dir: str | None = None
    needs_word: str = "the image needs"


@dataclass
class TransferResult:
    target: str
    plan: dict
    bytes_restored: int = 0
    bytes_written: int = 0
    bytes_compared: int = 0
    bytes_discarded: int = 0
    checked: list[str] = field(default_factory=list)
    dry_run: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class Run:
    """State of one run: the source, the target path and size, the plan, and the stage files."""

    def __init__(self, source, target: str, opts: TransferOptions, stack: contextlib.ExitStack) -> None:
        self.source, self.target_path, self.opts = source, target, opts
        self.stack = stack
        self.stage_dir: str | None = None
        self.stages: dict[int, str] = {}
        self.minimums: dict[int, int] = {}
        self.fstypes = {p.number: self._fstype(p.number, p.start, p.size) for p in source.table.data_partitions()}
        if source.table.kind == "none":
            self.fstypes[0] = self._fstype(0, 0, source.size)

    def _fstype(self, number: int, start: int, size: int) -> str | None:
        found = (self.source.fs(number) or {}).get("fstype")
        if found is None:
            window = self.source.window(start, size)
            found = "xfs" if XfsReader.probe(window, size) else None
        return found

    def stage(self, p: Placement) -> str:
        """The partition's used blocks in a sparse file of its size (the source is never changed)."""
        if p.number not in self.stages:
            if self.stage_dir is None:
                self.stage_dir = self.stack.enter_context(tempfile.TemporaryDirectory(
                    prefix="diskvault-stage-", dir=self.opts.temp_dir))
            path = os.path.join(self.stage_dir, f"partition-{p.number}")
            t = Target(path, create_size=p.old_size)
            try:
                self.source.copy(t, [(p.old_start, p.old_size, 0)], NullProgress())
                t.flush()
            finally:
                t.close()
            self.stages[p.number] = path
        return self.stages[p.number]

    def min_size(self, p: Placement) -> int:
        if p.number not in self.minimums:
            fstype = self.fstypes.get(p.number)
            if not fstools.can_shrink(fstype):
                raise UsageError(f"partition {p.number} ({fstype or 'unknown content'}) cannot be shrunk")
            self.minimums[p.number] = fstools.SWAP_MIN if fstype == "swap" else \
                fstools.min_size(fstype, self.stage(p))
        return self.minimums[p.number]


def transfer(source, target: str, target_size: int, exists: bool, opts: TransferOptions, question: str,
             confirm: Callable[[str], bool] | None = None, progress: Progress | None = None) -> TransferResult:
    """Write ``source`` (an ImageDisk or FdDisk) to ``target`` as ``opts`` say, after asking
    ``question`` (with the plan's summary) when ``confirm`` is given and the target exists."""
    progress = progress or NullProgress()
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        run = Run(source, target, opts, stack)
        plan = _plan(run, target_size)
        table_writes = _table_writes(run, plan, target_size)
        result = TransferResult(target=target, plan=plan.to_dict(), dry_run=opts.dry_run)
        if opts.dry_run:
            return result
        for p in plan.placements:  # temporary files only: a tool that fails stops us before any write
            if _staged(p):
                _shrink_stage(run, p)
        if confirm is not None and exists and not confirm(question + _summary(plan)):
            raise TargetError(target, "not confirmed")
        dev = Target(target, create_size=None if exists else target_size)
        try:
            try:
                _write(run, plan, dev, result, progress)
                for offset, data in table_writes:
                    _write_exact(dev, offset, data)
                dev.flush()
            finally:
                dev.close()
            _grow_and_check(run, plan, result)
        except BaseException:
            if dev.created:  # a half-written new file is no disk
                os.unlink(target)
            raise
        result.plan = plan.to_dict()
    result.seconds = round(time.monotonic() - started, 3)
    return result


def _plan(run: Run, target_size: int) -> LayoutPlan:
    opts, table = run.opts, run.source.table
    mode, starts, resizes = opts.layout, {}, dict(opts.resizes)
    if resizes and mode in ("exact", "keep"):
        raise UsageError("--resize needs --layout fit")
    if mode not in ("exact", "keep", "fit"):
        starts, sizes = read_layout_file(mode)
        resizes.update(sizes)
        mode = "file"
    if mode == "exact":
        needed = int(opts.ranges[-1].sum()) if opts.ranges is not None and len(opts.ranges) else run.source.size
        if target_size < needed:
            raise TargetError(run.target_path, f"it is {human_size(target_size)} ({target_size} bytes), "
                                               f"{opts.needs_word} {human_size(needed)} ({needed} bytes)")
    originals = {p.number: p for p in _placements_from(table, run.source.size)}
    plan = plan_layout(table, run.fstypes, run.target_path, target_size, mode, resizes, starts,
                       lambda number: run.min_size(originals[number]))
    for p in plan.placements:
        if p.action == "shrink":
            p.min_size = run.min_size(p)
            if p.new_size < p.min_size:
                raise TargetError(run.target_path, f"partition {p.number} ({run.fstypes.get(p.number)}) cannot "
                                                   f"shrink to {human_size(p.new_size)} ({p.new_size} bytes): its "
                                                   f"minimum size is {human_size(p.min_size)} ({p.min_size} bytes)")
        elif p.action == "grow" and not fstools.can_grow(p.fstype, p.new_size):
            plan.notes.append(f"partition {p.number}: {p.fstype or 'unknown content'} copied as it is; "
                              "the added space stays unused")
    if mode != "exact":
        _note_lost_data(run, plan)
    if opts.delta and any(p.action != "copy" for p in plan.placements):
        raise UsageError("--delta needs every partition at its place and size (use --layout keep)")
    return plan


def _note_lost_data(run: Run, plan: LayoutPlan) -> None:
    """A new layout copies the area before the first partition and the partitions; say so when
    non-zero data lies elsewhere (between partitions or after the last)."""
    first = min((p.old_start for p in plan.placements), default=0)
    kept = [[0, first]] + [[p.old_start, p.old_size] for p in plan.placements] + \
        [[r.start, r.size] for r in plan.table.regions]
    elsewhere = ext.intersect(ext.intersect(run.source.covered(), run.source.used),
                              ext.complement(np.array(kept, dtype=np.uint64), run.source.size))
    for start, length in pieces(elsewhere):
        data = run.source.read(start, length)
        if data.count(0) != len(data):
            plan.notes.append(f"data outside the partitions (at byte {start + len(data) - len(data.lstrip(bytes(1)))}"
                              ") is not copied")
            return


def _staged(p: Placement) -> bool:
    """True for a filesystem shrunk in a stage file (swap is simply made anew)."""
    return p.action == "shrink" and p.fstype != "swap"


def _resized(p: Placement) -> bool:
    """True when the filesystem is resized with the partition (else copied as it is)."""
    return p.action in ("grow", "shrink") and fstools.can_grow(p.fstype, p.new_size)


def _placements_from(table, size: int) -> list[Placement]:
    parts = table.data_partitions() if table.kind != "none" else []
    out = [Placement(p.number, None, p.start, p.size, p.start, p.size, p.kind) for p in parts]
    return out or [Placement(0, None, 0, size, 0, size, "whole-disk")]


def _segments(run: Run, plan: LayoutPlan) -> tuple[list[Segment], list[Placement]]:
    """(segments copied straight from the source, placements staged for a shrink)."""
    if plan.mode == "exact":
        ranges = run.opts.ranges if run.opts.ranges is not None else ext.whole(run.source.size)
        return [(s, n, s) for s, n in ranges.tolist()], []
    first = min((p.old_start for p in plan.placements), default=0)
    segments: list[Segment] = [(0, first, 0)] if first else []
    if plan.mode == "keep":
        segments += [(r.start, r.size, r.start) for r in plan.table.regions if r.what == "ebr"]
    staged = []
    for p in plan.placements:
        if _staged(p):
            staged.append(p)
        elif not (_resized(p) and p.fstype == "swap"):
            segments.append((p.old_start, min(p.old_size, p.new_size), p.new_start))
    return segments, staged


def _write(run: Run, plan: LayoutPlan, dev: Target, result: TransferResult, progress: Progress) -> None:
    source, opts = run.source, run.opts
    segments, staged = _segments(run, plan)
    dst_ranges = ext.merge(np.array([[d, n] for _s, n, d in segments] + ([] if plan.mode == "exact" else
                                    [[p.new_start, p.new_size] for p in plan.placements]),
                                    dtype=np.uint64).reshape(-1, 2))
    used = mapped(source.used, segments)
    trim = opts.trim and (not dev.is_block or supports_discard(dev.path))
    tracked = tracked_on_target(source, dev) if opts.delta else None  # before the superblocks are held back
    dev = HeldBack(dev, _superblocks(run, plan, dst_ranges))
    if opts.delta:
        delta = delta_copy(source, dev, dst_ranges, progress, tracked)
        result.bytes_compared, result.bytes_written = delta.bytes_compared, delta.bytes_written
    else:
        if not dev.is_block:
            clear = dst_ranges
        else:
            uncovered = ext.intersect(dst_ranges, ext.complement(mapped(source.covered(), segments), dev.size))
            clear = ext.intersect(uncovered, used) if trim else uncovered
        for start, length in clear.tolist():
            dev.zero(start, length)
        result.bytes_written = source.copy(dev, segments, progress)
    if opts.verify:
        bad = source.verify(dev, segments)
        if bad:
            raise IntegrityError(f"{dev.path}: {len(bad)} copied ranges read back different, first at byte {bad[0][0]}")
    for p in staged:
        used = ext.merge(np.concatenate([used, ext.shift(_copy_stage(run, p, dev, result), p.new_start)]))
    result.bytes_restored = ext.total(used)
    for p in plan.placements:
        if p.new_start != p.old_start:
            _move_hidden_sectors(dev, p)
    dev.release()
    if trim:  # the image's free space (exact: inside the restored ranges; else all but the used bytes)
        free = ext.complement(used, dev.size)
        free = ext.intersect(dst_ranges, free) if plan.mode == "exact" else free
        for start, length in ext.intersect(free, dev.allocated()).tolist():
            if dev.discard(start, length):
                result.bytes_discarded += length


def _superblocks(run: Run, plan: LayoutPlan, dst_ranges: np.ndarray) -> list[tuple[int, int]]:
    """Where each restored ext filesystem's primary superblock goes: written last (HeldBack)."""
    out = []
    for p in plan.placements:
        start = p.new_start + SUPERBLOCK_OFFSET
        region = np.array([[start, SUPERBLOCK_SIZE]], dtype=np.uint64)
        if (run.fstypes.get(p.number) or "").startswith("ext") and len(ext.intersect(region, dst_ranges)):
            out.append((start, SUPERBLOCK_SIZE))
    return out


def _move_hidden_sectors(dev: Target, p: Placement) -> None:
    """Point the boot sector copies of a moved NTFS or FAT volume at its new start, where they held
    the old one (before a grow the volume still has its old size)."""
    ss, first = 512, dev.read(p.new_start, 512)
    for off in fstools.boot_sectors(p.fstype, first, p.old_size if p.action == "grow" else p.new_size):
        sector = bytearray(dev.read(p.new_start + off, ss))
        if sector[:11] == first[:11] and int.from_bytes(sector[0x1C:0x20], "little") == p.old_start // ss:
            sector[0x1C:0x20] = (p.new_start // ss).to_bytes(4, "little")
            dev.write(p.new_start + off, bytes(sector))


def _write_exact(dev: Target, offset: int, data: bytes) -> None:
    """Table sectors, zeros included (in a file Target.write leaves zero blocks alone)."""
    if not dev.is_block:
        dev.zero(offset, len(data))
    dev.write(offset, data)


def _summary(plan: LayoutPlan) -> str:
    moves = [f"{p.number}: {p.action} {human_size(p.old_size)} -> {human_size(p.new_size)}"
             for p in plan.placements if p.action != "copy"]
    return f" [{'; '.join(moves)}]" if moves else ""


def _shrink_stage(run: Run, p: Placement) -> None:
    fs = run.source.fs(p.number) or {}
    fstools.resize(run.fstypes[p.number], run.stage(p), p.new_size, fs.get("label", ""), fs.get("uuid", ""))


def _copy_stage(run: Run, p: Placement, dev: Target, result: TransferResult) -> np.ndarray:
    """Copy the shrunk filesystem's used blocks to its new place; returns them (partition
    coordinates)."""
    path = run.stage(p)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        found = probe_filesystem(fd, 0, p.new_size)
        used = found.used if found.used is not None else ext.whole(p.new_size)
        stage = FdDisk(path, fd, p.new_size, used)
        segment = [(0, p.new_size, p.new_start)]
        result.bytes_written += stage.copy(dev, segment, NullProgress())
        if run.opts.verify and stage.verify(dev, segment):
            raise IntegrityError(f"{dev.path}: partition {p.number} read back different after the shrink")
    finally:
        os.close(fd)
    return used


def _table_writes(run: Run, plan: LayoutPlan, disk_size: int) -> list[tuple[int, bytes]]:
    if not plan.writes_table:
        return []
    table, ss = plan.table, plan.table.sector_size
    sector0 = run.source.read(0, 512)
    if table.kind == "mbr":
        return mbr.encode(plan.new_table(), sector0, EBR_OFFSET)
    header = gpt.primary_header(run.source.window(0, run.source.size), run.source.size, ss)
    if header is None:
        raise UsageError("the source's primary GPT header is damaged; restore with the default layout")
    if plan.mode == "keep":
        entries = header.entries
    else:
        entries = gpt.encode_entries(plan.new_table().partitions, header.num_entries, header.entry_size, ss)
    return [(0, gpt.protective_mbr(sector0, disk_size, ss)),
            *gpt.encode(header.disk_guid, entries, header.num_entries, header.entry_size, disk_size, ss,
                        header.first_usable, header.revision)]


def _grow_and_check(run: Run, plan: LayoutPlan, result: TransferResult) -> None:
    """Grow filesystems in place (a loop device on their window of the target), recreate resized
    swap, then check every resized filesystem read-only."""
    for p in plan.placements:
        if not _resized(p):
            continue
        fs = run.source.fs(p.number) or {}
        if p.action == "grow" or p.fstype == "swap":
            with fstools.loop_window(run.target_path, p.new_start, p.new_size) as loop:
                fstools.resize(p.fstype, loop, p.new_size, fs.get("label", ""), fs.get("uuid", ""))
        with fstools.loop_window(run.target_path, p.new_start, p.new_size, read_only=True) as loop:
            fstools.check(p.fstype, loop)
        result.checked.append(f"partition {p.number} ({p.fstype})")

