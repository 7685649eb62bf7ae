"""diskvault restore IMAGE TARGET"""

from __future__ import annotations

import typer

from diskvault.cli._common import (
    EXIT_STATUS_HELP,
    PASSWORD_ENV,
    PASSWORD_FILE,
    handle_errors,
    parse_partitions,
    password_options,
    print_json,
    tty_confirm,
)
from diskvault.imaging.restore import RestoreOptions, restore_image
from diskvault.resize.layout import format_plan, parse_resizes
from diskvault.ui.progress import for_terminal
from diskvault.units import human_size, parse_size

LAYOUT_HELP = ("keep (same offsets; a GPT's backup moves to the end), fit (grow or shrink partitions to the "
               "target), or a JSON layout file. Default: the image's bytes exactly as imaged.")
RESIZE_HELP = "With --layout fit: partition N gets SIZE (e.g. 2=20G); repeat for more."


def size_option(text: str | None) -> int | None:
    try:
        return parse_size(text) if text else None
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


def transfer_report(result: dict, target: str, verb: str) -> str:
    """The one-line summary restore and clone print."""
    if result["dry_run"]:
        return format_plan(result["plan"]) + "\ndry run: nothing written"
    line = (f"{verb} {human_size(result['bytes_restored'])} to {target} in {result['seconds']:.1f} s "
            f"({human_size(result['bytes_written'])} of data written")
    if result["bytes_compared"]:
        line += f", {human_size(result['bytes_compared'])} compared"
    if result["bytes_discarded"]:
        line += f", {human_size(result['bytes_discarded'])} of free space discarded"
    line += ")"
    if result["checked"]:
        line += "\nresized and checked: " + ", ".join(result["checked"])
    return "\n".join([line] + [f"note: {n}" for n in result["plan"].get("notes", [])])


# options restore and clone share
LAYOUT = typer.Option("exact", "--layout", help=LAYOUT_HELP)
RESIZE = typer.Option(None, "--resize", help=RESIZE_HELP)
DRY_RUN = typer.Option(False, "--dry-run", help="Print the layout plan; write nothing.")
DELTA = typer.Option(False, "--delta", help="Rapid Delta: write only what differs on the target.")
TRIM = typer.Option(True, "--trim/--no-trim", help="Discard free space (TRIM; holes in files).")
SIZE = typer.Option(None, "--size", help="Size of a target file that does not exist yet.")
TEMP_DIR = typer.Option(None, "--temp-dir", help="Where partitions being shrunk are staged.")
YES = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation.")
JSON_OUT = typer.Option(False, "--json", help="Print the result as JSON.")


@handle_errors
def restore(
    image: str = typer.Argument(..., help="Image file."),
    target: str = typer.Argument(..., help="Block device, or image file (created if missing)."),
    partitions: str = typer.Option(None, "--partitions", help="Only these partitions, e.g. 1,3."),
    layout: str = LAYOUT,
    resize: list[str] = RESIZE,
    dry_run: bool = DRY_RUN,
    delta: bool = DELTA,
    trim: bool = TRIM,
    size: str = SIZE,
    temp_dir: str = TEMP_DIR,
    password_file: str = PASSWORD_FILE,
    password_env: str = PASSWORD_ENV,
    yes: bool = YES,
    json_out: bool = JSON_OUT,
) -> None:
    """Write an image back to a disk or an image file, at its layout or resized to fit the target.
    Refuses mounted, busy or too-small targets."""
    result = restore_image(RestoreOptions(image=image, target=target, partitions=parse_partitions(partitions),
                                          password=password_options(password_file, password_env), layout=layout,
                                          resizes=parse_resizes(resize), dry_run=dry_run, delta=delta, trim=trim,
                                          target_size=size_option(size), temp_dir=temp_dir),
                           confirm=tty_confirm(yes), progress=for_terminal(json_out))
    if json_out:
        print_json(result.to_dict())
        return
    typer.echo(transfer_report(result.to_dict(), target, "restored"))


restore.__doc__ = (restore.__doc__ or "") + EXIT_STATUS_HELP


def register(app: typer.Typer) -> None:
    app.command()(restore)
