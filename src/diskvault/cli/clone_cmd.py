"""diskvault clone SOURCE TARGET"""

from __future__ import annotations

import typer

from diskvault.cli._common import EXIT_STATUS_HELP, handle_errors, print_json, tty_confirm
from diskvault.cli.restore_cmd import (DELTA, DRY_RUN, JSON_OUT, LAYOUT, RESIZE, SIZE, TEMP_DIR, TRIM, YES,
                                       size_option, transfer_report)
from diskvault.imaging.clone import CloneOptions, clone_disk
from diskvault.resize.layout import parse_resizes
from diskvault.ui.progress import for_terminal


@handle_errors
def clone(
    source: str = typer.Argument(..., help="Disk (block device) or disk-image file to copy."),
    target: str = typer.Argument(..., help="Block device, or image file (created if missing)."),
    layout: str = LAYOUT,
    resize: list[str] = RESIZE,
    dry_run: bool = DRY_RUN,
    delta: bool = DELTA,
    trim: bool = TRIM,
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Re-read and compare what was copied."),
    size: str = SIZE,
    temp_dir: str = TEMP_DIR,
    yes: bool = YES,
    json_out: bool = JSON_OUT,
) -> None:
    """Copy a disk to another disk directly, only its used blocks, resized to fit the target if asked.
    Refuses a target that is the source, mounted, busy or too small."""
    result = clone_disk(CloneOptions(source=source, target=target, layout=layout, resizes=parse_resizes(resize),
                                     dry_run=dry_run, delta=delta, trim=trim, verify=verify,
                                     target_size=size_option(size), temp_dir=temp_dir),
                        confirm=tty_confirm(yes), progress=for_terminal(json_out))
    if json_out:
        print_json(result.to_dict())
        return
    typer.echo(transfer_report(result.to_dict(), target, "cloned"))


clone.__doc__ = (clone.__doc__ or "") + EXIT_STATUS_HELP


def register(app: typer.Typer) -> None:
    app.command()(clone)
