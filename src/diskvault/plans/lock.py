"""One run of a definition at a time: an fcntl lock on a file named by the definition's id.

The kernel drops the lock when the process dies, so a crashed run never leaves a stale lock.
The lock folder is $DISKVAULT_LOCK_DIR, else /run/lock/diskvault.
"""

from __future__ import annotations

import fcntl
import os

from diskvault.errors import DiskvaultError


class AlreadyRunningError(DiskvaultError):
    """a run of definition {} is already in progress"""


def lock_dir() -> str:
    return os.environ.get("DISKVAULT_LOCK_DIR") or "/run/lock/diskvault"


class DefinitionLock:
    """``with DefinitionLock(defn_id, name):`` — raises AlreadyRunningError at once if held."""

    def __init__(self, definition_id: str, name: str = "") -> None:
        self.path = os.path.join(lock_dir(), f"{definition_id}.lock")
        self.name = name or definition_id
        self._fd: int | None = None

    def __enter__(self) -> DefinitionLock:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunningError(self.name) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def is_running(definition_id: str) -> bool:
    """True while some process holds the definition's lock."""
    try:
        with DefinitionLock(definition_id):
            return False
    except AlreadyRunningError:
        return True
