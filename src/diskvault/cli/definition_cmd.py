"""diskvault definition create ... --save F.xml ; diskvault definition show F.xml"""

from __future__ import annotations

import dataclasses
import os
import re
from datetime import datetime

import typer

from diskvault.cli._common import PASSWORD_ENV, PASSWORD_FILE, handle_errors, parse_partitions, print_json
from diskvault.disk.devices import is_block_device
from diskvault.errors import DiskvaultError, UsageError
from diskvault.plans.cron import Cron
from diskvault.plans.definition import Definition, Email, KeepRule, Schedule, Source, Step, load, save
from diskvault.plans.resolve import disk_ref, resolve
from diskvault.plans.templates import template

definition_app = typer.Typer(no_args_is_help=True, help="Backup definitions: what, where, how and when (XML).")
KEEP_RE = re.compile(r"^(full|diff|inc)=(\d+)([dw]?)$")


def _source(source: str | None, files: list[str], partitions: str | None, include: list[str],
            exclude: list[str]) -> Source:
    if files:
        if source:
            raise UsageError("give a SOURCE disk or image, or --files folders, not both")
        return Source("files", paths=[os.path.abspath(p) for p in files], include=include, exclude=exclude)
    if not source:
        raise UsageError("give a SOURCE (disk device or disk-image file) or --files")
    if include or exclude:
        raise UsageError("--include/--exclude filter --files backups")
    if is_block_device(source):
        return Source("disk", disk=disk_ref(source), partitions=parse_partitions(partitions))
    if not os.path.isfile(source):
        raise UsageError(f"{source} is neither a block device nor a disk-image file")
    return Source("image", file=os.path.abspath(source), partitions=parse_partitions(partitions))


def _keep_rules(specs: list[str]) -> list[KeepRule]:
    rules = []
    for spec in specs:
        m = KEEP_RE.match(spec.strip())
        if not m:
            raise UsageError(f"--keep {spec!r}: expected TYPE=N (count), TYPE=Nd (days) or TYPE=Nw (weeks)")
        kind, n, unit = m.group(1), int(m.group(2)), m.group(3)
        rules.append(KeepRule(kind, count=n if not unit else None, days=n if unit == "d" else None,
                              weeks=n if unit == "w" else None))
    return rules


def _email(to: str | None, sender: str | None, smtp: str | None, security: str, user: str | None,
           password_file: str | None, password_env: str | None, on: str) -> list[Email]:
    if not to:
        return []
    if not smtp:
        raise UsageError("--mail-to needs --smtp HOST[:PORT]")
    host, _, port = smtp.partition(":")
    default_port = {"ssl": 465, "starttls": 587}.get(security, 25)
    return [Email(to=to, sender=sender or f"diskvault@{os.uname().nodename}", host=host,
                  port=int(port) if port else default_port,
                  security=security, user=user or "", password_file=os.path.abspath(password_file) if password_file
                  else "", password_env=password_env or "", on=[x for x in on.replace(",", " ").split() if x])]


@definition_app.command("create")
@handle_errors
def create(
    source: str = typer.Argument(None, help="Disk (found later by its WWN/serial/GUID) or disk-image file."),
    name: str = typer.Option(..., "--name", help="Short name: letters, digits, . _ - (units and mail use it)."),
    to: str = typer.Option(..., "--to", help="Destination folder."),
    save_to: str = typer.Option(..., "--save", help="Write the definition to this file."),
    files: list[str] = typer.Option(None, "--files", help="Back up these folders instead of a disk (repeat)."),
    include: list[str] = typer.Option(None, "--include", help="Files backup: only paths matching (repeat)."),
    exclude: list[str] = typer.Option(None, "--exclude", help="Files backup: skip paths matching (repeat)."),
    partitions: str = typer.Option(None, "--partitions", help="Only these partitions, e.g. 1,3."),
    compression: str = typer.Option("fast", "--compression", help="none, fast or high."),
    password_file: str = PASSWORD_FILE,
    password_env: str = PASSWORD_ENV,
    split: str = typer.Option("", "--split", help="Split images into parts of this size, e.g. 4G."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Verify each image after writing it."),
    comment: str = typer.Option("", "--comment", help="Free text kept in the definition."),
    plan: str = typer.Option("gfs", "--template", help="gfs, incremental-forever, differential or custom."),
    at: str = typer.Option("02:00", "--at", help="Time of day of the template's schedules."),
    full: str = typer.Option(None, "--full", help="Cron schedule for Full images (replaces the template's)."),
    diff: str = typer.Option(None, "--diff", help="Cron schedule for Differential images."),
    inc: str = typer.Option(None, "--inc", help="Cron schedule for Incremental images."),
    keep: list[str] = typer.Option(None, "--keep", help="Retention rule TYPE=N, TYPE=Nd or TYPE=Nw (repeat; "
                                   "replaces the template's rules)."),
    keep_incs: int = typer.Option(None, "--keep-incs", min=0, help="Synthetic full: merge all but the newest N "
                                  "Incrementals into the Full after each backup."),
    retention: str = typer.Option(None, "--retention", help="Apply retention 'before' or 'after' the backup."),
    scope: str = typer.Option(None, "--scope", help="'definition' (its own sets) or 'folder' (every set there)."),
    min_free_gib: float = typer.Option(None, "--min-free-gib", help="Delete the oldest sets while free space "
                                       "is under this many GiB."),
    random_delay: int = typer.Option(None, "--random-delay", min=0, help="systemd RandomizedDelaySec (seconds)."),
    pre: list[str] = typer.Option(None, "--pre", help="Shell command before the backup (repeat)."),
    post: list[str] = typer.Option(None, "--post", help="Shell command after the backup, always (repeat)."),
    mail_to: str = typer.Option(None, "--mail-to", help="Mail results to these addresses (comma-separated)."),
    mail_from: str = typer.Option(None, "--mail-from", help="Sender address."),
    smtp: str = typer.Option(None, "--smtp", help="SMTP server HOST[:PORT]."),
    smtp_security: str = typer.Option("none", "--smtp-security", help="none, starttls or ssl."),
    smtp_user: str = typer.Option(None, "--smtp-user", help="SMTP login."),
    smtp_password_file: str = typer.Option(None, "--smtp-password-file", help="SMTP password file."),
    smtp_password_env: str = typer.Option(None, "--smtp-password-env", help="SMTP password variable."),
    mail_on: str = typer.Option("failure,warning", "--mail-on",
                                help="Results that mail: failure,warning,success."),
    json_out: bool = typer.Option(False, "--json", help="Print the definition as JSON."),
) -> None:
    """Write a backup definition file (checked against docs/definition.xsd)."""
    p = template(plan, at)
    schedules = {t: c for t, c in (("full", full), ("diff", diff), ("inc", inc)) if c}
    if schedules:
        p.schedules = [s for s in p.schedules if s.type not in schedules]
        p.schedules += [Schedule(t, c) for t, c in schedules.items()]
        p.schedules.sort(key=lambda s: ("full", "diff", "inc").index(s.type))
    if keep:
        p.retention.rules = _keep_rules(keep)
    if keep_incs is not None:
        p.merge_keep_incs = keep_incs
    p.retention.apply = retention or p.retention.apply
    p.retention.scope = scope or p.retention.scope
    p.retention.min_free_gib = min_free_gib
    p.random_delay = random_delay if random_delay is not None else p.random_delay
    defn = Definition(
        name=name, source=_source(source, files or [], partitions, include or [], exclude or []),
        destination=os.path.abspath(to), plan=p, comment=comment, compression=compression,
        password_file=os.path.abspath(password_file) if password_file else "", password_env=password_env or "",
        split=split, verify=verify, pre=[Step(c) for c in pre or []], post=[Step(c) for c in post or []],
        emails=_email(mail_to, mail_from, smtp, smtp_security, smtp_user, smtp_password_file, smtp_password_env,
                      mail_on))
    save(defn, save_to)
    if json_out:
        print_json(dataclasses.asdict(defn))
    else:
        typer.echo(f"wrote {save_to}: {describe_source(defn)} -> {defn.destination}, plan {p.template}")


def describe_source(defn: Definition) -> str:
    src = defn.source
    what = {"disk": lambda: src.disk.describe(), "image": lambda: src.file,
            "files": lambda: ", ".join(src.paths)}[src.kind]()
    return what + (f" partitions {','.join(map(str, src.partitions))}" if src.partitions else "")


@definition_app.command("show")
@handle_errors
def show(definition: str = typer.Argument(..., help="Backup definition file (XML)."),
         json_out: bool = typer.Option(False, "--json", help="Print the definition as JSON.")) -> None:
    """Check a definition and show it, with where its source is now and its next runs."""
    defn = load(definition)
    try:
        found = resolve(defn.source)
    except DiskvaultError as e:
        found = f"not found: {e}"
    now = datetime.now()
    next_runs = {s.type: f"{Cron(s.cron).next_after(now):%Y-%m-%d %H:%M}" for s in defn.plan.schedules}
    if json_out:
        print_json(dataclasses.asdict(defn) | {"source_now": found, "next_runs": next_runs})
        return
    p = defn.plan
    lines = [f"{defn.name}  ({defn.path}, id {defn.id})"]
    if defn.comment:
        lines.append(f"  {defn.comment}")
    lines += [f"source:       {defn.source.kind}: {describe_source(defn)}",
              f"  now at:     {found}",
              f"destination:  {defn.destination}",
              f"compression:  {defn.compression}; encryption: "
              + (f"password from {defn.password_file or '$' + defn.password_env}" if defn.encrypted else "none")
              + (f"; split {defn.split}" if defn.split else "") + f"; verify: {'yes' if defn.verify else 'no'}",
              f"plan:         {p.template}" + (f", merge all but the newest {p.merge_keep_incs} Incrementals"
                                                if p.merge_keep_incs is not None else "")]
    lines += [f"  {s.type:<4} cron {s.cron:<16} next {next_runs[s.type]}" for s in p.schedules]
    r = p.retention
    rules = ", ".join(f"{k.type} " + " or ".join(x for x in (
        f"newest {k.count}" if k.count else "", f"{k.days} days" if k.days else "",
        f"{k.weeks} weeks" if k.weeks else "") if x) for k in r.rules) or "keep everything"
    lines.append(f"retention:    {rules}; {r.apply} the backup; scope {r.scope}"
                 + (f"; keep {r.min_free_gib:g} GiB free" if r.min_free_gib else ""))
    lines += [f"pre:          {s.command}" for s in defn.pre] + [f"post:         {s.command}" for s in defn.post]
    lines += [f"mail:         {e.to} via {e.host}:{e.port} on {', '.join(e.on)}" for e in defn.emails]
    typer.echo("\n".join(lines))


def register(app: typer.Typer) -> None:
    app.add_typer(definition_app, name="definition")
