"""Backup definitions: what to back up, where, how, and by which plan — one XML file each,
validated against definition.xsd (docs/DEFINITIONS.md describes every element).

    load(path) -> Definition      XSD, then the rules a schema cannot say (cron syntax, kind vs source)
    save(defn, path)              written atomically; passwords are never part of it
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from functools import lru_cache

from lxml import etree

from diskvault.crypto.keys import PasswordSource, password_source
from diskvault.errors import UsageError
from diskvault.plans.cron import Cron
from diskvault.units import parse_size

SCHEMA_PATH = os.path.join(os.path.dirname(__file__), "definition.xsd")
TYPES = ("full", "diff", "inc")
TEMPLATES = ("gfs", "incremental-forever", "differential", "custom")


class DefinitionError(UsageError):
    """bad backup definition {}: {}"""


@dataclass
class DiskRef:
    """A disk by what stays the same when /dev names change (see resolve.py)."""

    wwn: str = ""
    serial: str = ""
    guid: str = ""
    model: str = ""
    size: int = 0
    last_path: str = ""

    def describe(self) -> str:
        ids = [f"{k} {v}" for k, v in (("WWN", self.wwn), ("serial", self.serial), ("GUID", self.guid)) if v]
        return f"disk with {' / '.join(ids)}" + (f" ({self.model})" if self.model else "")


@dataclass
class Source:
    kind: str  # disk | image | files
    disk: DiskRef | None = None
    file: str = ""
    paths: list[str] = field(default_factory=list)
    partitions: list[int] | None = None
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)


@dataclass
class Schedule:
    type: str
    cron: str


@dataclass
class KeepRule:
    """Keep the sets holding the newest ``count`` images of ``type``, and/or those of the last
    ``days`` (``weeks`` is written back as given)."""

    type: str
    count: int | None = None
    days: int | None = None
    weeks: int | None = None

    @property
    def max_age_days(self) -> int | None:
        if self.days is None and self.weeks is None:
            return None
        return max(self.days or 0, (self.weeks or 0) * 7)


@dataclass
class Retention:
    rules: list[KeepRule] = field(default_factory=list)
    apply: str = "after"  # before | after the backup
    scope: str = "definition"  # definition: only this definition's sets; folder: every set there
    min_free_gib: float | None = None


@dataclass
class Plan:
    template: str = "custom"
    schedules: list[Schedule] = field(default_factory=list)
    merge_keep_incs: int | None = None  # Incremental Forever: older Incrementals merged into the Full
    retention: Retention = field(default_factory=Retention)
    random_delay: int = 0  # seconds, for systemd's RandomizedDelaySec

    def schedule_for(self, image_type: str) -> Cron | None:
        return next((Cron(s.cron) for s in self.schedules if s.type == image_type), None)


@dataclass
class Step:
    command: str
    timeout: int = 3600


@dataclass
class Email:
    to: str
    sender: str
    host: str
    port: int = 25
    security: str = "none"  # none | starttls | ssl
    user: str = ""
    password_file: str = ""
    password_env: str = ""
    on: list[str] = field(default_factory=lambda: ["failure", "warning"])


@dataclass
class Definition:
    name: str
    source: Source
    destination: str
    plan: Plan = field(default_factory=Plan)
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    comment: str = ""
    compression: str = "fast"
    password_file: str = ""
    password_env: str = ""
    split: str = ""
    verify: bool = True
    pre: list[Step] = field(default_factory=list)
    post: list[Step] = field(default_factory=list)
    emails: list[Email] = field(default_factory=list)
    path: str = ""  # the file it was loaded from

    @property
    def encrypted(self) -> bool:
        return bool(self.password_file or self.password_env)

    def password(self) -> PasswordSource | None:
        return password_source(self.password_file or None, self.password_env or None) if self.encrypted else None

    @property
    def split_size(self) -> int | None:
        return parse_size(self.split) if self.split else None


# ----------------------------------------------------------------------------- reading


@lru_cache(maxsize=1)
def _schema() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(SCHEMA_PATH))


def _int(el: etree._Element, name: str) -> int | None:
    value = el.get(name)
    return int(value) if value is not None else None


def _source(el: etree._Element) -> Source:
    disk, file = el.find("disk"), el.find("file")
    parts = el.findtext("partitions")
    src = Source(kind=el.get("kind"), file=file.get("path") if file is not None else "",
                 paths=[p.text for p in el.findall("path")],
                 partitions=[int(x) for x in parts.split()] if parts and parts.split() else None,
                 include=[i.text or "" for i in el.findall("include")],
                 exclude=[x.text or "" for x in el.findall("exclude")])
    if disk is not None:
        src.disk = DiskRef(wwn=disk.get("wwn", ""), serial=disk.get("serial", ""), guid=disk.get("guid", ""),
                           model=disk.get("model", ""), size=_int(disk, "size") or 0,
                           last_path=disk.get("last-path", ""))
    return src


def _plan(el: etree._Element) -> Plan:
    plan = Plan(template=el.get("template"), random_delay=_int(el, "random-delay") or 0,
                schedules=[Schedule(s.get("type"), s.get("cron")) for s in el.findall("schedule")])
    merge = el.find("merge")
    if merge is not None:
        plan.merge_keep_incs = _int(merge, "keep-incs")
    ret = el.find("retention")
    if ret is not None:
        free = ret.get("min-free-gib")
        plan.retention = Retention(
            rules=[KeepRule(k.get("type"), _int(k, "count"), _int(k, "days"), _int(k, "weeks"))
                   for k in ret.findall("keep")],
            apply=ret.get("apply", "after"), scope=ret.get("scope", "definition"),
            min_free_gib=float(free) if free is not None else None)
    return plan


def _email(el: etree._Element) -> Email:
    return Email(to=el.get("to"), sender=el.get("from"), host=el.get("host"), port=_int(el, "port") or 25,
                 security=el.get("security", "none"), user=el.get("user", ""),
                 password_file=el.get("password-file", ""), password_env=el.get("password-env", ""),
                 on=el.get("on", "failure warning").split())


def _steps(scripts: etree._Element | None, tag: str) -> list[Step]:
    found = scripts.findall(tag) if scripts is not None else []
    return [Step(s.text or "", _int(s, "timeout") or 3600) for s in found]


def from_xml(root: etree._Element, path: str = "") -> Definition:
    where = path or "(definition)"
    schema = _schema()
    if not schema.validate(root):
        err = schema.error_log.last_error
        raise DefinitionError(where, f"line {err.line}: {err.message}")
    enc, scripts, split = root.find("encryption"), root.find("scripts"), root.find("split")
    verify = root.findtext("verify")
    defn = Definition(
        name=root.get("name"), id=root.get("id"), comment=root.findtext("comment") or "",
        source=_source(root.find("source")), destination=root.find("destination").get("path"),
        compression=root.findtext("compression") or "fast",
        password_file=enc.get("password-file", "") if enc is not None else "",
        password_env=enc.get("password-env", "") if enc is not None else "",
        split=split.get("size") if split is not None else "",
        verify=verify is None or verify.strip() in ("true", "1"),
        plan=_plan(root.find("plan")),
        pre=_steps(scripts, "pre"), post=_steps(scripts, "post"),
        emails=[_email(e) for e in root.findall("notify/email")],
        path=os.path.abspath(path) if path else "")
    check(defn)
    return defn


def load(path: str) -> Definition:
    try:
        root = etree.parse(path, etree.XMLParser(resolve_entities=False, no_network=True)).getroot()
    except OSError as e:
        raise DefinitionError(path, e.strerror or str(e)) from None
    except etree.XMLSyntaxError as e:
        raise DefinitionError(path, f"not well-formed XML ({e})") from None
    return from_xml(root, path)


def check(defn: Definition) -> None:
    """What the schema cannot say; raises DefinitionError."""
    where = defn.path or defn.name

    def bad(why: str) -> None:
        raise DefinitionError(where, why)

    src = defn.source
    needs = {"disk": (src.disk is not None, "<disk>"), "image": (bool(src.file), "<file>"),
             "files": (bool(src.paths), "<path>")}
    present, element = needs[src.kind]
    if not present:
        bad(f"a {src.kind} source needs {element}")
    if src.kind == "disk" and not (src.disk.wwn or src.disk.serial or src.disk.guid):
        bad("<disk> needs a stable identifier: wwn, serial or guid")
    if src.kind != "files" and (src.include or src.exclude):
        bad("include/exclude filters belong to a files source")
    if src.kind == "files" and src.partitions:
        bad("partitions belong to a disk or image source")
    if defn.password_file and defn.password_env:
        bad("<encryption> takes password-file or password-env, not both")
    if defn.split:
        try:
            if parse_size(defn.split) < 1 << 20:
                bad("split size must be at least 1M")
        except ValueError as e:
            bad(str(e))
    plan = defn.plan
    types = [s.type for s in plan.schedules]
    if len(set(types)) != len(types):
        bad("one <schedule> per backup type")
    for s in plan.schedules:
        try:
            Cron(s.cron)
        except UsageError as e:
            bad(str(e))
    for rule in plan.retention.rules:
        if rule.count is None and rule.max_age_days is None:
            bad(f"<keep type=\"{rule.type}\"> needs count, days or weeks")
    if plan.merge_keep_incs is not None and src.kind == "files":
        bad("<merge> (synthetic full) is for disk images, not file backups")
    if plan.merge_keep_incs is not None and "diff" in types:
        bad("<merge> (synthetic full) works on a chain of Incrementals: the plan cannot also make Differentials")
    for email in defn.emails:
        if email.password_file and email.password_env:
            bad("<email> takes password-file or password-env, not both")


# ----------------------------------------------------------------------------- writing


def _sub(parent: etree._Element, tag: str, text: str | None = None, **attrs: object) -> etree._Element:
    el = etree.SubElement(parent, tag, {k.replace("_", "-"): str(v) for k, v in attrs.items()
                                        if v not in (None, "")})
    if text is not None:
        el.text = text
    return el


def to_xml(defn: Definition) -> etree._Element:
    root = etree.Element("definition", version="1", id=defn.id, name=defn.name)
    if defn.comment:
        _sub(root, "comment", defn.comment)
    src = defn.source
    s = _sub(root, "source", kind=src.kind)
    if src.disk is not None:
        d = src.disk
        _sub(s, "disk", wwn=d.wwn, serial=d.serial, guid=d.guid, model=d.model, size=d.size or None,
             last_path=d.last_path)
    if src.file:
        _sub(s, "file", path=src.file)
    for p in src.paths:
        _sub(s, "path", p)
    if src.partitions:
        _sub(s, "partitions", " ".join(map(str, src.partitions)))
    for pattern in src.include:
        _sub(s, "include", pattern)
    for pattern in src.exclude:
        _sub(s, "exclude", pattern)
    _sub(root, "destination", path=defn.destination)
    _sub(root, "compression", defn.compression)
    if defn.encrypted:
        _sub(root, "encryption", password_file=defn.password_file, password_env=defn.password_env)
    if defn.split:
        _sub(root, "split", size=defn.split)
    _sub(root, "verify", "true" if defn.verify else "false")
    plan = defn.plan
    p = _sub(root, "plan", template=plan.template, random_delay=plan.random_delay or None)
    for sched in plan.schedules:
        _sub(p, "schedule", type=sched.type, cron=sched.cron)
    if plan.merge_keep_incs is not None:
        _sub(p, "merge", keep_incs=plan.merge_keep_incs)
    ret = plan.retention
    r = _sub(p, "retention", apply=ret.apply, scope=ret.scope,
             min_free_gib=f"{ret.min_free_gib:g}" if ret.min_free_gib else None)
    for rule in ret.rules:
        _sub(r, "keep", type=rule.type, count=rule.count, days=rule.days, weeks=rule.weeks)
    if defn.pre or defn.post:
        sc = _sub(root, "scripts")
        for tag, steps in (("pre", defn.pre), ("post", defn.post)):
            for step in steps:
                _sub(sc, tag, step.command, timeout=step.timeout if step.timeout != 3600 else None)
    if defn.emails:
        n = _sub(root, "notify")
        for e in defn.emails:
            _sub(n, "email", to=e.to, **{"from": e.sender}, host=e.host, port=e.port, security=e.security,
                 user=e.user, password_file=e.password_file, password_env=e.password_env, on=" ".join(e.on))
    return root


def save(defn: Definition, path: str) -> None:
    """Check, then write ``path`` atomically (temp file + rename)."""
    root = to_xml(defn)
    from_xml(root, path)  # the same checks as loading: never write a file that would not load
    data = etree.tostring(root, pretty_print=True, xml_declaration=True, encoding="UTF-8")
    temp = f"{path}.tmp{os.getpid()}"
    with open(temp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)
    defn.path = os.path.abspath(path)
