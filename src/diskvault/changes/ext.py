"""ext2/3/4 change tracking by inode fingerprints and the superblock.

A file's data cannot change without its inode changing: every write sets ctime (which no system
call can set back), and moving or reallocating its blocks changes its extent tree. So a regular
file whose inode - without atime and checksums - and extent tree are byte-identical to an earlier
snapshot holds the same data in the same blocks, and those blocks need not be read.

A filesystem whose primary superblock is byte-identical to a snapshot's was not written at all
since: every read-write mount writes the mount count and time into it, and e2fsprogs tools that
write (e2fsck, tune2fs, resize2fs, debugfs) set its write time and written-bytes counter. Then every
block its bitmaps mark used holds what it held, metadata and journal included; only the boot area
before the superblock, which boot loaders write directly, is still compared.

Trusted only when the filesystem was cleanly unmounted (or is mounted read-only): then every lazy
timestamp has reached the disk. Unless the superblock is unchanged, never vouched for, so always
read and compared: everything that is not the data of a regular extent-mapped file (metadata,
directories, xattr blocks, block-mapped ext2/3 files), the reserved inodes (the journal is written
without touching its inode), inodes the superblock names (quota, orphan file) and large-xattr
inodes. Writes to the raw device that bypass the filesystem are not seen - use
``--no-change-tracking`` after such surgery.
"""

from __future__ import annotations

import base64
import functools
import struct
from typing import BinaryIO

import blake3
import numpy as np

from diskvault.browse.ext_inode import EXT_INIT_MAX_LEN, EXT4_EXTENTS_FL, EXTENT_MAGIC, extent_runs
from diskvault.browse.runs import ZERO
from diskvault.errors import FilesystemError
from diskvault.fs import c_ext as C
from diskvault.fs import extents as ext
from diskvault.fs.ext import ExtReader
from diskvault.readat import read_at

KIND = "ext-inodes-1"
FINGERPRINT = np.dtype([("ino", "<u4"), ("digest", "V16")])
# bytes that change without the data changing: i_atime, l_i_checksum_lo, i_checksum_hi, i_atime_extra
VOLATILE = ((0x08, 0x0C), (0x7C, 0x7E), (0x82, 0x84), (0x8C, 0x90))
S_IFMT, S_IFREG = 0xF000, 0x8000
EXT4_EA_INODE_FL = 0x00200000
ORPHAN_FILE_INUM_OFFSET = 0x280  # s_orphan_file_inum (not in c_ext's table: only read here)
I_BLOCK = slice(0x28, 0x28 + 60)
# the inode fields a scan reads (offset, type); i_block starts with the extent header, then up to 4
# extents: ee_block u32, ee_len u16, ee_start_hi u16, ee_start_lo u32
INODE_FIELDS = {"mode": (0x00, "<u2"), "dtime": (0x14, "<u4"), "links": (0x1A, "<u2"), "flags": (0x20, "<u4"),
                "magic": (0x28, "<u2"), "entries": (0x2A, "<u2"), "depth": (0x2E, "<u2")} | {
    f"{name}{k}": (0x28 + 12 + 12 * k + off, kind) for k in range(4)
    for name, off, kind in (("len", 4, "<u2"), ("hi", 6, "<u2"), ("lo", 8, "<u4"))}


def _fields(rows: np.ndarray) -> np.ndarray:
    """INODE_FIELDS of every row of an (n, inode_size) uint8 array, as a structured view (no copy)."""
    dtype = np.dtype({"names": list(INODE_FIELDS), "formats": [k for _o, k in INODE_FIELDS.values()],
                      "offsets": [o for o, _k in INODE_FIELDS.values()], "itemsize": rows.shape[1]})
    return np.ascontiguousarray(rows).view(dtype).reshape(-1)


class ExtTracker:
    """Fingerprints of an ext filesystem's regular files; see the module docstring."""

    probe = staticmethod(ExtReader.probe)

    def __init__(self, fh: BinaryIO, size: int) -> None:
        self._fh = fh
        fs = self._fs = ExtReader(fh, size)
        if fs.unsupported:
            raise FilesystemError(fs.unsupported)
        self.uuid = fs.sb["s_uuid"].hex()
        self.superblock = blake3.blake3(fs.superblock_bytes).hexdigest()
        self._scan()

    # ----------------------------------------------------------------- inodes

    def _inode_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(inode numbers, raw inodes as an (n, inode_size) uint8 array) of every initialised slot."""
        fs, isize, ipg = self._fs, self._fs.inode_size, self._fs.inodes_per_group
        used = np.full(fs.groups, ipg, dtype=np.int64)
        if fs.has_csum:  # without group checksums the kernel ignores these hints
            used = np.clip(ipg - fs.itable_unused, 0, ipg)
            used[(fs.bg_flags & C.EXT4_BG_INODE_UNINIT) != 0] = 0
        numbers, rows = [], []
        for g in np.flatnonzero(used).tolist():
            raw = read_at(self._fh, int(fs.inode_table[g]) * fs.block_size, int(used[g]) * isize)
            if len(raw) != int(used[g]) * isize:
                raise FilesystemError(f"cannot read the ext inode table of group {g}")
            rows.append(np.frombuffer(raw, dtype=np.uint8).reshape(-1, isize))
            numbers.append(np.arange(g * ipg + 1, g * ipg + 1 + int(used[g]), dtype=np.uint32))
        if not rows:
            return np.zeros(0, np.uint32), np.zeros((0, isize), np.uint8)
        return np.concatenate(numbers), np.concatenate(rows)

    def _excluded(self) -> set[int]:
        sb = self._fs.sb
        orphan = struct.unpack_from("<I", self._fs.superblock_bytes, ORPHAN_FILE_INUM_OFFSET)[0]
        return {sb["s_journal_inum"], sb["s_usr_quota_inum"], sb["s_grp_quota_inum"], sb["s_prj_quota_inum"],
                orphan} - {0}

    def _scan(self) -> None:
        numbers, rows = self._inode_rows()
        f = _fields(rows)
        first_ino = max(self._fs.sb["s_first_ino"], 11) if self._fs.sb["s_rev_level"] else 11
        files = (((f["mode"] & S_IFMT) == S_IFREG) & (f["links"] > 0) & (f["dtime"] == 0)
                 & (f["flags"] & EXT4_EXTENTS_FL != 0) & (f["flags"] & EXT4_EA_INODE_FL == 0)
                 & (numbers >= first_ino) & ~np.isin(numbers, list(self._excluded())))
        self.numbers = numbers[files]
        rows = rows[files]
        for a, b in VOLATILE:
            if b <= rows.shape[1]:
                rows[:, a:b] = 0
        # extents in i_block itself (depth 0, the common case), decoded for all files at once
        f = _fields(rows)
        entries = f["entries"]
        leaf = (f["magic"] == EXTENT_MAGIC) & (f["depth"] == 0) & (entries <= 4)
        owner, starts, counts, trees = [], [], [], {}
        for k in range(4):
            length = f[f"len{k}"]
            take = leaf & (entries > k) & (length <= EXT_INIT_MAX_LEN)  # written extents (as extent_runs)
            owner.append(np.flatnonzero(take))
            starts.append((f[f"hi{k}"].astype(np.uint64) << 32 | f[f"lo{k}"])[take])
            counts.append(length[take])
        for k in np.flatnonzero(~leaf).tolist():  # deeper trees: walk their blocks
            runs, trees[k] = self._extents(rows[k, I_BLOCK].tobytes())
            owner.append(np.full(len(runs), k))
            starts.append(runs[:, 0])
            counts.append(runs[:, 1])
        self._owner = np.concatenate(owner)
        self._runs = np.stack([np.concatenate(starts), np.concatenate(counts)], axis=1).astype(np.uint64)
        self._rows, self._trees = rows, trees  # hashed when first needed: that reads nothing more

    @functools.cached_property
    def fingerprints(self) -> np.ndarray:
        out = np.zeros(len(self.numbers), dtype=FINGERPRINT)
        out["ino"] = self.numbers
        out["digest"] = self._hash(np.arange(len(self.numbers)))
        del self._rows, self._trees
        return out

    def _digests(self, files: np.ndarray) -> np.ndarray:
        """The fingerprint digests of the files at indices ``files``: only theirs are hashed, unless
        all are already."""
        if "fingerprints" in self.__dict__ or len(files) > len(self.numbers) // 4:
            return self.fingerprints["digest"][files]
        return self._hash(files)

    def _hash(self, files: np.ndarray) -> np.ndarray:
        """Digests of the files at the sorted indices ``files`` (the hot loop of a scan: one slice
        and one hash per file, over one copy of their rows)."""
        if not len(files):
            return np.zeros(0, dtype="V16")
        raw, n, h = self._rows[files].tobytes(), self._rows.shape[1], blake3.blake3
        digests = [h(raw[i:i + n]).digest(16) for i in range(0, len(raw), n)]
        for k, tree in self._trees.items():
            i = int(np.searchsorted(files, k))
            if i < len(files) and files[i] == k:
                digests[i] = h(raw[i * n:(i + 1) * n] + tree).digest(16)
        return np.frombuffer(b"".join(digests), dtype="V16")

    def _files_within(self, within: np.ndarray) -> np.ndarray:
        """Indices of the files with data in ``within`` (merged byte extents)."""
        if not len(self._runs) or not len(within):
            return np.zeros(0, dtype=np.int64)
        bs = np.uint64(self._fs.block_size)
        starts, ends = self._runs[:, 0] * bs, (self._runs[:, 0] + self._runs[:, 1]) * bs
        w_start, w_end = within[:, 0], within[:, 0] + within[:, 1]
        k = np.minimum(np.searchsorted(w_end, starts, side="right"), len(within) - 1)
        overlaps = (w_end[k] > starts) & (w_start[k] < ends)
        mask = np.zeros(len(self.numbers), dtype=bool)
        mask[self._owner[overlaps]] = True
        return np.flatnonzero(mask)

    def _extents(self, root: bytes) -> tuple[np.ndarray, bytes]:
        """(physical [block, count] rows of the written extents of a deeper tree; its raw blocks)."""
        tree: list[bytes] = []

        def read_block(block: int) -> bytes:
            tree.append(read_at(self._fh, block * self._fs.block_size, self._fs.block_size))
            return tree[-1]

        try:
            runs = extent_runs(root, read_block, "extent tree")
        except (FilesystemError, struct.error):
            return np.zeros((0, 2), np.uint64), b"corrupt"  # vouches for nothing
        rows = [(r.physical, r.count) for r in runs if r.physical != ZERO]
        return np.array(rows, dtype=np.uint64).reshape(-1, 2), b"".join(tree)

    # ----------------------------------------------------------------- protocol

    def snapshot(self) -> dict:
        return {"kind": KIND, "uuid": self.uuid, "superblock": self.superblock,
                "fingerprints": base64.b64encode(self.fingerprints.tobytes()).decode("ascii")}

    def unchanged(self, earlier: dict, within: np.ndarray | None = None) -> np.ndarray:
        if not self._same_filesystem(earlier):
            return ext.EMPTY.copy()
        if earlier.get("superblock") == self.superblock:
            return self._all_used.copy() if within is None else ext.intersect(self._all_used, within)
        files = np.arange(len(self.numbers)) if within is None else self._files_within(ext.merge(within))
        before = np.frombuffer(base64.b64decode(earlier["fingerprints"]), dtype=FINGERPRINT)
        numbers = self.numbers[files]
        i = np.searchsorted(before["ino"], numbers)
        found = i < len(before)
        same = np.zeros(len(self.numbers), dtype=bool)
        same[files[found]] = (before["ino"][i[found]] == numbers[found]) & (
            before["digest"][i[found]] == self._digests(files)[found])
        runs = self._runs[same[self._owner]] if len(self._runs) else self._runs
        found_bytes = self._byte_extents(runs)
        return found_bytes if within is None else ext.intersect(found_bytes, within)

    def candidates(self, earlier: dict) -> np.ndarray:
        if not self._same_filesystem(earlier):
            return ext.EMPTY.copy()
        if earlier.get("superblock") == self.superblock:
            return self._all_used.copy()
        return self._byte_extents(self._runs)

    def _same_filesystem(self, earlier: dict) -> bool:
        return earlier.get("kind") == KIND and earlier.get("uuid") == self.uuid

    @functools.cached_property
    def _all_used(self) -> np.ndarray:
        """Every used byte after the boot area and the primary superblock (what the bitmaps say:
        read when a snapshot's superblock first matches, which a delta asks before writing)."""
        fs = self._fs
        boot = -(-(C.SUPERBLOCK_OFFSET + C.SUPERBLOCK_SIZE) // fs.block_size) * fs.block_size
        return ext.clip(fs.used_extents(), boot, fs.blocks_count * fs.block_size)

    def _byte_extents(self, blocks: np.ndarray) -> np.ndarray:
        """Byte extents of [block, count] rows that lie inside the filesystem."""
        fs = self._fs
        inside = (blocks[:, 0] >= fs.first_data_block) & (blocks[:, 0] + blocks[:, 1] <= fs.blocks_count)
        return ext.merge(blocks[inside] * np.uint64(fs.block_size))
