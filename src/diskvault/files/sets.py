"""File-backup sets in a destination folder: list them from headers, and pick the parent of a new
Differential (the set's Full) or Incremental (the set's newest archive) for the same roots."""

from __future__ import annotations

import os

from diskvault.errors import DiskvaultError, UsageError, WrongPasswordError
from diskvault.files.layout import NAME_RE, TYPE_FULL, ArchiveHeader
from diskvault.files.reader import ArchiveChain, read_header
from diskvault.format.reader import KeyRing


def scan(folder: str) -> dict[str, list[tuple[str, ArchiveHeader]]]:
    """Set id -> (first-part path, header) of each archive, oldest increment first. Headers only."""
    sets: dict[str, list[tuple[str, ArchiveHeader]]] = {}
    for name in sorted(os.listdir(folder)):
        m = NAME_RE.match(name)
        if not m or m.group(3) != "00":
            continue
        path = os.path.join(folder, name)
        try:
            sets.setdefault(m.group(1), []).append((path, read_header(path)))
        except DiskvaultError:
            continue
    return sets


def next_increment(folder: str, set_id: bytes) -> int:
    return max(h.increment for _, h in scan(folder).get(set_id.hex().upper(), [])) + 1


def find_parent(folder: str, roots: list[str], archive_type: str, keyring: KeyRing,
                encrypt: bool) -> tuple[ArchiveChain | None, str]:
    """(parent chain, "") or (None, why a Full is made instead). The newest set that backed up
    the same roots with the same encryption wins."""
    newest_first = sorted(scan(folder).values(), key=lambda ms: -max(h.created_ns for _, h in ms))
    for members in newest_first:
        fulls = [m for m in members if m[1].archive_type == TYPE_FULL]
        pick = max(members, key=lambda m: m[1].increment) if archive_type == "inc" else \
            (max(fulls, key=lambda m: m[1].increment) if fulls else None)
        if pick is None or pick[1].encrypted != encrypt:
            continue
        try:
            chain = ArchiveChain(pick[0], keyring)
        except (UsageError, WrongPasswordError):
            raise
        except DiskvaultError as e:
            return None, f"the newest backup set cannot be used as a parent ({e})"
        if chain.metadata.get("roots") == roots:
            return chain, ""
        chain.close()
    return None, f"no earlier {'encrypted ' if encrypt else ''}backup of {', '.join(roots)} in {folder}"
