"""The container shared by images (docs/FORMAT.md) and file archives (docs/FILES-FORMAT.md).

    part  := header(4096) stored-chunk*                     (every part)
    last  := header(4096) stored-chunk* section* footer(256) (the last part)
    header, footer := magic(8) fields... zero padding, CRC-32 of all before it (u32le, last 4 bytes)
    section entry  := offset u64, stored_length u64, raw_length u64, BLAKE3-192 of the stored bytes

Each format declares its own header and footer fields; the framing around them lives here once,
so the two formats cannot drift apart. The reading and writing of parts is in container_io.py.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

HEADER_SIZE = 4096
FOOTER_SIZE = 256
SECTION = struct.Struct("<QQQ24s")  # offset, stored_length, raw_length, blake3-192 of the stored bytes
_CRC = struct.Struct("<I")


@dataclass
class Section:
    """Where a section's stored bytes lie in the last part, and how to check them."""

    offset: int = 0
    stored_length: int = 0
    raw_length: int = 0
    digest: bytes = b"\0" * 24


def text_field(raw: bytes) -> str:
    """A fixed-size, zero-padded ASCII field (algorithm and writer names)."""
    return raw.rstrip(b"\0").decode("ascii", "replace")


def seal_block(body: bytes, size: int) -> bytes:
    """Pad a header or footer to ``size`` bytes, its last 4 bytes the CRC-32 of the rest."""
    padded = body.ljust(size - _CRC.size, b"\0")
    return padded + _CRC.pack(zlib.crc32(padded))


def _crc_matches(raw: bytes, size: int) -> bool:
    (crc,) = _CRC.unpack_from(raw, size - _CRC.size)
    return zlib.crc32(raw[:size - _CRC.size]) == crc


def check_header(raw: bytes, magic: bytes) -> None:
    """Raise ValueError with the reason when ``raw`` is not a sound header with this magic."""
    if len(raw) < HEADER_SIZE:
        raise ValueError("file is shorter than a header")
    if raw[:8] != magic:
        raise ValueError("bad magic")
    if not _crc_matches(raw, HEADER_SIZE):
        raise ValueError("header checksum mismatch (damaged header)")


def check_version(version: int, supported: int) -> None:
    if version != supported:
        raise ValueError(f"format version {version} is not supported (this diskvault reads {supported})")


def check_footer(raw: bytes, magic: bytes) -> None:
    """Raise ValueError with the reason when ``raw`` is not a sound footer with this magic."""
    if len(raw) != FOOTER_SIZE or raw[:8] != magic:
        raise ValueError("no footer")
    if not _crc_matches(raw, FOOTER_SIZE):
        raise ValueError("footer checksum mismatch (damaged footer)")


def pack_sections(sections: list[Section]) -> bytes:
    return b"".join(SECTION.pack(s.offset, s.stored_length, s.raw_length, s.digest) for s in sections)


def unpack_sections(raw: bytes, offset: int, count: int) -> list[Section]:
    return [Section(*SECTION.unpack_from(raw, offset + i * SECTION.size)) for i in range(count)]
