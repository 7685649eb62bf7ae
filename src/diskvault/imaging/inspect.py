"""Describe what is on a disk (without imaging it) and what is in an image."""

from __future__ import annotations

import os

from diskvault.disk.source import Source
from diskvault.format.reader import ImageFile
from diskvault.fs import extents as ext
from diskvault.imaging.plan import make_plan


def inspect_source(path: str) -> dict:
    """Partition table and filesystems of a device or disk-image file, read-only."""
    with Source.open(path) as source:
        plan = make_plan(source)
        return {
            "path": path, "size": source.size, "is_block_device": source.is_block,
            "table": plan.table.kind, "disk_id": plan.table.disk_id, "warnings": plan.table.warnings,
            "partitions": [p.to_dict() for p in plan.partitions],
        }


def describe_image(path: str) -> dict:
    """What is inside an image: identity, disk, partitions with filesystems, used and stored sizes."""
    with ImageFile(path) as img:
        meta = img.metadata
        stored_by_part = {}
        offs = img.index["disk_offset"].astype("int64")
        for p in meta["partitions"]:
            inside = (offs >= p["start"]) & (offs < p["start"] + p["size"])
            stored_by_part[p["number"]] = int(img.index["stored_length"][inside].sum())
        return {
            "image": os.path.abspath(path), "image_id": img.image_id, "increment": img.header.increment,
            "created": meta["created"], "writer": img.header.writer, "format_version": img.header.version,
            "host": meta.get("host"), "source": meta["source"], "disk_size": img.disk_size,
            "chunk_size": img.chunk_size, "compression": meta["compression"],
            "table": meta["table"]["kind"], "disk_id": meta["table"]["disk_id"],
            "chunks": int(img.footer.chunk_count), "used_bytes": ext.total(img.extents),
            "stored_bytes": int(img.footer.stored_bytes), "file_size": img.file_size,
            "partitions": [p | {"stored_bytes": stored_by_part[p["number"]]} for p in meta["partitions"]],
        }
