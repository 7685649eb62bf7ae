"""diskvault clone SOURCE TARGET"""

from __future__ import annotations

import typer

from diskvault.cli._common import EXIT_STATUS_HELP, handle_errors, print_json, tty_confirm
from diskvault.cli.restore_cmd import LAYOUT_HELP, RESIZE_HELP, size_option, transfer_report
from diskvault.imaging.clone import CloneOptions, clone_disk
from diskvault.resize.layout import parse_resizes
from diskvault.ui.progress import for_terminal


@handle_errors
def clone(
    source: str = typer.Argument(..., help="Disk (block device) or disk-image file to copy."),
    target: str = typer.Argument(..., help="Block device, or image file (created if missing)."),
    layout: str = typer.Option("exact", "--layout", help=LAYOUT_HELP),
    resize: list[str] = typer.Option(None, "--resize", help=RESIZE_HELP),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the layout plan; write nothing."),
    delta: bool = typer.Option(False, "--delta", help="Rapid Delta: write only what differs on the target."),
    trim: bool = typer.Option(True, "--trim/--no-trim", help="Discard free space (TRIM; holes in files)."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Re-read and compare what was copied."),
    size: str = typer.Option(None, "--size", help="Size of a target file that does not exist yet."),
    temp_dir: str = typer.Option(None, "--temp-dir", help="Where partitions being shrunk are staged."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
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
