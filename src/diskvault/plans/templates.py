"""Plan templates, and which backup type a plan calls for at a given moment.

    gfs                   Grandfather-Father-Son: Full monthly (1st), Diff weekly (Sunday), Inc daily
    incremental-forever   one Full, then daily Incs; all but the newest N merged into the Full
    differential          Full weekly (Sunday), Diff daily
    custom                any schedules per type

A type is due when its schedule has fired since the newest image that covers it (a Full covers
every type, a Diff covers Incs): a run that was missed is caught up by the next one, and when
several types are due the biggest wins.
"""

from __future__ import annotations

from datetime import datetime

from diskvault.errors import UsageError
from diskvault.plans.definition import KeepRule, Plan, Retention, Schedule
from diskvault.plans.inventory import SetInfo

COVERS = {"full": ("full",), "diff": ("full", "diff"), "inc": ("full", "diff", "inc")}
MAX_INCREMENT = 99  # file names hold two decimal digits (IMAGEID-II-SS)


def _at(time_of_day: str) -> tuple[int, int]:
    try:
        hour, minute = (int(x) for x in time_of_day.split(":"))
        if 0 <= hour < 24 and 0 <= minute < 60:
            return hour, minute
    except ValueError:
        pass
    raise UsageError(f"expected a time of day like 02:00 (got {time_of_day!r})")


def gfs(at: str = "02:00", keep_full: int = 3, keep_diff: int = 4, keep_inc: int = 7) -> Plan:
    h, m = _at(at)
    return Plan("gfs", [Schedule("full", f"{m} {h} 1 * *"), Schedule("diff", f"{m} {h} * * 0"),
                        Schedule("inc", f"{m} {h} * * *")],
                retention=Retention([KeepRule("full", count=keep_full), KeepRule("diff", count=keep_diff),
                                     KeepRule("inc", count=keep_inc)]))


def incremental_forever(at: str = "02:00", keep_incs: int = 7) -> Plan:
    h, m = _at(at)
    return Plan("incremental-forever", [Schedule("inc", f"{m} {h} * * *")], merge_keep_incs=keep_incs,
                retention=Retention([KeepRule("full", count=1)]))


def differential(at: str = "02:00", keep_full: int = 4) -> Plan:
    h, m = _at(at)
    return Plan("differential", [Schedule("full", f"{m} {h} * * 0"), Schedule("diff", f"{m} {h} * * *")],
                retention=Retention([KeepRule("full", count=keep_full)]))


def custom(schedules: dict[str, str], rules: list[KeepRule] | None = None) -> Plan:
    return Plan("custom", [Schedule(t, c) for t, c in schedules.items()], retention=Retention(rules or []))


def template(name: str, at: str = "02:00") -> Plan:
    builders = {"gfs": gfs, "incremental-forever": incremental_forever, "differential": differential}
    if name == "custom":
        return custom({})
    if name not in builders:
        raise UsageError(f"unknown template {name!r} (choose gfs, incremental-forever, differential or custom)")
    return builders[name](at)


def _newest(sets: list[SetInfo], types: tuple[str, ...]) -> int | None:
    times = [m.created_ns for s in sets for t in types for m in s.images(t)]
    return max(times) if times else None


def choose_type(plan: Plan, own_sets: list[SetInfo], now: datetime,
                requested: str | None = None) -> tuple[str, str]:
    """(full | diff | inc, why) for a run at ``now``; ``own_sets`` are this definition's sets."""
    usable = [s for s in own_sets if s.restorable]
    newest_set = max(usable, key=lambda s: s.newest_ns) if usable else None
    if not usable:
        kind, why = "full", "no restorable backup set of this definition yet"
    elif requested:
        kind, why = requested, "asked for"
    else:
        kind, why = "", ""
        for t in ("full", "diff", "inc"):
            cron = plan.schedule_for(t)
            fired = cron.last_at_or_before(now) if cron else None
            if fired is None:
                continue
            newest = _newest(own_sets, COVERS[t])
            if newest is None or newest < fired.timestamp() * 1e9:
                kind = t
                why = f"the {t} schedule ({cron}) fired at {fired:%Y-%m-%d %H:%M} and no {t} was made since"
                break
        if not kind:
            scheduled = [s.type for s in plan.schedules]
            kind = next((t for t in ("inc", "diff", "full") if t in scheduled), "inc")
            why = "nothing is due: the plan's most frequent type"
    if kind != "full" and newest_set and max(m.increment for m in newest_set.members) >= MAX_INCREMENT:
        kind, why = "full", f"set {newest_set.set_id} holds image {MAX_INCREMENT}, the last a set can number"
    return kind, why
