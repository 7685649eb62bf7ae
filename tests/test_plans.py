"""Backup definitions (XML + XSD), cron schedules against systemd's own calendar, generated systemd
units checked by systemd-analyze, the built-in scheduler on a real clock, generated scripts, the
history catalog and its rebuild, mail through a local SMTP server, and the CLI exit codes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from datetime import datetime, timedelta

import pytest
from diskutil import make_tree
from lxml import etree
from plansutil import FakeClock, make_definition, small_disk, smtp_server
from test_roundtrip import dv

from diskvault.errors import UsageError
from diskvault.plans.cron import Cron
from diskvault.plans.definition import DefinitionError, Email, Step, load, save
from diskvault.plans.history import History
from diskvault.plans.lock import DefinitionLock
from diskvault.plans.run import run_definition
from diskvault.plans.scheduler import Scheduler
from diskvault.plans.templates import custom, gfs

SYSTEMD_ANALYZE = "/usr/bin/systemd-analyze"


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("DISKVAULT_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.setenv("DISKVAULT_CATALOG", str(tmp_path / "history.sqlite"))
    monkeypatch.setenv("DISKVAULT_KDF_MEMORY_KIB", "1024")


@pytest.fixture
def disk(tmp_path):
    path = str(tmp_path / "disk.img")
    small_disk(path, str(tmp_path))
    return path


# ----------------------------------------------------------------------------- definitions


def test_definition_create_show_and_round_trip(tmp_path, disk):
    xml = str(tmp_path / "d.xml")
    out = dv("definition", "create", disk, "--name", "laptop", "--to", str(tmp_path / "dest"), "--save", xml,
             "--template", "differential", "--at", "03:30", "--keep", "full=2", "--keep", "diff=10d",
             "--keep", "inc=3w", "--retention", "before", "--min-free-gib", "1.5", "--password-env", "DV_PW",
             "--split", "650M", "--comment", "nightly", "--pre", "echo 'a b' > /dev/null", "--post", "true",
             "--mail-to", "ops@example.org", "--smtp", "127.0.0.1:2525", "--mail-on", "failure",
             "--partitions", "1", "--random-delay", "600")
    assert "plan differential" in out.stdout
    text = open(xml).read()
    assert "DV_PW" in text and "password=" not in text.replace("password-env=", "")
    defn = load(xml)
    assert defn.source.kind == "image" and defn.source.file == disk and defn.source.partitions == [1]
    assert [(s.type, s.cron) for s in defn.plan.schedules] == [("full", "30 3 * * 0"), ("diff", "30 3 * * *")]
    assert [(r.type, r.count, r.days, r.weeks) for r in defn.plan.retention.rules] == \
        [("full", 2, None, None), ("diff", None, 10, None), ("inc", None, None, 3)]
    assert defn.plan.retention.apply == "before" and defn.plan.retention.min_free_gib == 1.5
    assert defn.split_size == 650 << 20 and defn.password_env == "DV_PW" and defn.plan.random_delay == 600
    assert defn.emails[0].host == "127.0.0.1" and defn.emails[0].port == 2525 and defn.emails[0].on == ["failure"]
    copy = str(tmp_path / "copy.xml")
    save(defn, copy)
    assert open(copy).read() == text  # what is read is what is written
    shown = dv("definition", "show", xml).stdout
    assert "differential" in shown and "now at:     " + disk in shown and "$DV_PW" in shown
    as_json = json.loads(dv("definition", "show", xml, "--json").stdout)
    assert as_json["id"] == defn.id and set(as_json["next_runs"]) == {"full", "diff"}


def _edit(xml: str, out: str, fn) -> str:
    tree = etree.parse(xml)
    fn(tree.getroot())
    tree.write(out)
    return out


def _insert_after(root, tag: str, element) -> None:
    root.insert(list(root).index(root.find(tag)) + 1, element)


@pytest.mark.parametrize("case, expect", [
    ("password attribute", "password"),
    ("unknown element", "bogus"),
    ("bad cron", "cron expression"),
    ("source kind mismatch", "needs <disk>"),
    ("relative destination", "destination"),
    ("merge with diffs", "synthetic full"),
])
def test_bad_definitions_are_refused_with_exit_2(tmp_path, disk, case, expect):
    good = make_definition(str(tmp_path), "good", disk, gfs()).path
    edits = {
        "password attribute": lambda r: _insert_after(r, "compression", etree.Element("encryption", password="x")),
        "unknown element": lambda r: r.append(etree.Element("bogus")),
        "bad cron": lambda r: r.find("plan/schedule").set("cron", "61 * * * *"),
        "source kind mismatch": lambda r: r.find("source").set("kind", "disk"),
        "relative destination": lambda r: r.find("destination").set("path", "dest"),
        "merge with diffs": lambda r: r.find("plan").insert(3, etree.Element("merge", {"keep-incs": "3"})),
    }
    bad = _edit(good, str(tmp_path / "bad.xml"), edits[case])
    with pytest.raises(DefinitionError, match=expect):
        load(bad)
    r = dv("run", bad, check=False)
    assert r.returncode == 2 and expect in r.stderr, r.stderr


def test_cli_exit_2_for_bad_definition_files_and_usage(tmp_path, disk):
    good = make_definition(str(tmp_path), "good", disk, gfs()).path
    broken = str(tmp_path / "broken.xml")
    with open(broken, "w") as f:
        f.write("<definition")
    for args in (("run", broken), ("definition", "show", broken), ("purge", broken, "--dry-run"),
                 ("schedule", "install", broken), ("run", good, "--full", "--inc"),
                 ("run", str(tmp_path / "none.xml"))):
        r = dv(*args, check=False)
        assert r.returncode == 2 and r.stderr.startswith("diskvault: "), (args, r.stderr)
    assert not os.listdir(load(good).destination)


# ----------------------------------------------------------------------------- schedules


def _systemd_times(spec: str, base: datetime, n: int) -> list[datetime]:
    out = subprocess.run([SYSTEMD_ANALYZE, "calendar", f"--iterations={n}",
                          f"--base-time={base:%Y-%m-%d %H:%M:%S}", spec],
                         capture_output=True, text=True, check=True).stdout
    return [datetime.strptime(m, "%Y-%m-%d %H:%M:%S")
            for m in re.findall(r"(?:Next elapse|Iter\. #\d+): \w+ (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", out)]


@pytest.mark.parametrize("expr", ["0 2 1 * *", "0 2 * * 0", "30 3 * * *", "*/15 9-17 * * 1-5",
                                  "30 4 1,15 * 5", "0 0 29 2 *", "@weekly", "5 */6 * jan,jul sun",
                                  "0 12 */10 * *", "45 23 * * 7"])
def test_cron_matches_systemd_calendar(expr):
    """The OnCalendar specs we generate fire exactly when our cron says (systemd-analyze calendar)."""
    cron = Cron(expr)
    base = datetime(2026, 1, 1, 0, 0)
    n = 12
    ours, t = [], base
    for _ in range(n):
        t = cron.next_after(t)
        ours.append(t)
    theirs = sorted({x for spec in cron.on_calendar() for x in _systemd_times(spec, base, n)})[:n]
    assert ours == theirs, (expr, cron.on_calendar())
    assert cron.last_at_or_before(ours[3]) == ours[3]
    assert cron.last_at_or_before(ours[3] - timedelta(seconds=1)) == ours[2]


def test_bad_cron_expressions():
    for expr in ("* * * *", "60 * * * *", "0 24 * * *", "0 0 0 * *", "0 0 * 13 *", "0 0 * * mon-", "*/0 * * * *"):
        with pytest.raises(UsageError):
            Cron(expr)


def test_systemd_units_pass_systemd_analyze_verify(tmp_path, disk):
    plan = gfs()
    plan.random_delay = 900
    defn = make_definition(str(tmp_path), "nightly", disk, plan, password_env="DV_PW")
    units = str(tmp_path / "units")
    r = dv("schedule", "install", defn.path, "--unit-dir", units)
    assert "systemd is not running here" in r.stdout or "enabled and started" in r.stdout
    service, timer = (os.path.join(units, f"diskvault-nightly.{x}") for x in ("service", "timer"))
    text = open(timer).read()
    for line in ("OnCalendar=*-*-01 02:00:00", "OnCalendar=Sun *-*-* 02:00:00", "OnCalendar=*-*-* 02:00:00",
                 "Persistent=true", "RandomizedDelaySec=900", "WantedBy=timers.target"):
        assert line in text
    assert f"-m diskvault run {defn.path}" in open(service).read()
    check = subprocess.run([SYSTEMD_ANALYZE, "verify", service, timer], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert "diskvault-nightly" not in check.stderr, check.stderr
    for spec in re.findall(r"^OnCalendar=(.*)$", text, re.MULTILINE):
        assert subprocess.run([SYSTEMD_ANALYZE, "calendar", spec], capture_output=True).returncode == 0
    listed = json.loads(dv("schedule", "list", defn.path, "--unit-dir", units, "--json").stdout)
    assert listed["installed"] and set(listed["next_runs"]) == {"full", "diff", "inc"}
    dv("schedule", "remove", defn.path, "--unit-dir", units)
    assert not os.listdir(units)


def test_builtin_scheduler_runs_at_the_set_time(tmp_path, disk):
    """A real clock shifted so the next minute starts in ~1.5 s; the scheduler polls every 0.1 s."""
    defn = make_definition(str(tmp_path), "minutely", disk, custom({"full": "* * * * *"}))
    real = time.time()
    boundary = (int(real) // 60 + 1) * 60
    offset = boundary - 1.5 - real
    clock = lambda: datetime.fromtimestamp(time.time() + offset)
    os.utime(defn.path, (boundary - 5, boundary - 5))
    history = History(str(tmp_path / "sched.sqlite"))
    scheduler = Scheduler([defn.path], history, clock)
    stop = threading.Event()
    thread = threading.Thread(target=scheduler.serve, args=(0.1, False, stop))
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not history.runs() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # still the same minute: nothing more may run
    finally:
        stop.set()
        thread.join(30)
    runs = History(history.path).runs()
    assert len(runs) == 1 and runs[0].result == "success" and runs[0].type == "full", runs
    started = runs[0].started_ns / 1e9
    assert boundary <= started < boundary + 2.0, started - boundary


def test_scheduler_once_catches_up_missed_runs_once(tmp_path, disk):
    defn = make_definition(str(tmp_path), "daily", disk, custom({"inc": "0 2 * * *"}))
    three_days_ago = time.time() - 3 * 86400
    os.utime(defn.path, (three_days_ago, three_days_ago))
    dv("scheduler", "--once", defn.path)
    dv("scheduler", "--once", str(tmp_path))  # a folder of definitions; the run is not due again
    runs = History().runs("daily")
    assert len(runs) == 1 and runs[0].type == "full" and runs[0].result == "success"


# ----------------------------------------------------------------------------- runs


def test_lock_keeps_a_second_run_out(tmp_path, disk):
    defn = make_definition(str(tmp_path), "locked", disk, gfs())
    with DefinitionLock(defn.id):
        r = dv("run", defn.path, check=False)
    assert r.returncode == 1 and "already in progress" in r.stderr
    assert not os.listdir(defn.destination)
    (row,) = History().runs("locked")
    assert row.result == "failure" and "already in progress" in row.error
    assert dv("run", defn.path).returncode == 0


def test_files_source_runs_through_the_plan(tmp_path):
    """A folder backup: the plan picks the type from the archive sets, retention knows them as this
    definition's by their roots, and deletes whole sets."""
    src = tmp_path / "docs"
    make_tree(str(src), seed=5, files=20, max_size=50_000)
    (src / "scratch.tmp").write_bytes(b"x" * 1000)
    xml, dest = str(tmp_path / "files.xml"), str(tmp_path / "dest")
    dv("definition", "create", "--files", str(src), "--exclude", "*.tmp", "--name", "docs", "--to", dest,
       "--save", xml, "--keep", "full=1")
    defn = load(xml)
    assert defn.source.kind == "files" and defn.source.paths == [str(src)] and defn.source.exclude == ["*.tmp"]
    os.makedirs(dest)
    first = json.loads(dv("run", xml, "--json").stdout)["run"]
    assert first["type"] == "full" and first["files"][0].endswith("-00-00.dvbak") and first["result"] == "success"
    (src / "dir0" / "new.txt").write_text("changed\n")
    second = json.loads(dv("run", xml, "--json").stdout)["run"]
    assert second["type"] == "inc" and second["set_id"] == first["set_id"]
    third = json.loads(dv("run", xml, "--full", "--json").stdout)["run"]
    assert third["set_id"] != first["set_id"]
    assert sorted(third["deleted"]) == sorted(first["files"] + second["files"])  # the old set, whole
    assert sorted(os.listdir(dest)) == [os.path.basename(f) for f in third["files"]]
    report = json.loads(dv("purge", xml, "--dry-run", "--json").stdout)
    (verdict,) = report["verdicts"]
    assert verdict["keep"] and "full #1 of the newest 1" in verdict["reasons"]
    assert verdict["owner"] == f"files {src}"


def test_history_json_and_rebuild_after_losing_the_catalog(tmp_path, disk):
    defn = make_definition(str(tmp_path), "hist", disk, gfs())
    clock = FakeClock(datetime(2026, 3, 1, 2, 0, 30))
    with History() as history:
        for _ in range(3):
            assert run_definition(defn, history=history, clock=clock).exit_code == 0
            clock.now += timedelta(days=1)
    rows = json.loads(dv("history", "--json").stdout)
    assert [r["type"] for r in rows] == ["inc", "inc", "full"]
    assert all(r["result"] == "success" and r["bytes_written"] > 0 and r["files"] for r in rows)
    os.unlink(os.environ["DISKVAULT_CATALOG"])
    out = dv("history", "--rebuild", defn.destination).stdout
    assert "added 3 run(s)" in out
    rebuilt = json.loads(dv("history", "--json").stdout)
    assert [(r["type"], r["definition"], r["started_ns"], r["files"]) for r in rebuilt] == \
        [(r["type"], r["definition"], r["started_ns"], r["files"]) for r in rows]
    assert all(r["rebuilt"] for r in rebuilt)
    assert "added 0 run(s)" in dv("history", "--rebuild", defn.destination).stdout


# ----------------------------------------------------------------------------- scripts and mail


@pytest.mark.parametrize("shell", ["bash", "python"])
def test_generated_script_runs_steps_backup_and_mails_on_failure(tmp_path, disk, shell):
    log = tmp_path / "steps.log"
    with smtp_server() as (box, port):
        defn = make_definition(
            str(tmp_path), "scripted", disk, gfs(),
            pre=[Step(f"echo pre >> {log}")], post=[Step(f"echo post $DISKVAULT_RESULT >> {log}")],
            emails=[Email(to="ops@example.org", sender="dv@example.org", host="127.0.0.1", port=port)])
        script = str(tmp_path / f"backup.{shell}")
        dv("script", "generate", defn.path, "--shell", shell, "--output", script)
        ok = subprocess.run([script], capture_output=True, text=True)
        assert ok.returncode == 0, ok.stderr
        assert log.read_text() == "pre\npost success\n"
        assert len(os.listdir(defn.destination)) == 1 and not box.messages
        defn.pre.append(Step("echo broken >&2; exit 3"))
        save(defn, defn.path)
        dv("script", "generate", defn.path, "--shell", shell, "--output", script)
        bad = subprocess.run([script, "--full"], capture_output=True, text=True)
        assert bad.returncode == 1
        assert log.read_text() == "pre\npost success\npre\npost failure\n"
        assert len(os.listdir(defn.destination)) == 1
        (mail,) = box.wait(1)
        assert mail["Subject"].startswith("[diskvault] FAILURE: scripted")
        assert "exited 3" in mail.get_payload(decode=True).decode()
