"""Helpers for the backup-plan tests: a settable clock, a local SMTP server, small source disks that
change a little every day, and checks that every image of a folder restores to what it captured."""

from __future__ import annotations

import contextlib
import email
import hashlib
import os
import random
import socket
import time
from collections.abc import Iterator
from datetime import datetime

from diskutil import MiB, Part, build_disk

from diskvault.format.layout import TYPE_NAMES
from diskvault.imaging.restore import RestoreOptions, restore_image
from diskvault.imaging.sets import scan
from diskvault.imaging.verify import verify_image
from diskvault.plans.definition import Definition, Source, save


class FakeClock:
    """An injectable clock the test moves by hand."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


class Mailbox:
    """aiosmtpd handler that keeps every message."""

    def __init__(self) -> None:
        self.messages: list[email.message.Message] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        self.messages.append(email.message_from_bytes(envelope.content))
        return "250 OK"

    def wait(self, count: int, timeout: float = 10.0) -> list[email.message.Message]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.messages


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def smtp_server() -> Iterator[tuple[Mailbox, int]]:
    """A real SMTP server on 127.0.0.1, stopped when the block ends."""
    from aiosmtpd.controller import Controller

    box, port = Mailbox(), free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()


def small_disk(path: str, workdir: str, extra: Part | None = None) -> list[Part]:
    """GPT: a 10 MiB ext4 with files, and a 3 MiB partition without a filesystem (imaged whole) that
    ``change`` writes into."""
    return build_disk(path, [Part(10, "ext4", tree_seed=1), extra or Part(3, None, tree_seed=None)],
                      workdir=workdir)


def change(disk: str, part: Part, day: int, size: int = 4096) -> None:
    """Write a few random bytes somewhere in ``part`` (a different place most days)."""
    rng = random.Random(day)
    with open(disk, "r+b") as f:
        f.seek(part.start + rng.randrange(0, part.size - size, 4096))
        f.write(rng.randbytes(size))


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(4 * MiB), b""):
            h.update(block)
    return h.hexdigest()


def make_definition(folder: str, name: str, source_file: str, plan, destination: str | None = None,
                    **kw) -> Definition:
    defn = Definition(name=name, source=Source("image", file=source_file),
                      destination=destination or os.path.join(folder, "dest"), plan=plan, **kw)
    os.makedirs(defn.destination, exist_ok=True)
    save(defn, os.path.join(folder, f"{name}.xml"))
    return defn


def images(folder: str) -> dict[str, dict[str, str]]:
    """set id -> {file name: type} of the complete-looking images in ``folder``."""
    return {set_id: {os.path.basename(m.path): TYPE_NAMES[m.header.image_type] for m in members}
            for set_id, members in scan(folder).items()}


def leaves(folder: str) -> list[str]:
    """Images no other image has as parent: verifying them checks every chain."""
    out = []
    for members in scan(folder).values():
        parents = {m.header.parent_increment for m in members if m.header.has_parent}
        out += [m.path for m in members if m.increment not in parents]
    return out


def verify_all(folder: str, password=None) -> int:
    found = leaves(folder)
    for path in found:
        result = verify_image(path, password=password)
        assert result.ok, f"{path}: {result.errors}"
    return len(found)


def restore_all(folder: str, expected: dict[str, str], scratch: str, password=None) -> int:
    """Restore every image in ``folder``; each must give the disk bytes it was made from."""
    count = 0
    for members in scan(folder).values():
        for m in members:
            target = os.path.join(scratch, "restored.img")
            restore_image(RestoreOptions(m.path, target, password=password))
            assert sha256(target) == expected[os.path.basename(m.path)], f"{m.path} restores to other bytes"
            os.unlink(target)
            count += 1
    return count


def at(day: datetime, hour: int = 2, minute: int = 0, second: int = 30) -> datetime:
    return day.replace(hour=hour, minute=minute, second=second, microsecond=0)
