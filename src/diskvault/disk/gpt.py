"""GUID partition tables: primary header at LBA 1, backup header at the last LBA.

Every header field is checked before it is used (CRCs, sizes, LBAs inside the disk); a damaged
primary falls back to the backup with a warning. A GPT whose headers both carry the signature
but neither is valid raises PartitionTableError.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from dataclasses import dataclass
from typing import BinaryIO

from diskvault.disk.mbr import ENTRIES_OFFSET, has_protective_entry, parse_entries, read_at
from diskvault.disk.mbr import SIGNATURE as MBR_SIGNATURE
from diskvault.disk.table import Partition, PartitionTable, Region
from diskvault.errors import PartitionTableError

SIGNATURE = b"EFI PART"
HEADER_FORMAT = "<8sIIIIQQQQ16sQIII"
HEADER_MIN_SIZE = struct.calcsize(HEADER_FORMAT)  # 92
ENTRY_FORMAT = "<16s16sQQQ72s"
MAX_ENTRIES = 4096
MAX_ENTRY_SIZE = 4096
SECTOR_SIZES = (512, 4096)


@dataclass
class Header:
    lba: int  # where it was read
    revision: int
    header_size: int
    my_lba: int
    alternate_lba: int
    first_usable: int
    last_usable: int
    disk_guid: str
    entries_lba: int
    num_entries: int
    entry_size: int
    entries_crc: int
    entries: bytes  # the raw entry array

    def entries_sectors(self, sector_size: int) -> int:
        return -(-self.num_entries * self.entry_size // sector_size)


class _Damaged(Exception):
    """A header with the signature that fails a check; the message names the check."""


def guid_str(raw: bytes) -> str:
    """A 16-byte on-disk GUID in its usual lower-case textual form."""
    return str(uuid.UUID(bytes_le=bytes(raw)))


def read(fh: BinaryIO, disk_size: int, sector_size: int = 512) -> PartitionTable | None:
    """Parse a GPT, or None when the disk has none (no protective MBR or no GPT header)."""
    if disk_size < 512 or not has_protective_entry(read_at(fh, 0, 512)):
        return None
    for ss in dict.fromkeys((sector_size, *SECTOR_SIZES)):
        if ss < 512 or ss & (ss - 1) or disk_size // ss < 4:
            continue
        table = _read(fh, disk_size, ss)
        if table is not None:
            return table
    return None


def _read(fh: BinaryIO, disk_size: int, ss: int) -> PartitionTable | None:
    total = disk_size // ss
    primary, primary_problem = _load(fh, ss, 1, total)

    locations = []
    if primary is not None and 1 < primary.alternate_lba < total:
        locations.append(primary.alternate_lba)
    if total - 1 not in locations:
        locations.append(total - 1)
    backup: Header | None = None
    backup_problems: list[str] = []
    for lba in locations:
        header, problem = _load(fh, ss, lba, total)
        if header is not None:
            backup = header
            break
        if problem:
            backup_problems.append(f"LBA {lba}: {problem}")

    if primary is None and backup is None:
        if primary_problem is None and not backup_problems:
            return None  # no GPT signature at this sector size
        raise PartitionTableError(
            "corrupt GPT: primary: " + (primary_problem or "no header") + "; backup: "
            + ("; ".join(backup_problems) if backup_problems else "no header"))

    table = PartitionTable(kind="gpt", disk_size=disk_size, sector_size=ss)
    warnings = table.warnings
    if primary is None:
        assert backup is not None
        warnings.append(f"primary GPT header damaged ({primary_problem or 'missing'}); "
                        f"using the backup at LBA {backup.lba}")
    if backup is None:
        detail = "; ".join(backup_problems) if backup_problems else "no header at LBA " + ", ".join(
            str(x) for x in locations)
        warnings.append(f"backup GPT header damaged or missing ({detail})")
        if primary is not None and primary.alternate_lba >= total:
            warnings.append(f"the primary GPT header places the backup at LBA {primary.alternate_lba}, "
                            f"beyond the end of the disk ({total} sectors): was the disk truncated?")
    elif backup.lba != total - 1:
        warnings.append(f"backup GPT header is at LBA {backup.lba}, not at the last LBA {total - 1} "
                        "(disk grown since partitioning?)")
    if primary is not None and backup is not None:
        if (primary.disk_guid, primary.first_usable, primary.last_usable) != (
                backup.disk_guid, backup.first_usable, backup.last_usable) or _used_entries(
                primary) != _used_entries(backup):
            warnings.append("primary and backup GPT headers disagree; using the primary")

    header = primary if primary is not None else backup
    assert header is not None
    if header.last_usable >= total:
        warnings.append(f"GPT usable area ends at LBA {header.last_usable}, beyond the end of the disk "
                        f"({total} sectors)")
    table.disk_id = header.disk_guid
    table.partitions = _partitions(header, ss, total, warnings)
    table.regions = _regions(primary, backup, ss, total)
    return table


def _load(fh: BinaryIO, ss: int, lba: int, total: int) -> tuple[Header | None, str | None]:
    """(header, None) if valid, (None, reason) if damaged, (None, None) if no signature there."""
    raw = read_at(fh, lba * ss, ss)
    if len(raw) < HEADER_MIN_SIZE or raw[:8] != SIGNATURE:
        return None, None
    try:
        return _parse(fh, raw, ss, lba, total), None
    except _Damaged as exc:
        return None, str(exc)


def _parse(fh: BinaryIO, raw: bytes, ss: int, lba: int, total: int) -> Header:
    (_sig, revision, header_size, header_crc, _reserved, my_lba, alternate_lba, first_usable, last_usable,
     disk_guid, entries_lba, num_entries, entry_size, entries_crc) = struct.unpack_from(HEADER_FORMAT, raw)
    if not HEADER_MIN_SIZE <= header_size <= ss:
        raise _Damaged(f"header size {header_size} invalid")
    check = bytearray(raw[:header_size])
    check[16:20] = b"\0\0\0\0"
    if zlib.crc32(check) != header_crc:
        raise _Damaged("header CRC32 mismatch")
    if my_lba != lba:
        raise _Damaged(f"header says it is at LBA {my_lba}, found at LBA {lba}")
    # last_usable may lie beyond a truncated disk: partitions are checked against the disk itself
    if not (2 <= first_usable <= last_usable) or first_usable >= total:
        raise _Damaged(f"usable LBA range {first_usable}-{last_usable} invalid for a disk of {total} sectors")
    if entry_size < 128 or entry_size % 128 or entry_size > MAX_ENTRY_SIZE:
        raise _Damaged(f"partition entry size {entry_size} invalid")
    if num_entries > MAX_ENTRIES:
        raise _Damaged(f"partition entry count {num_entries} too large")
    array_bytes = num_entries * entry_size
    array_sectors = -(-array_bytes // ss)
    array_end = entries_lba + array_sectors  # exclusive
    if entries_lba < 1 or array_end > total:
        raise _Damaged(f"partition entry array at LBA {entries_lba} ({array_sectors} sectors) "
                       "lies outside the disk")
    if entries_lba <= lba < array_end:
        raise _Damaged(f"partition entry array at LBA {entries_lba} overlaps the header")
    if array_sectors and entries_lba <= last_usable and array_end > first_usable:
        raise _Damaged(f"partition entry array at LBA {entries_lba} overlaps the usable area")
    entries = read_at(fh, entries_lba * ss, array_bytes)
    if len(entries) < array_bytes:
        raise _Damaged("partition entry array truncated")
    if zlib.crc32(entries) != entries_crc:
        raise _Damaged("partition entries CRC32 mismatch")
    return Header(lba=lba, revision=revision, header_size=header_size, my_lba=my_lba,
                  alternate_lba=alternate_lba, first_usable=first_usable, last_usable=last_usable,
                  disk_guid=guid_str(disk_guid), entries_lba=entries_lba, num_entries=num_entries,
                  entry_size=entry_size, entries_crc=entries_crc, entries=entries)


def _used_entries(header: Header) -> list[bytes]:
    out = []
    for i in range(header.num_entries):
        entry = header.entries[i * header.entry_size:(i + 1) * header.entry_size]
        if entry[:16] != bytes(16):
            out.append(bytes([i & 0xFF, i >> 8]) + entry[:128])
    return out


def _partitions(header: Header, ss: int, total: int, warnings: list[str]) -> list[Partition]:
    parts: list[Partition] = []
    for i in range(header.num_entries):
        off = i * header.entry_size
        type_guid, unique_guid, first, last, attributes, name_raw = struct.unpack_from(
            ENTRY_FORMAT, header.entries, off)
        if type_guid == bytes(16):
            continue
        number = i + 1
        if first > last:
            raise PartitionTableError(f"corrupt GPT: partition {number} first LBA {first} is after "
                                      f"its last LBA {last}")
        if last >= total:
            raise PartitionTableError(f"corrupt GPT: partition {number} (sectors {first}-{last}) extends "
                                      f"beyond the end of the disk ({total} sectors)")
        if first < header.first_usable or last > header.last_usable:
            warnings.append(f"GPT partition {number} (sectors {first}-{last}) lies outside the usable "
                            f"area {header.first_usable}-{header.last_usable}")
        name = name_raw.decode("utf-16-le", errors="replace").split("\0", 1)[0]
        parts.append(Partition(number=number, start=first * ss, size=(last - first + 1) * ss,
                               type=guid_str(type_guid), uuid=guid_str(unique_guid), name=name,
                               attributes=attributes, kind="primary"))
    ordered = sorted(parts, key=lambda p: p.start)
    for a, b in zip(ordered, ordered[1:]):
        if b.start < a.end:
            warnings.append(f"GPT partitions {a.number} and {b.number} overlap")
    return parts


def _regions(primary: Header | None, backup: Header | None, ss: int, total: int) -> list[Region]:
    regions = [Region(0, ss, "mbr"), Region(ss, ss, "gpt-primary-header")]
    ref = primary if primary is not None else backup
    assert ref is not None
    if primary is not None:
        regions.append(Region(primary.entries_lba * ss, primary.entries_sectors(ss) * ss,
                              "gpt-primary-entries"))
    else:
        # the damaged primary's array is conventionally at LBA 2, sized like the backup's
        n = ref.entries_sectors(ss)
        if n and 2 + n <= ref.first_usable:
            regions.append(Region(2 * ss, n * ss, "gpt-primary-entries"))
    if backup is not None:
        regions.append(Region(backup.entries_lba * ss, backup.entries_sectors(ss) * ss, "gpt-backup-entries"))
        regions.append(Region(backup.lba * ss, ss, "gpt-backup-header"))
    elif primary is not None and primary.last_usable < primary.alternate_lba < total:
        # damaged backup: keep the bytes where the primary says it lives, array just before it
        alt = primary.alternate_lba
        n = primary.entries_sectors(ss)
        if n and alt - n > primary.last_usable:
            regions.append(Region((alt - n) * ss, n * ss, "gpt-backup-entries"))
        regions.append(Region(alt * ss, ss, "gpt-backup-header"))
    regions.sort(key=lambda r: r.start)
    return regions


# ----------------------------------------------------------------------------- writing

DEFAULT_ENTRIES = 128
REVISION_1_0 = 0x00010000


def primary_header(fh: BinaryIO, disk_size: int, sector_size: int = 512) -> Header | None:
    """The valid primary header (with its raw entry array) at LBA 1, or None."""
    header, _problem = _load(fh, sector_size, 1, disk_size // sector_size)
    return header


def encode_entries(partitions: list[Partition], num_entries: int = DEFAULT_ENTRIES, entry_size: int = 128,
                   sector_size: int = 512) -> bytes:
    """An entry array with each partition in slot ``number - 1`` (types, GUIDs, names and
    attributes as given; starts and sizes in bytes, multiples of the sector size)."""
    out = bytearray(num_entries * entry_size)
    for p in partitions:
        if not 1 <= p.number <= num_entries:
            raise PartitionTableError(f"GPT partition number {p.number} outside 1-{num_entries}")
        name = p.name.encode("utf-16-le")[:72]
        struct.pack_into(ENTRY_FORMAT, out, (p.number - 1) * entry_size, uuid.UUID(p.type).bytes_le,
                         uuid.UUID(p.uuid).bytes_le, p.start // sector_size, p.end // sector_size - 1,
                         p.attributes, name)
    return bytes(out)


def _header_bytes(sector_size: int, my_lba: int, alternate: int, first_usable: int, last_usable: int,
                  disk_guid: str, entries_lba: int, num_entries: int, entry_size: int, entries_crc: int,
                  revision: int) -> bytes:
    raw = bytearray(struct.pack(HEADER_FORMAT, SIGNATURE, revision, HEADER_MIN_SIZE, 0, 0, my_lba, alternate,
                                first_usable, last_usable, uuid.UUID(disk_guid).bytes_le, entries_lba,
                                num_entries, entry_size, entries_crc))
    struct.pack_into("<I", raw, 16, zlib.crc32(raw))
    return bytes(raw) + bytes(sector_size - len(raw))


def encode(disk_guid: str, entries: bytes, num_entries: int, entry_size: int, disk_size: int,
           sector_size: int = 512, first_usable: int | None = None,
           revision: int = REVISION_1_0) -> list[tuple[int, bytes]]:
    """(byte offset, bytes) writes of a complete GPT for a disk of ``disk_size``: primary header at
    LBA 1 with its entries at LBA 2, backup entries and backup header at the end, both CRCs."""
    ss = sector_size
    total = disk_size // ss
    n = -(-num_entries * entry_size // ss)
    first = first_usable if first_usable is not None else 2 + n
    last = total - 2 - n
    if first < 2 + n or last < first:
        raise PartitionTableError(f"a disk of {total} sectors has no room for a GPT of {num_entries} entries")
    array = entries.ljust(n * ss, b"\0")
    crc = zlib.crc32(entries[:num_entries * entry_size])
    primary = _header_bytes(ss, 1, total - 1, first, last, disk_guid, 2, num_entries, entry_size, crc, revision)
    backup = _header_bytes(ss, total - 1, 1, first, last, disk_guid, total - 1 - n, num_entries, entry_size, crc,
                           revision)
    return [(ss, primary), (2 * ss, array), ((total - 1 - n) * ss, array), ((total - 1) * ss, backup)]


def protective_mbr(sector0: bytes, disk_size: int, sector_size: int = 512) -> bytes:
    """``sector0`` (boot code and disk signature kept) with its 0xEE entry covering the whole disk,
    or a fresh protective MBR when it has none."""
    out = bytearray(sector0[:512].ljust(512, b"\0"))
    entries = parse_entries(bytes(out)) if out[510:512] == MBR_SIGNATURE else []
    slot = next((e.slot for e in entries if e.type == 0xEE), None)
    if slot is None:
        out[ENTRIES_OFFSET:510] = bytes(64)
        slot = 1
    sectors = min(disk_size // sector_size - 1, 0xFFFFFFFF)
    off = ENTRIES_OFFSET + 16 * (slot - 1)
    out[off:off + 16] = struct.pack("<B3sB3sII", 0, b"\x00\x02\x00", 0xEE, b"\xff\xff\xff", 1, sectors)
    out[510:512] = MBR_SIGNATURE
    return bytes(out)
