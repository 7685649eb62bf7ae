"""Partition table model shared by the GPT and MBR parsers.

``regions`` are the byte ranges that hold the table itself (MBR sector, GPT headers and
entry arrays): images always store them exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import BinaryIO


@dataclass
class Partition:
    number: int  # 1-based, as Linux names it (sda1 = 1); logical MBR partitions start at 5
    start: int  # bytes from the start of the disk
    size: int  # bytes
    type: str  # GPT type GUID (lower case) or MBR type code as "0x83"
    uuid: str = ""  # GPT unique partition GUID, or MBR "DISKID-NN" as blkid shows PARTUUID
    name: str = ""  # GPT partition name
    attributes: int = 0  # GPT attribute bits, or 0x80 for an active MBR partition
    kind: str = "primary"  # "primary", "logical" (MBR) or "extended" (the container, not imaged)

    @property
    def end(self) -> int:
        return self.start + self.size

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Region:
    """Bytes that belong to the table itself."""

    start: int
    size: int
    what: str  # "mbr", "gpt-primary-header", "gpt-primary-entries", "gpt-backup-entries", ...


@dataclass
class PartitionTable:
    kind: str  # "gpt", "mbr" or "none"
    disk_size: int
    sector_size: int = 512
    disk_id: str = ""  # GPT disk GUID, or MBR disk signature as 8 hex digits
    partitions: list[Partition] = field(default_factory=list)
    regions: list[Region] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # e.g. "backup GPT header damaged"

    def data_partitions(self) -> list[Partition]:
        """Partitions holding data (MBR extended containers excluded)."""
        return [p for p in self.partitions if p.kind != "extended"]

    def partition(self, number: int) -> Partition:
        for p in self.partitions:
            if p.number == number:
                return p
        raise KeyError(number)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PartitionTable":
        return cls(kind=d["kind"], disk_size=d["disk_size"], sector_size=d["sector_size"],
                   disk_id=d["disk_id"], partitions=[Partition(**p) for p in d["partitions"]],
                   regions=[Region(**r) for r in d["regions"]], warnings=list(d.get("warnings", [])))


def read_partition_table(fh: BinaryIO, disk_size: int, sector_size: int = 512) -> PartitionTable:
    """Parse the disk's table: GPT if a valid GPT header exists (protective MBR), else MBR, else none."""
    from diskvault.disk import gpt, mbr

    table = gpt.read(fh, disk_size, sector_size)
    if table is None:
        table = mbr.read(fh, disk_size, sector_size)
    if table is None:
        table = PartitionTable(kind="none", disk_size=disk_size, sector_size=sector_size)
    return table
