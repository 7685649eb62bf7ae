"""diskvault info IMAGE"""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from rich.tree import Tree

from diskvault.cli._common import (EXIT_STATUS_HELP, PASSWORD_ENV, PASSWORD_FILE, handle_errors,
                                   password_options, print_json)
from diskvault.imaging.inspect import describe_image, describe_set
from diskvault.units import human_size


def console() -> Console:
    """Rich console that does not squeeze tables when output goes to a pipe or file."""
    c = Console()
    return c if c.is_terminal else Console(width=160)


def partition_table(parts: list[dict], title: str, stored: bool) -> Table:
    t = Table(title=title or None, title_justify="left")
    cols = ["#", "start", "size", "filesystem", "label", "uuid", "used", "method"] + (["stored"] if stored else [])
    for col in cols:
        t.add_column(col, justify="right" if col in ("#", "start", "size", "used", "stored") else "left",
                     no_wrap=True)
    for p in parts:
        fs = p.get("fs") or {}
        row = [str(p["number"]), human_size(p["start"]), human_size(p["size"]), fs.get("fstype", "unknown"),
               fs.get("label", ""), fs.get("uuid", ""), human_size(fs["used_bytes"]) if fs else "-", p["method"]]
        if stored:
            row.append(human_size(p["stored_bytes"]))
        t.add_row(*row)
    return t


def print_notes(c: Console, parts: list[dict]) -> None:
    for p in parts:
        if p.get("note"):
            c.print(f"partition {p['number']}: {p['note']}", highlight=False)


def set_tree(members: list[dict]) -> Tree:
    """Full at the root, each image under its parent."""
    by_parent: dict = {}
    for m in members:
        by_parent.setdefault(m["parent"], []).append(m)
    tree = Tree(f"backup set {members[0]['image'][:16]}" if members else "empty set")

    def add(node: Tree, parent) -> None:
        for m in by_parent.get(parent, []):
            add(node.add(f"{m['image']}  {m['type']:4}  {m['created']}  {human_size(m['size'])}"), m["increment"])

    add(tree, None)
    return tree


@handle_errors
def info(
    image: str = typer.Argument(..., help="Image file."),
    chain: bool = typer.Option(False, "--chain", help="Show the image's backup set as a tree."),
    password_file: str = PASSWORD_FILE,
    password_env: str = PASSWORD_ENV,
    json_out: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Show what an image holds: disk, partitions, filesystems, used and stored sizes, date, id."""
    if chain:
        members = describe_set(image)
        if json_out:
            print_json(members)
        else:
            console().print(set_tree(members))
        return
    d = describe_image(image, password_options(password_file, password_env))
    if json_out:
        print_json(d)
        return
    c = console()
    extras = [d["type"], f"increment {d['increment']}"] + (["encrypted"] if d["encrypted"] else []) + \
        ([f"{len(d['parts'])} parts"] if len(d["parts"]) > 1 else [])
    c.print(f"image      {d['image']}\n"
            f"image id   {d['image_id']}  ({', '.join(extras)})\n"
            f"chain      {' <- '.join(reversed(d['chain']))}\n"
            f"created    {d['created']} on {d['host']} by {d['writer']}\n"
            f"source     {d['source']['path']} ({human_size(d['disk_size'])}, {d['table']} {d['disk_id']})\n"
            f"stored     {human_size(d['stored_bytes'])} in this image; {human_size(d['used_bytes'])} imaged "
            f"({d['chunks']} chunks, {d['compression']} compression)", highlight=False)
    c.print(partition_table(d["partitions"], "partitions", stored=True))
    print_notes(c, d["partitions"])


info.__doc__ = (info.__doc__ or "") + EXIT_STATUS_HELP


def register(app: typer.Typer) -> None:
    app.command()(info)
