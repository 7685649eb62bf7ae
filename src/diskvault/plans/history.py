"""The history catalog: every run in SQLite — definition, type, start/end, bytes, result, error,
files produced — and its rebuild from the images and archives in a folder when the catalog is lost.

The catalog is $DISKVAULT_CATALOG, else /var/lib/diskvault/history.sqlite. Rebuilt rows have
``rebuilt = 1``: their end time, bytes read and (for sets we cannot decrypt) definition are unknown.
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import asdict, dataclass, field

from diskvault.errors import DiskvaultError
from diskvault.format.reader import KeyRing
from diskvault.plans.inventory import FORMATS, complete, read_metadata

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    definition TEXT NOT NULL,
    definition_id TEXT NOT NULL,
    definition_path TEXT NOT NULL DEFAULT '',
    type TEXT NOT NULL,
    type_reason TEXT NOT NULL DEFAULT '',
    started_ns INTEGER NOT NULL,
    ended_ns INTEGER,
    bytes_read INTEGER,
    bytes_written INTEGER,
    result TEXT NOT NULL,
    error TEXT NOT NULL DEFAULT '',
    notes TEXT NOT NULL DEFAULT '[]',
    files TEXT NOT NULL DEFAULT '[]',
    deleted TEXT NOT NULL DEFAULT '[]',
    set_id TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL DEFAULT '',
    destination TEXT NOT NULL DEFAULT '',
    rebuilt INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS runs_by_definition ON runs (definition_id, started_ns);
"""
JSON_COLUMNS = ("notes", "files", "deleted")


def default_catalog() -> str:
    return os.environ.get("DISKVAULT_CATALOG") or "/var/lib/diskvault/history.sqlite"


@dataclass
class RunRecord:
    definition: str
    definition_id: str
    type: str  # full | diff | inc | files, or "" when the run failed before choosing
    started_ns: int
    result: str  # success | warning | failure
    ended_ns: int | None = None
    bytes_read: int | None = None
    bytes_written: int | None = None
    error: str = ""
    notes: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # image files written
    deleted: list[str] = field(default_factory=list)  # files retention or merging removed
    set_id: str = ""
    source: str = ""
    destination: str = ""
    definition_path: str = ""
    type_reason: str = ""
    rebuilt: bool = False
    id: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class History:
    def __init__(self, path: str | None = None) -> None:
        self.path = path or default_catalog()
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        # check_same_thread: the built-in scheduler may run in a thread of a bigger program
        self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def record(self, run: RunRecord) -> int:
        row = {k: v for k, v in run.to_dict().items() if k != "id"}
        for k in JSON_COLUMNS:
            row[k] = json.dumps(row[k])
        row["rebuilt"] = int(row["rebuilt"])
        with self._db:
            cur = self._db.execute(f"INSERT INTO runs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                                   list(row.values()))
        run.id = cur.lastrowid
        return run.id

    def runs(self, definition: str | None = None, limit: int | None = None) -> list[RunRecord]:
        """Newest first; ``definition`` matches the name or the id."""
        sql, args = "SELECT * FROM runs", []
        if definition:
            sql += " WHERE definition = ? OR definition_id = ?"
            args += [definition, definition]
        sql += " ORDER BY started_ns DESC, id DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        cur = self._db.execute(sql, args)
        names = [d[0] for d in cur.description]
        out = []
        for values in cur.fetchall():
            row = dict(zip(names, values))
            for k in JSON_COLUMNS:
                row[k] = json.loads(row[k])
            row["rebuilt"] = bool(row["rebuilt"])
            out.append(RunRecord(**row))
        return out

    def last_run(self, definition_id: str) -> RunRecord | None:
        found = self.runs(definition_id, limit=1)
        return found[0] if found else None

    def known_files(self) -> set[str]:
        return {os.path.abspath(f) for r in self.runs() for f in r.files}

    def rebuild(self, folder: str, keyring: KeyRing | None = None) -> list[RunRecord]:
        """One row per image or archive in ``folder`` that no row names yet; returns the rows added."""
        keyring = keyring or KeyRing()
        known = self.known_files()
        added = []
        for fmt in FORMATS:
            for set_id, items in fmt.scan(folder).items():
                for item in items:
                    try:
                        files = [os.path.abspath(p) for p in fmt.part_paths(item.path)]
                    except DiskvaultError:
                        files = [os.path.abspath(item.path)]
                    if files[0] in known:
                        continue
                    meta = read_metadata(item.path, fmt, keyring)
                    owner = meta.get("definition") or {}
                    ok = complete(item.path, fmt)
                    source = (meta.get("source") or {}).get("path", "") or ", ".join(meta.get("roots") or [])
                    run = RunRecord(
                        definition=owner.get("name", ""), definition_id=owner.get("id", ""), type=item.type,
                        started_ns=item.created_ns, result="success" if ok else "failure",
                        error="" if ok else "incomplete", bytes_read=(meta.get("stats") or {}).get("bytes_read"),
                        bytes_written=sum(os.path.getsize(p) for p in files if os.path.exists(p)),
                        files=files, set_id=set_id, source=source, destination=os.path.abspath(folder),
                        rebuilt=True, notes=[] if meta else ["metadata unreadable (encrypted: give the password)"])
                    self.record(run)
                    added.append(run)
        return added
