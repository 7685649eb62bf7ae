"""Each plan template driven by the built-in scheduler through three months of simulated days (an
injectable clock, real images of a small disk that changes every day): day by day, which image
files exist, which type each run made, that retention kept exactly what its rules say (whole sets
only), weekly that every chain verifies, and at the end that every remaining image restores to the
bytes the disk had when it was taken."""

from __future__ import annotations

import os
from datetime import datetime, timedelta

import pytest
from plansutil import (
    FakeClock,
    at,
    change,
    images,
    make_definition,
    restore_all,
    sha256,
    small_disk,
    verify_all,
)

from diskvault.crypto.keys import password_source
from diskvault.plans.history import History
from diskvault.plans.scheduler import Scheduler
from diskvault.plans.templates import differential, gfs, incremental_forever

START = datetime(2026, 1, 1)  # a Thursday


@pytest.fixture(autouse=True)
def fast_kdf(monkeypatch, tmp_path):
    monkeypatch.setenv("DISKVAULT_KDF_MEMORY_KIB", "1024")
    monkeypatch.setenv("DISKVAULT_LOCK_DIR", str(tmp_path / "locks"))


class Simulation:
    """A disk, a definition, a catalog and the scheduler on a fake clock."""

    def __init__(self, tmp_path, plan, **definition_kw) -> None:
        self.tmp = str(tmp_path)
        self.disk = os.path.join(self.tmp, "disk.img")
        self.parts = small_disk(self.disk, self.tmp)
        self.defn = make_definition(self.tmp, "sim", self.disk, plan, **definition_kw)
        self.dest = self.defn.destination
        self.clock = FakeClock(START - timedelta(hours=12))
        self.history = History(os.path.join(self.tmp, "history.sqlite"))
        self.scheduler = Scheduler([self.defn.path], self.history, self.clock)
        self.state: dict[str, str] = {}  # image file name -> sha256 of the disk it captured
        self.made: dict[str, set[str]] = {}  # set id -> every file name a run wrote into it
        self.runs: list[tuple[datetime, str, str]] = []  # (day, type, set id)

    def day(self, moment: datetime, n: int) -> str | None:
        """Change the disk, let the scheduler tick at ``moment``; the type it made (None: no run)."""
        change(self.disk, self.parts[1], n)
        self.clock.now = moment
        tick = self.scheduler.run_pending()
        assert not tick.skipped, tick.skipped
        if not tick.ran:
            return None
        (outcome,) = tick.ran
        r = outcome.record
        assert r.result == "success", (moment, r.error, r.notes)
        name = os.path.basename(r.files[0])
        self.state[name] = sha256(self.disk)
        self.made.setdefault(r.set_id, set()).add(name)
        self.runs.append((moment, r.type, r.set_id))
        return r.type

    def on_disk(self) -> dict[str, dict[str, str]]:
        return images(self.dest)

    def assert_whole_sets(self, kept: list[str]) -> None:
        """Exactly the sets ``kept`` exist, each with every image its runs wrote."""
        found = self.on_disk()
        assert sorted(found) == sorted(kept), (self.clock.now, sorted(found), sorted(kept))
        for set_id in kept:
            assert set(found[set_id]) == self.made[set_id], (self.clock.now, set_id)
        assert not [n for n in os.listdir(self.dest) if n.endswith(".partial")]

    def finish(self, password=None) -> None:
        verify_all(self.dest, password)
        restored = restore_all(self.dest, self.state, self.tmp, password)
        assert restored == sum(len(v) for v in self.on_disk().values())
        rows = self.history.runs("sim")
        assert len(rows) == len(self.runs) and all(r.result == "success" for r in rows)
        assert [r.type for r in reversed(rows)] == [t for _, t, _ in self.runs]
        self.history.close()


def expected_gfs_type(now: datetime, previous: datetime | None) -> str:
    """Full when a 1st of the month at 02:00 passed since the last run, else Diff for a Sunday, else Inc."""
    if previous is None:
        return "full"
    days = [previous.date() + timedelta(days=i) for i in range(1, (now.date() - previous.date()).days + 1)]
    if any(d.day == 1 for d in days):
        return "full"
    return "diff" if any(d.weekday() == 6 for d in days) else "inc"


def test_gfs_three_months(tmp_path):
    """Monthly Full, weekly Diff, daily Inc; keep the sets of the newest 2 Fulls, 3 Diffs, 5 Incs.
    The machine is off from Feb 27 to Mar 2: Mar 3 catches up with one run, the missed monthly Full."""
    sim = Simulation(tmp_path, gfs(keep_full=2, keep_diff=3, keep_inc=5))
    off = {datetime(2026, 2, d) for d in (27, 28)} | {datetime(2026, 3, d) for d in (1, 2)}
    previous = None
    fulls: list[str] = []
    for n in range(90):
        day = START + timedelta(days=n)
        kind = sim.day(at(day), n) if day not in off else None
        if day in off:
            continue
        assert kind == expected_gfs_type(day, previous), day
        previous = day
        if kind == "full":
            fulls.append(sim.runs[-1][2])
        sim.assert_whole_sets(fulls[-2:])
        if n == 40:  # a second tick the same day runs nothing
            assert sim.day(at(day, 14), n) is None
        if day.weekday() == 6:
            verify_all(sim.dest)
    assert [t for d, t, _ in sim.runs if d.date() == datetime(2026, 3, 3).date()] == ["full"]
    assert len(fulls) == 3
    sim.finish()


def test_differential_three_months_encrypted_retention_before(tmp_path, monkeypatch):
    """Weekly Full (Sunday), daily Diff, encrypted; retention before the backup keeps the 3 newest
    Fulls' sets, so after a Sunday's Full there are 4 sets and after any other day's run 3."""
    monkeypatch.setenv("SIM_PW", "correct horse battery staple")
    plan = differential(keep_full=3)
    plan.retention.apply = "before"
    sim = Simulation(tmp_path, plan, password_env="SIM_PW")
    password = password_source(None, "SIM_PW")
    fulls: list[str] = []
    for n in range(91):
        day = START + timedelta(days=n)
        kept_before = fulls[-3:]
        kind = sim.day(at(day), n)
        assert kind == ("full" if n == 0 or day.weekday() == 6 else "diff"), day
        if kind == "full":
            fulls.append(sim.runs[-1][2])
            sim.assert_whole_sets(kept_before + [fulls[-1]])
        else:
            sim.assert_whole_sets(fulls[-3:])
        assert all(t in ("full", "diff") for s in sim.on_disk().values() for t in s.values())
        if day.weekday() == 5:
            verify_all(sim.dest, password)
    sim.finish(password)


def test_incremental_forever_three_months_and_set_rollover(tmp_path):
    """One Full then daily Incs, all but the newest 5 merged into the Full every day (synthetic
    full). Past image 99 of the set (file names hold two digits) a new Full starts a new set, and
    the old set goes (keep 1 Full)."""
    sim = Simulation(tmp_path, incremental_forever(keep_incs=5))
    sets: list[str] = []
    for n in range(102):
        day = START + timedelta(days=n)
        kind = sim.day(at(day), n)
        assert kind == ("full" if n in (0, 100) else "inc"), (day, kind)
        if kind == "full":
            sets.append(sim.runs[-1][2])
        found = sim.on_disk()
        assert list(found) == [sets[-1]], day
        (members,) = found.values()
        in_set = n + 1 if n < 100 else n - 99
        names = sorted(members)
        assert len(names) == min(in_set, 6), (day, names)
        assert [members[x] for x in names] == ["full"] + ["inc"] * (len(names) - 1)
        # the images left are the newest runs' own files: the merged Full took the oldest one's name
        ours = [name for name in sorted(sim.made[sets[-1]])][-len(names):]
        assert names == ours, day
        if day.weekday() == 6:
            verify_all(sim.dest)
    sim.finish()
