"""The diskvault command: a Typer root; every ``cli/*_cmd.py`` module adds its command(s) through
``register(app)``, so a new command is one new module."""

from __future__ import annotations

import importlib
import logging
import pkgutil
import sys

import typer

from diskvault import __version__, cli

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


def _register(argv: list[str]) -> None:
    """Import only the module of the command being run when its name says which (start-up time
    matters: scripts and benchmarks call diskvault often); every module for help and the rest."""
    modules = sorted(m.name for m in pkgutil.iter_modules(cli.__path__) if m.name.endswith("_cmd"))
    words = [a for a in argv[1:] if not a.startswith("-")]
    if words and f"{words[0]}_cmd" in modules and "--help" not in argv and "-h" not in argv:
        modules = [f"{words[0]}_cmd"]
    for module in modules:
        importlib.import_module(f"diskvault.cli.{module}").register(app)


def main() -> None:
    _register(sys.argv)
    app()
