"""exFAT reader: boot region facts and the used clusters from the Allocation Bitmap.

Layout (in sectors): the main boot region (12 sectors) and the backup boot region (the next 12),
then at ``FatOffset`` ``NumberOfFats`` FATs of ``FatLength`` sectors, then at ``ClusterHeapOffset``
the cluster heap of ``ClusterCount`` clusters numbered from 2. Unlike FAT, the FAT is not what says
a cluster is allocated (contiguous files leave their FAT entries untouched): the Allocation Bitmap
is. It is found through its directory entry (0x81) in the root directory, whose own clusters are
chained in the FAT. The bitmap and the up-case table are contiguous (as the Linux driver reads
them). Alignment gaps before the FAT and the cluster heap are not used. Structures: ``c_fat``.
"""

from __future__ import annotations

from typing import BinaryIO, ClassVar

import numpy as np

from diskvault.errors import FilesystemError
from diskvault.readat import read_at as _read_at
from diskvault.fs import c_fat as C
from diskvault.fs.base import FsInfo
from diskvault.fs.extents import from_bitmap, merge, total

CHUNK_BYTES = 1 << 21  # bitmap bytes turned into extents per pass (bounds memory on huge volumes)
FAT_PAGE = 4096  # FAT bytes read at a time while following a chain
WANTED = [C.EXFAT_ENTRY_BITMAP, C.EXFAT_ENTRY_UPCASE, C.EXFAT_ENTRY_LABEL]



def _bad(what: str) -> FilesystemError:
    return FilesystemError(f"exFAT boot sector is not sane: {what}")


def boot_checksum(region: bytes, sector_size: int) -> int:
    """The boot checksum of the first 11 sectors of a boot region (exFAT spec 3.4): a 32-bit
    rotate-right-and-add over every byte except VolumeFlags and PercentInUse."""
    skip = set(C.EXFAT_CHECKSUM_SKIP)
    checksum = 0
    for i, byte in enumerate(region[: 11 * sector_size]):
        if i not in skip:
            checksum = ((checksum >> 1) | ((checksum & 1) << 31)) + byte & 0xFFFFFFFF
    return checksum


class ExfatReader:
    """An exFAT filesystem opened read-only; see the module docstring."""

    name: ClassVar[str] = "exfat"

    @classmethod
    def probe(cls, fh: BinaryIO, size: int) -> bool:
        if size < C.SECTOR_MIN:
            return False
        raw = _read_at(fh, C.EXFAT_NAME_OFFSET, len(C.EXFAT_NAME))
        return raw == C.EXFAT_NAME

    def __init__(self, fh: BinaryIO, size: int) -> None:
        self._fh, self._size = fh, size
        raw = _read_at(fh, 0, C.SECTOR_MIN)
        if len(raw) < C.SECTOR_MIN:
            raise FilesystemError("exFAT boot sector is truncated (the partition is too small)")
        boot = self.boot = C.EXFAT_BOOT.parse(raw)
        if boot["FileSystemName"] != C.EXFAT_NAME:
            raise FilesystemError("no exFAT boot sector (bad FileSystemName)")
        self._warnings: list[str] = []
        self._extents: np.ndarray | None = None
        self._fat_cache: dict[int, np.ndarray] = {}
        self._check_boot()
        self._read_root()

    # ----------------------------------------------------------------- boot region

    def _check_boot(self) -> None:
        b = self.boot
        shift = b["BytesPerSectorShift"]
        if not C.EXFAT_MIN_SECTOR_SHIFT <= shift <= C.EXFAT_MAX_SECTOR_SHIFT:
            raise _bad(f"BytesPerSectorShift {shift} (must be 9..12)")
        if b["SectorsPerClusterShift"] > C.EXFAT_MAX_CLUSTER_SHIFT - shift:
            raise _bad(f"SectorsPerClusterShift {b['SectorsPerClusterShift']} (clusters above 32 MiB)")
        ss = self.sector_size = 1 << shift
        self.cluster_size = ss << b["SectorsPerClusterShift"]
        region = _read_at(self._fh, 0, C.EXFAT_BOOT_REGION_SECTORS * ss)
        if len(region) != C.EXFAT_BOOT_REGION_SECTORS * ss:
            raise FilesystemError("exFAT boot region is truncated (the partition is too small)")
        want = boot_checksum(region, ss)
        stored = np.frombuffer(region, dtype="<u4", offset=C.EXFAT_CHECKSUM_SECTOR * ss, count=ss // 4)
        if not np.all(stored == want):
            raise FilesystemError("exFAT boot region checksum does not match (corrupt boot sector)")
        if b["JumpBoot"] != C.EXFAT_JUMP or b["BootSignature"] != C.BOOT_SIGNATURE:
            raise _bad("bad jump instruction or boot signature")
        if any(b["MustBeZero"]):
            raise _bad("the MustBeZero area is not zero")
        major = b["FileSystemRevision"] >> 8
        if major != 1:
            raise FilesystemError(f"exFAT revision {major}.{b['FileSystemRevision'] & 0xFF} is not supported")
        if b["NumberOfFats"] not in (1, 2):
            raise _bad(f"NumberOfFats {b['NumberOfFats']} (must be 1 or 2)")
        length = self.volume_sectors = b["VolumeLength"]
        if length * ss < 1 << 20:
            raise _bad(f"VolumeLength {length} sectors (below 1 MiB)")
        if length * ss > self._size:
            raise FilesystemError(
                f"exFAT filesystem claims {length * ss} bytes but the partition has only {self._size}; "
                "imaging every block"
            )
        count = self.clusters = b["ClusterCount"]
        fat_off, fat_len, heap = b["FatOffset"], b["FatLength"], b["ClusterHeapOffset"]
        if fat_off < 2 * C.EXFAT_BOOT_REGION_SECTORS:
            raise _bad(f"FatOffset {fat_off} lies inside the boot regions")
        if heap >= length:
            raise _bad(f"ClusterHeapOffset {heap} is beyond the volume ({length} sectors)")
        if not 1 <= count <= min(C.EXFAT_MAX_CLUSTERS, (length - heap) >> b["SectorsPerClusterShift"]):
            raise _bad(f"ClusterCount {count} does not fit in the cluster heap")
        if fat_len * ss < (count + 2) * 4:
            raise _bad(f"FatLength {fat_len} sectors is too small for {count} clusters")
        if fat_off + fat_len * b["NumberOfFats"] > heap:
            raise _bad(f"the FATs end after ClusterHeapOffset {heap}")
        if not 2 <= b["FirstClusterOfRootDirectory"] <= count + 1:
            raise _bad(f"root directory cluster {b['FirstClusterOfRootDirectory']} is out of range")
        self.active_fat = b["VolumeFlags"] & C.VOLUME_FLAG_ACTIVE_FAT if b["NumberOfFats"] == 2 else 0
        if b["VolumeFlags"] & C.VOLUME_FLAG_DIRTY:
            self._warnings.append(
                "warning: the exFAT volume is marked dirty (mounted or not cleanly unmounted)"
            )
        if b["VolumeFlags"] & C.VOLUME_FLAG_MEDIA_FAILURE:
            self._warnings.append("warning: the exFAT volume recorded media failures")

    def _cluster_offset(self, cluster: int) -> int:
        return self.boot["ClusterHeapOffset"] * self.sector_size + (cluster - 2) * self.cluster_size

    def _next_cluster(self, cluster: int) -> int:
        per_page = FAT_PAGE // 4
        page = cluster // per_page
        if page not in self._fat_cache:
            fat = (self.boot["FatOffset"] + self.active_fat * self.boot["FatLength"]) * self.sector_size
            raw = _read_at(self._fh, fat + page * FAT_PAGE, FAT_PAGE)
            if len(raw) != FAT_PAGE:
                raise FilesystemError(f"cannot read the exFAT FAT at cluster {cluster}")
            self._fat_cache[page] = np.frombuffer(raw, dtype="<u4")
        return int(self._fat_cache[page][cluster % per_page])

    def _check_run(self, what: str, first: int, length: int) -> int:
        """Number of clusters of a contiguous object, checked to lie inside the heap."""
        n = -(-length // self.cluster_size)
        if length == 0 or first < 2 or first + n - 1 > self.clusters + 1:
            raise FilesystemError(
                f"exFAT {what} (cluster {first}, {length} bytes) lies outside the cluster heap"
            )
        return n

    # ----------------------------------------------------------------- root directory

    def _read_root(self) -> None:
        """Follow the root directory's FAT chain; pick out the bitmap, up-case and label entries."""
        cluster, chain = self.boot["FirstClusterOfRootDirectory"], []
        limit = min(self.clusters, max(1, C.EXFAT_MAX_DIR_BYTES // self.cluster_size))
        while True:
            chain.append(cluster)
            nxt = self._next_cluster(cluster)
            if nxt == C.EXFAT_FAT_EOC:
                break
            if not 2 <= nxt <= self.clusters + 1:
                raise FilesystemError(
                    f"exFAT root directory chain is broken (cluster {cluster} -> 0x{nxt:X})"
                )
            if len(chain) >= limit:
                raise FilesystemError("exFAT root directory chain is too long (a loop?)")
            cluster = nxt
        self.root_chain = chain
        bitmaps, self.upcase, self.label_entry = [], None, None
        for cluster in chain:
            raw = _read_at(self._fh, self._cluster_offset(cluster), self.cluster_size)
            if len(raw) != self.cluster_size:
                raise FilesystemError(f"cannot read exFAT root directory cluster {cluster}")
            types = np.frombuffer(raw, dtype=np.uint8)[:: C.EXFAT_ENTRY_SIZE]
            eod = np.flatnonzero(types == C.EXFAT_ENTRY_EOD)
            stop = int(eod[0]) if eod.size else types.size
            for i in np.flatnonzero(np.isin(types[:stop], WANTED)).tolist():
                entry = raw[i * C.EXFAT_ENTRY_SIZE : (i + 1) * C.EXFAT_ENTRY_SIZE]
                if types[i] == C.EXFAT_ENTRY_BITMAP:
                    bitmaps.append(C.EXFAT_BITMAP.parse(entry))
                elif types[i] == C.EXFAT_ENTRY_UPCASE and self.upcase is None:
                    self.upcase = C.EXFAT_UPCASE.parse(entry)
                elif types[i] == C.EXFAT_ENTRY_LABEL and self.label_entry is None:
                    self.label_entry = C.EXFAT_LABEL.parse(entry)
            if eod.size:
                break
        if not bitmaps:
            raise FilesystemError("exFAT root directory has no Allocation Bitmap entry")
        if len(bitmaps) > self.boot["NumberOfFats"]:
            raise FilesystemError(
                f"exFAT root directory has {len(bitmaps)} Allocation Bitmaps for {self.boot['NumberOfFats']} FATs"
            )
        if self.upcase is None:
            raise FilesystemError("exFAT root directory has no Up-case Table entry")
        self.bitmaps = bitmaps
        need = -(-self.clusters // 8)
        for bm in bitmaps:
            if bm["DataLength"] < need:
                raise FilesystemError(
                    f"exFAT Allocation Bitmap has {bm['DataLength']} bytes, {self.clusters} clusters need {need}"
                )
            bm["clusters"] = self._check_run("Allocation Bitmap", bm["FirstCluster"], bm["DataLength"])
        self.upcase["clusters"] = self._check_run(
            "Up-case Table", self.upcase["FirstCluster"], self.upcase["DataLength"]
        )

    # ----------------------------------------------------------------- bitmap

    def _scan(self) -> np.ndarray:
        ss, cs = self.sector_size, self.cluster_size
        b = self.boot
        heap = b["ClusterHeapOffset"] * ss
        fats = b["FatOffset"] * ss, b["FatLength"] * b["NumberOfFats"] * ss
        pieces = [np.array([[0, 2 * C.EXFAT_BOOT_REGION_SECTORS * ss], fats], dtype=np.uint64)]
        nbytes = -(-self.clusters // 8)
        in_bitmap = 0
        for first in range(0, nbytes, CHUNK_BYTES):
            n = min(CHUNK_BYTES, nbytes - first)
            used = None
            for bm in self.bitmaps:
                raw = _read_at(self._fh, self._cluster_offset(bm["FirstCluster"]) + first, n)
                if len(raw) != n:
                    raise FilesystemError(f"cannot read the exFAT Allocation Bitmap at byte {first}")
                bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little")
                bits = bits[: self.clusters - first * 8].astype(bool)
                used = bits if used is None else used | bits
            in_bitmap += int(np.count_nonzero(used))
            pieces.append(from_bitmap(used, cs, base=heap + first * 8 * cs))
        # the system objects are allocated clusters; include them even if the bitmap forgot them
        runs = [(bm["FirstCluster"], bm["clusters"]) for bm in self.bitmaps]
        runs.append((self.upcase["FirstCluster"], self.upcase["clusters"]))
        runs += [(c, 1) for c in self.root_chain]
        objs = np.array(runs, dtype=np.uint64)
        system = np.stack(
            [np.uint64(heap) + (objs[:, 0] - np.uint64(2)) * np.uint64(cs), objs[:, 1] * np.uint64(cs)], 1
        )
        extents = merge(np.concatenate(pieces + [system]))
        heap_used = total(extents) - total(merge(pieces[0]))
        if heap_used != in_bitmap * cs:
            self._warnings.append(
                "warning: the exFAT Allocation Bitmap does not mark the bitmap, up-case table or root "
                "directory clusters as allocated (run fsck.exfat); imaging them anyway"
            )
        return extents

    # ----------------------------------------------------------------- protocol

    def used_extents(self) -> np.ndarray:
        if self._extents is None:
            self._extents = self._scan()
        return self._extents.copy()

    def label(self) -> str:
        entry = self.label_entry
        if entry is None:
            return ""
        n = min(entry["CharacterCount"], C.EXFAT_LABEL_MAX_CHARS)
        return entry["VolumeLabel"][: 2 * n].decode("utf-16-le", "replace").rstrip()

    def info(self) -> FsInfo:
        used = total(self.used_extents())
        serial = self.boot["VolumeSerialNumber"]
        return FsInfo(
            fstype="exfat",
            size=self.volume_sectors * self.sector_size,
            used_bytes=used,
            block_size=self.cluster_size,
            label=self.label(),
            uuid=f"{serial >> 16:04X}-{serial & 0xFFFF:04X}",
            note="; ".join(dict.fromkeys(self._warnings)),
        )
