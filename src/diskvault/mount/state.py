"""What a mount attached, on disk, so ``diskvault umount`` can undo it even after the server died.

One JSON file per mount point under /run/diskvault/mounts (tmpfs: gone after a reboot, like the
loop devices it names), written atomically after every attach step."""

from __future__ import annotations

import hashlib
import json
import os

STATE_DIR = os.environ.get("DISKVAULT_MOUNT_STATE_DIR", "/run/diskvault/mounts")


def state_path(mountpoint: str) -> str:
    digest = hashlib.sha256(os.path.realpath(mountpoint).encode()).hexdigest()[:24]
    return os.path.join(STATE_DIR, f"{digest}.json")


def log_path(mountpoint: str) -> str:
    return state_path(mountpoint)[:-5] + ".log"


def save(state: dict) -> None:
    path = state_path(state["mountpoint"])
    os.makedirs(STATE_DIR, mode=0o700, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(state, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(mountpoint: str) -> dict | None:
    try:
        with open(state_path(mountpoint)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def remove(mountpoint: str) -> None:
    for path in (state_path(mountpoint), log_path(mountpoint)):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
