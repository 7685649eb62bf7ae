"""Find a definition's source disk by its stable identifiers (WWN, serial, partition-table GUID),
since /dev/sdX names change between boots; and read those identifiers from a device.

lsblk gives WWN, serial and PTUUID from the udev database; where udev has nothing (containers,
loop devices), the GUID is read from the partition table itself, read-only, and only for disks of
the recorded size.
"""

from __future__ import annotations

import os

from diskvault.disk import devices
from diskvault.disk.source import Source as DiskSource
from diskvault.disk.table import read_partition_table
from diskvault.errors import DiskvaultError, UsageError
from diskvault.fs.base import Window
from diskvault.plans.definition import DiskRef, Source


class SourceMissingError(DiskvaultError):
    """source not found: {}"""


def _table_guid(path: str) -> str:
    try:
        with DiskSource.open(path) as src:
            return read_partition_table(Window(src.fd, 0, src.size), src.size, src.sector_size).disk_id
    except (OSError, DiskvaultError):
        return ""


def _guid(disk: dict, size_hint: int = 0) -> str:
    if disk.get("ptuuid"):
        return disk["ptuuid"]
    if size_hint and disk["size"] != size_hint:
        return ""
    return _table_guid(disk["path"])


def _norm(value: str) -> str:
    return value.strip().lower()


def disk_ref(device: str) -> DiskRef:
    """The identifiers of the disk at ``device`` (a whole disk, not a partition)."""
    if not devices.is_block_device(device):
        raise UsageError(f"{device} is not a block device")
    name = devices.sysfs_name(device)
    disk = next((d for d in devices.list_disks() if d["name"] == name), None)
    if disk is None:
        raise UsageError(f"{device} is not a whole disk (give the disk, and the partitions with --partitions)")
    ref = DiskRef(wwn=disk["wwn"], serial=disk["serial"], guid=_guid(disk), model=disk["model"],
                  size=disk["size"], last_path=device)
    if not (ref.wwn or ref.serial or ref.guid):
        raise UsageError(f"{device} has no WWN, serial or partition-table GUID to find it by; "
                         f"give a partitioned disk, or image a disk-image file instead")
    return ref


def find_disk(ref: DiskRef) -> str:
    """The device path of the disk ``ref`` names: the one matching the most identifiers."""
    best: list[tuple[int, str]] = []
    for disk in devices.list_disks():
        score = sum(1 for mine, theirs in ((ref.wwn, disk["wwn"]), (ref.serial, disk["serial"]))
                    if mine and _norm(mine) == _norm(theirs or ""))
        if ref.guid and _norm(ref.guid) == _norm(_guid(disk, ref.size)):
            score += 1
        if score:
            best.append((score, disk["path"]))
    if not best:
        raise SourceMissingError(f"{ref.describe()} is not attached")
    best.sort(reverse=True)
    if len(best) > 1 and best[0][0] == best[1][0]:
        raise SourceMissingError(f"{ref.describe()} matches {best[0][1]} and {best[1][1]}: cannot tell which")
    return best[0][1]


def resolve(src: Source) -> str:
    """What the backup reads: the disk's device path, the image file, or the folders."""
    if src.kind == "disk":
        return find_disk(src.disk)
    if src.kind == "image":
        try:
            with DiskSource.open(src.file):
                return src.file
        except OSError as e:
            raise SourceMissingError(f"{src.file} ({e.strerror or e})") from None
    missing = [p for p in src.paths if not os.path.exists(p)]
    if missing:
        raise SourceMissingError(f"{', '.join(missing)} (no such file or folder)")
    return ", ".join(src.paths)
