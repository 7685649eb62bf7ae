"""MBR (DOS) partition tables: four primary slots plus the EBR chain of logical partitions.

Numbering follows Linux: primaries by slot (1-4), logical partitions 5, 6, ... in chain order
(EBRs without a data partition take no number). ``uuid`` is the PARTUUID blkid shows,
``DISKID-NN`` with NN the partition number in hex.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

from diskvault.disk.table import Partition, PartitionTable, Region
from diskvault.errors import PartitionTableError

SIGNATURE = b"\x55\xaa"
ENTRIES_OFFSET = 446
DISK_ID_OFFSET = 440
EXTENDED_TYPES = frozenset({0x05, 0x0F, 0x85})
PROTECTIVE_TYPE = 0xEE
MAX_LOGICAL = 4096  # a chain longer than this is a loop or garbage


@dataclass(frozen=True)
class Entry:
    """One 16-byte slot of an MBR or EBR, with LBAs as stored (relative for EBR entries)."""

    slot: int  # 1-4
    boot: int
    type: int
    start: int
    sectors: int

    @property
    def empty(self) -> bool:
        return self.type == 0 or self.sectors == 0


def read_at(fh: BinaryIO, offset: int, size: int) -> bytes:
    """Read up to ``size`` bytes at ``offset`` (short only at end of file)."""
    fh.seek(offset)
    chunks: list[bytes] = []
    want = size
    while want > 0:
        data = fh.read(want)
        if not data:
            break
        chunks.append(data)
        want -= len(data)
    return b"".join(chunks)


def has_signature(sector: bytes) -> bool:
    return len(sector) >= 512 and sector[510:512] == SIGNATURE


def parse_entries(sector: bytes) -> list[Entry]:
    """The four partition slots of a 512-byte MBR/EBR sector."""
    out = []
    for i in range(4):
        off = ENTRIES_OFFSET + 16 * i
        boot, ptype, start, sectors = struct.unpack_from("<B3xB3xII", sector, off)
        out.append(Entry(i + 1, boot, ptype, start, sectors))
    return out


def has_protective_entry(sector: bytes) -> bool:
    """True for a signed MBR with a GPT protective (0xEE) slot (hybrid MBRs included)."""
    return has_signature(sector) and any(e.type == PROTECTIVE_TYPE for e in parse_entries(sector))


def looks_like_boot_sector(sector: bytes) -> bool:
    """True when sector 0 is a FAT/NTFS/exFAT volume boot record (a partition-less filesystem)."""
    if len(sector) < 512:
        return False
    if sector[3:11] in (b"NTFS    ", b"EXFAT   "):
        return True
    if not (sector[0] == 0xE9 or (sector[0] == 0xEB and sector[2] == 0x90)):
        return False
    bytes_per_sector, per_cluster, reserved, fats = struct.unpack_from("<HBHB", sector, 11)
    media = sector[21]
    return (
        bytes_per_sector in (512, 1024, 2048, 4096)
        and per_cluster != 0
        and per_cluster & (per_cluster - 1) == 0
        and reserved > 0
        and 1 <= fats <= 4
        and (media == 0xF0 or media >= 0xF8)
    )


def _type_str(ptype: int) -> str:
    return f"0x{ptype:02x}"


def read(fh: BinaryIO, disk_size: int, sector_size: int = 512) -> PartitionTable | None:
    """Parse an MBR table, or None when sector 0 is not one."""
    if disk_size < 512:
        return None
    sector0 = read_at(fh, 0, 512)
    if not has_signature(sector0):
        return None
    entries = parse_entries(sector0)
    # the kernel's rule: any other boot indicator means this is not a partition table
    if any(e.boot not in (0x00, 0x80) for e in entries):
        return None
    total = disk_size // sector_size
    used = [e for e in entries if not e.empty]
    problems = _primary_problems(used, total)
    if looks_like_boot_sector(sector0) and (not used or problems):
        return None  # a filesystem written to the whole device, not a partition table
    errors = [msg for msg, fatal in problems if fatal]
    if errors:
        raise PartitionTableError(f"corrupt MBR partition table: {'; '.join(errors)}")

    disk_id = f"{struct.unpack_from('<I', sector0, DISK_ID_OFFSET)[0]:08x}"
    table = PartitionTable(kind="mbr", disk_size=disk_size, sector_size=sector_size, disk_id=disk_id,
                           regions=[Region(0, sector_size, "mbr")])
    table.warnings.extend(msg for msg, _ in problems)
    next_logical = 5
    for e in used:
        size_sectors = e.sectors
        if e.type == PROTECTIVE_TYPE:
            table.warnings.append("MBR has a GPT protective partition (0xee) but no valid GPT was found")
            size_sectors = max(0, min(e.start + e.sectors, total) - e.start)
        kind = "extended" if e.type in EXTENDED_TYPES else "primary"
        table.partitions.append(Partition(
            number=e.slot, start=e.start * sector_size, size=size_sectors * sector_size,
            type=_type_str(e.type), uuid=f"{disk_id}-{e.slot:02x}",
            attributes=0x80 if e.boot == 0x80 else 0, kind=kind))
        if kind == "extended":
            next_logical = _read_chain(fh, table, e, total, next_logical)
    table.partitions.sort(key=lambda p: p.number)
    table.regions.sort(key=lambda r: r.start)
    return table


def _primary_problems(used: list[Entry], total: int) -> list[tuple[str, bool]]:
    """(message, fatal) for each primary entry that cannot be right."""
    out: list[tuple[str, bool]] = []
    for e in used:
        end = e.start + e.sectors
        if e.type == PROTECTIVE_TYPE:
            if e.start >= total:
                out.append((f"partition {e.slot} starts at sector {e.start}, beyond the end of the disk "
                            f"({total} sectors)", True))
            continue
        if end > total:
            out.append((f"partition {e.slot} (sectors {e.start}-{end - 1}) extends beyond the end of the "
                        f"disk ({total} sectors)", True))
        if e.start == 0:
            out.append((f"partition {e.slot} starts at sector 0 (overlaps the MBR)", False))
    for i, a in enumerate(used):
        for b in used[i + 1:]:
            if a.start < b.start + b.sectors and b.start < a.start + a.sectors:
                out.append((f"partitions {a.slot} and {b.slot} overlap", False))
    return out


def _read_chain(fh: BinaryIO, table: PartitionTable, ext: Entry, total: int, number: int) -> int:
    """Follow the EBR chain of extended partition ``ext``; returns the next free logical number."""
    ss = table.sector_size
    ext_start, ext_end = ext.start, min(ext.start + ext.sectors, total)
    visited: set[int] = set()
    ebr: int | None = ext_start
    while ebr is not None:
        if ebr in visited:
            table.warnings.append(f"EBR chain loops back to sector {ebr}; stopped")
            break
        if len(visited) >= MAX_LOGICAL:
            table.warnings.append(f"EBR chain longer than {MAX_LOGICAL} links; stopped")
            break
        if not ext_start <= ebr < ext_end:
            table.warnings.append(f"EBR link to sector {ebr} lies outside extended partition {ext.slot}; "
                                  "following logical partitions ignored")
            break
        visited.add(ebr)
        sector = read_at(fh, ebr * ss, 512)
        if not has_signature(sector):
            table.warnings.append(f"EBR at sector {ebr} has no 0x55aa signature; "
                                  "following logical partitions ignored")
            break
        table.regions.append(Region(ebr * ss, ss, "ebr"))
        entries = parse_entries(sector)
        data = entries[0]
        if not data.empty and data.type not in EXTENDED_TYPES:
            start = ebr + data.start
            end = start + data.sectors
            if end > total:
                raise PartitionTableError(
                    f"corrupt MBR partition table: logical partition {number} (sectors {start}-{end - 1}) "
                    f"extends beyond the end of the disk ({total} sectors)")
            if data.start == 0 or start < ext_start or end > ext_start + ext.sectors:
                table.warnings.append(f"logical partition {number} (sectors {start}-{end - 1}) is not "
                                      f"inside its extended partition's free space")
            table.partitions.append(Partition(
                number=number, start=start * ss, size=data.sectors * ss, type=_type_str(data.type),
                uuid=f"{table.disk_id}-{number:02x}", attributes=0x80 if data.boot == 0x80 else 0,
                kind="logical"))
            number += 1
        link = next((x for x in entries[1:] if not x.empty and x.type in EXTENDED_TYPES), None)
        ebr = ext_start + link.start if link is not None else None
    return number


# ----------------------------------------------------------------------------- writing

MAX_SECTORS = 0xFFFFFFFF  # 32-bit LBAs: an MBR addresses at most 2 TiB of 512-byte sectors
LINK_TYPE = 0x05


def _chs(lba: int) -> bytes:
    """CHS bytes of ``lba`` in the usual 255-head, 63-sector geometry (capped at 1023/254/63)."""
    cyl, rem = divmod(lba, 255 * 63)
    if cyl > 1023:
        return b"\xfe\xff\xff"
    head, sector = divmod(rem, 63)
    return bytes([head, (sector + 1) | (cyl >> 8) << 6, cyl & 0xFF])


def _entry(boot: int, ptype: int, first: int, sectors: int, base: int = 0) -> bytes:
    """One slot; ``first`` absolute, stored relative to ``base`` (an EBR's reference point)."""
    if first > MAX_SECTORS or first + sectors > MAX_SECTORS + 1 or sectors > MAX_SECTORS:
        raise PartitionTableError(f"sectors {first}-{first + sectors - 1} lie beyond the 2 TiB an MBR can address")
    return struct.pack("<B3sB3sII", boot, _chs(first), ptype, _chs(first + sectors - 1), first - base, sectors)


def encode(table: PartitionTable, sector0: bytes, ebr_offset: int) -> list[tuple[int, bytes]]:
    """(byte offset, bytes) writes of ``table``: sector 0 (boot code and disk signature kept from
    ``sector0``) with the primary and extended slots, and an EBR ``ebr_offset`` bytes before each
    logical partition, chained in order (the first one at the extended partition's start)."""
    ss = table.sector_size
    out = bytearray(sector0[:512].ljust(512, b"\0"))
    out[ENTRIES_OFFSET:510] = bytes(64)
    out[510:512] = SIGNATURE
    writes: list[tuple[int, bytes]] = []
    logical = sorted((p for p in table.partitions if p.kind == "logical"), key=lambda p: p.number)
    for p in table.partitions:
        if p.kind == "logical":
            continue
        if not 1 <= p.number <= 4:
            raise PartitionTableError(f"MBR primary partition number {p.number} outside 1-4")
        off = ENTRIES_OFFSET + 16 * (p.number - 1)
        out[off:off + 16] = _entry(p.attributes & 0x80, int(p.type, 16), p.start // ss, p.size // ss)
        if p.kind == "extended":
            ext_lba = p.start // ss
            ebrs = [(q.start - ebr_offset) // ss for q in logical]
            if logical and ebrs[0] != ext_lba:
                raise PartitionTableError("the first EBR must be at the start of the extended partition")
            for i, q in enumerate(logical):
                ebr = bytearray(512)
                ebr[ENTRIES_OFFSET:ENTRIES_OFFSET + 16] = _entry(q.attributes & 0x80, int(q.type, 16), q.start // ss,
                                                                 q.size // ss, base=ebrs[i])
                if i + 1 < len(logical):
                    nxt = logical[i + 1]
                    ebr[ENTRIES_OFFSET + 16:ENTRIES_OFFSET + 32] = _entry(0, LINK_TYPE, ebrs[i + 1],
                                                                          nxt.end // ss - ebrs[i + 1], base=ext_lba)
                ebr[510:512] = SIGNATURE
                writes.append((ebrs[i] * ss, bytes(ebr)))
    return [(0, bytes(out)), *writes]
