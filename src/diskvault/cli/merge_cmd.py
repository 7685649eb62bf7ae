"""diskvault merge IMAGE [--keep N]"""

from __future__ import annotations

import typer

from diskvault.cli._common import (EXIT_STATUS_HELP, PASSWORD_ENV, PASSWORD_FILE, handle_errors,
                                   password_options, print_json)
from diskvault.imaging.merge import merge as merge_images
from diskvault.ui.progress import for_terminal


@handle_errors
def merge(
    image: str = typer.Argument(..., help="An image of the set: without --keep, it becomes a synthetic Full."),
    keep: int = typer.Option(None, "--keep", min=0, help="Merge all but the newest N Incrementals into the Full."),
    password_file: str = PASSWORD_FILE,
    password_env: str = PASSWORD_ENV,
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Merge a Full and the Incrementals after it into one synthetic Full (crash-safe)."""
    result = merge_images(image, keep, password_options(password_file, password_env), for_terminal(json_out))
    if json_out:
        print_json(result.to_dict())
        return
    typer.echo(f"merged {' + '.join(result.merged)} into {result.image} in {result.seconds:.1f} s; "
               f"removed {len(result.deleted)} file(s)")


merge.__doc__ = (merge.__doc__ or "") + EXIT_STATUS_HELP


def register(app: typer.Typer) -> None:
    app.command()(merge)
