"""diskvault verify IMAGE"""

from __future__ import annotations

import typer

from diskvault.cli._common import (EXIT_STATUS_HELP, PASSWORD_ENV, PASSWORD_FILE, handle_errors,
                                   password_options, print_json)
from diskvault.imaging.verify import verify_image
from diskvault.ui.progress import for_terminal
from diskvault.units import human_size


@handle_errors
def verify(
    image: str = typer.Argument(..., help="Image file (any part; parents are read too)."),
    password_file: str = PASSWORD_FILE,
    password_env: str = PASSWORD_ENV,
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Re-read every chunk of an image and check every checksum."""
    result = verify_image(image, for_terminal(json_out), password_options(password_file, password_env))
    if json_out:
        print_json(result.to_dict())
    else:
        for e in result.errors:
            typer.echo(f"diskvault: {e}", err=True)
        if result.ok:
            typer.echo(f"{image}: OK ({result.chunks} chunks, {human_size(result.bytes_checked)} checked "
                       f"in {result.seconds:.1f} s)")
        else:
            typer.echo(f"{image}: DAMAGED ({len(result.errors)} of {result.chunks} chunks bad)", err=True)
    if not result.ok:
        raise typer.Exit(1)


verify.__doc__ = (verify.__doc__ or "") + EXIT_STATUS_HELP


def register(app: typer.Typer) -> None:
    app.command()(verify)
