"""Grow and shrink FAT12/16/32 in place (no tool works on image files: fatresize needs a
partitioned device and cannot shrink small FAT32 volumes). Cluster numbers and cluster size stay.

    grow    the FATs get longer when the new cluster count needs it; the root directory (FAT12/16)
            and every used cluster then move forward by the added FAT sectors, from the end back
    shrink  the FATs keep their size (a FAT longer than needed is valid); used clusters past the
            new end move into free clusters below it: FAT chains and directory entries ("." and
            ".." included, and the FAT32 root cluster) are renumbered
The FAT type never changes: a FAT32 keeps at least 65525 clusters, a FAT16 at least 4085.
"""

from __future__ import annotations

import os
import struct

import numpy as np

from diskvault.errors import FilesystemError
from diskvault.fs import c_fat as C
from diskvault.fs.base import Window
from diskvault.fs.fat import FatReader, fat_entries
from diskvault.units import human_size

MIN_CLUSTERS = {12: 1, 16: C.FAT12_MAX_CLUSTERS + 1, 32: C.FAT16_MAX_CLUSTERS + 1}
MAX_CLUSTERS = {12: C.FAT12_MAX_CLUSTERS, 16: C.FAT16_MAX_CLUSTERS, 32: C.FAT32_MAX_CLUSTERS}
FSINFO_FREE, FSINFO_NEXT = 488, 492
COPY_PIECE = 8 << 20


class FatVolume:
    """A FAT filesystem at the start of ``fd`` (a stage file or a loop device), for resizing."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size = fd, size
        self.fs = fs = FatReader(Window(fd, 0, size), size)
        self.bps, self.spc, self.cs = fs.sector_size, fs.bpb["BPB_SecPerClus"], fs.cluster_size
        self.bits = fs.bits
        self.root_cluster = fs.ext["BPB_RootClus"] if fs.bits == 32 else 0
        self.fat = self._read_fat()

    def _pread(self, offset: int, length: int) -> bytes:
        return os.pread(self.fd, length, offset)

    def _pwrite(self, offset: int, data: bytes) -> None:
        view, done = memoryview(data), 0
        while done < len(view):
            done += os.pwrite(self.fd, view[done:], offset + done)

    def _read_fat(self) -> np.ndarray:
        fs = self.fs
        raw = self._pread((fs.reserved + fs.fat_copies[0] * fs.fat_sectors) * self.bps, fs.fat_sectors * self.bps)
        return fat_entries(raw, self.bits, fs.clusters + 2).copy()

    def used_clusters(self) -> np.ndarray:
        return np.flatnonzero(self.fat[2:] != 0) + 2

    def min_size(self) -> int:
        """Smallest volume that holds every used cluster with the same FAT type and FAT size."""
        clusters = max(len(self.used_clusters()), MIN_CLUSTERS[self.bits])
        return (self.fs.data_start + clusters * self.spc) * self.bps

    def cluster_offset(self, c: int | np.ndarray, data_start: int | None = None):
        return ((self.fs.data_start if data_start is None else data_start) * self.bps
                + (c - 2) * self.cs)

    # ----------------------------------------------------------------- shrink

    def shrink(self, new_size: int) -> None:
        fs = self.fs
        new_clusters = (new_size // self.bps - fs.data_start) // self.spc
        if new_size < self.min_size() or new_clusters < MIN_CLUSTERS[self.bits]:
            raise FilesystemError(f"FAT{self.bits} cannot shrink to {human_size(new_size)}: its minimum is "
                                  f"{human_size(self.min_size())} ({self.min_size()} bytes)")
        limit = new_clusters + 2
        used = self.used_clusters()
        high = used[used >= limit]
        free_low = np.flatnonzero(self.fat[2:limit] == 0) + 2
        remap = np.arange(len(self.fat), dtype=np.int64)
        remap[high] = free_low[:len(high)]
        if len(high):
            self._renumber_directories(remap, set(high.tolist()))
            self._copy_clusters(high, remap[high])
        fat = np.zeros(len(self.fat), dtype=np.uint32)
        fat[:2] = self.fat[:2]
        values = self.fat[used].astype(np.int64)
        links = (values >= 2) & (values < len(self.fat))
        fat[remap[used]] = np.where(links, remap[np.where(links, values, 0)], values).astype(np.uint32)
        self.fat = fat
        self.root_cluster = int(remap[self.root_cluster])
        self._finish(new_clusters, fs.fat_sectors, fs.data_start, new_size // self.bps)

    def _renumber_directories(self, remap: np.ndarray, moved: set[int]) -> None:
        """Rewrite the first-cluster field of every directory entry that names a moved cluster."""
        fs = self.fs
        todo: list[tuple[int | None, list[int]]] = []
        if self.bits == 32:
            todo.append((self.root_cluster, self._chain(self.root_cluster)))
        else:
            todo.append((None, []))
        seen: set[int] = set()
        while todo:
            first, chain = todo.pop()
            if first is not None:
                if first in seen:
                    continue
                seen.add(first)
            places = ([(self.cluster_offset(c), self.cs) for c in chain] if first is not None
                      else [(fs.root_start * self.bps, fs.root_sectors * self.bps)])
            for offset, length in places:
                raw = bytearray(self._pread(offset, length))
                changed, subdirs, ended = self._scan_entries(raw, remap, moved)
                todo.extend((c, self._chain(c)) for c in subdirs)
                if changed:
                    self._pwrite(offset, bytes(raw))
                if ended:
                    break

    def _scan_entries(self, raw: bytearray, remap: np.ndarray, moved: set[int]) -> tuple[bool, list[int], bool]:
        changed, subdirs = False, []
        for off in range(0, len(raw) - 31, C.DIR_ENTRY_SIZE):
            first_byte, attr = raw[off], raw[off + 0x0B]
            if first_byte == C.DIR_END:
                return changed, subdirs, True
            if first_byte == C.DIR_FREE or (attr & C.ATTR_LONG_NAME_MASK) == C.ATTR_LONG_NAME:
                continue
            hi, lo = struct.unpack_from("<H", raw, off + 0x14)[0], struct.unpack_from("<H", raw, off + 0x1A)[0]
            cluster = (hi << 16 | lo) if self.bits == 32 else lo
            if cluster < 2 or cluster >= len(self.fat):
                continue
            if attr & C.ATTR_DIRECTORY and raw[off:off + 2] not in (b". ", b".."):
                subdirs.append(cluster)
            if cluster in moved:
                new = int(remap[cluster])
                struct.pack_into("<H", raw, off + 0x1A, new & 0xFFFF)
                if self.bits == 32:
                    struct.pack_into("<H", raw, off + 0x14, new >> 16)
                changed = True
        return changed, subdirs, False

    def _chain(self, first: int) -> list[int]:
        out, c, seen = [], first, set()
        while 2 <= c < len(self.fat) and c not in seen:
            seen.add(c)
            out.append(c)
            c = int(self.fat[c])
        return out

    def _copy_clusters(self, src: np.ndarray, dst: np.ndarray) -> None:
        """Copy clusters ``src`` to ``dst`` (disjoint sets), in runs contiguous on both sides."""
        order = np.argsort(src)
        src, dst = src[order], dst[order]
        breaks = np.flatnonzero((np.diff(src) != 1) | (np.diff(dst) != 1)) + 1
        for s, d in zip(np.split(src, breaks), np.split(dst, breaks)):
            for i in range(0, len(s), max(1, COPY_PIECE // self.cs)):
                n = min(len(s) - i, max(1, COPY_PIECE // self.cs))
                self._pwrite(self.cluster_offset(int(d[i])), self._pread(self.cluster_offset(int(s[i])), n * self.cs))

    # ----------------------------------------------------------------- grow

    def grow(self, new_size: int) -> None:
        fs = self.fs
        total = new_size // self.bps
        fat_sectors = fs.fat_sectors
        while True:
            data_start = fs.reserved + fs.nfats * fat_sectors + fs.root_sectors
            clusters = min((total - data_start) // self.spc, MAX_CLUSTERS[self.bits])
            need = -(-(clusters + 2) * self.bits // 8 // self.bps)
            if need <= fat_sectors:
                break
            fat_sectors = need
        if clusters <= fs.clusters:
            return
        if data_start != fs.data_start:
            self._shift(data_start)
        self.fat = np.concatenate((self.fat, np.zeros(clusters - fs.clusters, dtype=np.uint32)))
        capped = clusters < (total - data_start) // self.spc
        self._finish(clusters, fat_sectors, data_start, data_start + clusters * self.spc if capped else total)

    def _shift(self, data_start: int) -> None:
        """Move the root directory region and every used cluster forward, highest first."""
        fs = self.fs
        delta = (data_start - fs.data_start) * self.bps
        used = self.used_clusters()
        runs = [(int(self.cluster_offset(int(r[0]))), len(r) * self.cs)
                for r in np.split(used, np.flatnonzero(np.diff(used) != 1) + 1) if len(r)]
        runs.append((fs.root_start * self.bps, fs.root_sectors * self.bps))
        for offset, length in sorted(runs, reverse=True):
            end = length
            while end > 0:
                start = max(0, end - COPY_PIECE)
                self._pwrite(offset + start + delta, self._pread(offset + start, end - start))
                end = start

    # ----------------------------------------------------------------- common

    def _finish(self, clusters: int, fat_sectors: int, data_start: int, total: int) -> None:
        """Write the FAT copies, the boot sector (and its FAT32 backup) and FSInfo."""
        fs, bps = self.fs, self.bps
        raw = _pack(self.fat[:clusters + 2], self.bits).ljust(fat_sectors * bps, b"\0")
        for copy in range(fs.nfats):
            self._pwrite((fs.reserved + copy * fat_sectors) * bps, raw)
        boot = bytearray(self._pread(0, bps))
        if self.bits == 32:
            struct.pack_into("<H", boot, 0x13, 0)
            struct.pack_into("<I", boot, 0x20, total)
            struct.pack_into("<I", boot, 0x24, fat_sectors)
            struct.pack_into("<I", boot, 0x2C, self.root_cluster)
        else:
            small = total < 0x10000
            struct.pack_into("<H", boot, 0x13, total if small else 0)
            struct.pack_into("<I", boot, 0x20, 0 if small else total)
            struct.pack_into("<H", boot, 0x16, fat_sectors)
        self._pwrite(0, bytes(boot))
        if self.bits == 32:
            free = clusters - int(np.count_nonzero(self.fat[2:clusters + 2]))
            backup = fs.ext["BPB_BkBootSec"]
            if backup:
                self._pwrite(backup * bps, bytes(boot))
            for sector in {fs.ext["BPB_FSInfo"], backup + fs.ext["BPB_FSInfo"] if backup else 0} - {0}:
                info = bytearray(self._pread(sector * bps, bps))
                struct.pack_into("<II", info, FSINFO_FREE, free, 0xFFFFFFFF)
                self._pwrite(sector * bps, bytes(info))


def _pack(entries: np.ndarray, bits: int) -> bytes:
    if bits == 32:
        return entries.astype("<u4").tobytes()
    if bits == 16:
        return entries.astype("<u2").tobytes()
    e = np.concatenate((entries, np.zeros(len(entries) % 2, dtype=np.uint32))).reshape(-1, 2)
    out = np.empty((len(e), 3), dtype=np.uint8)
    out[:, 0] = e[:, 0] & 0xFF
    out[:, 1] = (e[:, 0] >> 8) & 0x0F | (e[:, 1] & 0x0F) << 4
    out[:, 2] = e[:, 1] >> 4
    return out.tobytes()[:(len(entries) * 3 + 1) // 2]


def _open(path: str) -> tuple[int, int]:
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    return fd, os.lseek(fd, 0, os.SEEK_END)


def min_size(path: str) -> int:
    fd, size = _open(path)
    try:
        return FatVolume(fd, size).min_size()
    finally:
        os.close(fd)


def resize(path: str, new_size: int) -> None:
    """Grow or shrink the FAT filesystem at the start of ``path`` to ``new_size`` bytes."""
    fd, size = _open(path)
    try:
        vol = FatVolume(fd, size)
        if new_size < vol.fs.total_sectors * vol.bps:
            vol.shrink(new_size)
        else:
            vol.grow(min(new_size, size))
        os.fsync(fd)
    finally:
        os.close(fd)
