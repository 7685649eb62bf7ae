"""diskvault restore IMAGE TARGET"""

from __future__ import annotations

import typer

from diskvault.cli._common import (EXIT_STATUS_HELP, PASSWORD_ENV, PASSWORD_FILE, handle_errors, parse_partitions,
                                   password_options, print_json, tty_confirm)
from diskvault.imaging.restore import RestoreOptions, restore_image
from diskvault.ui.progress import for_terminal
from diskvault.units import human_size


@handle_errors
def restore(
    image: str = typer.Argument(..., help="Image file."),
    target: str = typer.Argument(..., help="Block device, or image file (created if missing)."),
    partitions: str = typer.Option(None, "--partitions", help="Only these partitions, e.g. 1,3."),
    password_file: str = PASSWORD_FILE,
    password_env: str = PASSWORD_ENV,
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Write an image back to a disk or an image file. Refuses mounted, busy or too-small targets."""
    result = restore_image(RestoreOptions(image=image, target=target, partitions=parse_partitions(partitions),
                                          password=password_options(password_file, password_env)),
                           confirm=tty_confirm(yes), progress=for_terminal(json_out))
    if json_out:
        print_json(result.to_dict())
        return
    typer.echo(f"restored {human_size(result.bytes_restored)} to {target} in {result.seconds:.1f} s "
               f"({human_size(result.bytes_written)} of data written)")


restore.__doc__ = (restore.__doc__ or "") + EXIT_STATUS_HELP


def register(app: typer.Typer) -> None:
    app.command()(restore)
