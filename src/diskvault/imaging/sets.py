"""Backup sets in a destination folder: list them from headers, and find the parent of a new
Differential or Incremental image (falling back to a Full, with the reason, when there is none)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from diskvault.errors import DiskvaultError, UsageError, WrongPasswordError
from diskvault.format.chain import Chain
from diskvault.format.layout import HEADER_SIZE, TYPE_FULL, Header
from diskvault.format.reader import NAME_RE, KeyRing


@dataclass
class Member:
    path: str
    header: Header

    @property
    def increment(self) -> int:
        return self.header.increment


def scan(folder: str) -> dict[str, list[Member]]:
    """Set id -> its complete-looking images (first parts), oldest increment first. Headers only."""
    sets: dict[str, list[Member]] = {}
    for name in sorted(os.listdir(folder)):
        m = NAME_RE.match(name)
        if not m or m.group(3) != "00":
            continue
        path = os.path.join(folder, name)
        try:
            with open(path, "rb") as f:
                header = Header.unpack(f.read(HEADER_SIZE))
        except (OSError, ValueError):
            continue
        sets.setdefault(m.group(1), []).append(Member(path, header))
    return sets


def disk_identity(table: dict) -> tuple:
    """What makes two images 'the same disk with the same layout'."""
    parts = tuple((p["number"], p["start"], p["size"], p.get("uuid", "")) for p in table["partitions"])
    return table["kind"], table["disk_size"], table["disk_id"], parts


def find_parent(folder: str, table: dict, image_type: str, keyring: KeyRing,
                encrypt: bool) -> tuple[Chain | None, str]:
    """(parent chain, "") or (None, why a Full is made instead)."""
    want = disk_identity(table)
    newest_first = sorted(scan(folder).values(), key=lambda ms: -max(m.header.created_ns for m in ms))
    for members in newest_first:
        base = [m for m in members if m.header.image_type == TYPE_FULL]
        pick = max(members, key=lambda m: m.increment) if image_type == "inc" else \
            (max(base, key=lambda m: m.increment) if base else None)
        if pick is None:
            continue
        if pick.header.encrypted != encrypt:
            continue
        try:
            chain = Chain(pick.path, keyring)
        except (UsageError, WrongPasswordError):
            raise
        except DiskvaultError as e:
            return None, f"the newest image set cannot be used as a parent ({e})"
        got = disk_identity(chain.metadata["table"])
        if got == want:
            return chain, ""
        chain.close()
        if got[2] and got[2] == want[2]:
            return None, f"the partition layout changed since {os.path.basename(pick.path)}"
    return None, f"no earlier {'encrypted ' if encrypt else ''}image of this disk in {folder}"
