"""Read one image (all its split parts): header, footer, sections, chunks — every read checked.
Chains of images are read through chain.py."""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace

import numpy as np

from diskvault.crypto.aead import Sealer
from diskvault.crypto.keys import KdfParams, PasswordSource, SetKey, unlock
from diskvault.errors import (ImageFormatError, IncompleteImageError, IntegrityError, MissingChainMemberError,
                              UsageError)
from diskvault.format import codec
from diskvault.format.layout import (
    CHUNK_PATCH, CHUNK_ZERO, EXTENTS_DTYPE, FOOTER_SIZE, HEADER_SIZE, INDEX_DTYPE, SECTION_EXTENTS, SECTION_INDEX,
    SECTION_METADATA, SECTION_NAMES, Footer, Header,
)
from diskvault.format.writer import PARTIAL_SUFFIX, image_file_name

PATCH_HEADER = 8  # the u64 block bitmap in front of a patch's blocks
NAME_RE = re.compile(r"^([0-9A-F]{16})-(\d{2})-(\d{2})\.dvimg$")


class KeyRing:
    """Passwords are asked once and each set key derived once, however many images are opened."""

    def __init__(self, password: PasswordSource | None = None) -> None:
        self._password = password
        self._cached_password: str | None = None
        self._keys: dict[tuple, SetKey] = {}

    def key_for(self, header: Header, path: str) -> SetKey:
        kdf = KdfParams(header.kdf_salt, header.kdf_time, header.kdf_memory_kib, header.kdf_parallelism)
        cache_key = (kdf, header.key_check)
        if cache_key not in self._keys:
            if self._cached_password is None:
                if self._password is None:
                    raise UsageError(f"{path} is encrypted: give --password-file or --password-env")
                self._cached_password = self._password()
            try:
                self._keys[cache_key] = unlock(self._cached_password, kdf, header.key_check, path)
            except ValueError as e:
                raise ImageFormatError(path, e) from None
        return self._keys[cache_key]


def part_paths(path: str) -> list[str]:
    """All split parts of the image ``path`` belongs to, in order. A gap in the numbering is a
    missing part and is named."""
    folder, name = os.path.split(path)
    m = NAME_RE.match(name)
    if not m:
        return [path]
    prefix = f"{m.group(1)}-{m.group(2)}-"
    parts = sorted(int(n[len(prefix):len(prefix) + 2]) for n in os.listdir(folder or ".")
                   if n.startswith(prefix) and NAME_RE.match(n))
    image_id, increment = bytes.fromhex(m.group(1)), int(m.group(2))
    for expected, found in enumerate(parts):
        if expected != found:
            raise MissingChainMemberError(f"missing part {image_file_name(image_id, increment, expected)} "
                                          f"of image {prefix}NN")
    return [os.path.join(folder, image_file_name(image_id, increment, p)) for p in parts] or [path]


class ImageFile:
    """One complete image (one or more split parts) opened read-only."""

    def __init__(self, path: str, keyring: KeyRing | None = None) -> None:
        self.path = path
        self._fds: list[int] = []
        try:
            self._open(path, keyring or KeyRing())
        except BaseException:
            self.close()
            raise

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
        last, last_size = paths[-1], self.part_sizes[-1]
        if last_size < HEADER_SIZE + FOOTER_SIZE:
            raise IncompleteImageError(last)
        try:
            self.footer = Footer.unpack(os.pread(self._fds[-1], FOOTER_SIZE, last_size - FOOTER_SIZE))
        except ValueError as e:
            if "checksum" in str(e):
                raise IntegrityError(f"{last}: {e}") from None
            if len(paths) > 1:
                nxt = image_file_name(self.header.image_id, self.header.increment, len(paths))
                raise MissingChainMemberError(f"{last} has no footer: part {nxt} is missing, or the image "
                                              f"is incomplete") from None
            raise IncompleteImageError(last) from None
        if self.footer.part_count != len(paths):
            missing = image_file_name(self.header.image_id, self.header.increment, len(paths))
            raise MissingChainMemberError(f"image {path} has {self.footer.part_count} parts: missing {missing}")
        if self.footer.image_id != self.header.image_id or self.footer.increment != self.header.increment:
            raise IntegrityError(f"{last}: footer belongs to another image")
        self.key: SetKey | None = None
        self.sealer: Sealer | None = None
        if self.header.encrypted:
            self.key = keyring.key_for(self.header, path)
            self.sealer = Sealer(self.key.chunk_key, self.header.image_id)
        self.index = np.frombuffer(self._section(SECTION_INDEX), dtype=INDEX_DTYPE)
        ext = np.frombuffer(self._section(SECTION_EXTENTS), dtype=EXTENTS_DTYPE)
        self.extents = np.stack([ext["start"], ext["length"]], axis=1) if len(ext) else \
            np.zeros((0, 2), dtype=np.uint64)
        self.metadata = json.loads(self._section(SECTION_METADATA))
        self._check_layout()

    # -- structure -----------------------------------------------------------------------------
    def _section(self, number: int) -> bytes:
        s = self.footer.sections[number]
        name, last = SECTION_NAMES[number], self.part_paths[-1]
        if s.offset < HEADER_SIZE or s.offset + s.stored_length > self.part_sizes[-1] - FOOTER_SIZE:
            raise IntegrityError(f"{last}: {name} section lies outside the file")
        stored = os.pread(self._fds[-1], s.stored_length, s.offset)
        if codec.section_digest(stored) != s.digest:
            raise IntegrityError(f"{last}: {name} section is damaged (checksum mismatch)")
        try:
            if self.sealer:
                stored = self.sealer.open(stored, self.sealer.section_aad(name, self.header.increment))
            raw = codec.unpack_section(stored, s.raw_length)
        except Exception:
            raise IntegrityError(f"{last}: {name} section cannot be decoded") from None
        if len(raw) != s.raw_length:
            raise IntegrityError(f"{last}: {name} section has the wrong length")
        return raw

    def _check_layout(self) -> None:
        """Every byte of every part belongs to its header, a chunk, a section or the footer."""
        idx = self.index
        if len(idx) != self.footer.chunk_count or int(idx["stored_length"].sum()) != self.footer.stored_bytes:
            raise IntegrityError(f"{self.path}: footer totals do not match the index")
        if len(idx) > 1 and np.any(np.diff(idx["disk_offset"].astype(np.int64)) <= 0):
            raise IntegrityError(f"{self.path}: index is not sorted by disk offset")
        if np.any(idx["part"] >= len(self.part_paths)):
            raise IntegrityError(f"{self.path}: index refers to a part that does not exist")
        stored = idx[idx["stored_length"] > 0]
        for part, (p, size) in enumerate(zip(self.part_paths, self.part_sizes)):
            mine = stored[stored["part"] == part]
            order = np.argsort(mine["file_offset"])
            offs = mine["file_offset"][order].astype(np.int64)
            lens = mine["stored_length"][order].astype(np.int64)
            if len(lens) and not np.array_equal(offs, HEADER_SIZE + np.concatenate(([0], np.cumsum(lens)[:-1]))):
                raise IntegrityError(f"{p}: index does not describe the file (overlapping or missing chunks)")
            end = HEADER_SIZE + int(lens.sum())
            if part == len(self.part_paths) - 1:
                for number in (SECTION_INDEX, SECTION_EXTENTS, SECTION_METADATA):
                    s = self.footer.sections[number]
                    if s.offset != end:
                        raise IntegrityError(f"{p}: {SECTION_NAMES[number]} section is not where expected")
                    end += s.stored_length
                end += FOOTER_SIZE
            if end != size:
                raise IntegrityError(f"{p}: file size does not match its index and footer")

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []

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

    @property
    def hash_key(self) -> bytes | None:
        return self.key.hash_key if self.key else None

    # -- chunks --------------------------------------------------------------------------------
    def read_stored(self, i: int) -> bytes:
        rec = self.index[i]
        return os.pread(self._fds[int(rec["part"])], int(rec["stored_length"]), int(rec["file_offset"]))

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
