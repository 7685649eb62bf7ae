"""Describe what is on a disk (without imaging it), what is in an image, and a backup set."""

from __future__ import annotations

import os
import time

import numpy as np

from diskvault.crypto.keys import PasswordSource
from diskvault.disk.source import Source
from diskvault.format.chain import Chain
from diskvault.format.layout import TYPE_NAMES
from diskvault.format.reader import KeyRing, part_paths
from diskvault.fs import extents as ext
from diskvault.imaging.plan import make_plan
from diskvault.imaging.sets import scan


def inspect_source(path: str) -> dict:
    """Partition table and filesystems of a device or disk-image file, read-only."""
    with Source.open(path) as source:
        plan = make_plan(source)
        return {
            "path": path, "size": source.size, "is_block_device": source.is_block,
            "table": plan.table.kind, "disk_id": plan.table.disk_id, "warnings": plan.table.warnings,
            "partitions": [p.to_dict() for p in plan.partitions],
        }


def describe_image(path: str, password: PasswordSource | None = None) -> dict:
    """What is inside an image (as of its point in the chain): identity, disk, partitions with
    filesystems, used and stored sizes."""
    with Chain(path, KeyRing(password)) as chain:
        img, meta = chain.head, chain.metadata
        offs = img.index["disk_offset"].astype(np.int64)
        stored_by_part = {}
        for p in meta["partitions"]:
            inside = (offs >= p["start"]) & (offs < p["start"] + p["size"])
            stored_by_part[p["number"]] = int(img.index["stored_length"][inside].sum())
        return {
            "image": os.path.abspath(path), "image_id": img.image_id, "increment": img.header.increment,
            "type": TYPE_NAMES[img.header.image_type], "encrypted": img.header.encrypted,
            "parts": img.part_paths, "chain": [os.path.basename(m.path) for m in chain.members],
            "created": meta["created"], "writer": img.header.writer, "format_version": img.header.version,
            "host": meta.get("host"), "source": meta["source"], "disk_size": img.disk_size,
            "chunk_size": img.chunk_size, "compression": meta["compression"],
            "table": meta["table"]["kind"], "disk_id": meta["table"]["disk_id"],
            "chunks": int(img.footer.chunk_count), "used_bytes": ext.total(img.extents),
            "stored_bytes": int(img.footer.stored_bytes), "file_size": img.file_size,
            "partitions": [p | {"stored_bytes": stored_by_part[p["number"]]} for p in meta["partitions"]],
        }


def describe_set(path: str) -> list[dict]:
    """Every image of the set ``path`` belongs to, from headers: increment, type, parent, date, size."""
    folder = os.path.dirname(os.path.abspath(path))
    set_id = os.path.basename(path)[:16]
    out = []
    for m in scan(folder).get(set_id, []):
        h = m.header
        out.append({
            "image": os.path.basename(m.path), "increment": h.increment, "type": TYPE_NAMES[h.image_type],
            "parent": h.parent_increment if h.has_parent else None,
            "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h.created_ns / 1e9)),
            "size": sum(os.path.getsize(p) for p in part_paths(m.path)),
        })
    return out
