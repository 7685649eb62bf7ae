"""On-disk structures of the file-archive format v1, declared once. docs/FILES-FORMAT.md mirrors
this file (tests check it against these sizes).

All integers are little-endian. The archive reuses the image format's ideas (4096-byte header,
stored chunks back to back, zstd sections, 256-byte footer written last) but stores content-defined
chunks of files addressed by their hash, and a catalog of entries instead of a disk map.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

import numpy as np

from diskvault.format.container import (
    FOOTER_SIZE,
    HEADER_SIZE,
    SECTION,
    Section,
    check_footer,
    check_header,
    check_version,
    pack_sections,
    seal_block,
    text_field,
    unpack_sections,
)

FORMAT_VERSION = 1
HEADER_MAGIC = b"DVBAK\r\n\x1a"
FOOTER_MAGIC = b"DVBAKEND"
SUFFIX = ".dvbak"
NAME_RE = re.compile(r"^([0-9A-F]{16})-(\d{2})-(\d{2})\.dvbak$")

FLAG_ENCRYPTED = 1 << 0
TYPE_FULL, TYPE_DIFF, TYPE_INC = 0, 1, 2
TYPE_NAMES = {TYPE_FULL: "full", TYPE_DIFF: "diff", TYPE_INC: "inc"}

# Content-defined chunking (FastCDC 2020): min, avg (mask size; the mean chunk is about avg + min), max.
CHUNK_MIN, CHUNK_AVG, CHUNK_MAX = 512 << 10, 1 << 20, 8 << 20
CHUNKER_NAME = "fastcdc2020-nc1"

_HEADER = struct.Struct("<8sHHI8sHHQBBH32s16s16s16s16s16s32s32sIII32sIII")


def archive_file_name(set_id: bytes, increment: int = 0, split_part: int = 0) -> str:
    return f"{set_id.hex().upper()}-{increment:02d}-{split_part:02d}{SUFFIX}"


@dataclass
class ArchiveHeader:
    """The first 4096 bytes of every archive part. KDF field names match the image header's, so
    the image KeyRing unlocks archives too."""

    set_id: bytes
    increment: int = 0
    split_part: int = 0
    created_ns: int = 0
    archive_type: int = TYPE_FULL
    parent_increment: int = 0
    parent_digest: bytes = b"\0" * 32  # BLAKE3-256 of the parent's footer (zero for a Full)
    hash_name: str = "blake3-128"
    codec_name: str = "zstd"
    chunker_name: str = CHUNKER_NAME
    cipher_name: str = ""
    kdf_name: str = ""
    writer: str = ""
    kdf_salt: bytes = b"\0" * 32
    kdf_time: int = 0
    kdf_memory_kib: int = 0
    kdf_parallelism: int = 0
    key_check: bytes = b"\0" * 32
    chunk_min: int = CHUNK_MIN
    chunk_avg: int = CHUNK_AVG
    chunk_max: int = CHUNK_MAX
    flags: int = 0
    version: int = FORMAT_VERSION

    @property
    def encrypted(self) -> bool:
        return bool(self.flags & FLAG_ENCRYPTED)

    def pack(self) -> bytes:
        fixed = _HEADER.pack(
            HEADER_MAGIC, self.version, 0, self.flags, self.set_id, self.increment, self.split_part,
            self.created_ns, self.archive_type, 0, self.parent_increment, self.parent_digest,
            self.hash_name.encode(), self.codec_name.encode(), self.chunker_name.encode(),
            self.cipher_name.encode(), self.kdf_name.encode(), self.writer.encode()[:32], self.kdf_salt,
            self.kdf_time, self.kdf_memory_kib, self.kdf_parallelism, self.key_check,
            self.chunk_min, self.chunk_avg, self.chunk_max)
        return seal_block(fixed, HEADER_SIZE)

    @classmethod
    def unpack(cls, raw: bytes) -> ArchiveHeader:
        """Parse and check a header; raises ValueError with the reason."""
        check_header(raw, HEADER_MAGIC)
        (_, version, _, flags, set_id, increment, split_part, created_ns, archive_type, _, parent_increment,
         parent_digest, hash_name, codec_name, chunker_name, cipher_name, kdf_name, writer, kdf_salt,
         kdf_time, kdf_memory_kib, kdf_parallelism, key_check, chunk_min, chunk_avg,
         chunk_max) = _HEADER.unpack_from(raw)
        check_version(version, FORMAT_VERSION)
        return cls(set_id=set_id, increment=increment, split_part=split_part, created_ns=created_ns,
                   archive_type=archive_type, parent_increment=parent_increment, parent_digest=parent_digest,
                   hash_name=text_field(hash_name), codec_name=text_field(codec_name),
                   chunker_name=text_field(chunker_name), cipher_name=text_field(cipher_name),
                   kdf_name=text_field(kdf_name), writer=text_field(writer),
                   kdf_salt=kdf_salt, kdf_time=kdf_time, kdf_memory_kib=kdf_memory_kib,
                   kdf_parallelism=kdf_parallelism, key_check=key_check, chunk_min=chunk_min,
                   chunk_avg=chunk_avg, chunk_max=chunk_max, flags=flags, version=version)


SECTION_INDEX, SECTION_CATALOG, SECTION_METADATA = 0, 1, 2
SECTION_COUNT = 3
SECTION_NAMES = {SECTION_INDEX: "index", SECTION_CATALOG: "catalog", SECTION_METADATA: "metadata"}

_FOOTER = struct.Struct("<8s8sHHIQQQQ")  # magic, set_id, increment, reserved, part_count, counts


@dataclass
class ArchiveFooter:
    """The last 256 bytes of the last part; written last, so its presence means complete."""

    set_id: bytes
    increment: int = 0
    part_count: int = 1
    chunk_count: int = 0
    stored_bytes: int = 0
    logical_bytes: int = 0
    entry_count: int = 0
    sections: list[Section] = field(default_factory=lambda: [Section() for _ in range(SECTION_COUNT)])

    def pack(self) -> bytes:
        fixed = _FOOTER.pack(FOOTER_MAGIC, self.set_id, self.increment, 0, self.part_count,
                             self.chunk_count, self.stored_bytes, self.logical_bytes, self.entry_count)
        return seal_block(fixed + pack_sections(self.sections), FOOTER_SIZE)

    @classmethod
    def unpack(cls, raw: bytes) -> ArchiveFooter:
        check_footer(raw, FOOTER_MAGIC)
        _, set_id, increment, _, part_count, chunks, stored, logical, entries = _FOOTER.unpack_from(raw)
        sections = unpack_sections(raw, _FOOTER.size, SECTION_COUNT)
        return cls(set_id=set_id, increment=increment, part_count=part_count, chunk_count=chunks,
                   stored_bytes=stored, logical_bytes=logical, entry_count=entries, sections=sections)


# Index: one 64-byte record per chunk stored in this archive, in file order (part, file_offset).
INDEX_DTYPE = np.dtype([
    ("content_hash", "V16"),    # blake3-128 of the chunk's bytes (keyed when encrypted): its address
    ("file_offset", "<u8"),     # first stored byte in its part
    ("length", "<u4"),          # bytes of the chunk
    ("stored_length", "<u4"),   # bytes in the file
    ("part", "<u4"),            # split part (SS) holding the stored bytes
    ("codec", "u1"),            # 0 none, 1 zstd (same ids as images)
    ("reserved", "u1"),
    ("reserved2", "<u2"),
    ("stored_hash", "V16"),     # blake3-128 of the stored bytes
    ("reserved3", "<u8"),
])
assert INDEX_DTYPE.itemsize == 64

# Catalog entry types and flags.
T_FILE, T_DIR, T_SYMLINK, T_HARDLINK, T_FIFO, T_CHR, T_BLK, T_SOCK = range(1, 9)
TYPE_CHARS = {T_FILE: "-", T_DIR: "d", T_SYMLINK: "l", T_HARDLINK: "h", T_FIFO: "p", T_CHR: "c",
              T_BLK: "b", T_SOCK: "s"}
E_SPARSE = 1 << 0   # the data map leaves holes: restore writes holes there
E_CHANGED = 1 << 1  # the file kept changing while it was read: content may mix versions

# Entry fixed part: record_length, type, flags, reserved, mode, uid, gid, nlink, size, mtime, atime,
# ctime, dev, ino, rdev, path_len, user_len, group_len, link_len, xattr_count, chunk_count.
ENTRY = struct.Struct("<IBBHIIIIQqqqQQQHHHHII")
XATTR = struct.Struct("<HI")        # name_len, value_len
CHUNK_REF = struct.Struct("<QI16s")  # file offset, length, content hash

CHUNK_AAD = b"file-chunk"


def chunk_aad(set_id: bytes, content_hash: bytes, length: int, codec_id: int) -> bytes:
    """Associated data of an encrypted chunk: binds it to its set and its address."""
    return CHUNK_AAD + set_id + content_hash + struct.pack("<IB", length, codec_id)


def struct_sizes() -> dict[str, int]:
    """Sizes of every fixed structure (tests check FILES-FORMAT.md against these)."""
    return {"header_fixed": _HEADER.size, "header": HEADER_SIZE, "footer_fixed": _FOOTER.size,
            "footer_used": _FOOTER.size + SECTION_COUNT * SECTION.size, "section": SECTION.size,
            "footer": FOOTER_SIZE, "index_record": INDEX_DTYPE.itemsize, "entry_fixed": ENTRY.size,
            "xattr_head": XATTR.size, "chunk_ref": CHUNK_REF.size}
