"""diskvault mount IMAGE MOUNTPOINT / diskvault umount MOUNTPOINT"""

from __future__ import annotations

import typer

from diskvault.cli._common import (EXIT_STATUS_HELP, PASSWORD_ENV, PASSWORD_FILE, handle_errors, parse_partitions,
                                   password_options, print_json)
from diskvault.mount.session import MountOptions, mount_image, unmount_image


def _describe(state: dict) -> str:
    mp = state["mountpoint"]
    lines = [f"mounted {state['image']} read-only at {mp}",
             *(f"  {mp}/{name}" for name in state["files"]),
             *(f"  {mp}/{n}/  ({fstype} files{', read by diskvault' if n in state['served'] else ''})"
               for n, fstype in sorted(state["mounted"].items(), key=lambda x: int(x[0]))),
             *(f"  {note}" for note in state["notes"])]
    return "\n".join(lines)


@handle_errors
def mount(
    image: str = typer.Argument(..., help="Image file (any image of a backup set: its point in time)."),
    mountpoint: str = typer.Argument(..., help="Empty folder to mount on."),
    partition: str = typer.Option(None, "--partition", help="Also mount these partitions' files at "
                                  "MOUNTPOINT/N, e.g. 3 or 1,3."),
    all_partitions: bool = typer.Option(False, "--all", help="Mount the files of every partition that can be."),
    password_file: str = PASSWORD_FILE,
    password_env: str = PASSWORD_ENV,
    foreground: bool = typer.Option(False, "--foreground", help="Stay attached; Ctrl-C unmounts."),
    json_out: bool = typer.Option(False, "--json", help="Print the mount's state as JSON."),
) -> None:
    """Mount an image read-only: disk.img, partN.img and (--partition/--all) the partitions' files at N/."""
    if partition and all_partitions:
        raise typer.BadParameter("give --partition or --all, not both")

    def ready(state: dict) -> None:
        if json_out:
            print_json(state)
        else:
            typer.echo(_describe(state) + "\n(serving in the foreground; Ctrl-C unmounts)")

    state = mount_image(MountOptions(image=image, mountpoint=mountpoint, partitions=parse_partitions(partition),
                                     all_partitions=all_partitions,
                                     password=password_options(password_file, password_env),
                                     foreground=foreground), on_ready=ready)
    if foreground:
        typer.echo(f"unmounted {state['mountpoint']}", err=True)
    elif json_out:
        print_json(state)
    else:
        typer.echo(_describe(state))


@handle_errors
def umount(
    mountpoint: str = typer.Argument(..., help="Where an image is mounted."),
    lazy: bool = typer.Option(False, "--lazy", help="If busy, detach now and release when no longer used."),
    json_out: bool = typer.Option(False, "--json", help="Print what was detached as JSON."),
) -> None:
    """Unmount an image mounted with `diskvault mount`: its partitions' files, loop devices, the mount."""
    result = unmount_image(mountpoint, lazy=lazy)
    if json_out:
        print_json(result)
    else:
        typer.echo(f"unmounted {result['mountpoint']}")


mount.__doc__ = (mount.__doc__ or "") + EXIT_STATUS_HELP
umount.__doc__ = (umount.__doc__ or "") + EXIT_STATUS_HELP


def register(app: typer.Typer) -> None:
    app.command()(mount)
    app.command()(umount)
