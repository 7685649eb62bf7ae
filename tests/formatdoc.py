"""The field tables of docs/FORMAT.md and docs/FILES-FORMAT.md, for tests that hold the code to them."""

from __future__ import annotations

import os
import re

DOCS = os.path.join(os.path.dirname(__file__), "..", "docs")


def read_doc(name: str) -> str:
    with open(os.path.join(DOCS, name)) as f:
        return f.read()


def field_table(doc: str, title: str) -> list[tuple[int, int, str]]:
    """(offset, size, field) rows of the table under the heading containing ``title``."""
    part = doc.split(title, 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d+) \| (\d+) \| [^|]+ \| (\w+) \|", part, re.MULTILINE)
    return [(int(o), int(s), f) for o, s, f in rows]


def contiguous(rows: list[tuple[int, int, str]]) -> int:
    """The rows' total size, after checking that each field starts where the one before ends."""
    pos = 0
    for off, size, name in rows:
        assert off == pos, f"gap or overlap at {off} ({name})"
        pos += size
    return pos
