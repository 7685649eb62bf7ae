"""Verify a file archive and its parents: structure and links on open (reader.py), then every chunk's
stored and content checksums, then every catalog: each record decodes and each chunk it names is
in the set with the length it says. Reports every problem, not just the first."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field

from diskvault.crypto.keys import PasswordSource
from diskvault.errors import IntegrityError
from diskvault.files.catalog import iter_entries
from diskvault.files.reader import ArchiveChain, ArchiveFile
from diskvault.format.reader import KeyRing
from diskvault.imaging.pipeline import ordered_map
from diskvault.ui.progress import NullProgress, Progress


@dataclass
class ArchiveVerifyResult:
    archive: str
    members: int
    chunks: int
    entries: int
    bytes_checked: int
    seconds: float
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        return asdict(self) | {"ok": self.ok}


def _check_catalog(member: ArchiveFile, lengths: dict[bytes, int], errors: list[str]) -> int:
    count = 0
    try:
        for e in iter_entries(member.catalog):
            count += 1
            for offset, length, digest in e.chunks:
                if lengths.get(digest) != length:
                    errors.append(f"{member.path}: {e.name} at byte {offset} needs chunk {digest.hex()} "
                                  + ("which is missing from the set" if digest not in lengths else
                                     f"of {length} bytes, the set has {lengths[digest]}"))
    except ValueError as err:
        errors.append(f"{member.path}: catalog is damaged ({err})")
    return count


def verify_archive(path: str, progress: Progress | None = None,
                   password: PasswordSource | None = None) -> ArchiveVerifyResult:
    progress = progress or NullProgress()
    started = time.monotonic()
    with ArchiveChain(path, KeyRing(password)) as chain:
        errors: list[str] = []
        jobs = [(m, i) for m in chain.members for i in range(len(m.index))]

        def check(job: tuple[ArchiveFile, int]) -> tuple[int, str | None]:
            member, i = job
            try:
                member.decode(i, member.read_stored(i))
                return int(member.index[i]["length"]), None
            except IntegrityError as e:
                return int(member.index[i]["length"]), str(e)

        progress.start("verifying", sum(int(m.index["length"].sum()) for m in chain.members))
        checked = 0
        for length, error in ordered_map(check, jobs):
            checked += length
            progress.advance(length)
            if error:
                errors.append(error)
        progress.finish()
        lengths: dict[bytes, int] = {}
        entries = 0
        for member in chain.members:  # each catalog may use chunks of its own and older members
            lengths.update(zip(member.index["content_hash"].tolist(), member.index["length"].tolist()))
            entries = _check_catalog(member, lengths, errors)
        return ArchiveVerifyResult(archive=os.fspath(path), members=len(chain.members), chunks=len(jobs),
                                   entries=entries, bytes_checked=checked,
                                   seconds=round(time.monotonic() - started, 3), errors=errors)
