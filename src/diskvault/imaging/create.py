"""Create an image: plan -> (parent state) -> pipeline -> writer. ``create_image`` is what the CLI
and web UI call."""

from __future__ import annotations

import os
import secrets
import socket
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field

import numpy as np

from diskvault import __version__
from diskvault.changes import METADATA_KEY as TRACKING_KEY, known_unchanged, open_trackers, snapshots
from diskvault.crypto.aead import Sealer
from diskvault.crypto.keys import KdfParams, PasswordSource, derive
from diskvault.disk.source import Source
from diskvault.errors import UsageError
from diskvault.format.chain import Chain, state_hash
from diskvault.format.codec import LEVELS
from diskvault.format.layout import (CHUNK_ZERO, DEFAULT_CHUNK_SIZE, FLAG_ENCRYPTED, TYPE_DIFF, TYPE_FULL,
                                     TYPE_INC, TYPE_NAMES, Header)
from diskvault.format.reader import KeyRing
from diskvault.format.writer import ImageWriter
from diskvault.fs import extents as ext
from diskvault.imaging.destination import auto_split_size
from diskvault.imaging.pipeline import CellEncoder, CellReader, cells_for, ordered_map, unique
from diskvault.imaging.plan import make_plan
from diskvault.imaging.sets import find_parent, scan
from diskvault.imaging.tracked import SkipKnownCells, cells_to_skip
from diskvault.ui.progress import NullProgress, Progress

TYPES = {"full": TYPE_FULL, "diff": TYPE_DIFF, "inc": TYPE_INC}
_side = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dv-tracker")  # change tracking beside imaging


@dataclass
class ImageOptions:
    source: str
    to: str
    partitions: list[int] | None = None
    compression: str = "fast"
    chunk_size: int = DEFAULT_CHUNK_SIZE
    image_type: str = "full"
    password: PasswordSource | None = None
    split_size: int | None = None
    forensic: bool = False
    created_ns: int | None = None  # when the backup counts as taken (a scheduler's clock); None: now
    extra_metadata: dict | None = None  # more metadata keys, e.g. the backup definition that made it
    change_tracking: bool = True  # diff/inc: skip what the filesystem shows unchanged (diskvault.changes)


@dataclass
class ImageResult:
    image: str
    image_id: str
    image_type: str
    increment: int
    bytes_read: int
    bytes_written: int
    bytes_imaged: int
    seconds: float
    parts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _new_header(opts: ImageOptions, disk_size: int, parent: Chain | None, image_type: int) -> Header:
    h = Header(image_id=secrets.token_bytes(8), created_ns=opts.created_ns or time.time_ns(),
               chunk_size=opts.chunk_size, disk_size=disk_size, writer=f"diskvault {__version__}", image_type=image_type)
    if parent is not None:
        p = parent.head.header
        h.image_id, h.chunk_size = p.image_id, p.chunk_size
        h.increment = max(m.increment for m in scan(os.path.dirname(os.path.abspath(parent.head.path)))
                          [parent.head.image_id]) + 1
        h.parent_id, h.parent_increment = p.image_id, p.increment
        h.parent_state_hash = parent.state.hash(parent.disk_size)
        if p.encrypted:
            h.flags |= FLAG_ENCRYPTED
            h.cipher_name, h.kdf_name = p.cipher_name, p.kdf_name
            h.kdf_salt, h.kdf_time, h.kdf_memory_kib, h.kdf_parallelism, h.key_check = (
                p.kdf_salt, p.kdf_time, p.kdf_memory_kib, p.kdf_parallelism, p.key_check)
    return h


def create_image(opts: ImageOptions, progress: Progress | None = None) -> ImageResult:
    progress = progress or NullProgress()
    if opts.compression not in LEVELS:
        raise UsageError(f"unknown compression {opts.compression!r} (choose {', '.join(LEVELS)})")
    if opts.image_type not in TYPES:
        raise UsageError(f"unknown image type {opts.image_type!r} (choose full, diff or inc)")
    if not os.path.isdir(opts.to):
        raise UsageError(f"destination {opts.to} is not a folder")
    started = time.monotonic()
    notes: list[str] = []
    keyring = KeyRing(opts.password)
    with Source.open(opts.source) as source:
        plan = make_plan(source, opts.partitions, forensic=opts.forensic)
        extents = plan.extents()
        parent, image_type = None, TYPE_FULL
        if opts.image_type != "full":
            parent, why = find_parent(opts.to, plan.table.to_dict(), opts.image_type, keyring,
                                      encrypt=opts.password is not None)
            if parent is None:
                notes.append(f"making a Full image instead of {opts.image_type}: {why}")
            else:
                image_type = TYPES[opts.image_type]
        try:
            header = _new_header(opts, source.size, parent, image_type)
            if parent is not None:
                key = parent.head.key
            elif opts.password is not None:
                kdf = KdfParams.new()
                key = derive(opts.password(), kdf)
                header.flags |= FLAG_ENCRYPTED
                header.cipher_name, header.kdf_name = "aes-256-gcm", "argon2id"
                header.kdf_salt, header.kdf_time, header.kdf_memory_kib, header.kdf_parallelism = (
                    kdf.salt, kdf.time_cost, kdf.memory_kib, kdf.parallelism)
                header.key_check = key.key_check
            else:
                key = None
            sealer = Sealer(key.chunk_key, header.image_id) if key else None
            cells = cells_for(extents, header.chunk_size)
            if parent is not None:
                cells = unique(np.concatenate([cells, parent.state.offsets // header.chunk_size]))
            split = opts.split_size or auto_split_size(opts.to)
            writer = ImageWriter(opts.to, header, split_size=split, sealer=sealer)
        except BaseException:
            if parent is not None:
                parent.close()
            raise
        bytes_read = 0
        new_offsets, new_lengths, new_hashes = [], [], []
        trackers = None
        try:
            tracked = [] if opts.forensic else [(p.partition.start, p.partition.size) for p in plan.partitions
                                                if p.method == "used-blocks"]
            trackers = _side.submit(open_trackers, source.fd, tracked)  # a Full needs them only at the end
            known = ext.EMPTY
            if parent is not None and opts.change_tracking:
                known = known_unchanged(trackers.result(), parent.metadata.get(TRACKING_KEY, {}))
                known = ext.intersect(ext.intersect(known, extents), parent.extents)
            reader = CellReader(source.fd, extents, header.chunk_size, source.size)
            job = encoder = CellEncoder(reader, opts.compression, key.hash_key if key else None, sealer, parent,
                                        raw_cells=cells_for(plan.incompressible(), header.chunk_size))
            if len(known):
                job = SkipKnownCells(encoder, parent, cells_to_skip(cells, extents, parent.extents, known,
                                                                   header.chunk_size, source.size), known,
                                     source.size)
            progress.start("imaging", int(extents[:, 1].sum()) if len(extents) else 0)
            for cell in ordered_map(job, cells.tolist()):
                bytes_read += cell.bytes_read
                progress.advance(cell.bytes_read)
                if cell.stored:
                    writer.add_chunk(cell.disk_offset, cell.length, cell.codec_id, cell.stored, cell.content_hash,
                                     cell.flags)
                elif cell.all_zero and cell.in_parent:
                    writer.add_chunk(cell.disk_offset, cell.length, 0, b"", cell.content_hash, CHUNK_ZERO)
                if not cell.all_zero:
                    new_offsets.append(cell.disk_offset)
                    new_lengths.append(cell.length)
                    new_hashes.append(cell.content_hash)
            progress.finish()
            metadata = {
                "format": 1,
                "type": TYPE_NAMES[image_type],
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(header.created_ns / 1e9)),
                "host": socket.gethostname(),
                "source": {"path": os.path.abspath(opts.source), "size": source.size,
                           "is_block_device": source.is_block, "sector_size": source.sector_size},
                "compression": opts.compression,
                "forensic": opts.forensic,
                "table": plan.table.to_dict(),
                "partitions": [p.to_dict() for p in plan.partitions],
                "stats": {"bytes_read": bytes_read, "bytes_imaged": int(extents[:, 1].sum()) if len(extents) else 0},
                TRACKING_KEY: snapshots(trackers.result()),
            } | (opts.extra_metadata or {})
            digest = state_hash(source.size, np.array(new_offsets, dtype=np.int64),
                                np.array(new_lengths, dtype=np.int64), np.array(new_hashes, dtype="V16"))
            path = writer.finish(extents, metadata, digest)
        except BaseException:
            progress.finish()
            writer.abort()
            if trackers is not None:
                wait([trackers])  # it reads the source, which closes next
            raise
        finally:
            if parent is not None:
                parent.close()
    return ImageResult(image=path, image_id=header.image_id.hex().upper(), image_type=TYPE_NAMES[image_type],
                       increment=header.increment, bytes_read=bytes_read,
                       bytes_written=sum(os.path.getsize(p) for p in writer.final_paths),
                       bytes_imaged=int(extents[:, 1].sum()) if len(extents) else 0,
                       seconds=round(time.monotonic() - started, 3), parts=writer.final_paths, notes=notes)
