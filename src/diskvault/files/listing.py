"""Look into file archives without restoring: list entries (ls) and compare two archives (diff).
Both read only the catalog of the named archive (each catalog describes the whole tree at its time)."""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass

from diskvault.crypto.keys import PasswordSource
from diskvault.errors import IntegrityError, UsageError
from diskvault.files.catalog import Entry, iter_entries, select
from diskvault.files.layout import (
    E_CHANGED,
    E_SPARSE,
    T_BLK,
    T_CHR,
    T_FILE,
    T_HARDLINK,
    T_SYMLINK,
    TYPE_CHARS,
)
from diskvault.files.reader import ArchiveFile
from diskvault.format.reader import KeyRing


def read_catalog(path: str, keyring: KeyRing) -> tuple[ArchiveFile, list[Entry]]:
    archive = ArchiveFile(path, keyring)
    try:
        return archive, list(iter_entries(archive.catalog))
    except ValueError as e:
        raise IntegrityError(f"{path}: catalog is damaged ({e})") from None
    finally:
        archive.close()


def list_entries(path: str, under: str | None = None, password: PasswordSource | None = None) -> list[Entry]:
    _, entries = read_catalog(path, KeyRing(password))
    try:
        return select(entries, [under] if under else [])
    except ValueError as e:
        raise UsageError(str(e)) from None


def entry_dict(e: Entry) -> dict:
    return {"path": e.name, "type": TYPE_CHARS[e.type], "mode": f"{stat.S_IMODE(e.mode):04o}", "uid": e.uid,
            "gid": e.gid, "user": e.user.decode(errors="replace"), "group": e.group.decode(errors="replace"),
            "size": e.size, "nlink": e.nlink, "mtime_ns": e.mtime_ns, "atime_ns": e.atime_ns,
            "ctime_ns": e.ctime_ns, "link": os.fsdecode(e.link) if e.link else None,
            "rdev": e.rdev if e.type in (T_CHR, T_BLK) else None, "xattrs": [n.decode(errors="replace")
                                                                             for n, _ in e.xattrs],
            "chunks": len(e.chunks), "sparse": bool(e.flags & E_SPARSE),
            "changed_while_read": bool(e.flags & E_CHANGED)}


def ls_line(e: Entry) -> str:
    """One `ls -l`-like line."""
    owner = f"{e.user.decode(errors='replace') or e.uid}/{e.group.decode(errors='replace') or e.gid}"
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.mtime_ns / 1e9))
    size = f"{os.major(e.rdev)},{os.minor(e.rdev)}" if e.type in (T_CHR, T_BLK) else str(e.size)
    line = f"{TYPE_CHARS[e.type]}{stat.filemode(e.mode)[1:]} {owner:<17} {size:>12} {when} {e.name}"
    if e.type == T_SYMLINK:
        line += f" -> {os.fsdecode(e.link)}"
    elif e.type == T_HARDLINK:
        line += f" link to {os.fsdecode(e.link)}"
    return line


@dataclass
class Change:
    kind: str  # + added, - removed, T type changed, M content changed, U metadata changed
    path: str
    what: str = ""

    def to_dict(self) -> dict:
        return {"change": self.kind, "path": self.path, "what": self.what}


def _meta(e: Entry) -> dict:
    return {"mode": e.mode, "owner": (e.uid, e.gid), "mtime": e.mtime_ns, "link": e.link, "xattrs": e.xattrs}


def _content_differs(old: Entry, new: Entry, by_hash: bool) -> bool:
    if old.size != new.size:
        return True
    if by_hash:
        return [c[2] for c in old.chunks] != [c[2] for c in new.chunks]
    return old.mtime_ns != new.mtime_ns


def diff_archives(a: str, b: str, password: PasswordSource | None = None) -> list[Change]:
    """What changed from archive ``a`` to archive ``b``. Content is compared by chunk hashes when
    both archives hash alike (same set, or both unencrypted), else by size and mtime."""
    keyring = KeyRing(password)
    arch_a, old = read_catalog(a, keyring)
    arch_b, new = read_catalog(b, keyring)
    by_hash = arch_a.hash_key == arch_b.hash_key
    before = {e.path: e for e in old}
    changes: list[Change] = []
    seen = set()
    for e in new:
        seen.add(e.path)
        o = before.get(e.path)
        if o is None:
            changes.append(Change("+", e.name))
        elif o.type != e.type:
            changes.append(Change("T", e.name, f"{TYPE_CHARS[o.type]} -> {TYPE_CHARS[e.type]}"))
        elif e.type == T_FILE and _content_differs(o, e, by_hash):
            changes.append(Change("M", e.name, f"size {o.size} -> {e.size}" if o.size != e.size else "content"))
        else:
            what = [k for k, v in _meta(e).items() if _meta(o)[k] != v]
            if what:
                changes.append(Change("U", e.name, ", ".join(what)))
    changes += [Change("-", o.name) for o in old if o.path not in seen]
    return sorted(changes, key=lambda c: c.path)
