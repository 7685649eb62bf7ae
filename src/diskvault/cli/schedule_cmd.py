"""diskvault schedule install|remove|list F.xml ; diskvault scheduler [--once]"""

from __future__ import annotations

import logging

import typer

from diskvault.cli._common import EXIT_STATUS_HELP, handle_errors, print_json
from diskvault.cli._plans import CATALOG
from diskvault.plans import systemd
from diskvault.plans.definition import load
from diskvault.plans.history import History
from diskvault.plans.scheduler import DEFAULT_DIR, Scheduler

schedule_app = typer.Typer(no_args_is_help=True, help="systemd timers that run a definition on its plan.")
UNIT_DIR = typer.Option(None, "--unit-dir", help=f"Where the units go (default {systemd.UNIT_DIR}).")
JSON = typer.Option(False, "--json", help="Print the status as JSON.")


def _show(st: systemd.ScheduleStatus, json_out: bool) -> None:
    if json_out:
        print_json(st.to_dict())
        return
    typer.echo(f"{st.definition}: {'installed' if st.installed else 'not installed'}, enabled: {st.enabled}")
    typer.echo(f"  service: {st.service}\n  timer:   {st.timer}")
    for spec in st.on_calendar:
        typer.echo(f"  OnCalendar={spec}")
    for kind, when in st.next_runs.items():
        typer.echo(f"  next {kind}: {when}")
    for m in st.messages:
        typer.echo(m)


@schedule_app.command("install")
@handle_errors
def install(definition: str = typer.Argument(..., help="Backup definition file (XML)."),
            unit_dir: str = UNIT_DIR,
            enable: bool = typer.Option(True, "--enable/--no-enable", help="Enable and start the timer."),
            json_out: bool = JSON) -> None:
    """Write diskvault-NAME.service and .timer; enable the timer when systemd is running."""
    _show(systemd.install(load(definition), unit_dir, enable), json_out)


@schedule_app.command("remove")
@handle_errors
def remove(definition: str = typer.Argument(..., help="Backup definition file (XML)."),
           unit_dir: str = UNIT_DIR, json_out: bool = JSON) -> None:
    """Stop and disable the timer, and delete both units."""
    _show(systemd.remove(load(definition), unit_dir), json_out)


@schedule_app.command("list")
@handle_errors
def list_(definition: str = typer.Argument(..., help="Backup definition file (XML)."),
          unit_dir: str = UNIT_DIR, json_out: bool = JSON) -> None:
    """The definition's units, whether they are enabled, and its next runs."""
    _show(systemd.status(load(definition), unit_dir), json_out)


@handle_errors
def scheduler(
    paths: list[str] = typer.Argument(None, help=f"Definition files or folders of them (default {DEFAULT_DIR})."),
    once: bool = typer.Option(False, "--once", help="Run what is due (missed runs caught up once), then exit."),
    interval: float = typer.Option(30.0, "--interval", min=0.05, help="Seconds between checks."),
    catalog: str = CATALOG,
) -> None:
    """Built-in scheduler for machines without systemd: runs each definition on its cron schedules."""
    logging.getLogger("diskvault").setLevel(logging.INFO)
    with History(catalog) as history:
        Scheduler(paths or [DEFAULT_DIR], history).serve(interval, once)


scheduler.__doc__ = (scheduler.__doc__ or "") + EXIT_STATUS_HELP


def register(app: typer.Typer) -> None:
    app.add_typer(schedule_app, name="schedule")
    app.command()(scheduler)
