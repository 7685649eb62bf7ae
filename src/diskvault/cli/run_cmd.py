"""diskvault run F.xml [--full|--diff|--inc] [--dry-run]"""

from __future__ import annotations

import typer

from diskvault.cli._common import handle_errors, print_json
from diskvault.cli._plans import CATALOG, print_verdicts
from diskvault.errors import UsageError
from diskvault.plans.definition import load
from diskvault.plans.history import History
from diskvault.plans.retention import iso
from diskvault.plans.run import RunOptions, run_definition
from diskvault.ui.progress import for_terminal
from diskvault.units import human_size


@handle_errors
def run(
    definition: str = typer.Argument(..., help="Backup definition file (XML)."),
    full: bool = typer.Option(False, "--full", help="Make a Full image, whatever the plan says."),
    diff: bool = typer.Option(False, "--diff", help="Make a Differential image."),
    inc: bool = typer.Option(False, "--inc", help="Make an Incremental image."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the source, type and retention; write nothing."),
    scripts: bool = typer.Option(True, "--scripts/--no-scripts", help="Run the definition's pre/post steps."),
    mail: bool = typer.Option(True, "--notify/--no-notify", help="Send the definition's mail."),
    catalog: str = CATALOG,
    json_out: bool = typer.Option(False, "--json", help="Print the outcome as JSON."),
) -> None:
    """Run a backup definition once; without a type, the plan chooses it.

    EXIT STATUS: 0 success (also with warnings), 1 the backup failed, 2 bad definition or usage."""
    chosen = [t for t, on in (("full", full), ("diff", diff), ("inc", inc)) if on]
    if len(chosen) > 1:
        raise UsageError("give at most one of --full, --diff, --inc")
    defn = load(definition)
    opts = RunOptions(image_type=chosen[0] if chosen else None, dry_run=dry_run, scripts=scripts, notify=mail)
    if dry_run:
        outcome = run_definition(defn, opts)
    else:
        with History(catalog) as history:
            outcome = run_definition(defn, opts, history, progress=for_terminal(json_out))
    r = outcome.record
    if json_out:
        print_json(outcome.to_dict())
    elif dry_run:
        typer.echo(f"source: {r.source or '-'}")
        typer.echo(f"type:   {r.type or '-'}" + (f" ({r.type_reason})" if r.type_reason else ""))
        print_verdicts(outcome.retention, dry_run=True)
    else:
        typer.echo(f"{defn.name}: {r.result}" + (f", {r.type} image" if r.type and r.files else "")
                   + (f" ({r.type_reason})" if r.type_reason else ""))
        if r.files:
            typer.echo(f"wrote {', '.join(r.files)}: read {human_size(r.bytes_read or 0)}, "
                       f"wrote {human_size(r.bytes_written or 0)}, {iso(r.started_ns)} .. {iso(r.ended_ns)}")
        for path in r.deleted:
            typer.echo(f"deleted {path}")
    for note in r.notes:
        typer.echo(f"diskvault: warning: {note}", err=True)
    for problem in outcome.mail_problems:
        typer.echo(f"diskvault: {problem}", err=True)
    if r.error:
        typer.echo(f"diskvault: {r.error}", err=True)
    raise typer.Exit(outcome.exit_code)


def register(app: typer.Typer) -> None:
    app.command()(run)
