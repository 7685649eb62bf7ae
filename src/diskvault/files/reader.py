"""Read archives: one archive (all split parts) with every structure checked on open, and a chain
(the archive and its parents) that finds any chunk of the set by its content hash.

    chain   = [Full, ..., parent, archive]   (header.parent_increment, same set id)
    link    : child.parent_digest == BLAKE3-256(parent's footer)   (a swapped parent is refused)
    chunks  : hash -> (member, index record), newest member first
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from functools import cached_property

import blake3
import numpy as np

from diskvault.errors import IncompleteImageError, IntegrityError, MissingChainMemberError
from diskvault.files.errors import ArchiveFormatError
from diskvault.files.layout import (
    HEADER_SIZE,
    INDEX_DTYPE,
    NAME_RE,
    SECTION_CATALOG,
    SECTION_INDEX,
    SECTION_METADATA,
    SECTION_NAMES,
    TYPE_FULL,
    ArchiveFooter,
    ArchiveHeader,
    archive_file_name,
    chunk_aad,
)
from diskvault.format import codec
from diskvault.format.container_io import ContainerFile, KeyRing, find_parts


def part_paths(path: str) -> list[str]:
    """All split parts of the archive ``path`` belongs to, in order; a gap is named."""
    return find_parts(path, NAME_RE, archive_file_name)


def read_header(path: str) -> ArchiveHeader:
    try:
        with open(path, "rb") as f:
            return ArchiveHeader.unpack(f.read(HEADER_SIZE))
    except ValueError as e:
        if "checksum" in str(e):
            raise IntegrityError(f"{path}: {e}") from None
        raise ArchiveFormatError(path, e) from None
    except OSError as e:
        raise ArchiveFormatError(path, e.strerror) from None


class ArchiveFile(ContainerFile):
    """One complete archive opened read-only: header, footer, index and metadata checked; the
    catalog is read when first used."""

    noun = "archive"
    section_names = SECTION_NAMES

    def _open(self, path: str, keyring: KeyRing) -> None:
        if not os.path.exists(path):
            raise ArchiveFormatError(path, "no such file")
        self.part_paths = part_paths(path)
        headers = []
        for n, p in enumerate(self.part_paths):
            headers.append(read_header(p))
            self._fds.append(os.open(p, os.O_RDONLY | os.O_CLOEXEC))
            if headers[-1].split_part != n or replace(headers[-1], split_part=0) != replace(headers[0], split_part=0):
                raise IntegrityError(f"{p}: header does not belong to {os.path.basename(self.part_paths[0])}")
        self.header = headers[0]
        self.part_sizes = [os.fstat(fd).st_size for fd in self._fds]
        self._read_footer(ArchiveFooter.unpack, lambda: IncompleteImageError(self.part_paths[-1]))
        self._check_footer_matches(self.header.set_id, self.footer.set_id, archive_file_name)
        self._unlock(keyring, self.header.set_id)
        self.index = np.frombuffer(self._section(SECTION_INDEX), dtype=INDEX_DTYPE)
        self.metadata = json.loads(self._section(SECTION_METADATA))
        self._check_layout()

    @property
    def set_id(self) -> str:
        return self.header.set_id.hex().upper()

    @cached_property
    def catalog(self) -> bytes:
        return self._section(SECTION_CATALOG)

    @cached_property
    def footer_digest(self) -> bytes:
        return blake3.blake3(self.footer_raw).digest()

    def _check_layout(self) -> None:
        self._check_totals()
        self._check_parts(self.index, in_file_order=True)

    def decode(self, i: int, stored: bytes) -> bytes:
        """Check, decrypt and decompress chunk ``i``; IntegrityError names it."""
        rec = self.index[i]
        length, codec_id, digest = int(rec["length"]), int(rec["codec"]), bytes(rec["content_hash"])
        where = f"chunk {i} ({length} bytes at part {int(rec['part'])} offset {int(rec['file_offset'])})"
        if len(stored) != int(rec["stored_length"]) or codec.content_hash(stored) != bytes(rec["stored_hash"]):
            raise IntegrityError(f"{self.path}: damaged {where} (stored checksum mismatch)")
        try:
            if self.sealer:
                stored = self.sealer.open(stored, chunk_aad(self.header.set_id, digest, length, codec_id))
            data = codec.decompress(codec_id, stored, length)
        except Exception as e:
            raise IntegrityError(f"{self.path}: damaged {where} ({e or 'cannot decompress'})") from None
        if len(data) != length or codec.content_hash(data, self.hash_key) != digest:
            raise IntegrityError(f"{self.path}: damaged {where} (content checksum mismatch)")
        return data


class ArchiveChain:
    """An archive and the parents it needs, links checked; reads any chunk of the chain by hash."""

    def __init__(self, path: str, keyring: KeyRing | None = None) -> None:
        self.keyring = keyring or KeyRing()
        self.members: list[ArchiveFile] = []
        try:
            self._open(path)
        except BaseException:
            self.close()
            raise

    def _open(self, path: str) -> None:
        chain = [ArchiveFile(path, self.keyring)]
        while chain[0].header.archive_type != TYPE_FULL:
            child = chain[0]
            if len(chain) > 1000:
                raise IntegrityError(f"{path}: chain of parents loops")
            name = archive_file_name(child.header.set_id, child.header.parent_increment)
            parent_path = os.path.join(os.path.dirname(os.path.abspath(child.path)), name)
            if not os.path.exists(parent_path):
                raise MissingChainMemberError(f"missing chain member {name} (the parent of "
                                              f"{os.path.basename(child.path)})")
            chain.insert(0, ArchiveFile(parent_path, self.keyring))
            if chain[0].footer_digest != child.header.parent_digest:
                raise IntegrityError(f"{parent_path} is not the archive {os.path.basename(child.path)} was made "
                                     f"from (altered or swapped parent)")
        self.members = chain

    @cached_property
    def _where(self) -> dict[bytes, tuple[int, int]]:
        """Content hash -> (member, index record); built on the first chunk read."""
        where: dict[bytes, tuple[int, int]] = {}
        for m, member in enumerate(self.members):  # newest member last, so it wins
            where.update(zip(member.index["content_hash"].tolist(), ((m, i) for i in range(len(member.index)))))
        return where

    @property
    def head(self) -> ArchiveFile:
        return self.members[-1]

    @property
    def metadata(self) -> dict:
        return self.head.metadata

    def hashes(self) -> set[bytes]:
        return {h for m in self.members for h in m.index["content_hash"].tolist()}

    def chunk(self, content_hash: bytes) -> bytes:
        """The checked bytes of a chunk; IntegrityError when no member holds it."""
        where = self._where.get(content_hash)
        if where is None:
            raise IntegrityError(f"{self.head.path}: chunk {content_hash.hex()} is missing from the set")
        member = self.members[where[0]]
        return member.decode(where[1], member.read_stored(where[1]))

    def close(self) -> None:
        for m in self.members:
            m.close()

    def __enter__(self) -> ArchiveChain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
