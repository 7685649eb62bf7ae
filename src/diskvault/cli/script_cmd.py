"""diskvault script generate F.xml --shell bash|python ; diskvault notify F.xml --result R"""

from __future__ import annotations

import os
import time

import typer

from diskvault.cli._common import EXIT_STATUS_HELP, handle_errors
from diskvault.errors import UsageError
from diskvault.plans.definition import load
from diskvault.plans.history import RunRecord
from diskvault.plans.notify import notify as send_notices
from diskvault.plans.scripts import SHELLS
from diskvault.plans.scripts import generate as generate_script

script_app = typer.Typer(no_args_is_help=True, help="Stand-alone scripts that run a definition.")


@script_app.command("generate")
@handle_errors
def generate(
    definition: str = typer.Argument(..., help="Backup definition file (XML)."),
    shell: str = typer.Option("bash", "--shell", help=f"Script language: {' or '.join(SHELLS)}."),
    output: str = typer.Option(None, "--output", "-o",
                               help="Write the script here (executable) instead of stdout."),
) -> None:
    """A script with the definition's pre steps, the backup, post steps, mail on failure and the exit code."""
    text = generate_script(load(definition), shell)
    if not output:
        typer.echo(text, nl=False)
        return
    with open(output, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(output, 0o755)
    typer.echo(f"wrote {output}")


@handle_errors
def notify(
    definition: str = typer.Argument(..., help="Backup definition file (XML)."),
    result: str = typer.Option(..., "--result", help="failure, warning or success."),
    message: str = typer.Option("", "--message", help="What happened (the error for a failure)."),
) -> None:
    """Send the definition's mail for a result (only to addresses that want it) — for scripts."""
    if result not in ("failure", "warning", "success"):
        raise UsageError(f"unknown result {result!r} (choose failure, warning or success)")
    defn = load(definition)
    now = time.time_ns()
    run = RunRecord(definition=defn.name, definition_id=defn.id, type="", started_ns=now, ended_ns=now,
                    result=result, destination=defn.destination, definition_path=defn.path,
                    error=message if result == "failure" else "",
                    notes=[message] if message and result != "failure" else [])
    problems = send_notices(defn, run)
    for p in problems:
        typer.echo(f"diskvault: {p}", err=True)
    if problems:
        raise typer.Exit(1)


notify.__doc__ = (notify.__doc__ or "") + EXIT_STATUS_HELP


def register(app: typer.Typer) -> None:
    app.add_typer(script_app, name="script")
    app.command()(notify)
