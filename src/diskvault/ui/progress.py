"""Progress: the core reports through this interface; the CLI picks the implementation."""

from __future__ import annotations

import sys
from typing import Protocol


class Progress(Protocol):
    def start(self, description: str, total: int) -> None: ...
    def advance(self, amount: int) -> None: ...
    def finish(self) -> None: ...


class NullProgress:
    def start(self, description: str, total: int) -> None:
        pass

    def advance(self, amount: int) -> None:
        pass

    def finish(self) -> None:
        pass


class RichProgress:
    """A byte progress bar with rate and ETA, on stderr."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, DownloadColumn, Progress as RP, TextColumn,
                                   TimeRemainingColumn, TransferSpeedColumn)

        self._bar = RP(TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
                       TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True),
                       transient=True)
        self._task = None

    def start(self, description: str, total: int) -> None:
        if self._task is None:
            self._bar.start()
        else:
            self._bar.remove_task(self._task)
        self._task = self._bar.add_task(description, total=total)

    def advance(self, amount: int) -> None:
        if self._task is not None:
            self._bar.advance(self._task, amount)

    def finish(self) -> None:
        if self._task is not None:
            self._bar.stop()
            self._task = None


def for_terminal(quiet: bool = False) -> Progress:
    return RichProgress() if not quiet and sys.stderr.isatty() else NullProgress()
