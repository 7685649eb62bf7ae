"""Append-only image writer. Order: header, chunks, index, extents, metadata, footer, fsync, rename.

An image is written as ``NAME.partial`` and renamed to ``NAME`` only after the footer is written
and the file and its folder are fsynced: a crash never leaves a file that looks complete.
"""

from __future__ import annotations

import json
import os

import numpy as np

from diskvault.format import codec
from diskvault.format.layout import (
    FOOTER_SIZE, HEADER_SIZE, INDEX_DTYPE, SECTION_EXTENTS, SECTION_INDEX, SECTION_METADATA,
    EXTENTS_DTYPE, Footer, Header, Section,
)

PARTIAL_SUFFIX = ".partial"


def image_file_name(image_id: bytes, increment: int = 0, split_part: int = 0) -> str:
    return f"{image_id.hex().upper()}-{increment:02d}-{split_part:02d}.dvimg"


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ImageWriter:
    def __init__(self, directory: str, header: Header) -> None:
        self.header = header
        self.final_path = os.path.join(directory, image_file_name(header.image_id, header.increment,
                                                                  header.split_part))
        self.temp_path = self.final_path + PARTIAL_SUFFIX
        if os.path.exists(self.final_path):
            raise FileExistsError(self.final_path)
        self._f = open(self.temp_path, "wb", buffering=0)
        self._f.write(header.pack())
        self._offset = HEADER_SIZE
        self._records: list[tuple] = []
        self.stored_bytes = 0
        self.logical_bytes = 0

    def add_chunk(self, disk_offset: int, length: int, codec_id: int, stored: bytes,
                  content_hash: bytes, flags: int = 0) -> None:
        """Append one cell's stored bytes (may be empty for a ZERO cell) and remember its record."""
        if stored:
            self._f.write(stored)
        self._records.append((disk_offset, self._offset, length, len(stored), flags, codec_id, 0, 0,
                              content_hash, codec.content_hash(stored) if stored else b"\0" * 16))
        self._offset += len(stored)
        self.stored_bytes += len(stored)
        self.logical_bytes += length

    def index_array(self) -> np.ndarray:
        return np.array(self._records, dtype=INDEX_DTYPE)

    def _write_section(self, raw: bytes) -> Section:
        stored = codec.pack_section(raw)
        section = Section(offset=self._offset, stored_length=len(stored), raw_length=len(raw),
                          digest=codec.section_digest(stored))
        self._f.write(stored)
        self._offset += len(stored)
        return section

    def finish(self, extents: np.ndarray, metadata: dict) -> str:
        """Write index, extents, metadata and footer; fsync; rename into place. Returns the path."""
        footer = Footer(image_id=self.header.image_id, chunk_count=len(self._records),
                        stored_bytes=self.stored_bytes, logical_bytes=self.logical_bytes)
        footer.sections[SECTION_INDEX] = self._write_section(self.index_array().tobytes())
        ext = np.zeros(len(extents), dtype=EXTENTS_DTYPE)
        if len(extents):
            ext["start"], ext["length"] = extents[:, 0], extents[:, 1]
        footer.sections[SECTION_EXTENTS] = self._write_section(ext.tobytes())
        footer.sections[SECTION_METADATA] = self._write_section(
            json.dumps(metadata, sort_keys=True).encode())
        self._f.write(footer.pack())
        self._offset += FOOTER_SIZE
        os.fsync(self._f.fileno())
        self._f.close()
        os.rename(self.temp_path, self.final_path)
        fsync_dir(os.path.dirname(os.path.abspath(self.final_path)))
        return self.final_path

    def abort(self) -> None:
        """Remove the partial file (after an error or an interruption)."""
        try:
            self._f.close()
        finally:
            try:
                os.unlink(self.temp_path)
            except FileNotFoundError:
                pass
