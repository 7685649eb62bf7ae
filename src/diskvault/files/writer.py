"""Append-only archive writer: header, chunks, index, catalog, metadata, footer; each part written as
``NAME.partial``, fsynced, renamed (the footer's part last), folder fsynced — as images are.

``add_chunk`` is called from worker threads; it serializes on a lock and stores each content hash
at most once, so concurrent workers that produced the same chunk waste only their compression time.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from diskvault.crypto.aead import Sealer
from diskvault.files.layout import (
    FOOTER_SIZE,
    HEADER_SIZE,
    INDEX_DTYPE,
    SECTION_CATALOG,
    SECTION_INDEX,
    SECTION_METADATA,
    SECTION_NAMES,
    ArchiveFooter,
    ArchiveHeader,
    Section,
    archive_file_name,
)
from diskvault.format import codec
from diskvault.format.writer import MIN_SPLIT, PARTIAL_SUFFIX, fsync_dir


class ArchiveWriter:
    def __init__(self, directory: str, header: ArchiveHeader, known: set[bytes] | None = None,
                 split_size: int | None = None, sealer: Sealer | None = None) -> None:
        if split_size is not None and split_size < MIN_SPLIT:
            raise ValueError(f"split size must be at least {MIN_SPLIT} bytes")
        self.directory, self.header, self.split_size, self.sealer = directory, header, split_size, sealer
        self.known = known if known is not None else set()  # hashes stored in this archive or its chain
        self.temp_paths: list[str] = []
        self.final_paths: list[str] = []
        self._records: list[tuple] = []
        self.stored_bytes = 0
        self.logical_bytes = 0
        self._lock = threading.Lock()
        self._f = None
        self._open_part()

    def _open_part(self) -> None:
        part = len(self.final_paths)
        final = os.path.join(self.directory, archive_file_name(self.header.set_id, self.header.increment, part))
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
        self._part_has_chunks = False

    def add_chunk(self, content_hash: bytes, length: int, encode: Callable[[], tuple[int, bytes]]) -> bool:
        """Store a chunk unless its hash is already in the set. ``encode`` (run outside the lock)
        gives (codec id, stored bytes). Returns whether it was stored."""
        if content_hash in self.known:
            return False
        codec_id, stored = encode()
        with self._lock:
            if content_hash in self.known:
                return False
            if self.split_size and self._part_has_chunks and self._offset + len(stored) > self.split_size:
                self._open_part()
            self._f.write(stored)
            self._records.append((content_hash, self._offset, length, len(stored), len(self.final_paths) - 1,
                                  codec_id, 0, 0, codec.content_hash(stored), 0))
            self._part_has_chunks = True
            self._offset += len(stored)
            self.stored_bytes += len(stored)
            self.logical_bytes += length
            self.known.add(content_hash)
        return True

    @property
    def chunk_count(self) -> int:
        return len(self._records)

    def _seal_section(self, number: int, raw: bytes) -> bytes:
        stored = codec.pack_section(raw)
        if self.sealer:
            stored = self.sealer.seal(stored, self.sealer.section_aad(SECTION_NAMES[number], self.header.increment))
        return stored

    def finish(self, catalog: bytes, entry_count: int, metadata: dict) -> str:
        """Write index, catalog, metadata and footer; fsync; rename into place. Returns part 0's path."""
        raws = {SECTION_INDEX: np.array(self._records, dtype=INDEX_DTYPE).tobytes(), SECTION_CATALOG: catalog,
                SECTION_METADATA: json.dumps(metadata, sort_keys=True).encode()}
        stored = {n: self._seal_section(n, raw) for n, raw in raws.items()}
        tail = sum(map(len, stored.values())) + FOOTER_SIZE
        if self.split_size and self._part_has_chunks and self._offset + tail > self.split_size:
            self._open_part()
        footer = ArchiveFooter(set_id=self.header.set_id, increment=self.header.increment,
                               part_count=len(self.final_paths), chunk_count=len(self._records),
                               stored_bytes=self.stored_bytes, logical_bytes=self.logical_bytes,
                               entry_count=entry_count)
        for n in (SECTION_INDEX, SECTION_CATALOG, SECTION_METADATA):
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
