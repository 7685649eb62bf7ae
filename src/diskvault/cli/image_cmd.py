"""diskvault image SOURCE --to DIR"""

from __future__ import annotations

import typer

from diskvault.cli._common import EXIT_STATUS_HELP, handle_errors, parse_partitions, print_json
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
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Re-read and check the image after writing."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Image a disk: its partition table exactly, and each partition's used blocks."""
    result = create_image(ImageOptions(source=source, to=to, partitions=parse_partitions(partitions),
                                       compression=compression), for_terminal(json_out))
    out = result.to_dict()
    if verify:
        check = verify_image(result.image, for_terminal(json_out))
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
    typer.echo(f"image {result.image} ({result.image_id})")
    typer.echo(f"read {human_size(result.bytes_read)}, wrote {human_size(result.bytes_written)} in "
               f"{result.seconds:.1f} s ({rate:.0f} MB/s)" + (", verified" if verify else ", not verified"))


image.__doc__ = (image.__doc__ or "") + EXIT_STATUS_HELP
