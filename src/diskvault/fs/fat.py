"""FAT12/FAT16/FAT32 reader: boot sector facts and the used clusters from the FAT.

Layout (in sectors): the reserved area (boot sector, and on FAT32 the FSInfo sector and the backup
boot sector), ``BPB_NumFATs`` copies of the FAT, the fixed root directory (FAT12/16 only), then the
data area of ``count`` clusters numbered from 2. A cluster is used when its FAT entry is non-zero
(end-of-chain, bad-cluster marks and next-cluster numbers alike). The metadata areas are always
used; sectors after the last whole cluster are not. The FAT width comes from the cluster count as
Microsoft's specification defines it, never from the BS_FilSysType string. Structures: ``c_fat``.
"""

from __future__ import annotations

import struct
from typing import BinaryIO, ClassVar

import numpy as np

from diskvault.errors import FilesystemError
from diskvault.readat import read_at as _read_at
from diskvault.fs import c_fat as C
from diskvault.fs.base import FsInfo
from diskvault.fs.extents import from_bitmap, merge, total

CHUNK_ENTRIES = 1 << 22  # FAT entries decoded per pass (bounds memory on big FAT32 volumes)
LABEL_MAX_CLUSTERS = 100  # FAT32 root directory clusters searched for the label (as libblkid)



def _bpb_problem(bpb: dict) -> str | None:
    """Why the common BPB is not a FAT one, or None when it is sane."""
    bps = bpb["BPB_BytsPerSec"]
    if not C.SECTOR_MIN <= bps <= C.SECTOR_MAX or bps & (bps - 1):
        return f"{bps} bytes per sector (must be 512, 1024, 2048 or 4096)"
    spc = bpb["BPB_SecPerClus"]
    if spc == 0 or spc & (spc - 1):
        return f"{spc} sectors per cluster (must be a power of 2)"
    if bpb["BPB_RsvdSecCnt"] == 0:
        return "no reserved sectors"
    if bpb["BPB_NumFATs"] == 0:
        return "no FAT copies"
    if not (bpb["BPB_Media"] == 0xF0 or bpb["BPB_Media"] >= 0xF8):
        return f"media descriptor 0x{bpb['BPB_Media']:02X}"
    if (bpb["BPB_TotSec16"] or bpb["BPB_TotSec32"]) == 0:
        return "total sectors is 0"
    return None


def fat_entries(raw: bytes, bits: int, count: int) -> np.ndarray:
    """The first ``count`` entries of a FAT as uint32 (FAT12 12-bit packed, FAT32 low 28 bits)."""
    if bits == 12:
        b = np.frombuffer(raw[: (count * 3 + 1) // 2], dtype=np.uint8)
        b = np.concatenate((b, np.zeros(-b.size % 3, dtype=np.uint8))).astype(np.uint32).reshape(-1, 3)
        pairs = np.empty((b.shape[0], 2), dtype=np.uint32)
        pairs[:, 0] = b[:, 0] | (b[:, 1] & 0x0F) << 8  # even entry: byte 0 + low nibble of byte 1
        pairs[:, 1] = b[:, 1] >> 4 | b[:, 2] << 4  # odd entry: high nibble of byte 1 + byte 2
        return pairs.reshape(-1)[:count]
    if bits == 16:
        return np.frombuffer(raw, dtype="<u2", count=count).astype(np.uint32)
    return np.frombuffer(raw, dtype="<u4", count=count) & np.uint32(C.FAT32_ENTRY_MASK)


class FatReader:
    """A FAT12/16/32 filesystem opened read-only; see the module docstring."""

    name: ClassVar[str] = "fat"

    @classmethod
    def probe(cls, fh: BinaryIO, size: int) -> bool:
        if size < C.SECTOR_MIN:
            return False
        raw = _read_at(fh, 0, C.SECTOR_MIN)
        if len(raw) < C.SECTOR_MIN:
            return False
        if struct.unpack_from("<H", raw, C.BOOT_SIGNATURE_OFFSET)[0] != C.BOOT_SIGNATURE:
            return False
        if not ((raw[0] == 0xEB and raw[2] == 0x90) or raw[0] == 0xE9):
            return False
        bpb = C.BPB.parse(raw)
        if bpb["BS_OEMName"] in C.NOT_FAT_OEM or raw[0x36:0x3E] in C.NOT_FAT_FSTYPE:
            return False
        return _bpb_problem(bpb) is None

    def __init__(self, fh: BinaryIO, size: int) -> None:
        self._fh, self._size = fh, size
        raw = _read_at(fh, 0, C.SECTOR_MIN)
        if len(raw) < C.SECTOR_MIN:
            raise FilesystemError("FAT boot sector is truncated (the partition is too small)")
        bpb = self.bpb = C.BPB.parse(raw)
        problem = _bpb_problem(bpb)
        if problem:
            raise FilesystemError(f"FAT boot sector is not sane: {problem}")
        self._warnings: list[str] = []
        self._extents: np.ndarray | None = None
        self._geometry(raw)

    # ----------------------------------------------------------------- boot sector

    def _geometry(self, raw: bytes) -> None:
        bpb = self.bpb
        bps = self.sector_size = bpb["BPB_BytsPerSec"]
        self.cluster_size = bps * bpb["BPB_SecPerClus"]
        self.reserved = bpb["BPB_RsvdSecCnt"]
        self.nfats = bpb["BPB_NumFATs"]
        self.total_sectors = bpb["BPB_TotSec16"] or bpb["BPB_TotSec32"]
        fat32_bpb = bpb["BPB_FATSz16"] == 0  # only FAT32 boot sectors leave BPB_FATSz16 zero
        self.ext = (C.BPB32 if fat32_bpb else C.BPB16).parse(raw)
        self.fat_sectors = self.ext["BPB_FATSz32"] if fat32_bpb else bpb["BPB_FATSz16"]
        if self.fat_sectors == 0:
            raise FilesystemError("FAT boot sector is not sane: the FAT size is 0")
        root_entries = bpb["BPB_RootEntCnt"]
        self.root_sectors = -(-root_entries * C.DIR_ENTRY_SIZE // bps)
        self.root_start = self.reserved + self.nfats * self.fat_sectors  # sectors
        self.data_start = self.root_start + self.root_sectors
        if self.data_start >= self.total_sectors:
            raise FilesystemError(
                f"FAT boot sector is not sane: {self.data_start} sectors of reserved area, FATs and "
                f"root directory do not fit in the {self.total_sectors} sectors of the volume"
            )
        if self.total_sectors * bps > self._size:
            raise FilesystemError(
                f"FAT filesystem claims {self.total_sectors * bps} bytes but the partition has only "
                f"{self._size}; imaging every block"
            )
        count = self.clusters = (self.total_sectors - self.data_start) // bpb["BPB_SecPerClus"]
        # Microsoft's rule: the cluster count alone decides the FAT type
        bits = 12 if count <= C.FAT12_MAX_CLUSTERS else 16 if count <= C.FAT16_MAX_CLUSTERS else 32
        if fat32_bpb and bits != 32:
            self._warnings.append(
                f"warning: FAT32 boot sector with only {count} clusters (the specification's FAT32 "
                "minimum is 65525); read as FAT32, as Linux and dosfstools do"
            )
            bits = 32
        elif not fat32_bpb and bits == 32:
            raise FilesystemError(
                f"FAT12/16 boot sector (BPB_FATSz16 set) with {count} clusters, more than FAT16 allows"
            )
        self.bits = bits
        if bits == 32:
            if count > C.FAT32_MAX_CLUSTERS:
                raise FilesystemError(f"FAT32 with {count} clusters (at most {C.FAT32_MAX_CLUSTERS})")
            if root_entries != 0:
                raise FilesystemError(f"FAT32 boot sector has {root_entries} fixed root entries (must be 0)")
            if self.ext["BPB_FSVer"] != 0:
                raise FilesystemError(f"FAT32 version 0x{self.ext['BPB_FSVer']:04X} is not supported")
            if not 2 <= self.ext["BPB_RootClus"] < count + 2:
                raise FilesystemError(
                    f"FAT32 root directory cluster {self.ext['BPB_RootClus']} is out of range"
                )
        elif root_entries == 0:
            raise FilesystemError(f"FAT{bits} boot sector has no root directory entries")
        if self.fat_sectors * bps * 8 // bits < count + 2:
            raise FilesystemError(
                f"the FAT ({self.fat_sectors} sectors) is too small for {count} FAT{bits} clusters"
            )
        self.fat_copies = list(range(self.nfats))  # the copies whose entries are read (and merged)
        flags = self.ext.get("BPB_ExtFlags", 0) if bits == 32 else 0
        if flags & C.EXTFLAGS_NO_MIRROR:
            active = flags & C.EXTFLAGS_ACTIVE_MASK
            if active >= self.nfats:
                raise FilesystemError(f"FAT32 active FAT {active} does not exist ({self.nfats} FATs)")
            self.fat_copies = [active]
        if self.ext["BS_Reserved1"] & C.LINUX_STATE_DIRTY:
            self._warnings.append(
                "warning: the FAT volume is marked dirty (mounted or not cleanly unmounted)"
            )

    # ----------------------------------------------------------------- FAT

    def _read_entries(self, copy: int, first: int, count: int) -> np.ndarray:
        """Entries first..first+count-1 of FAT copy ``copy`` (FAT12: ``first`` must be 0)."""
        base = (self.reserved + copy * self.fat_sectors) * self.sector_size
        if self.bits == 12:
            start, length = 0, (count * 3 + 1) // 2
        else:
            width = self.bits // 8
            start, length = first * width, count * width
        raw = _read_at(self._fh, base + start, length)
        if len(raw) != length:
            raise FilesystemError(f"cannot read FAT copy {copy} at byte {base + start}")
        return fat_entries(raw, self.bits, count)

    def _fat_entry(self, cluster: int) -> int:
        if self.bits == 12:
            return int(self._read_entries(self.fat_copies[0], 0, cluster + 1)[cluster])
        return int(self._read_entries(self.fat_copies[0], cluster, 1)[0])

    def _scan(self) -> np.ndarray:
        bs = self.cluster_size
        pieces = [np.array([[0, self.data_start * self.sector_size]], dtype=np.uint64)]
        end = self.clusters + 2  # entries 0 and 1 are reserved; clusters are 2..end-1
        step = end if self.bits == 12 else CHUNK_ENTRIES
        differ = 0
        for first in range(0, end, step):
            n = min(step, end - first)
            used = None
            for copy in self.fat_copies:
                entries = self._read_entries(copy, first, n)
                if first == 0:
                    self._check_clean_bit(entries, copy)
                    entries = entries[2:]
                mask = entries != 0
                if used is not None:
                    differ += int(np.count_nonzero(mask != used))
                    mask |= used
                used = mask
            lo = max(first, 2)
            pieces.append(from_bitmap(used, bs, base=self.data_start * self.sector_size + (lo - 2) * bs))
        if differ:
            self._warnings.append(
                f"warning: the FAT copies disagree about {differ} clusters; imaging the clusters any "
                "copy marks used"
            )
        return merge(np.concatenate(pieces))

    def _check_clean_bit(self, entries: np.ndarray, copy: int) -> None:
        if self.bits == 12 or copy != self.fat_copies[0] or entries.size < 2:
            return
        clean = C.FAT16_CLN_SHUT if self.bits == 16 else C.FAT32_CLN_SHUT
        if not int(entries[1]) & clean:
            self._warnings.append("warning: the FAT says the volume was not cleanly unmounted (run fsck.fat)")

    # ----------------------------------------------------------------- label

    def _root_label(self) -> bytes | None:
        """The volume-label entry of the root directory, found the way libblkid looks for it."""
        bps = self.sector_size
        if self.bits != 32:
            raw = _read_at(self._fh, self.root_start * bps, self.bpb["BPB_RootEntCnt"] * C.DIR_ENTRY_SIZE)
            return _find_label(raw)[0]
        cluster, seen = self.ext["BPB_RootClus"], set()
        for _ in range(LABEL_MAX_CLUSTERS):
            if not 2 <= cluster < self.clusters + 2 or cluster in seen:
                break
            seen.add(cluster)
            off = self.data_start * bps + (cluster - 2) * self.cluster_size
            label, ended = _find_label(_read_at(self._fh, off, self.cluster_size))
            if label is not None or ended:
                return label
            cluster = self._fat_entry(cluster)
        return None

    def label(self) -> str:
        """The root directory's volume label, as libblkid (>= 2.33) and Windows read it: the
        boot-sector copy (BS_VolLab) is ignored, being often stale."""
        label = self._root_label()
        if label is None:
            return ""
        if label[0] == 0x05:  # a leading 0xE5 byte is stored as 0x05 in directory entries
            label = b"\xe5" + label[1:]
        return label.split(b"\0", 1)[0].decode("cp850", "replace").rstrip()

    def uuid(self) -> str:
        """BS_VolID as libblkid shows it; FAT12/16 boot sectors hold it only with BS_BootSig 0x28/0x29."""
        if self.bpb["BPB_FATSz16"] and self.ext["BS_BootSig"] not in C.BOOT_SIGS:
            return ""
        vol_id = self.ext["BS_VolID"]
        return f"{vol_id >> 16:04X}-{vol_id & 0xFFFF:04X}"

    # ----------------------------------------------------------------- protocol

    def used_extents(self) -> np.ndarray:
        if self._extents is None:
            self._extents = self._scan()
        return self._extents.copy()

    def info(self) -> FsInfo:
        used = total(self.used_extents())
        return FsInfo(
            fstype="vfat",
            size=self.total_sectors * self.sector_size,
            used_bytes=used,
            block_size=self.cluster_size,
            label=self.label(),
            uuid=self.uuid(),
            note="; ".join(dict.fromkeys(self._warnings)),
        )


def _find_label(raw: bytes) -> tuple[bytes | None, bool]:
    """(name of the first volume-label entry in ``raw`` or None, whether the directory ended)."""
    n = len(raw) // C.DIR_ENTRY_SIZE
    if n == 0:
        return None, True
    ent = np.frombuffer(raw, dtype=np.uint8, count=n * C.DIR_ENTRY_SIZE).reshape(n, C.DIR_ENTRY_SIZE)
    first = ent[:, 0]
    ends = np.flatnonzero(first == C.DIR_END)
    stop = int(ends[0]) if ends.size else n
    attr = ent[:stop, 0x0B]
    clus = ent[:stop, 0x14] | ent[:stop, 0x15] | ent[:stop, 0x1A] | ent[:stop, 0x1B]
    hit = np.flatnonzero(
        (first[:stop] != C.DIR_FREE)
        & (clus == 0)
        & ((attr & C.ATTR_LONG_NAME_MASK) != C.ATTR_LONG_NAME)
        & ((attr & (C.ATTR_VOLUME_ID | C.ATTR_DIRECTORY)) == C.ATTR_VOLUME_ID)
    )
    if hit.size:
        return bytes(ent[int(hit[0]), :11]), True
    return None, bool(ends.size)
