"""The diskvault command: a Typer root with one thin module per command."""

from __future__ import annotations

import logging

import typer

from diskvault import __version__
from diskvault.cli.disks_cmd import disks
from diskvault.cli.image_cmd import image
from diskvault.cli.info_cmd import info
from diskvault.cli.merge_cmd import merge
from diskvault.cli.restore_cmd import restore
from diskvault.cli.verify_cmd import verify

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Disk imaging, cloning and backup for Linux.",
                  context_settings={"help_option_names": ["-h", "--help"]})


def _version(value: bool) -> None:
    if value:
        typer.echo(f"diskvault {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what happens."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="diskvault: %(message)s")


for command in (disks, image, info, verify, restore, merge):
    app.command()(command)


def main() -> None:
    app()
