"""Runs that fail, and destinations that fill up, on real loop devices and a real loop-mounted ext4:
a source disk that vanishes and a full destination are recorded in the history, mailed through a
local SMTP server, exit 1 and leave earlier sets untouched; the free-space purge keeps a small ext4
from filling over weeks of daily Fulls and never deletes the only restorable set."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta

import pytest
from diskutil import MiB, Part, loop_device, mounted, sh
from plansutil import FakeClock, at, make_definition, sha256, small_disk, smtp_server
from test_roundtrip import dv

from diskvault.plans.definition import Email, load
from diskvault.plans.history import History
from diskvault.plans.inventory import inventory
from diskvault.plans.retention import apply_retention
from diskvault.plans.scheduler import Scheduler
from diskvault.plans.templates import custom, gfs

pytestmark = pytest.mark.root


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("DISKVAULT_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.setenv("DISKVAULT_CATALOG", str(tmp_path / "history.sqlite"))


def snapshot(folder: str) -> dict[str, str]:
    return {n: sha256(os.path.join(folder, n)) for n in sorted(os.listdir(folder)) if n != "lost+found"}


def small_ext4(path: str, mib: int) -> str:
    with open(path, "wb") as f:
        f.truncate(mib * MiB)
    sh("mke2fs", "-q", "-F", "-t", "ext4", "-m", "0", "-E", "nodiscard", path)
    return path


def expect_failure(xml: str, box, error: str, dest: str, before: dict, *args: str) -> dict:
    r = dv("run", xml, *args, check=False)
    assert r.returncode == 1, r.stderr
    assert error in r.stderr
    row = History().runs(load(xml).name)[0]
    assert row.result == "failure" and error in row.error and not row.files
    (mail,) = box.wait(1)
    body = mail.get_payload(decode=True).decode()
    assert mail["Subject"].startswith("[diskvault] FAILURE: ")
    assert error in body and "Result:            FAILURE" in body
    assert snapshot(dest) == before  # earlier sets untouched, nothing partial left
    return json.loads(dv("history", "--json").stdout)[0]


def test_source_disk_vanishes(tmp_path):
    """A disk found by its partition-table GUID on a loop device; the loop device goes away."""
    disk = str(tmp_path / "disk.img")
    small_disk(disk, str(tmp_path))
    xml = str(tmp_path / "usb.xml")
    with smtp_server() as (box, port):
        with loop_device(disk) as dev:
            dv("definition", "create", dev, "--name", "usb", "--to", str(tmp_path / "dest"), "--save", xml,
               "--mail-to", "ops@example.org", "--smtp", f"127.0.0.1:{port}")
            defn = load(xml)
            assert defn.source.kind == "disk" and defn.source.disk.guid and defn.source.disk.last_path == dev
            os.makedirs(defn.destination)
            assert dv("run", xml).returncode == 0
            assert dv("run", xml, "--inc").returncode == 0
        before = snapshot(defn.destination)
        assert len(before) == 2
        row = expect_failure(xml, box, "is not attached", defn.destination, before)
        assert row["type"] == "" and defn.source.disk.guid in row["error"]


def test_destination_full(tmp_path):
    """The destination is a small ext4 that a big file fills after the first Full."""
    disk = str(tmp_path / "disk.img")
    small_disk(disk, str(tmp_path), extra=Part(4, "raw"))
    fs = small_ext4(str(tmp_path / "dest.ext4"), 24)
    with smtp_server() as (box, port), loop_device(fs) as dev, mounted(dev, str(tmp_path / "mnt"), "rw") as mnt:
        dest = os.path.join(mnt, "backups")
        os.makedirs(dest)
        defn = make_definition(str(tmp_path), "full-disk", disk, gfs(), destination=dest, emails=[
            Email(to="ops@example.org", sender="dv@example.org", host="127.0.0.1", port=port)])
        assert dv("run", defn.path).returncode == 0
        filler = os.path.join(mnt, "filler")
        sh("dd", "if=/dev/zero", f"of={filler}", "bs=1M", "status=none", check=False)
        before = snapshot(dest)
        row = expect_failure(defn.path, box, "destination is full", dest, before, "--full")
        assert row["type"] == "full" and row["error"].startswith("destination is full")
        os.unlink(filler)
        assert dv("run", defn.path).returncode == 0  # and the next run works again


def test_free_space_purge_on_a_filling_ext4(tmp_path):
    """Daily Fulls of ~6.5 MiB onto a 40 MiB ext4 with min-free 12 MiB and no other rule: the oldest
    sets go first, free space never stays under the minimum, no run fails; a minimum that cannot be
    met deletes everything but the newest restorable set, and says so."""
    disk = str(tmp_path / "disk.img")
    parts = small_disk(disk, str(tmp_path), extra=Part(4, "raw"))
    fs = small_ext4(str(tmp_path / "dest.ext4"), 40)
    minimum = 12 * MiB
    with loop_device(fs) as dev, mounted(dev, str(tmp_path / "mnt"), "rw") as mnt:
        plan = custom({"full": "0 3 * * *"})
        plan.retention.min_free_gib = minimum / (1 << 30)
        defn = make_definition(str(tmp_path), "space", disk, plan, destination=mnt)
        clock = FakeClock(datetime(2026, 5, 1))
        history = History()
        scheduler = Scheduler([defn.path], history, clock)
        order: list[str] = []
        for n in range(20):
            with open(disk, "r+b") as f:  # new random bytes: no two Fulls alike
                f.seek(parts[1].start)
                f.write(os.urandom(3 * MiB))
            clock.now = at(datetime(2026, 5, 1) + timedelta(days=n), 3)
            (outcome,) = scheduler.run_pending().ran
            assert outcome.record.result == "success", (n, outcome.record.error)
            order.append(outcome.record.set_id)
            st = os.statvfs(mnt)
            free = st.f_bavail * st.f_frsize
            sets = [s.set_id for s in inventory(mnt)]
            assert free >= minimum, (n, free)
            assert sets == order[-len(sets):], n  # always the newest ones, oldest deleted first
            assert order[-1] in sets
        assert len(sets) < 8 < len(order)
        deletions = [r for r in history.runs("space") if r.deleted]
        assert deletions
        defn.plan.retention.min_free_gib = 100.0
        now_ns = int(clock.now.timestamp()) * 10**9
        files = snapshot(mnt)
        dry = apply_retention(defn, now_ns, dry_run=True)
        assert [v.keep for v in dry.verdicts] == [False] * (len(sets) - 1) + [True]
        assert "newest restorable set (never deleted)" in dry.verdicts[-1].reasons
        assert dry.warnings and snapshot(mnt) == files
        real = apply_retention(defn, now_ns)
        assert [s.set_id for s in inventory(mnt)] == [order[-1]]
        assert len(real.deleted) == len(sets) - 1 and real.warnings
        history.close()
