"""diskvault ls / cat / extract / search: files inside an image, without mounting anything."""

from __future__ import annotations

import base64
import dataclasses
import os
import stat
import sys
import time

import typer

from diskvault.browse.base import Entry
from diskvault.browse.extract import POLICIES
from diskvault.browse.extract import extract as extract_tree
from diskvault.browse.open import opened
from diskvault.browse.search import history, walk
from diskvault.browse.search import search as search_chain
from diskvault.cli._common import (EXIT_STATUS_HELP, PASSWORD_ENV, PASSWORD_FILE, handle_errors,
                                   password_options, print_json)
from diskvault.errors import UsageError
from diskvault.format.chain import Chain
from diskvault.format.reader import KeyRing
from diskvault.units import human_size

LOCATION_HELP = "N:/path inside partition N (a bare /path when the image has one partition or no table)."
KIND_BITS = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK, "other": 0}


def warn(message: str) -> None:
    typer.echo(f"diskvault: warning: {message}", err=True)


def say(line: str) -> None:
    """One line of output; names that are not UTF-8 go out as the bytes the filesystem holds."""
    typer.echo(line.encode("utf-8", "surrogateescape"))


def entry_dict(entry: Entry, partition: int | None = None) -> dict:
    d = dataclasses.asdict(entry)
    d["xattrs"] = {k: base64.b64encode(v).decode() for k, v in entry.xattrs.items()}
    return d if partition is None else {"partition": partition} | d


def when(ns: int | None) -> str:
    return "-" if ns is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns // 1_000_000_000))


def long_line(entry: Entry, name: str) -> str:
    mode = stat.filemode(KIND_BITS[entry.kind] | (entry.mode or 0)) if entry.mode is not None else "?" * 10
    target = f" -> {entry.link_target}" if entry.kind == "symlink" else ""
    uid, gid = ("-" if v is None else v for v in (entry.uid, entry.gid))
    return f"{mode} {entry.nlink:>3} {uid:>6} {gid:>6} {entry.size:>12} {when(entry.mtime_ns)} {name}{target}"


@handle_errors
def ls(
    image: str = typer.Argument(..., help="Image file (any point of a chain)."),
    location: str = typer.Argument("/", help=LOCATION_HELP),
    long: bool = typer.Option(False, "--long", "-l", help="Mode, links, owner, size, mtime."),
    recursive: bool = typer.Option(False, "--recursive", "-R", help="Everything below, as full paths."),
    password_file: str = PASSWORD_FILE,
    password_env: str = PASSWORD_ENV,
    json_out: bool = typer.Option(False, "--json", help="Print the entries as JSON."),
) -> None:
    """List a directory (or show one entry) inside an image."""
    with opened(image, password_options(password_file, password_env), location) as (tree, path):
        entry = tree.stat(path)
        if entry.kind != "dir":
            entries = [entry]
        else:
            entries = list(walk(tree, path)) if recursive else tree.listdir(path)
    if json_out:
        print_json([entry_dict(e) for e in entries])
        return
    for e in entries:
        name = e.path if recursive or entry.kind != "dir" else e.name
        say(long_line(e, name) if long else name)


@handle_errors
def cat(
    image: str = typer.Argument(..., help="Image file (any point of a chain)."),
    location: str = typer.Argument(..., help=LOCATION_HELP),
    password_file: str = PASSWORD_FILE,
    password_env: str = PASSWORD_ENV,
) -> None:
    """Write a file inside an image to standard output."""
    with opened(image, password_options(password_file, password_env), location) as (tree, path), \
            tree.open(path) as f:
        out = sys.stdout.buffer
        try:
            for block in iter(lambda: f.read(1 << 20), b""):
                out.write(block)
            out.flush()
        except BrokenPipeError:  # the reader went away (cat | head): not a failure
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


@handle_errors
def extract(
    image: str = typer.Argument(..., help="Image file (any point of a chain)."),
    location: str = typer.Argument(..., help=LOCATION_HELP),
    dest: str = typer.Argument(..., help="Where to put it: into DEST when DEST is a folder, else as DEST."),
    overwrite: str = typer.Option("never", "--overwrite", help="Existing files: never, older (replace "
                                  "those older than the image's) or always replaced."),
    password_file: str = PASSWORD_FILE,
    password_env: str = PASSWORD_ENV,
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Copy a file or folder out of an image, keeping modes, owners, times, links, xattrs and holes."""
    if overwrite not in POLICIES:
        raise UsageError(f"--overwrite must be one of {', '.join(POLICIES)} (got {overwrite!r})")
    with opened(image, password_options(password_file, password_env), location) as (tree, path):
        result = extract_tree(tree, path, dest, overwrite, warn=warn)
    if json_out:
        print_json(result.to_dict())
        return
    typer.echo(f"extracted {result.files} files ({human_size(result.bytes)}), {result.dirs} folders, "
               f"{result.symlinks} symlinks, {result.hardlinks} hard links to {dest}"
               + (f"; kept {result.skipped} existing" if result.skipped else "")
               + (f"; {len(result.warnings)} warnings" if result.warnings else ""))


@handle_errors
def search(
    image: str = typer.Argument(..., help="Image file (any point of a chain)."),
    pattern: str = typer.Argument(..., help="Glob on names (*.conf), or on paths when it has a / "
                                  "(/home/*/notes.txt; * also matches /)."),
    chain: bool = typer.Option(False, "--chain", help="For each match, the images of the chain where it was "
                               "added, changed or deleted."),
    password_file: str = PASSWORD_FILE,
    password_env: str = PASSWORD_ENV,
    json_out: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Find files by name or path across every partition of an image."""
    keyring = KeyRing(password_options(password_file, password_env))
    if chain:
        rows = history(image, keyring, pattern, warn)
        if json_out:
            print_json(rows)
            return
        for row in rows:
            say(f"{row['partition']}:{row['path']}")
            for c in row["changes"]:
                size = human_size(c["size"]) if "size" in c else ""
                typer.echo(f"  {c['change']:<8} {c['image']}  {c['type']:<4} {size:>10}  "
                           f"{when(c.get('mtime_ns')) if c['change'] != 'deleted' else ''}".rstrip())
        return
    with Chain(image, keyring) as ch:
        hits = search_chain(ch, pattern, warn)
    if json_out:
        print_json([entry_dict(h.entry, h.partition) for h in hits])
        return
    for h in hits:
        say(f"{h.partition}:{h.entry.path}")


for _command in (ls, cat, extract, search):
    _command.__doc__ = (_command.__doc__ or "") + EXIT_STATUS_HELP


def register(app: typer.Typer) -> None:
    app.command("ls")(ls)
    app.command()(cat)
    app.command()(extract)
    app.command()(search)
