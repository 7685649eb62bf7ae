"""On-disk structures of image format v1, declared once. docs/FORMAT.md mirrors this file.

All integers are little-endian. Names here are the names used in FORMAT.md.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, fields

import numpy as np

from diskvault.format.container import (
    FOOTER_SIZE, HEADER_SIZE, SECTION, Section, check_footer, check_header, check_version, pack_sections,
    seal_block, text_field, unpack_sections,
)

FORMAT_VERSION = 1
HEADER_MAGIC = b"DVIMG\r\n\x1a"
FOOTER_MAGIC = b"DVIMGEND"
HASH_SIZE = 16  # BLAKE3 output truncated to 128 bits
DEFAULT_CHUNK_SIZE = 4 << 20  # bigger cells compress better; smaller ones make finer increments

FLAG_ENCRYPTED = 1 << 0

TYPE_FULL, TYPE_DIFF, TYPE_INC = 0, 1, 2
TYPE_NAMES = {TYPE_FULL: "full", TYPE_DIFF: "diff", TYPE_INC: "inc"}

# Header: the fixed part; the rest of the 4096 bytes up to the CRC is zero (reserved).
_HEADER = struct.Struct("<8sHHI8sHHQIQ16s16s16s16s32s8sH32s32sIII32sB")


@dataclass
class Header:
    """The first 4096 bytes of every image file."""

    image_id: bytes  # 8 bytes, shown as 16 hex digits
    increment: int = 0  # II in IMAGEID-II-SS: 0 = Full
    split_part: int = 0  # SS in IMAGEID-II-SS
    created_ns: int = 0
    chunk_size: int = DEFAULT_CHUNK_SIZE
    disk_size: int = 0
    hash_name: str = "blake3-128"
    codec_name: str = "zstd"
    cipher_name: str = ""
    kdf_name: str = ""
    writer: str = ""
    parent_id: bytes = b"\0" * 8
    parent_increment: int = 0
    parent_state_hash: bytes = b"\0" * 32
    kdf_salt: bytes = b"\0" * 32
    kdf_time: int = 0
    kdf_memory_kib: int = 0
    kdf_parallelism: int = 0
    key_check: bytes = b"\0" * 32
    image_type: int = TYPE_FULL
    flags: int = 0
    version: int = FORMAT_VERSION

    @property
    def encrypted(self) -> bool:
        return bool(self.flags & FLAG_ENCRYPTED)

    @property
    def has_parent(self) -> bool:
        return self.image_type != TYPE_FULL

    def pack(self) -> bytes:
        fixed = _HEADER.pack(
            HEADER_MAGIC, self.version, 0, self.flags, self.image_id, self.increment,
            self.split_part, self.created_ns, self.chunk_size, self.disk_size,
            self.hash_name.encode(), self.codec_name.encode(), self.cipher_name.encode(),
            self.kdf_name.encode(), self.writer.encode()[:32], self.parent_id,
            self.parent_increment, self.parent_state_hash, self.kdf_salt, self.kdf_time,
            self.kdf_memory_kib, self.kdf_parallelism, self.key_check, self.image_type,
        )
        return seal_block(fixed, HEADER_SIZE)

    @classmethod
    def unpack(cls, raw: bytes) -> "Header":
        """Parse and check a header; raises ValueError with the reason."""
        check_header(raw, HEADER_MAGIC)
        (_, version, _, flags, image_id, increment, split_part, created_ns, chunk_size,
         disk_size, hash_name, codec_name, cipher_name, kdf_name, writer, parent_id,
         parent_increment, parent_state_hash, kdf_salt, kdf_time, kdf_memory_kib, kdf_parallelism,
         key_check, image_type) = _HEADER.unpack_from(raw)
        check_version(version, FORMAT_VERSION)
        return cls(image_id=image_id, increment=increment, split_part=split_part,
                   created_ns=created_ns, chunk_size=chunk_size, disk_size=disk_size,
                   hash_name=text_field(hash_name), codec_name=text_field(codec_name),
                   cipher_name=text_field(cipher_name), kdf_name=text_field(kdf_name),
                   writer=text_field(writer),
                   parent_id=parent_id, parent_increment=parent_increment,
                   parent_state_hash=parent_state_hash, kdf_salt=kdf_salt, kdf_time=kdf_time,
                   kdf_memory_kib=kdf_memory_kib, kdf_parallelism=kdf_parallelism, key_check=key_check,
                   image_type=image_type, flags=flags, version=version)


# Sections, in the order they follow the chunks.
SECTION_INDEX = 0
SECTION_EXTENTS = 1
SECTION_METADATA = 2
SECTION_COUNT = 3
SECTION_NAMES = {SECTION_INDEX: "index", SECTION_EXTENTS: "extents", SECTION_METADATA: "metadata"}

_FOOTER = struct.Struct("<8s8sQQQ")  # magic, image_id, chunk_count, chunk_bytes_stored, chunk_bytes_logical
_FOOTER_SECTIONS_OFFSET = _FOOTER.size
_FOOTER_TAIL = struct.Struct("<32sIH")  # state_hash, part_count, increment
_FOOTER_TAIL_OFFSET = _FOOTER_SECTIONS_OFFSET + SECTION_COUNT * SECTION.size


@dataclass
class Footer:
    """The last 256 bytes of a complete image; written last, so its presence means complete."""

    image_id: bytes
    chunk_count: int = 0
    stored_bytes: int = 0
    logical_bytes: int = 0
    sections: list[Section] = field(default_factory=lambda: [Section() for _ in range(SECTION_COUNT)])
    state_hash: bytes = b"\0" * 32  # hash of the disk state this image gives (see FORMAT.md)
    part_count: int = 1
    increment: int = 0

    def pack(self) -> bytes:
        fixed = _FOOTER.pack(FOOTER_MAGIC, self.image_id, self.chunk_count, self.stored_bytes,
                             self.logical_bytes)
        tail = _FOOTER_TAIL.pack(self.state_hash, self.part_count, self.increment)
        return seal_block(fixed + pack_sections(self.sections) + tail, FOOTER_SIZE)

    @classmethod
    def unpack(cls, raw: bytes) -> "Footer":
        check_footer(raw, FOOTER_MAGIC)
        _, image_id, count, stored, logical = _FOOTER.unpack_from(raw)
        sections = unpack_sections(raw, _FOOTER_SECTIONS_OFFSET, SECTION_COUNT)
        state_hash, part_count, increment = _FOOTER_TAIL.unpack_from(raw, _FOOTER_TAIL_OFFSET)
        return cls(image_id=image_id, chunk_count=count, stored_bytes=stored, logical_bytes=logical,
                   sections=sections, state_hash=state_hash, part_count=part_count, increment=increment)


# Index: one 64-byte record per stored cell, sorted by disk_offset.
INDEX_DTYPE = np.dtype([
    ("disk_offset", "<u8"),     # where the cell starts on the disk
    ("file_offset", "<u8"),     # where its stored bytes start in this file
    ("length", "<u4"),          # logical bytes (chunk_size, or less for the disk's last cell)
    ("stored_length", "<u4"),   # bytes in the file (0 for a ZERO cell)
    ("flags", "<u2"),           # CHUNK_* bits
    ("codec", "u1"),            # CODEC_* id
    ("reserved", "u1"),
    ("part", "<u4"),            # split part (SS) whose file holds the stored bytes
    ("content_hash", "V16"),    # blake3-128 of the logical (uncompressed) bytes
    ("stored_hash", "V16"),     # blake3-128 of the stored bytes as they are in the file
])
assert INDEX_DTYPE.itemsize == 64

CHUNK_ZERO = 1 << 0  # the cell is all zeros: nothing stored (used by children to erase parent data)
CHUNK_PATCH = 1 << 1  # only some blocks of the cell are stored; the rest come from the parent state
PATCH_BLOCKS = 64  # a cell is 64 patch blocks (64 KiB each in a 4 MiB cell)

CODEC_NONE = 0
CODEC_ZSTD = 1

# Extents section: sorted, merged (start, length) pairs of used bytes, disk coordinates.
EXTENTS_DTYPE = np.dtype([("start", "<u8"), ("length", "<u8")])


def struct_sizes() -> dict[str, int]:
    """Sizes of every fixed structure (tests check FORMAT.md against these)."""
    return {"header_fixed": _HEADER.size, "header": HEADER_SIZE, "footer_fixed": _FOOTER.size,
            "footer_used": _FOOTER_TAIL_OFFSET + _FOOTER_TAIL.size,
            "section": SECTION.size, "footer": FOOTER_SIZE, "index_record": INDEX_DTYPE.itemsize,
            "extent_record": EXTENTS_DTYPE.itemsize}


def header_fields() -> list[str]:
    return [f.name for f in fields(Header)]
