"""Progress of file backups and restores: the byte bar of progress.py plus files done / total.

The core reports bytes through the Progress protocol and, when the progress object also counts
files (``CountsFiles``), the number of files done."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from diskvault.ui.progress import NullProgress, Progress


@runtime_checkable
class CountsFiles(Protocol):
    def files(self, done: int, total: int) -> None: ...


def files_reporter(progress: Progress) -> Callable[[int, int], None]:
    """``progress.files`` when it counts files, else a no-op (checked once, not per file)."""
    return progress.files if isinstance(progress, CountsFiles) else (lambda done, total: None)


class RichFilesProgress:
    """Bytes (bar, rate, ETA) and files done of total, on stderr."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.progress import Progress as RP

        self._bar = RP(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[files]}"),
                       DownloadColumn(binary_units=True), TransferSpeedColumn(), TimeRemainingColumn(),
                       console=Console(stderr=True), transient=True)
        self._task = None

    def start(self, description: str, total: int) -> None:
        if self._task is None:
            self._bar.start()
        else:
            self._bar.remove_task(self._task)
        self._task = self._bar.add_task(description, total=total, files="")

    def advance(self, amount: int) -> None:
        if self._task is not None:
            self._bar.advance(self._task, amount)

    def files(self, done: int, total: int) -> None:
        if self._task is not None:
            self._bar.update(self._task, files=f"{done}/{total} files")

    def finish(self) -> None:
        if self._task is not None:
            self._bar.stop()
            self._task = None


def for_terminal(quiet: bool = False) -> Progress:
    return RichFilesProgress() if not quiet and sys.stderr.isatty() else NullProgress()
