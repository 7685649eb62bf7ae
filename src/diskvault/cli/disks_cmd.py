"""diskvault disks [FILE]"""

from __future__ import annotations

import typer
from rich.table import Table

from diskvault.cli._common import EXIT_STATUS_HELP, handle_errors, print_json
from diskvault.cli.info_cmd import console, partition_table, print_notes
from diskvault.disk.devices import list_disks
from diskvault.imaging.inspect import inspect_source
from diskvault.units import human_size


@handle_errors
def disks(
    path: str = typer.Argument(None, help="A disk-image file or device to inspect; all disks if omitted."),
    json_out: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """List disks and partitions (size, table, filesystem, label, UUID, used space). Read-only."""
    c = console()
    if path:
        d = inspect_source(path)
        if json_out:
            print_json(d)
            return
        c.print(f"{d['path']}: {human_size(d['size'])}, {d['table']} {d['disk_id']}", highlight=False)
        for w in d["warnings"]:
            c.print(f"warning: {w}", highlight=False)
        c.print(partition_table(d["partitions"], "", stored=False))
        print_notes(c, d["partitions"])
        return
    found = list_disks()
    if json_out:
        print_json(found)
        return
    t = Table()
    for col in ("device", "size", "table", "fs", "label", "uuid", "used", "mounted", "model"):
        t.add_column(col)
    for disk in found:
        t.add_row(disk.get("path", ""), human_size(disk.get("size") or 0), disk.get("pttype") or "",
                  disk.get("fstype") or "", disk.get("label") or "", disk.get("uuid") or disk.get("ptuuid") or "",
                  human_size(disk["fsused"]) if disk.get("fsused") else "",
                  ",".join(m for m in disk.get("mountpoints") or [] if m), disk.get("model") or "")
        for p in disk.get("partitions", []):
            t.add_row("  " + (p.get("path") or ""), human_size(p.get("size") or 0), "", p.get("fstype") or "",
                      p.get("label") or "", p.get("uuid") or "",
                      human_size(p["fsused"]) if p.get("fsused") else "",
                      ",".join(m for m in p.get("mountpoints") or [] if m), "")
    c.print(t)


disks.__doc__ = (disks.__doc__ or "") + EXIT_STATUS_HELP


def register(app: typer.Typer) -> None:
    app.command()(disks)
