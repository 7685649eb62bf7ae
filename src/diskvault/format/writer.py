"""Append-only image writer. Order: header, chunks, index, extents, metadata, footer, fsync, rename.

Each part is written as ``NAME.partial`` and renamed to ``NAME`` only after the last part (the one
with the footer) is complete and every part and the folder are fsynced; the footer-bearing part is
renamed last. A crash never leaves a set of files that looks complete.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
from dataclasses import replace

import numpy as np

from diskvault.crypto.aead import Sealer
from diskvault.format import codec
from diskvault.format.layout import (
    CODEC_NONE, EXTENTS_DTYPE, FOOTER_SIZE, HEADER_SIZE, INDEX_DTYPE, SECTION_EXTENTS, SECTION_INDEX,
    SECTION_METADATA, SECTION_NAMES, Footer, Header, Section,
)

PARTIAL_SUFFIX = ".partial"
MIN_SPLIT = 1 << 20
# Start writing chunks out every this many bytes, so the closing fsync has little left to wait
# for: without it the page cache holds the whole image (below the dirty thresholds) until the end.
WRITEBACK_STEP = 32 << 20
_SYNC_FILE_RANGE_WRITE = 2  # start write-out of dirty pages, do not wait


def _sync_file_range():
    """libc's sync_file_range (Linux), or None."""
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return fn


_start_writeback = _sync_file_range()


def image_file_name(image_id: bytes, increment: int = 0, split_part: int = 0) -> str:
    return f"{image_id.hex().upper()}-{increment:02d}-{split_part:02d}.dvimg"


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ImageWriter:
    def __init__(self, directory: str, header: Header, split_size: int | None = None,
                 sealer: Sealer | None = None, final_name: str | None = None) -> None:
        if split_size is not None and split_size < MIN_SPLIT:
            raise ValueError(f"split size must be at least {MIN_SPLIT} bytes")
        self.directory = directory
        self.header = header
        self.split_size = split_size
        self.sealer = sealer
        self._final_name = final_name  # merge writes one file under another name, then replaces
        self.temp_paths: list[str] = []
        self.final_paths: list[str] = []
        self._records: list[tuple] = []
        self.stored_bytes = 0
        self.logical_bytes = 0
        self._f = None
        self._open_part()

    def _open_part(self) -> None:
        part = len(self.final_paths)
        if self._final_name and part:
            raise ValueError("an image written under another name cannot be split")
        final = os.path.join(self.directory, self._final_name or
                             image_file_name(self.header.image_id, self.header.increment, part))
        if os.path.exists(final):
            raise FileExistsError(final)
        if self._f is not None:
            os.fsync(self._f.fileno())
            self._f.close()
        self.final_paths.append(final)
        self.temp_paths.append(final + PARTIAL_SUFFIX)
        self._f = open(self.temp_paths[-1], "wb", buffering=0)
        self._f.write(replace(self.header, split_part=part).pack())
        self._offset = HEADER_SIZE
        self._written_out = 0  # write-out started up to here
        self._part_has_chunks = False

    def _room_for(self, n: int) -> None:
        if self.split_size and self._part_has_chunks and self._offset + n > self.split_size:
            self._open_part()

    @property
    def final_path(self) -> str:
        return self.final_paths[0]

    def add_chunk(self, disk_offset: int, length: int, codec_id: int, stored: bytes,
                  content_hash: bytes, flags: int = 0) -> None:
        """Append one cell's stored bytes (empty for a ZERO cell) and remember its record."""
        if stored:
            self._room_for(len(stored))
            self._f.write(stored)
            self._part_has_chunks = True
        if not stored:
            stored_hash = b"\0" * 16
        elif codec_id == CODEC_NONE and not flags and self.sealer is None and len(stored) == length:
            stored_hash = content_hash  # the cell's bytes as they are, and an unkeyed hash: the same BLAKE3
        else:
            stored_hash = codec.content_hash(stored)
        self._records.append((disk_offset, self._offset if stored else 0, length, len(stored), flags, codec_id,
                              0, len(self.final_paths) - 1 if stored else 0, content_hash, stored_hash))
        self._offset += len(stored)
        self.stored_bytes += len(stored)
        self.logical_bytes += length
        if _start_writeback and self._offset - self._written_out >= WRITEBACK_STEP:
            _start_writeback(self._f.fileno(), self._written_out, self._offset - self._written_out,
                             _SYNC_FILE_RANGE_WRITE)  # a failure here shows at the fsync
            self._written_out = self._offset

    def index_array(self) -> np.ndarray:
        return np.array(self._records, dtype=INDEX_DTYPE)

    def _seal_section(self, number: int, raw: bytes) -> bytes:
        stored = codec.pack_section(raw)
        if self.sealer:
            stored = self.sealer.seal(stored, self.sealer.section_aad(SECTION_NAMES[number], self.header.increment))
        return stored

    def finish(self, extents: np.ndarray, metadata: dict, state_hash: bytes) -> str:
        """Write index, extents, metadata and footer; fsync; rename into place. Returns part 0's path."""
        ext = np.zeros(len(extents), dtype=EXTENTS_DTYPE)
        if len(extents):
            ext["start"], ext["length"] = extents[:, 0], extents[:, 1]
        raws = {SECTION_INDEX: self.index_array().tobytes(), SECTION_EXTENTS: ext.tobytes(),
                SECTION_METADATA: json.dumps(metadata, sort_keys=True).encode()}
        stored = {n: self._seal_section(n, raw) for n, raw in raws.items()}
        tail = sum(map(len, stored.values())) + FOOTER_SIZE
        if self.split_size and self._part_has_chunks and self._offset + tail > self.split_size:
            self._open_part()  # sections and footer go into a part of their own
        footer = Footer(image_id=self.header.image_id, chunk_count=len(self._records),
                        stored_bytes=self.stored_bytes, logical_bytes=self.logical_bytes,
                        state_hash=state_hash, part_count=len(self.final_paths),
                        increment=self.header.increment)
        for n in (SECTION_INDEX, SECTION_EXTENTS, SECTION_METADATA):
            footer.sections[n] = Section(offset=self._offset, stored_length=len(stored[n]),
                                         raw_length=len(raws[n]), digest=codec.section_digest(stored[n]))
            self._f.write(stored[n])
            self._offset += len(stored[n])
        self._f.write(footer.pack())
        os.fsync(self._f.fileno())
        self._f.close()
        self._f = None
        for temp, final in zip(self.temp_paths, self.final_paths):  # the footer's part goes last
            os.replace(temp, final)
        fsync_dir(self.directory)
        return self.final_paths[0]

    def abort(self) -> None:
        """Remove the partial files (after an error or an interruption)."""
        if self._f is not None:
            self._f.close()
            self._f = None
        for temp in self.temp_paths:
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass
