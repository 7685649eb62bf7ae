"""Create an image: plan -> pipeline -> writer. ``create_image`` is what the CLI and web UI call."""

from __future__ import annotations

import os
import secrets
import socket
import time
from dataclasses import asdict, dataclass

from diskvault import __version__
from diskvault.disk.source import Source
from diskvault.errors import UsageError
from diskvault.format.codec import LEVELS
from diskvault.format.layout import DEFAULT_CHUNK_SIZE, Header
from diskvault.format.writer import ImageWriter
from diskvault.imaging.pipeline import CellEncoder, CellReader, cells_for, ordered_map
from diskvault.imaging.plan import make_plan
from diskvault.ui.progress import NullProgress, Progress


@dataclass
class ImageOptions:
    source: str
    to: str
    partitions: list[int] | None = None
    compression: str = "fast"
    chunk_size: int = DEFAULT_CHUNK_SIZE


@dataclass
class ImageResult:
    image: str
    image_id: str
    bytes_read: int
    bytes_written: int
    bytes_imaged: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def create_image(opts: ImageOptions, progress: Progress | None = None) -> ImageResult:
    progress = progress or NullProgress()
    if opts.compression not in LEVELS:
        raise UsageError(f"unknown compression {opts.compression!r} (choose {', '.join(LEVELS)})")
    if not os.path.isdir(opts.to):
        raise UsageError(f"destination {opts.to} is not a folder")
    started = time.monotonic()
    with Source.open(opts.source) as source:
        plan = make_plan(source, opts.partitions)
        extents = plan.extents()
        cells = cells_for(extents, opts.chunk_size)
        header = Header(image_id=secrets.token_bytes(8), created_ns=time.time_ns(),
                        chunk_size=opts.chunk_size, disk_size=source.size,
                        writer=f"diskvault {__version__}")
        writer = ImageWriter(opts.to, header)
        bytes_read = 0
        try:
            encoder = CellEncoder(CellReader(source.fd, extents, opts.chunk_size, source.size),
                                  opts.compression)
            progress.start("imaging", int(extents[:, 1].sum()) if len(extents) else 0)
            for cell in ordered_map(encoder, cells.tolist()):
                bytes_read += cell.bytes_read
                progress.advance(cell.bytes_read)
                if not cell.zero:
                    writer.add_chunk(cell.disk_offset, cell.length, cell.codec_id, cell.stored,
                                     cell.content_hash)
            progress.finish()
            metadata = {
                "format": 1,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(header.created_ns / 1e9)),
                "host": socket.gethostname(),
                "source": {"path": os.path.abspath(opts.source), "size": source.size,
                           "is_block_device": source.is_block, "sector_size": source.sector_size},
                "compression": opts.compression,
                "table": plan.table.to_dict(),
                "partitions": [p.to_dict() for p in plan.partitions],
                "stats": {"bytes_read": bytes_read, "bytes_imaged": int(extents[:, 1].sum()) if len(extents) else 0},
            }
            path = writer.finish(extents, metadata)
        except BaseException:
            progress.finish()
            writer.abort()
            raise
    return ImageResult(image=path, image_id=header.image_id.hex().upper(), bytes_read=bytes_read,
                       bytes_written=os.path.getsize(path),
                       bytes_imaged=int(extents[:, 1].sum()) if len(extents) else 0,
                       seconds=round(time.monotonic() - started, 3))
