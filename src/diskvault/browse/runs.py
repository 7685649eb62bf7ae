"""A file's bytes from its block runs: what every FileTree with block-mapped files hands out from
open(). Blocks no run maps (holes) and runs without a physical place (unwritten extents) read as
zeros; ``data_ranges()`` names the rest so extraction can keep files sparse without reading holes."""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import NamedTuple

from diskvault.errors import FilesystemError
from diskvault.readat import ReadAtFile

ZERO = -1  # physical block of a run that reads as zeros (an unwritten extent)


class Run(NamedTuple):
    logical: int  # first block of the file
    physical: int  # first block on the filesystem, or ZERO
    count: int  # blocks


class RunFile(ReadAtFile):
    """Read-only, seekable view of ``size`` bytes laid out by ``runs`` (in units of ``block_size``)."""

    def __init__(self, read_at: Callable[[int, int], bytes], runs: list[Run], size: int, block_size: int,
                 what: str = "file") -> None:
        super().__init__(size, self._read_runs)
        self._fs_read_at, self._bs, self._what = read_at, block_size, what
        self._runs = sorted((r for r in runs if r.count > 0), key=lambda r: r.logical)
        self._starts = [r.logical for r in self._runs]

    def _read_runs(self, pos: int, length: int) -> bytes:
        """The file's ``length`` bytes at ``pos`` (ReadAtFile asks only within ``size``)."""
        buf = bytearray(length)
        view = memoryview(buf)
        done = 0
        while done < length:
            done += self._fill(view[done:], pos + done)
        return bytes(buf)

    def _fill(self, view: memoryview, pos: int) -> int:
        """Fill the start of ``view`` with the bytes at ``pos``, up to the end of a run or hole."""
        bs = self._bs
        block = pos // bs
        i = bisect.bisect_right(self._starts, block) - 1
        if i >= 0 and block < self._runs[i].logical + self._runs[i].count:
            run = self._runs[i]
            end = (run.logical + run.count) * bs
            n = min(len(view), end - pos)
            if run.physical == ZERO:
                view[:n] = bytes(n)
                return n
            data = self._fs_read_at((run.physical - run.logical) * bs + pos, n)
            if len(data) != n:
                raise FilesystemError(f"{self._what}: block {run.physical + block - run.logical} lies "
                                      f"beyond the end of the filesystem")
            view[:n] = data
            return n
        nxt = self._runs[i + 1].logical * bs if i + 1 < len(self._runs) else self._size
        n = min(len(view), max(nxt - pos, 1))
        view[:n] = bytes(n)
        return n

    def data_ranges(self) -> list[tuple[int, int]]:
        """(offset, length) byte ranges that may hold data; everything else reads as zeros."""
        out: list[tuple[int, int]] = []
        for r in self._runs:
            if r.physical == ZERO:
                continue
            start, end = r.logical * self._bs, min((r.logical + r.count) * self._bs, self._size)
            if start >= end:
                continue
            if out and out[-1][0] + out[-1][1] == start:
                out[-1] = (out[-1][0], end - out[-1][0])
            else:
                out.append((start, end - start))
        return out
