"""What a destination folder holds, as retention and plans need it: each backup set with its images,
the definition that made it (from the image metadata), whether it can be restored, whether it is
being written, and the bytes it takes on disk.

Ownership is read from the set's Full (metadata ``definition``); an encrypted set whose password
we do not have has an unknown owner and is never treated as ours.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from diskvault.errors import DiskvaultError
from diskvault.format.layout import FOOTER_SIZE, TYPE_FULL, TYPE_NAMES, Footer
from diskvault.format.reader import ImageFile, KeyRing, part_paths
from diskvault.imaging.sets import Member, scan

PARTIAL_RE = re.compile(r"^([0-9A-F]{16})-\d{2}-\d{2}\.dvimg(\.merge)?\.partial$")


@dataclass
class SetInfo:
    set_id: str
    members: list[Member]  # oldest increment first
    owner: str | None  # definition id, None when not known
    owner_name: str
    busy: bool  # an image of this set is being written or merged
    restorable: bool  # its Full is complete
    files: list[str]  # every part of every member
    bytes: int  # allocated on disk

    @property
    def full(self) -> Member | None:
        return next((m for m in self.members if m.header.image_type == TYPE_FULL), None)

    @property
    def created_ns(self) -> int:
        return min(m.header.created_ns for m in self.members)

    @property
    def newest_ns(self) -> int:
        return max(m.header.created_ns for m in self.members)

    def images(self, image_type: str) -> list[Member]:
        return [m for m in self.members if TYPE_NAMES.get(m.header.image_type) == image_type]


def complete(path: str) -> bool:
    """Header and footer checks only (cheap, no password): all parts there, footer valid."""
    try:
        parts = part_paths(path)
        with open(parts[-1], "rb") as f:
            f.seek(-FOOTER_SIZE, os.SEEK_END)
            footer = Footer.unpack(f.read(FOOTER_SIZE))
        return footer.part_count == len(parts)
    except (OSError, ValueError, DiskvaultError):
        return False


def busy_sets(folder: str) -> set[str]:
    """Set ids with a ``.partial`` file: an image of that set is being written right now (or a
    crashed write left it; either way nothing of that set is touched)."""
    return {m.group(1) for n in os.listdir(folder) if (m := PARTIAL_RE.match(n))}


def _owner(member: Member, keyring: KeyRing) -> tuple[str | None, str]:
    try:
        with ImageFile(member.path, keyring) as img:
            meta = img.metadata.get("definition") or {}
    except DiskvaultError:
        return None, ""
    return meta.get("id"), meta.get("name", "")


def _allocated(paths: list[str]) -> int:
    total = 0
    for p in paths:
        try:
            total += os.stat(p).st_blocks * 512
        except OSError:
            pass
    return total


def inventory(folder: str, keyring: KeyRing | None = None) -> list[SetInfo]:
    """Every set in ``folder``, oldest first."""
    keyring = keyring or KeyRing()
    busy = busy_sets(folder)
    out = []
    for set_id, members in scan(folder).items():
        files = []
        for m in members:
            try:
                files += part_paths(m.path)
            except DiskvaultError:
                files.append(m.path)
        full = next((m for m in members if m.header.image_type == TYPE_FULL), None)
        owner, name = _owner(full or members[0], keyring)
        out.append(SetInfo(set_id=set_id, members=members, owner=owner, owner_name=name, busy=set_id in busy,
                           restorable=full is not None and complete(full.path), files=files,
                           bytes=_allocated(files)))
    out.sort(key=lambda s: (s.created_ns, s.set_id))
    return out
