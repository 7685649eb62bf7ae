"""diskvault history [--json] [--rebuild DIR]"""

from __future__ import annotations

import os

import typer

from diskvault.cli._common import (
    EXIT_STATUS_HELP,
    PASSWORD_ENV,
    PASSWORD_FILE,
    handle_errors,
    password_options,
    print_json,
)
from diskvault.cli._plans import CATALOG
from diskvault.errors import UsageError
from diskvault.format.reader import KeyRing
from diskvault.plans.history import History
from diskvault.plans.retention import iso
from diskvault.units import human_size


@handle_errors
def history(
    definition: str = typer.Option(None, "--definition", help="Only runs of this definition (name or id)."),
    limit: int = typer.Option(None, "--limit", min=1, help="At most this many runs, newest first."),
    rebuild: str = typer.Option(None, "--rebuild", help="First add a row for every image in this folder "
                                "that the catalog does not know (after losing the catalog)."),
    password_file: str = PASSWORD_FILE,
    password_env: str = PASSWORD_ENV,
    catalog: str = CATALOG,
    json_out: bool = typer.Option(False, "--json", help="Print the runs as JSON."),
) -> None:
    """Every recorded run: definition, type, start/end, bytes, result, error, files."""
    with History(catalog) as hist:
        if rebuild:
            if not os.path.isdir(rebuild):
                raise UsageError(f"{rebuild} is not a folder")
            password = password_options(password_file, password_env) if password_file or password_env else None
            added = hist.rebuild(rebuild, KeyRing(password))
            if not json_out:
                typer.echo(f"added {len(added)} run(s) from the images in {rebuild}")
        runs = hist.runs(definition, limit)
    if json_out:
        print_json([r.to_dict() for r in runs])
        return
    for r in reversed(runs):
        took = f"{(r.ended_ns - r.started_ns) / 1e9:6.1f} s" if r.ended_ns else "      ? "
        size = human_size(r.bytes_written) if r.bytes_written is not None else "?"
        line = (f"{iso(r.started_ns)}  {took}  {r.definition or '?':<20} {r.type or '-':<4} {r.result:<7} "
                f"{size:>10}")
        if r.rebuilt:
            line += "  (rebuilt)"
        typer.echo(line + (f"  {r.error}" if r.error else ""))


history.__doc__ = (history.__doc__ or "") + EXIT_STATUS_HELP


def register(app: typer.Typer) -> None:
    app.command()(history)
