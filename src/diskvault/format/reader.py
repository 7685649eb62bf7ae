"""Random-access image reader: footer -> sections -> chunks by disk offset, every read checked."""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from threading import Lock

import numpy as np

from diskvault.errors import ImageFormatError, IncompleteImageError, IntegrityError
from diskvault.format import codec
from diskvault.format.layout import (
    CHUNK_ZERO, EXTENTS_DTYPE, FOOTER_SIZE, HEADER_SIZE, INDEX_DTYPE, SECTION_EXTENTS, SECTION_INDEX,
    SECTION_METADATA, SECTION_NAMES, Footer, Header,
)


class ImageFile:
    """One complete image file opened read-only. Raises a clear error for anything malformed."""

    def __init__(self, path: str, cache_chunks: int = 64) -> None:
        self.path = path
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise ImageFormatError(path, e.strerror) from None
        try:
            self.file_size = os.fstat(self._fd).st_size
            try:
                self.header = Header.unpack(os.pread(self._fd, HEADER_SIZE, 0))
            except ValueError as e:
                raise ImageFormatError(path, e) from None
            if self.file_size < HEADER_SIZE + FOOTER_SIZE:
                raise IncompleteImageError(path)
            try:
                self.footer = Footer.unpack(os.pread(self._fd, FOOTER_SIZE, self.file_size - FOOTER_SIZE))
            except ValueError as e:
                if "checksum" in str(e):
                    raise IntegrityError(f"{path}: {e}") from None
                raise IncompleteImageError(path) from None
            if self.footer.image_id != self.header.image_id:
                raise IntegrityError(f"{path}: footer belongs to another image")
            self.index = np.frombuffer(self._section(SECTION_INDEX), dtype=INDEX_DTYPE)
            ext = np.frombuffer(self._section(SECTION_EXTENTS), dtype=EXTENTS_DTYPE)
            self.extents = np.stack([ext["start"], ext["length"]], axis=1) if len(ext) else \
                np.zeros((0, 2), dtype=np.uint64)
            self.metadata = json.loads(self._section(SECTION_METADATA))
        except BaseException:
            os.close(self._fd)
            raise
        self._check_layout()
        self._offsets = self.index["disk_offset"].astype(np.int64)
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cache_size = cache_chunks
        self._lock = Lock()

    # -- structure -----------------------------------------------------------------------------
    def _section(self, number: int) -> bytes:
        s = self.footer.sections[number]
        name = SECTION_NAMES[number]
        if s.offset + s.stored_length > self.file_size - FOOTER_SIZE or s.offset < HEADER_SIZE:
            raise IntegrityError(f"{self.path}: {name} section lies outside the file")
        stored = os.pread(self._fd, s.stored_length, s.offset)
        if codec.section_digest(stored) != s.digest:
            raise IntegrityError(f"{self.path}: {name} section is damaged (checksum mismatch)")
        try:
            raw = codec.unpack_section(stored, s.raw_length)
        except Exception:
            raise IntegrityError(f"{self.path}: {name} section cannot be decompressed") from None
        if len(raw) != s.raw_length:
            raise IntegrityError(f"{self.path}: {name} section has the wrong length")
        return raw

    def _check_layout(self) -> None:
        """Every byte of the file belongs to the header, a chunk, a section or the footer."""
        idx = self.index
        stored = idx[idx["stored_length"] > 0]
        order = np.argsort(stored["file_offset"])
        offs, lens = stored["file_offset"][order].astype(np.int64), stored["stored_length"][order].astype(np.int64)
        expected = HEADER_SIZE + np.concatenate(([0], np.cumsum(lens)[:-1])) if len(lens) else offs
        if len(lens) and not np.array_equal(offs, expected):
            raise IntegrityError(f"{self.path}: index does not describe the file (overlapping or missing chunks)")
        pos = HEADER_SIZE + int(lens.sum())
        for number in (SECTION_INDEX, SECTION_EXTENTS, SECTION_METADATA):
            s = self.footer.sections[number]
            if s.offset != pos:
                raise IntegrityError(f"{self.path}: {SECTION_NAMES[number]} section is not where expected")
            pos += s.stored_length
        if pos + FOOTER_SIZE != self.file_size:
            raise IntegrityError(f"{self.path}: file size does not match its footer")
        if int(lens.sum()) != self.footer.stored_bytes or len(idx) != self.footer.chunk_count:
            raise IntegrityError(f"{self.path}: footer totals do not match the index")
        if len(idx) > 1 and np.any(np.diff(self._offsets_of(idx)) <= 0):
            raise IntegrityError(f"{self.path}: index is not sorted by disk offset")

    @staticmethod
    def _offsets_of(idx: np.ndarray) -> np.ndarray:
        return idx["disk_offset"].astype(np.int64)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "ImageFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- identity ------------------------------------------------------------------------------
    @property
    def image_id(self) -> str:
        return self.header.image_id.hex().upper()

    @property
    def disk_size(self) -> int:
        return self.header.disk_size

    @property
    def chunk_size(self) -> int:
        return self.header.chunk_size

    # -- chunks --------------------------------------------------------------------------------
    def read_stored(self, i: int) -> bytes:
        rec = self.index[i]
        return os.pread(self._fd, int(rec["stored_length"]), int(rec["file_offset"]))

    def decode(self, i: int, stored: bytes) -> bytes:
        """Check and decompress chunk ``i`` from its stored bytes; IntegrityError names the disk range."""
        rec = self.index[i]
        length = int(rec["length"])
        if rec["flags"] & CHUNK_ZERO:
            return bytes(length)
        where = self.describe_range(int(rec["disk_offset"]), length)
        if len(stored) != int(rec["stored_length"]) or codec.content_hash(stored) != bytes(rec["stored_hash"]):
            raise IntegrityError(f"{self.path}: damaged data in {where} (stored checksum mismatch)")
        try:
            data = codec.decompress(int(rec["codec"]), stored, length)
        except Exception:
            raise IntegrityError(f"{self.path}: damaged data in {where} (cannot decompress)") from None
        if len(data) != length or codec.content_hash(data) != bytes(rec["content_hash"]):
            raise IntegrityError(f"{self.path}: damaged data in {where} (content checksum mismatch)")
        return data

    def chunk(self, i: int) -> bytes:
        with self._lock:
            data = self._cache.get(i)
            if data is not None:
                self._cache.move_to_end(i)
                return data
        data = self.decode(i, self.read_stored(i))
        with self._lock:
            self._cache[i] = data
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return data

    def read(self, offset: int, length: int) -> bytes:
        """Bytes of the imaged disk at ``offset``; cells not stored read as zeros."""
        out = bytearray(length)
        end = min(offset + length, self.disk_size)
        pos = offset
        cs = self.chunk_size
        while pos < end:
            cell_start = pos - pos % cs
            cell_end = min(cell_start + cs, end)
            i = int(np.searchsorted(self._offsets, cell_start))
            if i < len(self._offsets) and self._offsets[i] == cell_start:
                data = self.chunk(i)
                out[pos - offset:cell_end - offset] = data[pos - cell_start:cell_end - cell_start]
            pos = cell_end
        return bytes(out)

    def describe_range(self, start: int, length: int) -> str:
        """Human name for a disk byte range: which partition (or table area) holds it."""
        for p in self.metadata.get("partitions", []):
            if p["start"] <= start < p["start"] + p["size"]:
                rel = start - p["start"]
                return f"partition {p['number']} bytes {rel}-{rel + length - 1} (disk bytes {start}-{start + length - 1})"
        return f"disk bytes {start}-{start + length - 1} (outside partitions)"
