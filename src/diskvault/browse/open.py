"""Open a partition of an image (at its point of the chain) as a FileTree, and read the
``N:/path`` locations the browse commands take."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator

from diskvault.browse.base import FileTree
from diskvault.browse.registry import TREES
from diskvault.crypto.keys import PasswordSource
from diskvault.errors import FilesystemError, UsageError
from diskvault.format.chain import Chain, ChainWindow
from diskvault.format.reader import KeyRing

log = logging.getLogger(__name__)
LOCATION = re.compile(r"^(\d+):(.*)$", re.DOTALL)


def clean_path(path: str) -> str:
    """``path`` as an absolute path inside the filesystem; ``..`` is refused, not resolved."""
    parts = [p for p in path.split("/") if p and p != "."]
    if ".." in parts:
        raise UsageError(f"refusing path {path!r}: '..' is not allowed in a path inside an image")
    return "/" + "/".join(parts)


def split_location(text: str) -> tuple[int | None, str]:
    """``N:/path`` -> (N, "/path"); a bare ``/path`` -> (None, "/path")."""
    m = LOCATION.match(text)
    number, path = (int(m.group(1)), m.group(2)) if m else (None, text)
    return number, clean_path(path)


def browsable_partitions(chain: Chain) -> list[dict]:
    """The partitions the image holds data of (metadata rows; number 0 is a disk without a table)."""
    return [p for p in chain.metadata["partitions"] if p.get("method") != "skipped"]


def pick_partition(chain: Chain, number: int | None) -> dict:
    parts = chain.metadata["partitions"]
    numbers = ", ".join(str(p["number"]) for p in parts) or "none"
    if number is None:
        if len(parts) != 1:
            raise UsageError(f"{chain.head.path} has partitions {numbers}: name one, as N:/path")
        return parts[0]
    for p in parts:
        if p["number"] == number:
            if p.get("method") == "skipped":
                raise UsageError(f"partition {number} was not imaged (it was left out when the image was made)")
            return p
    raise UsageError(f"no partition {number} in {chain.head.path} (partitions: {numbers})")


def open_tree(chain: Chain, number: int | None) -> FileTree:
    """The partition's filesystem as a FileTree, read straight out of the chain."""
    part = pick_partition(chain, number)
    window = ChainWindow(chain, part["start"], part["size"])
    for tree in TREES:
        window.seek(0)
        if tree.probe(window, window.size):
            try:
                opened_tree = tree(window, window.size)
            except FilesystemError as e:
                raise FilesystemError(f"partition {part['number']}: {e}") from None
            if getattr(opened_tree, "note", ""):  # e.g. an ext journal left unreplayed
                log.warning("partition %s: %s", part["number"], opened_tree.note)
            return opened_tree
    fstype = (part.get("fs") or {}).get("fstype")
    what = f"its {fstype} filesystem" if fstype else "an unknown filesystem"
    raise FilesystemError(f"partition {part['number']} holds {what}, which diskvault cannot browse")


@contextlib.contextmanager
def opened(image: str, password: PasswordSource | None, location: str) -> Iterator[tuple[FileTree, str]]:
    """(tree, path) for ``IMAGE N:/path``, with the image's chain open for as long as needed."""
    number, path = split_location(location)
    with Chain(image, KeyRing(password)) as chain:
        yield open_tree(chain, number), path
