"""The built-in scheduler, for machines without systemd: a loop that runs each definition when one
of its plan's cron schedules has fired since its last run.

    since  = start of the definition's last run in the history catalog, else the earlier of the
             definition file's time and the scheduler's start
    due    = the latest schedule time <= now is after ``since``  (missed runs -> one catch-up run)
    run    = run_definition (the plan picks the type; the lock keeps runs of a definition apart)

Definitions are re-read every tick, so edits apply without a restart. The clock and the wait are
injectable: tests drive months of days in seconds.
"""

from __future__ import annotations

import glob
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from diskvault.errors import DiskvaultError
from diskvault.plans.cron import Cron
from diskvault.plans.definition import Definition, load
from diskvault.plans.history import History
from diskvault.plans.lock import is_running
from diskvault.plans.run import Clock, RunOptions, RunOutcome, run_definition

log = logging.getLogger("diskvault.scheduler")
DEFAULT_DIR = "/etc/diskvault/definitions"


def definition_files(paths: list[str]) -> list[str]:
    """Files named, and the *.xml files of folders named."""
    out = []
    for p in paths:
        out += sorted(glob.glob(os.path.join(p, "*.xml"))) if os.path.isdir(p) else [p]
    return out


def last_fired(defn: Definition, now: datetime) -> datetime | None:
    times = [t for s in defn.plan.schedules if (t := Cron(s.cron).last_at_or_before(now)) is not None]
    return max(times) if times else None


@dataclass
class Tick:
    ran: list[RunOutcome]
    skipped: list[str]  # why a due or broken definition did not run


class Scheduler:
    def __init__(self, paths: list[str], history: History, clock: Clock = datetime.now,
                 runner: Callable[..., RunOutcome] = run_definition) -> None:
        self.paths, self.history, self.clock, self.runner = paths, history, clock, runner
        self.started = clock()

    def since(self, defn: Definition) -> datetime:
        last = self.history.last_run(defn.id)
        if last is not None:
            return datetime.fromtimestamp(last.started_ns / 1e9)
        saved = datetime.fromtimestamp(os.path.getmtime(defn.path)) if defn.path else self.started
        return min(saved, self.started)

    def run_pending(self) -> Tick:
        tick = Tick([], [])
        for path in definition_files(self.paths):
            try:
                defn = load(path)
            except DiskvaultError as e:
                tick.skipped.append(str(e))
                continue
            now = self.clock()
            fired = last_fired(defn, now)
            if fired is None or fired <= self.since(defn):
                continue
            if is_running(defn.id):
                tick.skipped.append(f"{defn.name}: due at {fired:%Y-%m-%d %H:%M}, but a run is in progress")
                continue
            log.info("running %s (due at %s)", defn.name, f"{fired:%Y-%m-%d %H:%M}")
            outcome = self.runner(defn, RunOptions(), self.history, self.clock)
            log.info("%s: %s%s", defn.name, outcome.record.result,
                     f" ({outcome.record.error})" if outcome.record.error else "")
            tick.ran.append(outcome)
        for why in tick.skipped:
            log.warning("%s", why)
        return tick

    def serve(self, interval: float = 30.0, once: bool = False, stop: threading.Event | None = None) -> None:
        """Check every ``interval`` seconds until ``stop`` is set (or once)."""
        stop = stop or threading.Event()
        while True:
            self.run_pending()
            if once or stop.wait(interval):
                return
