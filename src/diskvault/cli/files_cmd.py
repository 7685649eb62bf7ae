"""diskvault files backup|ls|restore|verify|diff"""

from __future__ import annotations

import os
import sys

import typer

from diskvault.cli._common import (
    EXIT_STATUS_HELP,
    PASSWORD_ENV,
    PASSWORD_FILE,
    handle_errors,
    password_options,
    print_json,
)
from diskvault.ui.files_progress import for_terminal
from diskvault.units import human_size, parse_size

# The core modules (pyfastcdc, pathspec, numpy) are imported by each command when it runs, so the
# other commands start without them.

files_app = typer.Typer(no_args_is_help=True, help="Back up and restore files and folders (archives "
                        "SETID-II-SS.dvbak: deduplicated, compressed, optionally encrypted).")


def _say(lines: list[str], prefix: str = "") -> None:
    for line in lines:
        typer.echo(f"diskvault: {prefix}{line}", err=True)


def _print_lines(lines) -> None:
    """Print to stdout; a reader that goes away (``| head``) ends the listing quietly."""
    try:
        for line in lines:
            typer.echo(line)
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


@handle_errors
def backup(
    paths: list[str] = typer.Argument(..., help="Files and folders to back up."),
    to: str = typer.Option(..., "--to", help="Destination folder."),
    include: list[str] = typer.Option([], "--include", help="Only paths matching this gitignore-style pattern "
                                      "(matched against the absolute path without its leading '/'); repeatable."),
    exclude: list[str] = typer.Option([], "--exclude", help="Leave out paths matching this gitignore-style "
                                      "pattern, e.g. '*.log', 'cache/', '/home/*/tmp'; repeatable."),
    exclude_file: list[str] = typer.Option([], "--exclude-file", help="Read exclude patterns from this file "
                                           "(gitignore syntax); repeatable."),
    exclude_caches: bool = typer.Option(False, "--exclude-caches", help="Leave out the contents of folders "
                                        "holding a CACHEDIR.TAG."),
    one_file_system: bool = typer.Option(False, "--one-file-system", help="Do not descend into other filesystems."),
    special: bool = typer.Option(False, "--special", help="Also back up device nodes and sockets."),
    backup_type: str = typer.Option("full", "--type", help="full, diff (changes since the Full) or inc (changes "
                                    "since the last backup); falls back to full when there is no parent."),
    compression: str = typer.Option("fast", "--compression", help="none, fast or high."),
    encrypt: bool = typer.Option(False, "--encrypt", help="Encrypt (AES-256-GCM); asks for the password."),
    password_file: str = PASSWORD_FILE,
    password_env: str = PASSWORD_ENV,
    split: str = typer.Option(None, "--split", help="Split into parts of this size, e.g. 4G "
                              "(automatic at 4 GiB - 1 on FAT destinations)."),
    verify: bool = typer.Option(False, "--verify/--no-verify", help="Re-read and check the archive after writing."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Back up files and folders into an archive; Diff/Inc store only what changed."""
    from diskvault.files.backup import BackupOptions, backup_files
    from diskvault.files.verify import verify_archive
    from diskvault.files.walker import Filters

    password = password_options(password_file, password_env, confirm=True) \
        if encrypt or password_file or password_env else None
    try:
        split_size = parse_size(split) if split else None
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    filters = Filters(include=include, exclude=exclude, exclude_files=exclude_file, exclude_caches=exclude_caches,
                      one_file_system=one_file_system, special=special)
    result = backup_files(BackupOptions(paths=paths, to=to, filters=filters, archive_type=backup_type,
                                        compression=compression, password=password, split_size=split_size),
                          for_terminal(json_out))
    _say(result.notes)
    _say(result.changed, "changed while being read (stored as last read, flagged): ")
    _say(result.errors, "not backed up: ")
    out = result.to_dict()
    if verify:
        check = verify_archive(result.archive, for_terminal(json_out), password)
        out["verified"] = check.ok
        _say(check.errors)
    if json_out:
        print_json(out)
    else:
        rate = result.bytes_read / result.seconds / 1e6 if result.seconds else 0
        typer.echo(f"{result.archive_type} backup {result.archive} ({result.set_id}, increment {result.increment})")
        typer.echo(f"{result.entries} entries: {result.files_read} files read, {result.files_unchanged} unchanged; "
                   f"read {human_size(result.bytes_read)}, {human_size(result.bytes_new)} new, wrote "
                   f"{human_size(result.bytes_written)} in {result.seconds:.1f} s ({rate:.0f} MB/s)"
                   + (", verified" if verify and out["verified"] else ""))
    if result.errors or (verify and not out["verified"]):
        if not json_out:
            typer.echo(f"diskvault: archive written, but {len(result.errors)} entries could not be read"
                       if result.errors else "diskvault: the archive does not verify", err=True)
        raise typer.Exit(1)


@handle_errors
def ls(
    archive: str = typer.Argument(..., help="Archive file (.dvbak)."),
    path: str | None = typer.Argument(None, help="Only this path and what is below it."),
    password_file: str = PASSWORD_FILE,
    password_env: str = PASSWORD_ENV,
    json_out: bool = typer.Option(False, "--json", help="Print the entries as JSON."),
) -> None:
    """List the entries of an archive (the whole tree at the time of that backup)."""
    from diskvault.files.listing import entry_dict, list_entries, ls_line

    entries = list_entries(archive, path, password_options(password_file, password_env))
    if json_out:
        print_json([entry_dict(e) for e in entries])
    else:
        _print_lines(ls_line(e) for e in entries)


def _ask(policy: str):
    if policy != "ask":
        return None
    if sys.stdin.isatty():
        return lambda question: typer.confirm(question, default=False)
    typer.echo("diskvault: --overwrite ask without a terminal: existing entries are kept", err=True)
    return None


@handle_errors
def restore(
    archive: str = typer.Argument(..., help="Archive file (.dvbak); its parents are read too."),
    paths: list[str] | None = typer.Argument(None, help="Only these archive paths (and what is below them)."),
    to: str = typer.Option(..., "--to", help="Folder to restore into (created if missing)."),
    overwrite: str = typer.Option("never", "--overwrite", help="Existing entries: never (keep), older (replace "
                                  "when the archive's is newer), always, ask."),
    numeric_owner: bool = typer.Option(False, "--numeric-owner", help="Restore uid/gid numbers, not names."),
    password_file: str = PASSWORD_FILE,
    password_env: str = PASSWORD_ENV,
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Restore an archive, or chosen paths of it, into a folder.

    Names that would leave the folder are refused and symlinks are never followed."""
    from diskvault.files.restore import RestoreOptions, restore_files

    result = restore_files(RestoreOptions(archive=archive, to=to, paths=paths or [], overwrite=overwrite,
                                          numeric_owner=numeric_owner, confirm=_ask(overwrite),
                                          password=password_options(password_file, password_env)),
                           for_terminal(json_out))
    if json_out:
        print_json(result.to_dict())
    else:
        _say(result.warnings)
        _say(result.errors)
        if result.skipped:
            typer.echo(f"diskvault: kept {len(result.skipped)} existing entries (--overwrite {overwrite})", err=True)
        typer.echo(f"restored {result.entries} entries ({result.files} files, {human_size(result.bytes_written)}) "
                   f"to {to} in {result.seconds:.1f} s")
    if not result.ok:
        raise typer.Exit(1)


@handle_errors
def verify(
    archive: str = typer.Argument(..., help="Archive file (.dvbak); its parents are checked too."),
    password_file: str = PASSWORD_FILE,
    password_env: str = PASSWORD_ENV,
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Re-read every chunk and catalog of an archive and its parents and check every checksum."""
    from diskvault.files.verify import verify_archive

    result = verify_archive(archive, for_terminal(json_out), password_options(password_file, password_env))
    if json_out:
        print_json(result.to_dict())
    else:
        _say(result.errors)
        state = "OK" if result.ok else f"DAMAGED ({len(result.errors)} problems)"
        typer.echo(f"{archive}: {state} ({result.members} archives, {result.chunks} chunks, {result.entries} "
                   f"entries, {human_size(result.bytes_checked)} checked in {result.seconds:.1f} s)",
                   err=not result.ok)
    if not result.ok:
        raise typer.Exit(1)


@handle_errors
def diff(
    archive1: str = typer.Argument(..., help="The older archive."),
    archive2: str = typer.Argument(..., help="The newer archive."),
    password_file: str = PASSWORD_FILE,
    password_env: str = PASSWORD_ENV,
    json_out: bool = typer.Option(False, "--json", help="Print the changes as JSON."),
) -> None:
    """What changed between two archives: + added, - removed, M content, U metadata, T type."""
    from diskvault.files.listing import diff_archives

    changes = diff_archives(archive1, archive2, password_options(password_file, password_env))
    if json_out:
        print_json([c.to_dict() for c in changes])
        return
    _print_lines(f"{c.kind} {c.path}" + (f"  ({c.what})" if c.what else "") for c in changes)


for _cmd in (backup, ls, restore, verify, diff):
    _cmd.__doc__ = (_cmd.__doc__ or "") + EXIT_STATUS_HELP
    files_app.command()(_cmd)


def register(app: typer.Typer) -> None:
    app.add_typer(files_app, name="files")
