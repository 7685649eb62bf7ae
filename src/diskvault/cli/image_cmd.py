"""diskvault image SOURCE --to DIR"""

from __future__ import annotations

import typer

from diskvault.cli._common import (EXIT_STATUS_HELP, PASSWORD_ENV, PASSWORD_FILE, handle_errors, parse_partitions,
                                   password_options, print_json)
from diskvault.units import parse_size
from diskvault.imaging.create import ImageOptions, create_image
from diskvault.imaging.verify import verify_image
from diskvault.ui.progress import for_terminal
from diskvault.units import human_size


@handle_errors
def image(
    source: str = typer.Argument(..., help="Block device or disk-image file to image."),
    to: str = typer.Option(..., "--to", help="Destination folder."),
    partitions: str = typer.Option(None, "--partitions", help="Only these partitions, e.g. 1,3."),
    compression: str = typer.Option("fast", "--compression", help="none, fast or high."),
    image_type: str = typer.Option("full", "--type", help="full, diff (changes since the Full) or inc "
                                   "(changes since the last image); falls back to full when there is no parent."),
    encrypt: bool = typer.Option(False, "--encrypt", help="Encrypt (AES-256-GCM); asks for the password."),
    password_file: str = PASSWORD_FILE,
    password_env: str = PASSWORD_ENV,
    split: str = typer.Option(None, "--split", help="Split into parts of this size, e.g. 4G or 650M "
                              "(automatic at 4 GiB - 1 on FAT destinations)."),
    forensic: bool = typer.Option(False, "--forensic", help="Every sector, whatever the filesystem."),
    change_tracking: bool = typer.Option(True, "--change-tracking/--no-change-tracking",
                                         help="diff/inc: skip reading files whose inodes show them unchanged "
                                         "(ext2/3/4); --no-change-tracking reads and compares every used block."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Re-read and check the image after writing."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Image a disk: its partition table exactly, and each partition's used blocks."""
    password = password_options(password_file, password_env, confirm=True) \
        if encrypt or password_file or password_env else None
    try:
        split_size = parse_size(split) if split else None
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    result = create_image(ImageOptions(source=source, to=to, partitions=parse_partitions(partitions),
                                       compression=compression, image_type=image_type, password=password,
                                       split_size=split_size, forensic=forensic,
                                       change_tracking=change_tracking), for_terminal(json_out))
    for note in result.notes:
        typer.echo(f"diskvault: {note}", err=True)
    out = result.to_dict()
    if verify:
        check = verify_image(result.image, for_terminal(json_out), password, newest_only=True)
        out["verified"] = check.ok
        if not check.ok:
            for e in check.errors:
                typer.echo(f"diskvault: {e}", err=True)
            if json_out:
                print_json(out)
            raise typer.Exit(1)
    if json_out:
        print_json(out)
        return
    rate = result.bytes_read / result.seconds / 1e6 if result.seconds else 0
    typer.echo(f"{result.image_type} image {result.image} ({result.image_id}, increment {result.increment}"
               + (f", {len(result.parts)} parts" if len(result.parts) > 1 else "") + ")")
    typer.echo(f"read {human_size(result.bytes_read)}, wrote {human_size(result.bytes_written)} in "
               f"{result.seconds:.1f} s ({rate:.0f} MB/s)" + (", verified" if verify else ", not verified"))


image.__doc__ = (image.__doc__ or "") + EXIT_STATUS_HELP


def register(app: typer.Typer) -> None:
    app.command()(image)
