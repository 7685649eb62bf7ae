"""ext2/ext3/ext4 reader: superblock facts and the used blocks from the block bitmaps.

Used blocks are what the group block bitmaps mark, plus every group's own metadata (superblock
backup, group descriptor blocks, reserved GDT blocks, block/inode bitmaps, inode table) wherever
it lies - which is how e2fsprogs and the kernel build the bitmap of a BLOCK_UNINIT group, whose
on-disk bitmap is not initialised. The structures are declared in ``c_ext``.
"""

from __future__ import annotations

import struct
from typing import BinaryIO, ClassVar

import numpy as np

from diskvault.errors import FilesystemError
from diskvault.readat import read_at as _read_at
from diskvault.fs import c_ext as C
from diskvault.fs.base import FsInfo
from diskvault.fs.extents import clip, from_bitmap, merge, total

CHUNK_BLOCKS = 1 << 24  # blocks turned into extents per pass (bounds memory on big filesystems)
MAX_RUN_BLOCKS = 4096  # at most this many consecutive bitmap blocks per read



def _bad(what: str) -> FilesystemError:
    return FilesystemError(f"ext superblock is not sane: {what}")


class ExtReader:
    """An ext2/3/4 filesystem opened read-only; see the module docstring."""

    name: ClassVar[str] = "ext"

    @classmethod
    def probe(cls, fh: BinaryIO, size: int) -> bool:
        if size < C.SUPERBLOCK_OFFSET + C.SUPERBLOCK_SIZE:
            return False
        raw = _read_at(fh, C.MAGIC_OFFSET, 2)
        return len(raw) == 2 and struct.unpack("<H", raw)[0] == C.EXT_MAGIC

    def __init__(self, fh: BinaryIO, size: int) -> None:
        self._fh, self._size = fh, size
        raw = _read_at(fh, C.SUPERBLOCK_OFFSET, C.SUPERBLOCK_SIZE)
        if len(raw) < C.SUPERBLOCK_SIZE:
            raise FilesystemError("ext superblock is truncated (the partition is too small)")
        sb = C.parse_superblock(raw)
        if sb["s_magic"] != C.EXT_MAGIC:
            raise FilesystemError("no ext superblock (bad magic)")
        self.sb, self.superblock_bytes = sb, raw
        if sb["s_rev_level"] == 0:  # original format: the feature fields are not defined
            self.compat = self.incompat = self.ro_compat = 0
        else:
            self.compat = sb["s_feature_compat"]
            self.incompat = sb["s_feature_incompat"]
            self.ro_compat = sb["s_feature_ro_compat"]
        self.is64 = bool(self.incompat & C.INCOMPAT_64BIT)
        hi = 1 if self.is64 else 0  # the _hi halves only count with the 64bit feature
        self.blocks_count = sb["s_blocks_count_lo"] | (hi * sb["s_blocks_count_hi"]) << 32
        self.free_blocks = sb["s_free_blocks_count_lo"] | (hi * sb["s_free_blocks_count_hi"]) << 32
        self._extents: np.ndarray | None = None
        self._note = ""
        # why used_extents() cannot trust the bitmaps (info() still works); "" when it can
        self.unsupported = ""
        self._check_superblock()
        if not self.unsupported:
            self._load_descriptors()

    # ----------------------------------------------------------------- superblock

    def _check_superblock(self) -> None:
        sb = self.sb
        if sb["s_log_block_size"] > 6:
            raise _bad(f"block size 1024 << {sb['s_log_block_size']} is out of range (1 KiB..64 KiB)")
        bs = self.block_size = 1024 << sb["s_log_block_size"]
        fdb = self.first_data_block = sb["s_first_data_block"]
        if self.blocks_count <= fdb:
            raise _bad(f"blocks count {self.blocks_count} is not above first data block {fdb}")
        if self.blocks_count * bs > self._size:
            raise FilesystemError(
                f"ext filesystem claims {self.blocks_count * bs} bytes but the partition has only "
                f"{self._size}; imaging every block"
            )
        if self.incompat & C.INCOMPAT_JOURNAL_DEV:
            self.unsupported = "external ext journal device has no block bitmaps; imaging every block"
            return
        if self.ro_compat & C.RO_COMPAT_BIGALLOC:
            self.unsupported = "ext4 bigalloc is not supported; imaging every block"
            return
        if fdb != (1 if bs == 1024 else 0):
            raise _bad(f"first data block {fdb} does not fit block size {bs}")
        bpg = self.blocks_per_group = sb["s_blocks_per_group"]
        if not 8 <= bpg <= 8 * bs:
            raise _bad(f"{bpg} blocks per group (must be 8..{8 * bs})")
        ngroups = self.groups = -(-(self.blocks_count - fdb) // bpg)
        ipg = sb["s_inodes_per_group"]
        if not 1 <= ipg <= 8 * bs:
            raise _bad(f"{ipg} inodes per group (must be 1..{8 * bs})")
        if ngroups * ipg != sb["s_inodes_count"]:
            raise _bad(
                f"{ngroups} groups of {ipg} inodes do not match the inodes count {sb['s_inodes_count']}"
            )
        isize = 128 if sb["s_rev_level"] == 0 else sb["s_inode_size"]
        if isize < 128 or isize > bs or isize & (isize - 1):
            raise _bad(f"inode size {isize}")
        self.inode_size, self.inodes_per_group = isize, ipg
        self.itable_blocks = -(-(ipg * isize) // bs)
        if self.is64:
            ds = sb["s_desc_size"]
            if ds < C.GROUP_DESC_MIN_SIZE_64BIT or ds > C.GROUP_DESC_MAX_SIZE or ds & (ds - 1):
                raise _bad(f"group descriptor size {ds}")
        else:
            ds = C.GROUP_DESC_MIN_SIZE
        self.desc_size = ds
        self.desc_per_block = bs // ds
        self.desc_blocks = -(-ngroups // self.desc_per_block)
        if ngroups > (1 << 32) - self.desc_per_block:
            raise _bad(f"{ngroups} groups")
        self.reserved_gdt = sb["s_reserved_gdt_blocks"]
        if self.reserved_gdt > bs // 4:
            raise _bad(f"{self.reserved_gdt} reserved GDT blocks")
        self.meta_bg = bool(self.incompat & C.INCOMPAT_META_BG)
        self.first_meta_bg = sb["s_first_meta_bg"] if self.meta_bg else self.desc_blocks
        if self.first_meta_bg > self.desc_blocks:
            raise _bad(f"first meta_bg {self.first_meta_bg} beyond {self.desc_blocks} descriptor blocks")
        self.has_csum = bool(self.ro_compat & (C.RO_COMPAT_GDT_CSUM | C.RO_COMPAT_METADATA_CSUM))
        state = sb["s_state"]
        if self.incompat & C.INCOMPAT_RECOVER:
            self.unsupported = (
                "ext journal needs recovery (mounted or not cleanly unmounted): the block bitmaps "
                "may be stale; imaging every block"
            )
        elif not state & C.EXT4_VALID_FS:
            self.unsupported = (
                "ext filesystem is mounted or was not cleanly unmounted: the block bitmaps may be "
                "stale; imaging every block"
            )

    # ----------------------------------------------------------------- group layout

    def _has_super(self, groups: np.ndarray) -> np.ndarray:
        """ext4_bg_has_super() for every group number in ``groups``."""
        g = groups.astype(np.int64)
        if self.compat & C.COMPAT_SPARSE_SUPER2:
            b0, b1 = self.sb["s_backup_bgs"]
            return (g == 0) | (g == b0) | (g == b1)
        if not self.ro_compat & C.RO_COMPAT_SPARSE_SUPER:
            return np.ones(g.shape, dtype=bool)
        powers = []
        for base in (3, 5, 7):
            p = base
            while p < max(self.groups, 2):
                powers.append(p)
                p *= base
        return (g <= 1) | np.isin(g, np.array(powers, dtype=np.int64))

    def _desc_block_location(self, nr: int) -> int:
        """descriptor_loc(): block number of group descriptor block ``nr``."""
        if not self.meta_bg or nr < self.first_meta_bg:
            return self.first_data_block + 1 + nr
        bg = nr * self.desc_per_block
        has_super = int(self._has_super(np.array([bg]))[0])
        return self.first_data_block + bg * self.blocks_per_group + has_super

    def _load_descriptors(self) -> None:
        bs, n = self.block_size, self.desc_blocks
        locs = [self._desc_block_location(i) for i in range(n)]
        runs: list[list[int]] = []  # [start block, count] of consecutive descriptor blocks
        for loc in locs:
            if not self.first_data_block <= loc < self.blocks_count:
                raise _bad(f"group descriptor block {loc} lies outside the filesystem")
            if runs and runs[-1][0] + runs[-1][1] == loc:
                runs[-1][1] += 1
            else:
                runs.append([loc, 1])
        parts = []
        for start, count in runs:
            data = _read_at(self._fh, start * bs, count * bs)
            if len(data) != count * bs:
                raise FilesystemError(f"cannot read ext group descriptors at block {start}")
            parts.append(data)
        gd = np.frombuffer(b"".join(parts), dtype=C.group_desc_dtype(self.desc_size), count=self.groups)

        def addr(field: str) -> np.ndarray:
            lo = gd[field + "_lo"].astype(np.uint64)
            if self.desc_size >= C.GROUP_DESC_MIN_SIZE_64BIT:
                lo |= gd[field + "_hi"].astype(np.uint64) << np.uint64(32)
            return lo

        self.block_bitmap = addr("bg_block_bitmap")
        self.inode_bitmap = addr("bg_inode_bitmap")
        self.inode_table = addr("bg_inode_table")
        self.bg_flags = gd["bg_flags"].astype(np.uint16)
        unused = gd["bg_itable_unused_lo"].astype(np.int64)
        if self.desc_size >= C.GROUP_DESC_MIN_SIZE_64BIT:
            unused |= gd["bg_itable_unused_hi"].astype(np.int64) << 16
        self.itable_unused = unused
        self._check_descriptors()

    def _check_descriptors(self) -> None:
        """ext4_check_descriptors(): metadata inside the filesystem (inside its group without flex_bg)."""
        g = np.arange(self.groups, dtype=np.uint64)
        first = np.uint64(self.first_data_block) + g * np.uint64(self.blocks_per_group)
        if self.incompat & C.INCOMPAT_FLEX_BG:
            first = np.full_like(first, self.first_data_block)
            end = np.full_like(first, self.blocks_count)
        else:
            end = np.minimum(first + np.uint64(self.blocks_per_group), np.uint64(self.blocks_count))
        itb = np.uint64(self.itable_blocks)
        for what, start, length in (
            ("block bitmap", self.block_bitmap, np.uint64(1)),
            ("inode bitmap", self.inode_bitmap, np.uint64(1)),
            ("inode table", self.inode_table, itb),
        ):
            bad = np.flatnonzero((start < first) | (start + length > end) | (start + length < start))
            if bad.size:
                i = int(bad[0])
                raise FilesystemError(
                    f"ext group descriptor {i} is corrupt: {what} at block {int(start[i])} lies "
                    f"outside {'the filesystem' if self.incompat & C.INCOMPAT_FLEX_BG else 'its group'}"
                )

    def _metadata_extents(self) -> np.ndarray:
        """Byte extents of every group's metadata, wherever it lies (flex_bg included)."""
        g = np.arange(self.groups, dtype=np.int64)
        has_super = self._has_super(g).astype(np.int64)
        dpb = self.desc_per_block
        old_layout = g < self.first_meta_bg * dpb  # always true without meta_bg
        old_gdb = self.first_meta_bg if self.meta_bg else self.desc_blocks
        in_meta = np.isin(g % dpb, [0, 1, dpb - 1]).astype(np.int64)
        # ext4_num_base_meta_clusters(): superblock + descriptor blocks (+ reserved GDT blocks)
        num = np.where(old_layout, has_super * (1 + old_gdb + self.reserved_gdt), has_super + in_meta)
        first = self.first_data_block + g * self.blocks_per_group
        starts = np.concatenate(
            [first.astype(np.uint64), self.block_bitmap, self.inode_bitmap, self.inode_table]
        )
        lengths = np.concatenate(
            [
                num.astype(np.uint64),
                np.ones(2 * self.groups, dtype=np.uint64),
                np.full(self.groups, self.itable_blocks, dtype=np.uint64),
            ]
        )
        bs = np.uint64(self.block_size)
        return np.stack([starts * bs, lengths * bs], axis=1)

    # ----------------------------------------------------------------- bitmaps

    def _read_bitmaps(self, g0: int, g1: int, raw: np.ndarray, uninit: np.ndarray) -> None:
        """Fill rows of ``raw`` with groups g0..g1-1's block bitmaps, in runs of adjacent blocks."""
        bs = self.block_size
        idx = np.flatnonzero(~uninit[g0:g1]) + g0
        if idx.size == 0:
            return
        locs = self.block_bitmap[idx]
        order = np.argsort(locs, kind="stable")
        locs, idx = locs[order], idx[order]
        breaks = np.flatnonzero(np.diff(locs) != 1) + 1
        for run_loc, run_idx in zip(np.split(locs, breaks), np.split(idx, breaks)):
            for k in range(0, run_loc.size, MAX_RUN_BLOCKS):
                start, rows = int(run_loc[k]), run_idx[k : k + MAX_RUN_BLOCKS]
                data = _read_at(self._fh, start * bs, rows.size * bs)
                if len(data) != rows.size * bs:
                    raise FilesystemError(f"cannot read ext block bitmap at block {start}")
                raw[rows - g0] = np.frombuffer(data, dtype=np.uint8).reshape(rows.size, bs)

    def _scan(self) -> np.ndarray:
        bs, bpg, fdb = self.block_size, self.blocks_per_group, self.first_data_block
        uninit = np.zeros(self.groups, dtype=bool)
        if self.has_csum:  # the kernel honours BLOCK_UNINIT only with group descriptor checksums
            uninit = (self.bg_flags & C.EXT4_BG_BLOCK_UNINIT) != 0
        per_chunk = max(1, CHUNK_BLOCKS // bpg)
        data_blocks = self.blocks_count - fdb
        pieces = [self._metadata_extents()]
        # the boot area and the primary superblock (block 0 is in no group with 1 KiB blocks)
        pieces.append(np.array([[0, -(-2048 // bs) * bs]], dtype=np.uint64))
        for g0 in range(0, self.groups, per_chunk):
            g1 = min(self.groups, g0 + per_chunk)
            raw = np.zeros((g1 - g0, bs), dtype=np.uint8)  # BLOCK_UNINIT rows stay zero
            self._read_bitmaps(g0, g1, raw, uninit)
            bits = np.unpackbits(raw, axis=1, bitorder="little")[:, :bpg].reshape(-1)
            bits = bits[: data_blocks - g0 * bpg]  # past the last group's end: padding, ignored
            pieces.append(from_bitmap(bits, bs, base=(fdb + g0 * bpg) * bs))
        extents = clip(merge(np.concatenate(pieces)), 0, self.blocks_count * bs)
        used = total(extents) // bs
        expected = self.blocks_count - self.free_blocks
        if used != expected:
            self._note = (
                f"warning: ext block bitmaps mark {used} blocks used but the superblock says "
                f"{expected}; imaging per the bitmaps"
            )
        return extents

    # ----------------------------------------------------------------- protocol

    def used_extents(self) -> np.ndarray:
        if self.unsupported:
            raise FilesystemError(self.unsupported)
        if self._extents is None:
            self._extents = self._scan()
        return self._extents.copy()

    def fstype(self) -> str:
        """ext2/ext3/ext4 by libblkid's rule (what ext2/ext3 drivers would accept)."""
        if self.incompat & C.INCOMPAT_JOURNAL_DEV:
            return "jbd"
        newer_ro = self.ro_compat & ~C.EXT3_RO_COMPAT_SUPP
        if self.compat & C.COMPAT_HAS_JOURNAL:
            return "ext4" if newer_ro or self.incompat & ~C.EXT3_INCOMPAT_SUPP else "ext3"
        return "ext4" if newer_ro or self.incompat & ~C.EXT2_INCOMPAT_SUPP else "ext2"

    def info(self) -> FsInfo:
        note = self.unsupported
        if not note:
            self.used_extents()  # runs the bitmap/superblock cross-check once; cached
            note = self._note
        if not note and self.sb["s_state"] & C.EXT4_ERROR_FS:
            note = "warning: the ext filesystem has recorded errors (run e2fsck)"
        label = self.sb["s_volume_name"].split(b"\0", 1)[0].decode("utf-8", "replace")
        u = self.sb["s_uuid"].hex()
        uuid = f"{u[:8]}-{u[8:12]}-{u[12:16]}-{u[16:20]}-{u[20:]}"
        bs = self.block_size
        return FsInfo(
            fstype=self.fstype(),
            size=self.blocks_count * bs,
            used_bytes=max(0, self.blocks_count - self.free_blocks) * bs,
            block_size=bs,
            label=label,
            uuid=uuid,
            note=note,
        )

