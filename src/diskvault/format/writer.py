"""Append-only image writer. Order: header, chunks, index, extents, metadata, footer, fsync, rename.

Each part is written as ``NAME.partial`` and renamed to ``NAME`` only after the last part (the one
with the footer) is complete and every part and the folder are fsynced; the footer-bearing part is
renamed last. A crash never leaves a set of files that looks complete.
"""

from __future__ import annotations

import json
import os

import numpy as np

from diskvault.crypto.aead import Sealer
from diskvault.format import codec
from diskvault.format.container_io import MIN_SPLIT, PARTIAL_SUFFIX, ContainerWriter, fsync_dir
from diskvault.format.layout import (
    CODEC_NONE, EXTENTS_DTYPE, INDEX_DTYPE, SECTION_EXTENTS, SECTION_INDEX, SECTION_METADATA, SECTION_NAMES,
    Footer, Header,
)

# MIN_SPLIT, PARTIAL_SUFFIX and fsync_dir live in container_io.py; importable from here as before.
__all__ = ["MIN_SPLIT", "PARTIAL_SUFFIX", "ImageWriter", "fsync_dir", "image_file_name"]


def image_file_name(image_id: bytes, increment: int = 0, split_part: int = 0) -> str:
    return f"{image_id.hex().upper()}-{increment:02d}-{split_part:02d}.dvimg"


class ImageWriter(ContainerWriter):
    section_names = SECTION_NAMES

    def __init__(self, directory: str, header: Header, split_size: int | None = None,
                 sealer: Sealer | None = None, final_name: str | None = None) -> None:
        self._final_name = final_name  # merge writes one file under another name, then replaces
        super().__init__(directory, header, split_size, sealer)

    def _part_path(self, part: int) -> str:
        if self._final_name and part:
            raise ValueError("an image written under another name cannot be split")
        return os.path.join(self.directory, self._final_name or
                            image_file_name(self.header.image_id, self.header.increment, part))

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
        self._start_write_out()

    def index_array(self) -> np.ndarray:
        return np.array(self._records, dtype=INDEX_DTYPE)

    def finish(self, extents: np.ndarray, metadata: dict, state_hash: bytes) -> str:
        """Write index, extents, metadata and footer; fsync; rename into place. Returns part 0's path."""
        ext = np.zeros(len(extents), dtype=EXTENTS_DTYPE)
        if len(extents):
            ext["start"], ext["length"] = extents[:, 0], extents[:, 1]
        raws = {SECTION_INDEX: self.index_array().tobytes(), SECTION_EXTENTS: ext.tobytes(),
                SECTION_METADATA: json.dumps(metadata, sort_keys=True).encode()}
        return self._commit(raws, lambda part_count: Footer(
            image_id=self.header.image_id, chunk_count=len(self._records), stored_bytes=self.stored_bytes,
            logical_bytes=self.logical_bytes, state_hash=state_hash, part_count=part_count,
            increment=self.header.increment))
