"""diskvault export IMAGE OUT --format qcow2|vhdx|vmdk|raw"""

from __future__ import annotations

import typer

from diskvault.cli._common import (EXIT_STATUS_HELP, PASSWORD_ENV, PASSWORD_FILE, handle_errors, password_options,
                                   print_json)
from diskvault.mount.export import ExportOptions, export_image
from diskvault.ui.progress import for_terminal
from diskvault.units import human_size


@handle_errors
def export(
    image: str = typer.Argument(..., help="Image file (any image of a backup set: its point in time)."),
    out: str = typer.Argument(..., help="Virtual disk file to write."),
    fmt: str = typer.Option("qcow2", "--format", help="qcow2, vhdx, vmdk or raw."),
    password_file: str = PASSWORD_FILE,
    password_env: str = PASSWORD_ENV,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Write the image's disk as a virtual disk file (sparse), bootable where the source was."""
    result = export_image(ExportOptions(image=image, out=out, format=fmt, overwrite=overwrite,
                                        password=password_options(password_file, password_env)),
                          for_terminal(json_out))
    if json_out:
        print_json(result.to_dict())
        return
    typer.echo(f"exported {image} to {result.out} ({result.format}, {human_size(result.file_size)}) "
               f"in {result.seconds:.1f} s")


export.__doc__ = (export.__doc__ or "") + EXIT_STATUS_HELP


def register(app: typer.Typer) -> None:
    app.command()(export)
