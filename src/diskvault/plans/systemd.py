"""systemd units for a definition: ``diskvault-NAME.service`` runs it once, ``diskvault-NAME.timer``
starts it on the plan's schedules (OnCalendar, Persistent=true so a missed run is caught up once
at boot, RandomizedDelaySec). Installing enables the timer when systemd is running; otherwise the
files are written and the caller is told where.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime

import diskvault
from diskvault.errors import DiskvaultError, UsageError
from diskvault.plans.cron import Cron
from diskvault.plans.definition import Definition

UNIT_DIR = "/etc/systemd/system"
ENV_DIR = "/etc/diskvault"
PASSED_ENV = ("DISKVAULT_CATALOG", "DISKVAULT_LOCK_DIR")


class SystemctlError(DiskvaultError):
    """systemctl {} failed: {}"""


def unit_base(defn: Definition) -> str:
    return f"diskvault-{defn.name}"


def systemd_running() -> bool:
    """True when PID 1 is systemd (the test sd_booted() does)."""
    return os.path.isdir("/run/systemd/system")


def _quote(arg: str) -> str:
    """An ExecStart argument: % doubled (systemd specifiers), quoted when it has spaces."""
    arg = arg.replace("%", "%%")
    return f'"{arg}"' if any(c.isspace() or c in "\"'\\;" for c in arg) else arg


def checkout_root() -> str | None:
    """Where diskvault was imported from, when that came from $PYTHONPATH (a checkout)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(diskvault.__file__)))
    entries = [os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(":") if p]
    return root if root in entries else None


def service_text(defn: Definition) -> str:
    if not defn.path:
        raise UsageError("save the definition to a file before scheduling it")
    command = " ".join(_quote(a) for a in (sys.executable, "-m", "diskvault", "run", defn.path))
    env = [f"{k}={os.environ[k]}" for k in PASSED_ENV if os.environ.get(k)]
    if checkout_root():
        env.append(f"PYTHONPATH={checkout_root()}")
    lines = [f"# Written by `diskvault schedule install` from {defn.path}",
             "[Unit]",
             f"Description=diskvault backup {defn.name}",
             "After=local-fs.target network-online.target",
             "Wants=network-online.target",
             f"ConditionPathExists={defn.path.replace('%', '%%')}",
             "",
             "[Service]",
             "Type=oneshot",
             f"ExecStart={command}",
             *[f"Environment={_quote(e)}" for e in env],
             f"EnvironmentFile=-{ENV_DIR}/{defn.name}.env",
             "Nice=10",
             "IOSchedulingClass=idle"]
    return "\n".join(lines) + "\n"


def timer_text(defn: Definition) -> str:
    if not defn.plan.schedules:
        raise UsageError(f"definition {defn.name} has no schedules to put in a timer")
    lines = [f"# Written by `diskvault schedule install` from {defn.path}",
             "[Unit]",
             f"Description=diskvault schedule for {defn.name}",
             "",
             "[Timer]"]
    for sched in defn.plan.schedules:
        lines.append(f"# {sched.type}: cron {sched.cron}")
        lines += [f"OnCalendar={spec}" for spec in Cron(sched.cron).on_calendar()]
    lines += ["Persistent=true",
              f"RandomizedDelaySec={defn.plan.random_delay}",
              "AccuracySec=1min",
              "",
              "[Install]",
              "WantedBy=timers.target"]
    return "\n".join(lines) + "\n"


@dataclass
class ScheduleStatus:
    definition: str
    service: str
    timer: str
    installed: bool
    enabled: str  # systemctl is-enabled, or "unknown (systemd is not running)"
    on_calendar: list[str]
    next_runs: dict[str, str]
    messages: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _systemctl(*args: str) -> str:
    proc = subprocess.run(["systemctl", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0 and args[0] != "is-enabled":
        raise SystemctlError(" ".join(args), (proc.stderr or proc.stdout).strip())
    return proc.stdout.strip()


def _write(path: str, text: str) -> None:
    temp = f"{path}.tmp{os.getpid()}"
    with open(temp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(temp, path)


def status(defn: Definition, unit_dir: str | None = None, now: datetime | None = None) -> ScheduleStatus:
    unit_dir = unit_dir or UNIT_DIR
    base = unit_base(defn)
    service, timer = os.path.join(unit_dir, f"{base}.service"), os.path.join(unit_dir, f"{base}.timer")
    now = now or datetime.now()
    enabled = _systemctl("is-enabled", f"{base}.timer") if systemd_running() else \
        "unknown (systemd is not running)"
    return ScheduleStatus(
        definition=defn.name, service=service, timer=timer,
        installed=os.path.exists(service) and os.path.exists(timer), enabled=enabled,
        on_calendar=[spec for s in defn.plan.schedules for spec in Cron(s.cron).on_calendar()],
        next_runs={s.type: f"{Cron(s.cron).next_after(now):%Y-%m-%d %H:%M}" for s in defn.plan.schedules})


def install(defn: Definition, unit_dir: str | None = None, enable: bool = True) -> ScheduleStatus:
    """Write both units; enable and start the timer when systemd runs here."""
    unit_dir = unit_dir or UNIT_DIR
    service, timer = service_text(defn), timer_text(defn)
    os.makedirs(unit_dir, exist_ok=True)
    st = status(defn, unit_dir)
    _write(st.service, service)
    _write(st.timer, timer)
    st.installed = True
    base = unit_base(defn)
    if enable and systemd_running():
        _systemctl("daemon-reload")
        _systemctl("enable", "--now", f"{base}.timer")
        st.enabled = _systemctl("is-enabled", f"{base}.timer")
        st.messages.append(f"enabled and started {base}.timer")
    elif enable:
        st.messages.append(f"systemd is not running here: wrote {st.service} and {st.timer}; on a systemd "
                           f"machine run: systemctl daemon-reload && systemctl enable --now {base}.timer "
                           f"(or run `diskvault scheduler` instead)")
    else:
        st.messages.append(f"wrote {st.service} and {st.timer} (not enabled)")
    if defn.password_env:
        st.messages.append(f"the service needs {defn.password_env}: put {defn.password_env}=... in "
                           f"{ENV_DIR}/{defn.name}.env (mode 600)")
    return st


def remove(defn: Definition, unit_dir: str | None = None) -> ScheduleStatus:
    """Stop and disable the timer (when systemd runs), then delete both units."""
    unit_dir = unit_dir or UNIT_DIR
    st = status(defn, unit_dir)
    base = unit_base(defn)
    if systemd_running() and st.installed:
        _systemctl("disable", "--now", f"{base}.timer")
    removed = []
    for path in (st.timer, st.service):
        if os.path.exists(path):
            os.unlink(path)
            removed.append(path)
    if systemd_running() and removed:
        _systemctl("daemon-reload")
    st.installed = False
    st.messages.append(f"removed {', '.join(removed)}" if removed else f"no units of {defn.name} in {unit_dir}")
    return st
