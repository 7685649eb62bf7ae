"""Read one image (all its split parts): header, footer, sections, chunks — every read checked.
Chains of images are read through chain.py."""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace

import numpy as np

from diskvault.errors import ImageFormatError, IncompleteImageError, IntegrityError, MissingChainMemberError
from diskvault.format import codec
from diskvault.format.container_io import ContainerFile, KeyRing, find_parts
from diskvault.format.layout import (
    CHUNK_PATCH, CHUNK_ZERO, EXTENTS_DTYPE, HEADER_SIZE, INDEX_DTYPE, SECTION_EXTENTS, SECTION_INDEX,
    SECTION_METADATA, SECTION_NAMES, Footer, Header,
)
from diskvault.format.writer import PARTIAL_SUFFIX, image_file_name

PATCH_HEADER = 8  # the u64 block bitmap in front of a patch's blocks
NAME_RE = re.compile(r"^([0-9A-F]{16})-(\d{2})-(\d{2})\.dvimg$")


def part_paths(path: str) -> list[str]:
    """All split parts of the image ``path`` belongs to, in order. A gap in the numbering is a
    missing part and is named."""
    return find_parts(path, NAME_RE, image_file_name, noun="image")


class ImageFile(ContainerFile):
    """One complete image (one or more split parts) opened read-only."""

    noun = "image"
    section_names = SECTION_NAMES

    def _open(self, path: str, keyring: KeyRing) -> None:
        if not os.path.exists(path):
            raise ImageFormatError(path, "no such file")
        if path.endswith(PARTIAL_SUFFIX):  # complete only once renamed: the rename is the commit
            raise IncompleteImageError(path)
        paths = part_paths(path)
        for p in paths:
            try:
                self._fds.append(os.open(p, os.O_RDONLY | os.O_CLOEXEC))
            except OSError as e:
                raise ImageFormatError(p, e.strerror) from None
        headers = []
        for n, (p, fd) in enumerate(zip(paths, self._fds)):
            try:
                header = Header.unpack(os.pread(fd, HEADER_SIZE, 0))
            except ValueError as e:
                raise ImageFormatError(p, e) from None
            if header.split_part != n:
                raise IntegrityError(f"{p}: header says part {header.split_part}")
            if headers and replace(header, split_part=0) != replace(headers[0], split_part=0):
                # a left-over part of an image this one replaced (merge): not ours
                for fd in self._fds[n:]:
                    os.close(fd)
                del self._fds[n:]
                paths = paths[:n]
                break
            headers.append(header)
        self.header = headers[0]
        self.part_paths = paths
        self.part_sizes = [os.fstat(fd).st_size for fd in self._fds]
        self.file_size = sum(self.part_sizes)
        self._read_footer(Footer.unpack, self._no_footer)
        self._check_footer_matches(self.header.image_id, self.footer.image_id, image_file_name)
        self._unlock(keyring, self.header.image_id)
        self.index = np.frombuffer(self._section(SECTION_INDEX), dtype=INDEX_DTYPE)
        ext = np.frombuffer(self._section(SECTION_EXTENTS), dtype=EXTENTS_DTYPE)
        self.extents = np.stack([ext["start"], ext["length"]], axis=1) if len(ext) else \
            np.zeros((0, 2), dtype=np.uint64)
        self.metadata = json.loads(self._section(SECTION_METADATA))
        self._check_layout()

    def _no_footer(self) -> Exception:
        last = self.part_paths[-1]
        if len(self.part_paths) > 1:
            nxt = image_file_name(self.header.image_id, self.header.increment, len(self.part_paths))
            return MissingChainMemberError(f"{last} has no footer: part {nxt} is missing, or the image "
                                           f"is incomplete")
        return IncompleteImageError(last)

    # -- structure -----------------------------------------------------------------------------
    def _check_layout(self) -> None:
        """Every byte of every part belongs to its header, a chunk, a section or the footer."""
        self._check_totals()
        idx = self.index
        if len(idx) > 1 and np.any(np.diff(idx["disk_offset"].astype(np.int64)) <= 0):
            raise IntegrityError(f"{self.path}: index is not sorted by disk offset")
        self._check_parts(idx[idx["stored_length"] > 0], in_file_order=False)

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
    def payload(self, i: int, stored: bytes) -> bytes:
        """Check, decrypt and decompress chunk ``i``'s stored bytes (a whole cell, or a patch)."""
        rec = self.index[i]
        length, disk_offset, codec_id = int(rec["length"]), int(rec["disk_offset"]), int(rec["codec"])
        if len(stored) != int(rec["stored_length"]) or codec.content_hash(stored) != bytes(rec["stored_hash"]):
            raise self.damaged(i, "stored checksum mismatch")
        try:
            if self.sealer:
                stored = self.sealer.open(stored, self.sealer.chunk_aad(disk_offset, length, codec_id))
            return codec.decompress(codec_id, stored, length + PATCH_HEADER)
        except Exception as e:
            raise self.damaged(i, str(e) or "cannot decompress") from None

    def check_content(self, i: int, data: bytes) -> bytes:
        rec = self.index[i]
        if len(data) != int(rec["length"]) or codec.content_hash(data, self.hash_key) != bytes(rec["content_hash"]):
            raise self.damaged(i, "content checksum mismatch")
        return data

    def decode(self, i: int, stored: bytes) -> bytes:
        """The cell of a whole-cell chunk ``i``, checked (patches are decoded by the Chain)."""
        rec = self.index[i]
        if rec["flags"] & CHUNK_ZERO:
            return bytes(int(rec["length"]))
        if rec["flags"] & CHUNK_PATCH:
            raise ValueError("a patch needs its parent state: decode it through a Chain")
        return self.check_content(i, self.payload(i, stored))

    def damaged(self, i: int, why: str) -> IntegrityError:
        rec = self.index[i]
        where = self.describe_range(int(rec["disk_offset"]), int(rec["length"]))
        return IntegrityError(f"{self.path}: damaged data in {where} ({why})")

    def describe_range(self, start: int, length: int) -> str:
        """Human name for a disk byte range: which partition (or table area) holds it."""
        for p in self.metadata.get("partitions", []):
            if p["start"] <= start < p["start"] + p["size"]:
                rel = start - p["start"]
                return f"partition {p['number']} bytes {rel}-{rel + length - 1} (disk bytes {start}-{start + length - 1})"
        return f"disk bytes {start}-{start + length - 1} (outside partitions)"
