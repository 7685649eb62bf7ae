"""Where each partition goes on a target of another size.

    exact  the image's bytes where they were (the table included): plain restore
    keep   same offsets and sizes; a GPT gets its backup at the target's end
    fit    same order, starts 1 MiB aligned; the last growable partition takes the rest, or the
           resizable partitions shrink in proportion (never below their filesystem's minimum);
           ``--resize N=SIZE`` fixes a partition's size
    FILE   JSON ``{"partitions": [{"number": 2, "start": "300M", "size": "20G"}, ...]}``: the
           listed starts and sizes, the others placed after their predecessor as in fit
Types, GUIDs, names and attributes are kept; MBR logical partitions get an EBR 1 MiB before them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

from diskvault.disk import gpt, mbr
from diskvault.disk.table import Partition, PartitionTable
from diskvault.errors import TargetError, UsageError
from diskvault.resize.fstools import can_grow, can_shrink
from diskvault.units import human_size, parse_size

ALIGN = 1 << 20
EBR_OFFSET = ALIGN  # an EBR sits this far before its logical partition


@dataclass
class Placement:
    number: int
    fstype: str | None
    old_start: int
    old_size: int
    new_start: int
    new_size: int
    kind: str = "primary"
    min_size: int | None = None

    @property
    def action(self) -> str:
        if self.new_size > self.old_size:
            return "grow"
        if self.new_size < self.old_size:
            return "shrink"
        return "move" if self.new_start != self.old_start else "copy"

    def to_dict(self) -> dict:
        return {**asdict(self), "action": self.action}


@dataclass
class LayoutPlan:
    mode: str  # exact, keep, fit or file
    table: PartitionTable  # the source's
    target_size: int
    placements: list[Placement] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def writes_table(self) -> bool:
        """True when the target gets a table written anew (a GPT always: its backup belongs at the
        target's end) instead of the image's table bytes (exact, and MBR with keep)."""
        return self.mode != "exact" and (self.table.kind == "gpt" or (self.table.kind == "mbr" and self.mode != "keep"))

    def new_table(self) -> PartitionTable:
        """The source table with every partition at its new place (MBR: extended container spanning
        the EBRs and logical partitions)."""
        where = {p.number: p for p in self.placements}
        parts = [replace(p, start=where[p.number].new_start, size=where[p.number].new_size)
                 for p in self.table.data_partitions()]
        logical = [p for p in parts if p.kind == "logical"]
        for ext in (p for p in self.table.partitions if p.kind == "extended"):
            start = min(q.start for q in logical) - EBR_OFFSET if logical else ext.start
            end = max(q.end for q in logical) if logical else ext.end
            parts.append(replace(ext, start=start, size=end - start))
        return replace(self.table, disk_size=self.target_size, partitions=sorted(parts, key=lambda p: p.number),
                       regions=[], warnings=[])

    def to_dict(self) -> dict:
        return {"mode": self.mode, "table": self.table.kind, "source_size": self.table.disk_size,
                "target_size": self.target_size, "notes": self.notes,
                "partitions": [p.to_dict() for p in self.placements]}


def _up(x: int) -> int:
    return -(-x // ALIGN) * ALIGN


def _data_parts(table: PartitionTable) -> list[Partition]:
    if table.kind == "none":
        return [Partition(number=0, start=0, size=table.disk_size, type="", kind="whole-disk")]
    return sorted(table.data_partitions(), key=lambda p: p.start)


def usable_end(table: PartitionTable, target_size: int) -> int:
    """Last byte (exclusive) partitions may use on the target."""
    ss = table.sector_size
    if table.kind == "gpt":
        return (target_size // ss - 1 - -(-gpt.DEFAULT_ENTRIES * 128 // ss)) * ss
    if table.kind == "mbr":
        return min(target_size // ss, mbr.MAX_SECTORS + 1) * ss
    return target_size


def parse_resizes(items: list[str] | None) -> dict[int, int]:
    """``["2=20G", "3=512M"]`` -> {2: bytes, 3: bytes}."""
    out = {}
    for item in items or []:
        number, sep, size = item.partition("=")
        try:
            out[int(number)] = parse_size(size)
        except ValueError:
            raise UsageError(f"--resize expects N=SIZE such as 2=20G (got {item!r})") from None
        if not sep:
            raise UsageError(f"--resize expects N=SIZE such as 2=20G (got {item!r})")
    return out


def read_layout_file(path: str) -> tuple[dict[int, int], dict[int, int]]:
    """(starts, sizes) by partition number from a layout file (module docstring)."""
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
        rows = doc["partitions"] if isinstance(doc, dict) else doc
        starts = {int(r["number"]): _size(r["start"]) for r in rows if "start" in r}
        sizes = {int(r["number"]): _size(r["size"]) for r in rows if "size" in r}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"cannot read layout file {path}: {e}") from None
    return starts, sizes


def _size(value: int | str) -> int:
    return value if isinstance(value, int) else parse_size(str(value))


def plan_layout(table: PartitionTable, fstypes: dict[int, str | None], target: str, target_size: int, mode: str,
                resizes: dict[int, int] | None = None, starts: dict[int, int] | None = None,
                min_size: Callable[[int], int] | None = None) -> LayoutPlan:
    """The target layout for ``mode`` (exact, keep, fit or file with ``starts``/``resizes``).
    ``min_size(number)`` gives a filesystem's minimum; fit asks it only when partitions must shrink."""
    resizes, starts = dict(resizes or {}), dict(starts or {})
    parts = _data_parts(table)
    plan = LayoutPlan(mode=mode, table=table, target_size=target_size)
    known = {p.number for p in parts}
    unknown = sorted((set(resizes) | set(starts)) - known)
    if unknown:
        raise UsageError(f"the image has no partition {', '.join(map(str, unknown))}")
    if mode in ("exact", "keep"):
        plan.placements = [Placement(p.number, fstypes.get(p.number), p.start, p.size, p.start, p.size, p.kind)
                           for p in parts]
        end = max((p.end for p in parts), default=0)
        if mode == "keep" and end > usable_end(table, target_size):
            raise TargetError(target, f"it is {human_size(target_size)} ({target_size} bytes); the partitions "
                                  f"need {human_size(end)} up to byte {end}")
        return plan
    limit = usable_end(table, target_size)
    sizes = {p.number: resizes.get(p.number, p.size) for p in parts}
    fixed = set(resizes)
    if mode == "file":
        pass
    elif table.kind == "none":
        sizes[0] = resizes.get(0, target_size // 4096 * 4096)
    elif _end(parts, sizes, starts) <= limit:
        grower = next((p for p in reversed(parts) if p.number not in fixed
                       and can_grow(fstypes.get(p.number))), None)
        if grower is not None and target_size > table.disk_size:  # 512-byte steps at the end, else MiBs
            step = 512 if grower is parts[-1] else ALIGN
            sizes[grower.number] += (limit - _end(parts, sizes, starts)) // step * step
    else:
        _shrink(parts, sizes, starts, fixed, fstypes, limit, target, min_size, plan)
    placed = _place(parts, sizes, starts)
    plan.placements = [Placement(p.number, fstypes.get(p.number), p.start, p.size, placed[p.number], sizes[p.number],
                                 p.kind) for p in parts]
    end = max((p.new_start + p.new_size for p in plan.placements), default=0)
    if end > limit:
        raise TargetError(target, f"it is {human_size(target_size)}; this layout needs {human_size(end)} "
                              f"up to byte {end}")
    return plan


def _place(parts: list[Partition], sizes: dict[int, int], starts: dict[int, int]) -> dict[int, int]:
    """Start of every partition, in source order: the first keeps its start, the others follow
    their predecessor 1 MiB aligned (logical ones one EBR gap later) unless a start is given."""
    out, pos = {}, 0
    for i, p in enumerate(parts):
        if p.number in starts:
            start = starts[p.number]
            if start < pos or start % 512:
                raise UsageError(f"partition {p.number} cannot start at byte {start} (overlap or not "
                                 "sector aligned)")
        elif i == 0:
            start = p.start
        elif p.kind == "logical":
            start = _up(pos) + EBR_OFFSET
        else:
            start = _up(pos)
        out[p.number] = start
        pos = start + sizes[p.number]
    return out


def _end(parts: list[Partition], sizes: dict[int, int], starts: dict[int, int]) -> int:
    placed = _place(parts, sizes, starts)
    return max((placed[p.number] + sizes[p.number] for p in parts), default=0)


def _shrink(parts: list[Partition], sizes: dict[int, int], starts: dict[int, int], fixed: set[int],
            fstypes: dict[int, str | None], limit: int, target: str,
            min_size: Callable[[int], int] | None, plan: LayoutPlan) -> None:
    """Shrink the resizable partitions by one common factor (the largest that fits), each no
    further than its filesystem's minimum rounded up to 1 MiB."""
    movable = [p for p in parts if p.number not in fixed and can_shrink(fstypes.get(p.number))]
    floors = {}
    for p in movable:
        floors[p.number] = min(sizes[p.number], _up(min_size(p.number) if min_size else sizes[p.number]))
    base = {n: sizes[n] for n in floors}

    def trial(f: float) -> dict[int, int]:
        return {**sizes, **{n: max(floors[n], int(base[n] * f) // ALIGN * ALIGN) for n in floors}}

    if _end(parts, trial(0.0), starts) > limit:
        size = plan.target_size
        need = _end(parts, trial(0.0), starts) + (size - limit)
        mins = ", ".join(f"partition {n} {human_size(v)}" for n, v in floors.items())
        raise TargetError(target, f"it is {human_size(size)} ({size} bytes); even with every resizable "
                                  f"filesystem at its minimum ({mins or 'none is resizable'}) the disk needs "
                                  f"{human_size(need)} ({need} bytes)")
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _end(parts, trial(mid), starts) <= limit else (lo, mid)
    sizes.update(trial(lo))


def format_plan(plan: dict) -> str:
    """The plan (``LayoutPlan.to_dict()``) as a table: old and new start and size per partition."""
    rows = [("#", "fs", "old start", "old size", "new start", "new size", "minimum", "action")]
    for p in plan["partitions"]:
        rows.append((str(p["number"]), p["fstype"] or "-", human_size(p["old_start"]), human_size(p["old_size"]),
                     human_size(p["new_start"]), human_size(p["new_size"]),
                     human_size(p["min_size"]) if p["min_size"] else "", p["action"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    title = (f"layout {plan['mode']}: {plan['table']} table, {human_size(plan['source_size'])} -> "
             f"{human_size(plan['target_size'])}")
    lines = [title]
    lines += ["  ".join(c.rjust(w) if i in (2, 3, 4, 5, 6) else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
              .rstrip() for r in rows]
    lines += [f"note: {n}" for n in plan["notes"]]
    return "\n".join(lines)
