"""Retention: which backup sets to keep, and why — then delete the others, whole sets only.

    rules      a set is kept when a rule selects one of its images (kopia-style: any reason keeps it):
               <keep type=T count=N> the newest N images of type T; <keep type=T days|weeks=N> the
               images of type T from the last N days. No rules: every set is kept.
    never      a set being written (a .partial of it exists); the newest restorable set of each
               definition (so the only restorable set is never deleted)
    space      while free space is under min-free-gib, the oldest sets left are deleted too
    scope      "definition": only sets this definition made; "folder": every set, counted per definition

Within a set nothing is deleted on its own (Incremental Forever's merge is the one exception, run
by the plan, not here). Deletion removes the newest images first, so every moment leaves valid chains.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from diskvault.format.reader import KeyRing
from diskvault.format.writer import fsync_dir
from diskvault.plans.definition import Definition, KeepRule, Retention
from diskvault.plans.inventory import SetInfo, busy_sets, inventory, owned_by, roots_of
from diskvault.units import human_size

GiB = 1 << 30
DAY_NS = 86_400 * 10**9


def iso(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9))


@dataclass
class Verdict:
    set_id: str
    keep: bool
    reasons: list[str]
    owner: str
    created: str
    newest: str
    images: int
    bytes: int
    files: list[str] = field(repr=False)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RetentionReport:
    folder: str
    dry_run: bool
    verdicts: list[Verdict]
    deleted: list[str] = field(default_factory=list)
    freed: int = 0
    free_bytes: int | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _rule_reasons(group: list[SetInfo], rule: KeepRule, now_ns: int) -> dict[str, str]:
    """set id -> why ``rule`` keeps it."""
    images = sorted(((m.created_ns, s.set_id) for s in group for m in s.images(rule.type)), reverse=True)
    out: dict[str, str] = {}
    if rule.count:
        for rank, (_, set_id) in enumerate(images[:rule.count], 1):
            out.setdefault(set_id, f"{rule.type} #{rank} of the newest {rule.count}")
    age = rule.max_age_days
    if age:
        span = f"{rule.weeks} weeks" if rule.weeks and rule.weeks * 7 >= (rule.days or 0) else f"{age} days"
        for created, set_id in images:
            if now_ns - created <= age * DAY_NS:
                out.setdefault(set_id, f"{rule.type} within the last {span}")
    return out


def _groups(sets: list[SetInfo], policy: Retention, mine: Callable[[SetInfo], bool]) -> dict[str, list[SetInfo]]:
    """Sets in scope, by the definition that made them (per-definition counting and protection)."""
    groups: dict[str, list[SetInfo]] = {}
    for s in sets:
        if mine(s):
            groups.setdefault("", []).append(s)
        elif policy.scope == "folder":
            groups.setdefault(s.owner or f"{s.kind} {s.roots or '?'}", []).append(s)
    return groups


def decide(sets: list[SetInfo], policy: Retention, mine: Callable[[SetInfo], bool], now_ns: int,
           rules: bool = True, free_bytes: int | None = None) -> tuple[list[Verdict], list[str]]:
    """A verdict for every set (oldest first) and the warnings; deletes nothing. ``mine`` tells the
    definition's own sets."""
    groups = _groups(sets, policy, mine)
    reasons: dict[str, list[str]] = {}
    keep: dict[str, bool] = {}
    protected: set[str] = set()
    for group in groups.values():
        chosen: dict[str, list[str]] = {}
        for rule in policy.rules if rules else []:
            for set_id, why in _rule_reasons(group, rule, now_ns).items():
                chosen.setdefault(set_id, []).append(why)
        restorable = [s for s in group if s.restorable]
        newest = max(restorable, key=lambda s: (s.newest_ns, s.set_id)) if restorable else None
        for s in group:
            why = chosen.get(s.set_id, [])
            if not rules:
                why = why or ["retention rules are not applied in this pass"]
            elif not policy.rules:
                why = ["no retention rules"]
            if s is newest:
                why.append("newest restorable set (never deleted)")
                protected.add(s.set_id)
            if s.busy:
                why.append("being written (a .partial file of this set exists)")
                protected.add(s.set_id)
            reasons[s.set_id] = why or ["not kept by any rule"]
            keep[s.set_id] = bool(why)
    warnings = []
    if policy.min_free_gib and free_bytes is not None:
        minimum = int(policy.min_free_gib * GiB)
        free = free_bytes + sum(s.bytes for s in sets if s.set_id in keep and not keep[s.set_id])
        for s in sets:  # oldest first
            if free >= minimum:
                break
            if keep.get(s.set_id) and s.set_id not in protected:
                keep[s.set_id] = False
                reasons[s.set_id].append(f"free space {human_size(free)} is under the minimum "
                                         f"{policy.min_free_gib:g} GiB: oldest set deleted")
                free += s.bytes
        if free < minimum:
            warnings.append(f"free space {human_size(free)} stays under the minimum {policy.min_free_gib:g} GiB: "
                            f"only protected sets are left")
    verdicts = []
    for s in sets:
        verdicts.append(Verdict(
            set_id=s.set_id, keep=keep.get(s.set_id, True),
            reasons=reasons.get(s.set_id) or ["not made by this definition (scope: definition)"],
            owner=s.owner_name or s.owner or (f"files {', '.join(s.roots)}" if s.roots else "unknown"),
            created=iso(s.created_ns), newest=iso(s.newest_ns), images=len(s.members), bytes=s.bytes,
            files=s.files))
    return verdicts, warnings


def ownership(defn: Definition) -> Callable[[SetInfo], bool]:
    return owned_by(defn.id, roots_of(defn.source.paths) if defn.source.kind == "files" else None)


def delete_set(folder: str, files: list[str]) -> list[str]:
    """Remove a set's files newest first (children before parents, last part first)."""
    removed = []
    for path in sorted(files, key=os.path.basename, reverse=True):
        try:
            os.unlink(path)
            removed.append(path)
        except FileNotFoundError:
            pass
    fsync_dir(folder)
    return removed


def free_space(folder: str) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def apply_retention(defn: Definition, now_ns: int, keyring: KeyRing | None = None, dry_run: bool = False,
                    rules: bool = True) -> RetentionReport:
    """Decide and (unless ``dry_run``) delete. The caller holds the definition's lock."""
    folder = defn.destination
    policy = defn.plan.retention
    sets = inventory(folder, keyring or KeyRing(defn.password()))
    verdicts, warnings = decide(sets, policy, ownership(defn), now_ns, rules,
                                free_space(folder) if policy.min_free_gib else None)
    report = RetentionReport(folder=folder, dry_run=dry_run, verdicts=verdicts, warnings=warnings)
    if dry_run:
        return report
    for v in verdicts:
        if v.keep:
            continue
        if v.set_id in busy_sets(folder):  # a write began since we looked
            v.keep = True
            v.reasons.append("being written (started during retention): kept")
            continue
        report.deleted += delete_set(folder, v.files)
        report.freed += v.bytes
    report.free_bytes = free_space(folder)
    return report
