"""Verify an image: structure (header, footer, sections, layout) on open, then every chunk's
stored and content checksums. Reports every damaged range, not just the first."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from diskvault.errors import IntegrityError
from diskvault.format.reader import ImageFile
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


def verify_image(path: str, progress: Progress | None = None) -> VerifyResult:
    progress = progress or NullProgress()
    started = time.monotonic()
    with ImageFile(path, cache_chunks=0) as img:
        errors: list[str] = []

        def check(i: int) -> tuple[int, str | None]:
            try:
                img.decode(i, img.read_stored(i))
                return int(img.index[i]["length"]), None
            except IntegrityError as e:
                return int(img.index[i]["length"]), str(e)

        progress.start("verifying", int(img.index["length"].sum()))
        checked = 0
        for length, error in ordered_map(check, range(len(img.index))):
            checked += length
            progress.advance(length)
            if error:
                errors.append(error)
        progress.finish()
        return VerifyResult(image=path, chunks=len(img.index), bytes_checked=checked,
                            seconds=round(time.monotonic() - started, 3), errors=errors)
