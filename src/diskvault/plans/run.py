"""Run a backup definition once — what ``diskvault run``, the scheduler, systemd and the web UI call.

    lock (one run per definition) -> pre steps -> find the source (by stable id) -> choose the type
    from the plan -> retention "before" + free-space purge -> create_image -> verify -> merge
    (Incremental Forever) -> retention "after" + free-space purge -> post steps (always, told the
    result) -> history row -> mail

Every failure ends as one history row with result "failure" and its error text; earlier sets are
never touched by a failed run (retention only runs before the backup, or after a good one).
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from diskvault.errors import EXIT_FAILURE, EXIT_OK, DiskvaultError, IntegrityError, UsageError
from diskvault.format.layout import TYPE_FULL, TYPE_INC
from diskvault.format.reader import KeyRing
from diskvault.imaging.create import ImageOptions, create_image
from diskvault.imaging.merge import merge
from diskvault.imaging.sets import scan
from diskvault.imaging.verify import verify_image
from diskvault.plans.definition import Definition, Step
from diskvault.plans.history import History, RunRecord
from diskvault.plans.inventory import files_available, inventory
from diskvault.plans.lock import DefinitionLock
from diskvault.plans.notify import notify
from diskvault.plans.resolve import resolve
from diskvault.plans.retention import Verdict, apply_retention, decide, free_space, ownership
from diskvault.plans.templates import choose_type
from diskvault.ui.progress import NullProgress, Progress

Clock = Callable[[], datetime]


class StepFailedError(DiskvaultError):
    """{}"""


class FilesUnavailableError(DiskvaultError):
    """file backups (source kind "files") are not available in this build of diskvault"""


def ns(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000) * 1000


@dataclass
class RunOptions:
    image_type: str | None = None  # None: the plan decides
    dry_run: bool = False
    scripts: bool = True
    notify: bool = True


@dataclass
class RunOutcome:
    record: RunRecord
    mail_problems: list[str] = field(default_factory=list)
    retention: list[Verdict] = field(default_factory=list)  # dry run: what retention would do now

    @property
    def exit_code(self) -> int:
        return EXIT_FAILURE if self.record.result == "failure" else EXIT_OK

    def to_dict(self) -> dict:
        return {"run": self.record.to_dict(), "mail_problems": self.mail_problems,
                "retention": [v.to_dict() for v in self.retention], "exit_code": self.exit_code}


def describe_error(e: BaseException) -> str:
    if isinstance(e, DiskvaultError):
        return str(e)
    if isinstance(e, OSError):
        where = f" ({e.filename})" if e.filename else ""
        if e.errno == errno.ENOSPC:
            return f"destination is full{where}"
        return f"{e.strerror or e}{where}"
    if isinstance(e, KeyboardInterrupt):
        return "interrupted"
    return f"{type(e).__name__}: {e}"


def run_step(step: Step, env: dict[str, str], stage: str) -> None:
    """Run a shell step; StepFailedError when it exits non-zero or times out."""
    try:
        proc = subprocess.run(["/bin/sh", "-c", step.command], env=os.environ | env, timeout=step.timeout,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        raise StepFailedError(f"{stage} step `{step.command}` timed out after {step.timeout} s") from None
    if proc.returncode != 0:
        said = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise StepFailedError(f"{stage} step `{step.command}` exited {proc.returncode}"
                              + (f": {said[-1]}" if said else ""))


def _incs_after_full(folder: str, set_id: str) -> int:
    members = scan(folder).get(set_id, [])
    fulls = [m.increment for m in members if m.header.image_type == TYPE_FULL]
    return sum(1 for m in members if m.header.image_type == TYPE_INC and fulls and m.increment > max(fulls))


class _Run:
    """One locked run, filling in ``record`` as it goes."""

    def __init__(self, defn: Definition, opts: RunOptions, clock: Clock, progress: Progress) -> None:
        self.defn, self.opts, self.clock, self.progress = defn, opts, clock, progress
        self.now = clock()
        self.record = RunRecord(definition=defn.name, definition_id=defn.id, type="", started_ns=ns(self.now),
                                result="failure", destination=defn.destination, definition_path=defn.path)
        self.keyring = KeyRing(defn.password())

    def env(self) -> dict[str, str]:
        r = self.record
        return {"DISKVAULT_DEFINITION": self.defn.name, "DISKVAULT_DEFINITION_FILE": self.defn.path,
                "DISKVAULT_TYPE": r.type, "DISKVAULT_RESULT": r.result if r.ended_ns else "running",
                "DISKVAULT_ERROR": r.error, "DISKVAULT_IMAGE": r.files[0] if r.files else ""}

    def retention(self, when: str) -> None:
        policy = self.defn.plan.retention
        rules = policy.apply == when and bool(policy.rules)
        if not rules and not policy.min_free_gib:
            return
        report = apply_retention(self.defn, ns(self.clock()), self.keyring, rules=rules)
        self.record.deleted += report.deleted
        self.record.notes += report.warnings

    def backup(self) -> None:
        defn, r = self.defn, self.record
        r.source = resolve(defn.source)
        if not os.path.isdir(defn.destination):
            raise UsageError(f"destination folder {defn.destination} does not exist")
        mine = ownership(defn)
        own = [s for s in inventory(defn.destination, self.keyring) if mine(s)]
        r.type, r.type_reason = choose_type(defn.plan, own, self.now, self.opts.image_type)
        self.retention("before")
        if defn.source.kind == "files":
            self.archive()
        else:
            self.image()
        self.retention("after")

    def image(self) -> None:
        defn, r = self.defn, self.record
        result = create_image(ImageOptions(
            source=r.source, to=defn.destination, partitions=defn.source.partitions, compression=defn.compression,
            image_type=r.type, password=defn.password(), split_size=defn.split_size, created_ns=r.started_ns,
            extra_metadata={"definition": {"id": defn.id, "name": defn.name}}), self.progress)
        r.files, r.set_id = result.parts, result.image_id
        r.bytes_read, r.bytes_written = result.bytes_read, result.bytes_written
        r.notes += result.notes
        if defn.verify:
            check = verify_image(result.image, password=defn.password())
            if not check.ok:
                raise IntegrityError(f"{result.image} does not verify: {'; '.join(check.errors[:3])}")
        keep = defn.plan.merge_keep_incs
        if keep is not None and _incs_after_full(defn.destination, result.image_id) > keep:
            merged = merge(result.image, keep=keep, password=defn.password())
            r.deleted += [os.path.join(defn.destination, name) for name in merged.deleted]

    def archive(self) -> None:
        """A files source: diskvault.files makes the archive (its own set rules, same types)."""
        if not files_available():
            raise FilesUnavailableError()
        from diskvault.files.backup import BackupOptions, backup_files
        from diskvault.files.verify import verify_archive
        from diskvault.files.walker import Filters

        defn, r, src = self.defn, self.record, self.defn.source
        result = backup_files(BackupOptions(
            paths=src.paths, to=defn.destination, filters=Filters(include=src.include, exclude=src.exclude),
            archive_type=r.type, compression=defn.compression, password=defn.password(),
            split_size=defn.split_size), self.progress)
        r.files, r.set_id = result.parts, result.set_id
        r.bytes_read, r.bytes_written = result.bytes_read, result.bytes_written
        r.notes += result.notes + [f"not backed up: {e}" for e in result.errors]
        if defn.verify:
            check = verify_archive(result.archive, password=defn.password())
            if not check.ok:
                raise IntegrityError(f"{result.archive} does not verify: {'; '.join(check.errors[:3])}")

    def run(self) -> RunRecord:
        r = self.record
        try:
            if self.opts.scripts:
                for step in self.defn.pre:
                    run_step(step, self.env(), "pre")
            self.backup()
            r.result = "warning" if r.notes else "success"
        except Exception as e:  # noqa: BLE001 - whatever went wrong becomes the run's history row
            r.result, r.error = "failure", describe_error(e)
        finally:
            r.ended_ns = ns(self.clock())
            if self.opts.scripts:
                for step in self.defn.post:
                    try:
                        run_step(step, self.env(), "post")
                    except StepFailedError as e:
                        r.notes.append(str(e))
                        if r.result == "success":
                            r.result = "warning"
            r.ended_ns = ns(self.clock())
        return r


def dry_run(defn: Definition, opts: RunOptions, clock: Clock) -> RunOutcome:
    """What a run would do now: source, type and retention verdicts; writes nothing."""
    now = clock()
    record = RunRecord(definition=defn.name, definition_id=defn.id, type="", started_ns=ns(now),
                       result="success", destination=defn.destination, definition_path=defn.path)
    try:
        record.source = resolve(defn.source)
        keyring = KeyRing(defn.password())
        sets = inventory(defn.destination, keyring)
        mine = ownership(defn)
        own = [s for s in sets if mine(s)]
        record.type, record.type_reason = choose_type(defn.plan, own, now, opts.image_type)
        policy = defn.plan.retention
        verdicts, warnings = decide(sets, policy, mine, ns(now), True,
                                    free_space(defn.destination) if policy.min_free_gib else None)
        record.notes += warnings
    except Exception as e:  # noqa: BLE001 - a dry run reports what would fail
        record.result, record.error = "failure", describe_error(e)
        verdicts = []
    return RunOutcome(record, retention=verdicts)


def run_definition(defn: Definition, opts: RunOptions | None = None, history: History | None = None,
                   clock: Clock = datetime.now, progress: Progress | None = None) -> RunOutcome:
    """Run ``defn`` once; the outcome's exit_code is 0 (success or warning) or 1 (failure)."""
    opts = opts or RunOptions()
    if opts.dry_run:
        return dry_run(defn, opts, clock)
    job = _Run(defn, opts, clock, progress or NullProgress())
    interrupted: BaseException | None = None
    try:
        with DefinitionLock(defn.id, defn.name):
            job.run()
    except DiskvaultError as e:  # the lock is held by another run
        job.record.error = str(e)
        job.record.ended_ns = ns(clock())
    except KeyboardInterrupt as e:
        job.record.result, job.record.error, interrupted = "failure", "interrupted", e
    if history is not None:
        history.record(job.record)
    outcome = RunOutcome(job.record)
    if opts.notify:
        outcome.mail_problems = notify(defn, job.record)
    if interrupted is not None:
        raise interrupted
    return outcome
