"""diskvault purge F.xml [--dry-run]"""

from __future__ import annotations

import time

import typer

from diskvault.cli._common import EXIT_STATUS_HELP, handle_errors, print_json
from diskvault.cli._plans import print_verdicts
from diskvault.plans.definition import load
from diskvault.plans.lock import DefinitionLock
from diskvault.plans.retention import apply_retention
from diskvault.units import human_size


@handle_errors
def purge(
    definition: str = typer.Argument(..., help="Backup definition file (XML)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be deleted, and why; delete nothing."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Apply the definition's retention now: explain every set kept or deleted (whole sets only)."""
    defn = load(definition)
    with DefinitionLock(defn.id, defn.name):
        report = apply_retention(defn, time.time_ns(), dry_run=dry_run)
    if json_out:
        print_json(report.to_dict())
    else:
        print_verdicts(report.verdicts, dry_run)
        if not dry_run:
            typer.echo(f"deleted {len(report.deleted)} file(s), freed {human_size(report.freed)}")
    for warning in report.warnings:
        typer.echo(f"diskvault: warning: {warning}", err=True)


purge.__doc__ = (purge.__doc__ or "") + EXIT_STATUS_HELP


def register(app: typer.Typer) -> None:
    app.command()(purge)
