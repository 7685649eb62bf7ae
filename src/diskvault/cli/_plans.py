"""What the plan commands (definition, run, schedule, scheduler, history, purge, script, notify)
share: the catalog option and printing a retention report."""

from __future__ import annotations

import typer

from diskvault.plans.retention import Verdict
from diskvault.units import human_size

CATALOG = typer.Option(None, "--catalog", help="History catalog (SQLite); default $DISKVAULT_CATALOG "
                       "or /var/lib/diskvault/history.sqlite.")


def print_verdicts(verdicts: list[Verdict], dry_run: bool) -> None:
    if not verdicts:
        typer.echo("no backup sets in the destination")
        return
    for v in verdicts:
        action = "keep  " if v.keep else ("would delete" if dry_run else "delete")
        typer.echo(f"{action} set {v.set_id} ({v.owner}, {v.images} image{'s' * (v.images != 1)}, "
                   f"{human_size(v.bytes)}, {v.created} .. {v.newest})")
        for why in v.reasons:
            typer.echo(f"         - {why}")
