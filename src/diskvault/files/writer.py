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

import numpy as np

from diskvault.crypto.aead import Sealer
from diskvault.files.layout import (
    INDEX_DTYPE,
    SECTION_CATALOG,
    SECTION_INDEX,
    SECTION_METADATA,
    SECTION_NAMES,
    ArchiveFooter,
    ArchiveHeader,
    archive_file_name,
)
from diskvault.format import codec
from diskvault.format.container_io import ContainerWriter


class ArchiveWriter(ContainerWriter):
    section_names = SECTION_NAMES

    def __init__(self, directory: str, header: ArchiveHeader, known: set[bytes] | None = None,
                 split_size: int | None = None, sealer: Sealer | None = None) -> None:
        self.known = known if known is not None else set()  # hashes stored in this archive or its chain
        self._lock = threading.Lock()
        super().__init__(directory, header, split_size, sealer)

    def _part_path(self, part: int) -> str:
        name = archive_file_name(self.header.set_id, self.header.increment, part)
        return os.path.join(self.directory, name)

    def add_chunk(self, content_hash: bytes, length: int, encode: Callable[[], tuple[int, bytes]]) -> bool:
        """Store a chunk unless its hash is already in the set. ``encode`` (run outside the lock)
        gives (codec id, stored bytes). Returns whether it was stored."""
        if content_hash in self.known:
            return False
        codec_id, stored = encode()
        with self._lock:
            if content_hash in self.known:
                return False
            self._room_for(len(stored))
            self._f.write(stored)
            self._records.append((content_hash, self._offset, length, len(stored), len(self.final_paths) - 1,
                                  codec_id, 0, 0, codec.content_hash(stored), 0))
            self._part_has_chunks = True
            self._offset += len(stored)
            self.stored_bytes += len(stored)
            self.logical_bytes += length
            self.known.add(content_hash)
            self._start_write_out()
        return True

    @property
    def chunk_count(self) -> int:
        return len(self._records)

    def finish(self, catalog: bytes, entry_count: int, metadata: dict) -> str:
        """Write index, catalog, metadata and footer; fsync; rename into place. Returns part 0's path."""
        raws = {SECTION_INDEX: np.array(self._records, dtype=INDEX_DTYPE).tobytes(), SECTION_CATALOG: catalog,
                SECTION_METADATA: json.dumps(metadata, sort_keys=True).encode()}
        return self._commit(raws, lambda part_count: ArchiveFooter(
            set_id=self.header.set_id, increment=self.header.increment, part_count=part_count,
            chunk_count=len(self._records), stored_bytes=self.stored_bytes, logical_bytes=self.logical_bytes,
            entry_count=entry_count))
