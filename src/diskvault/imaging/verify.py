"""Verify an image: structure (header, footer, sections, layout) on open, then every chunk's
stored and content checksums. Reports every damaged range, not just the first."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from diskvault.errors import IntegrityError
from diskvault.crypto.keys import PasswordSource
from diskvault.format.chain import Chain
from diskvault.format.reader import KeyRing
from diskvault.imaging.pipeline import ordered_map
from diskvault.ui.progress import NullProgress, Progress


@dataclass
class VerifyResult:
    image: str
    chunks: int
    bytes_checked: int
    seconds: float
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        return asdict(self) | {"ok": self.ok}


def verify_image(path: str, progress: Progress | None = None, password: PasswordSource | None = None,
                 newest_only: bool = False) -> VerifyResult:
    """Open the image and its parents (structure, links and state hashes are checked on open), then
    decode every chunk of every member (of the newest only: right after writing it)."""
    progress = progress or NullProgress()
    started = time.monotonic()
    with Chain(path, KeyRing(password), cache_chunks=0) as chain:
        errors: list[str] = []
        first = len(chain.members) - 1 if newest_only else 0
        members = chain.members[first:]
        jobs = [(m, i) for m in range(first, len(chain.members)) for i in range(len(chain.members[m].index))]

        def check(job) -> tuple[int, str | None]:
            m, i = job
            length = int(chain.members[m].index[i]["length"])
            try:
                chain.decode_record(m, i)
                return length, None
            except IntegrityError as e:
                return length, str(e)

        progress.start("verifying", sum(int(m.index["length"].sum()) for m in members))
        checked = 0
        for length, error in ordered_map(check, jobs):
            checked += length
            progress.advance(length)
            if error:
                errors.append(error)
        progress.finish()
        return VerifyResult(image=path, chunks=len(jobs), bytes_checked=checked,
                            seconds=round(time.monotonic() - started, 3), errors=errors)
