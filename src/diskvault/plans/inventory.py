"""What a destination folder holds, as retention and plans need it: each backup set — of disk
images (.dvimg) or of file archives (.dvbak) — with its members, the definition that made it,
whether it can be restored, whether it is being written, and the bytes it takes on disk.

Ownership: an image set carries its definition's id in its Full's metadata (``definition``); a
file-archive set is matched by the folders it backed up (its metadata ``roots``). An encrypted set
whose password we do not have has an unknown owner and is never treated as ours.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from diskvault.errors import DiskvaultError
from diskvault.format import reader as image_reader
from diskvault.format.layout import FOOTER_SIZE, TYPE_NAMES, Footer
from diskvault.format.reader import KeyRing
from diskvault.imaging.sets import scan as scan_images

PARTIAL_RE = re.compile(r"^([0-9A-F]{16})-\d{2}-\d{2}\.(dvimg|dvbak)(\.merge)?\.partial$")


@dataclass
class Item:
    """One image or archive of a set (its first part)."""

    path: str
    type: str  # full | diff | inc
    created_ns: int
    increment: int
    parent_increment: int


@dataclass
class Format:
    """How to read one kind of set: the functions differ, the set rules do not."""

    kind: str  # image | files
    scan: Callable[[str], dict[str, list[Item]]]
    part_paths: Callable[[str], list[str]]
    footer: Any  # class with unpack(raw) -> footer with part_count
    open: Callable[..., Any]  # (path, keyring) -> reader with .metadata and .close()


def _images(folder: str) -> dict[str, list[Item]]:
    return {set_id: [Item(m.path, TYPE_NAMES[m.header.image_type], m.header.created_ns, m.increment,
                          m.header.parent_increment) for m in members]
            for set_id, members in scan_images(folder).items()}


FORMATS = [Format("image", _images, image_reader.part_paths, Footer, image_reader.ImageFile)]
try:  # file backups (diskvault.files) — absent in builds without them
    from diskvault.files import layout as files_layout
    from diskvault.files import reader as files_reader
    from diskvault.files.sets import scan as scan_archives
    from diskvault.files.walker import normalize_roots

    def _archives(folder: str) -> dict[str, list[Item]]:
        return {set_id: [Item(path, files_layout.TYPE_NAMES[h.archive_type], h.created_ns, h.increment,
                              h.parent_increment) for path, h in members]
                for set_id, members in scan_archives(folder).items()}

    FORMATS.append(Format("files", _archives, files_reader.part_paths, files_layout.ArchiveFooter,
                          files_reader.ArchiveFile))
except ImportError:  # pragma: no cover - depends on the build
    normalize_roots = None


def files_available() -> bool:
    return len(FORMATS) > 1


def roots_of(paths: list[str]) -> list[str]:
    """Folders as a file backup records them (its metadata ``roots``)."""
    return [os.fsdecode(r) for r in normalize_roots(paths)] if normalize_roots else list(paths)


@dataclass
class SetInfo:
    set_id: str
    kind: str  # image | files
    members: list[Item]  # oldest increment first
    owner: str | None  # definition id, None when not known
    owner_name: str
    roots: list[str] | None  # file archives: the folders backed up
    busy: bool  # a member of this set is being written or merged
    restorable: bool  # its Full is complete
    files: list[str]  # every part of every member
    bytes: int  # allocated on disk

    @property
    def created_ns(self) -> int:
        return min(m.created_ns for m in self.members)

    @property
    def newest_ns(self) -> int:
        return max(m.created_ns for m in self.members)

    def images(self, kind: str) -> list[Item]:
        return [m for m in self.members if m.type == kind]


def complete(path: str, fmt: Format = FORMATS[0]) -> bool:
    """Header and footer checks only (cheap, no password): all parts there, footer valid."""
    try:
        parts = fmt.part_paths(path)
        with open(parts[-1], "rb") as f:
            f.seek(-FOOTER_SIZE, os.SEEK_END)
            footer = fmt.footer.unpack(f.read(FOOTER_SIZE))
        return footer.part_count == len(parts)
    except (OSError, ValueError, DiskvaultError):
        return False


def busy_sets(folder: str) -> set[str]:
    """Set ids with a ``.partial`` file: a member is being written right now (or a crashed write
    left it; either way nothing of that set is touched)."""
    return {m.group(1) for n in os.listdir(folder) if (m := PARTIAL_RE.match(n))}


def read_metadata(path: str, fmt: Format, keyring: KeyRing) -> dict:
    """The member's metadata, or {} when it cannot be read (damage, or no password)."""
    try:
        f = fmt.open(path, keyring)
    except DiskvaultError:
        return {}
    try:
        return f.metadata
    finally:
        f.close()


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
    for fmt in FORMATS:
        for set_id, members in fmt.scan(folder).items():
            files = []
            for m in members:
                try:
                    files += fmt.part_paths(m.path)
                except DiskvaultError:
                    files.append(m.path)
            full = next((m for m in members if m.type == "full"), None)
            meta = read_metadata((full or members[0]).path, fmt, keyring)
            owner = meta.get("definition") or {}
            out.append(SetInfo(set_id=set_id, kind=fmt.kind, members=members, owner=owner.get("id"),
                               owner_name=owner.get("name", ""), roots=meta.get("roots"), busy=set_id in busy,
                               restorable=full is not None and complete(full.path, fmt), files=files,
                               bytes=_allocated(files)))
    out.sort(key=lambda s: (s.created_ns, s.set_id))
    return out


def owned_by(definition_id: str, file_roots: list[str] | None) -> Callable[[SetInfo], bool]:
    """Whether a set is the definition's: by id, or for file archives (which carry no id) by roots."""

    def mine(s: SetInfo) -> bool:
        if s.owner is not None:
            return s.owner == definition_id
        return s.kind == "files" and file_roots is not None and s.roots == file_roots

    return mine
