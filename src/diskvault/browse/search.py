"""Find files by glob across an image's partitions, and in which images of its chain each one
changed (size, mtime or content hash compared from one member's state to the next)."""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from diskvault.browse.base import Entry, FileTree
from diskvault.browse.open import browsable_partitions, open_tree
from diskvault.errors import FilesystemError
from diskvault.format.chain import Chain
from diskvault.format.layout import TYPE_NAMES
from diskvault.format.reader import KeyRing

log = logging.getLogger(__name__)


def walk(tree: FileTree, top: str = "/") -> Iterator[Entry]:
    """Every entry below ``top`` in sorted pre-order; symlinks are listed, never followed."""
    stack = [iter(tree.listdir(top))]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        yield entry
        if entry.kind == "dir":
            stack.append(iter(tree.listdir(entry.path)))


def matches(pattern: str, entry: Entry) -> bool:
    """A pattern with a "/" matches the whole path ("*" crosses "/"), otherwise the name."""
    if "/" in pattern:
        return fnmatch.fnmatchcase(entry.path, pattern if pattern.startswith("/") else "*/" + pattern)
    return fnmatch.fnmatchcase(entry.name, pattern)


def partition_trees(chain: Chain, warn: Callable[[str], None]) -> Iterator[tuple[int, FileTree]]:
    """(number, tree) of every imaged partition that can be browsed; the others are warned about."""
    for part in browsable_partitions(chain):
        try:
            yield part["number"], open_tree(chain, part["number"])
        except FilesystemError as e:
            warn(str(e))


@dataclass
class Hit:
    partition: int
    entry: Entry


def search(chain: Chain, pattern: str, warn: Callable[[str], None] = log.warning) -> list[Hit]:
    return [Hit(n, e) for n, tree in partition_trees(chain, warn) for e in walk(tree) if matches(pattern, e)]


def _signature(tree: FileTree, entry: Entry) -> dict:
    sig = {"kind": entry.kind, "size": entry.size, "mtime_ns": entry.mtime_ns}
    if entry.kind == "symlink":
        sig["link_target"] = entry.link_target
    elif entry.kind == "file":
        h = hashlib.sha256()
        with tree.open(entry.path) as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        sig["sha256"] = h.hexdigest()
    return sig


def history(image: str, keyring: KeyRing, pattern: str, warn: Callable[[str], None] = log.warning) -> list[dict]:
    """For every non-directory matching ``pattern`` in any member of ``image``'s chain: the images
    (oldest first) where it was added, changed or deleted."""
    with Chain(image, keyring) as head:
        members = [(m.path, m.header.increment, TYPE_NAMES[m.header.image_type]) for m in head.members]
    said: set[str] = set()

    def warn_once(message: str) -> None:
        if message not in said:
            said.add(message)
            warn(message)

    before: dict[tuple[int, str], dict] = {}
    changes: dict[tuple[int, str], list[dict]] = {}
    for path, increment, kind in members:
        now: dict[tuple[int, str], dict] = {}
        with Chain(path, keyring) as chain:
            for number, tree in partition_trees(chain, warn_once):
                for entry in walk(tree):
                    if entry.kind != "dir" and matches(pattern, entry):
                        now[(number, entry.path)] = _signature(tree, entry)
        where = {"image": os.path.basename(path), "increment": increment, "type": kind}
        for key in sorted(now.keys() | before.keys()):
            old, new = before.get(key), now.get(key)
            if old == new:
                continue
            change = "added" if old is None else "deleted" if new is None else "changed"
            changes.setdefault(key, []).append(where | {"change": change} | (new or {}))
        before = now
    return [{"partition": number, "path": p, "changes": changes[(number, p)]} for number, p in sorted(changes)]
