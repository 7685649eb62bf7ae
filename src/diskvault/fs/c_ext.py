"""On-disk structures of ext2/ext3/ext4 (names as in the kernel's fs/ext4/ext4.h), little-endian.

Only declarations live here; the logic that interprets them is in ``diskvault.fs.ext``.
Each field is ``(offset, name, format)`` with a ``struct`` format character (``16s`` = bytes).
"""

from __future__ import annotations

import numpy as np

from diskvault.fs.cstruct import Field, Layout


SUPERBLOCK_OFFSET = 1024  # the primary superblock always starts 1024 bytes into the filesystem
SUPERBLOCK_SIZE = 1024
EXT_MAGIC = 0xEF53  # s_magic
MAGIC_OFFSET = SUPERBLOCK_OFFSET + 0x38  # byte offset of s_magic from the filesystem start


# struct ext4_super_block (the fields diskvault reads or may want to show; 1024 bytes in all)
SUPERBLOCK_FIELDS: tuple[Field, ...] = (
    Field(0x000, "s_inodes_count", "I"),  # inodes count
    Field(0x004, "s_blocks_count_lo", "I"),  # blocks count (low 32 bits)
    Field(0x008, "s_r_blocks_count_lo", "I"),  # reserved (root) blocks count
    Field(0x00C, "s_free_blocks_count_lo", "I"),  # free blocks count (low 32 bits)
    Field(0x010, "s_free_inodes_count", "I"),  # free inodes count
    Field(0x014, "s_first_data_block", "I"),  # first data block: 1 for 1 KiB blocks, else 0
    Field(0x018, "s_log_block_size", "I"),  # block size = 1024 << s_log_block_size
    Field(0x01C, "s_log_cluster_size", "I"),  # cluster size = 1024 << this (bigalloc)
    Field(0x020, "s_blocks_per_group", "I"),  # blocks per group
    Field(0x024, "s_clusters_per_group", "I"),  # clusters per group (== blocks without bigalloc)
    Field(0x028, "s_inodes_per_group", "I"),  # inodes per group
    Field(0x02C, "s_mtime", "I"),  # last mount time
    Field(0x030, "s_wtime", "I"),  # last write time
    Field(0x034, "s_mnt_count", "H"),  # mounts since last fsck
    Field(0x036, "s_max_mnt_count", "h"),  # mounts allowed before fsck
    Field(0x038, "s_magic", "H"),  # 0xEF53
    Field(0x03A, "s_state", "H"),  # EXT4_VALID_FS / EXT4_ERROR_FS / EXT4_ORPHAN_FS
    Field(0x03C, "s_errors", "H"),  # behaviour on errors
    Field(0x03E, "s_minor_rev_level", "H"),  # minor revision
    Field(0x040, "s_lastcheck", "I"),  # time of last fsck
    Field(0x044, "s_checkinterval", "I"),  # max time between fscks
    Field(0x048, "s_creator_os", "I"),  # OS that made the filesystem
    Field(0x04C, "s_rev_level", "I"),  # 0 = original format, 1 = dynamic inode sizes/features
    Field(0x050, "s_def_resuid", "H"),  # default uid for reserved blocks
    Field(0x052, "s_def_resgid", "H"),  # default gid for reserved blocks
    Field(0x054, "s_first_ino", "I"),  # first non-reserved inode (rev 1)
    Field(0x058, "s_inode_size", "H"),  # inode size in bytes (rev 1)
    Field(0x05A, "s_block_group_nr", "H"),  # group holding this superblock copy
    Field(0x05C, "s_feature_compat", "I"),  # compatible feature set
    Field(0x060, "s_feature_incompat", "I"),  # incompatible feature set
    Field(0x064, "s_feature_ro_compat", "I"),  # read-only compatible feature set
    Field(0x068, "s_uuid", "16s"),  # 128-bit volume uuid
    Field(0x078, "s_volume_name", "16s"),  # volume label, NUL padded
    Field(0x088, "s_last_mounted", "64s"),  # directory where last mounted
    Field(0x0C8, "s_algorithm_usage_bitmap", "I"),  # compression (unused)
    Field(0x0CC, "s_prealloc_blocks", "B"),  # blocks to try to preallocate
    Field(0x0CD, "s_prealloc_dir_blocks", "B"),  # blocks to preallocate for dirs
    Field(0x0CE, "s_reserved_gdt_blocks", "H"),  # per-backup GDT blocks reserved for online growth
    Field(0x0D0, "s_journal_uuid", "16s"),  # uuid of the journal superblock
    Field(0x0E0, "s_journal_inum", "I"),  # inode number of the journal file
    Field(0x0E4, "s_journal_dev", "I"),  # device number of an external journal
    Field(0x0E8, "s_last_orphan", "I"),  # head of the orphan inode list
    Field(0x0EC, "s_hash_seed", "16s"),  # htree hash seed
    Field(0x0FC, "s_def_hash_version", "B"),  # default htree hash
    Field(0x0FD, "s_jnl_backup_type", "B"),  # what s_jnl_blocks holds
    Field(0x0FE, "s_desc_size", "H"),  # group descriptor size (64bit feature)
    Field(0x100, "s_default_mount_opts", "I"),  # default mount options
    Field(0x104, "s_first_meta_bg", "I"),  # first metablock group (meta_bg feature)
    Field(0x108, "s_mkfs_time", "I"),  # filesystem creation time
    Field(0x10C, "s_jnl_blocks", "68s"),  # backup of the journal inode's i_block[] and i_size
    Field(0x150, "s_blocks_count_hi", "I"),  # blocks count (high 32 bits, 64bit feature)
    Field(0x154, "s_r_blocks_count_hi", "I"),  # reserved blocks count (high 32 bits)
    Field(0x158, "s_free_blocks_count_hi", "I"),  # free blocks count (high 32 bits)
    Field(0x15C, "s_min_extra_isize", "H"),  # all inodes have at least this extra size
    Field(0x15E, "s_want_extra_isize", "H"),  # new inodes should reserve this extra size
    Field(0x160, "s_flags", "I"),  # misc flags (signed/unsigned hash, test filesystem)
    Field(0x164, "s_raid_stride", "H"),  # RAID stride
    Field(0x166, "s_mmp_interval", "H"),  # multi-mount protection check interval
    Field(0x168, "s_mmp_block", "Q"),  # block holding the MMP record
    Field(0x170, "s_raid_stripe_width", "I"),  # RAID stripe width
    Field(0x174, "s_log_groups_per_flex", "B"),  # flex_bg size = 1 << this
    Field(0x175, "s_checksum_type", "B"),  # metadata checksum algorithm (1 = crc32c)
    Field(0x178, "s_kbytes_written", "Q"),  # KiB written over the filesystem's life
    Field(0x194, "s_error_count", "I"),  # number of filesystem errors seen
    Field(0x240, "s_usr_quota_inum", "I"),  # user quota inode
    Field(0x244, "s_grp_quota_inum", "I"),  # group quota inode
    Field(0x248, "s_overhead_clusters", "I"),  # overhead blocks/clusters
    Field(0x24C, "s_backup_bgs", "2I"),  # groups with superblock backups (sparse_super2)
    Field(0x254, "s_encrypt_algos", "4s"),  # encryption algorithms in use
    Field(0x26C, "s_prj_quota_inum", "I"),  # project quota inode
    Field(0x270, "s_checksum_seed", "I"),  # crc32c(uuid) if csum_seed is set
    Field(0x3FC, "s_checksum", "I"),  # crc32c of the superblock (metadata_csum)
)

# struct ext4_group_desc: 32 bytes, or s_desc_size (>= 64) bytes with the 64bit feature
GROUP_DESC_FIELDS: tuple[Field, ...] = (
    Field(0x00, "bg_block_bitmap_lo", "I"),  # block bitmap block (low 32 bits)
    Field(0x04, "bg_inode_bitmap_lo", "I"),  # inode bitmap block (low 32 bits)
    Field(0x08, "bg_inode_table_lo", "I"),  # first inode table block (low 32 bits)
    Field(0x0C, "bg_free_blocks_count_lo", "H"),  # free blocks in the group (low 16 bits)
    Field(0x0E, "bg_free_inodes_count_lo", "H"),  # free inodes in the group (low 16 bits)
    Field(0x10, "bg_used_dirs_count_lo", "H"),  # directories in the group (low 16 bits)
    Field(0x12, "bg_flags", "H"),  # EXT4_BG_INODE_UNINIT / BLOCK_UNINIT / INODE_ZEROED
    Field(0x14, "bg_exclude_bitmap_lo", "I"),  # snapshot exclude bitmap (low 32 bits)
    Field(0x18, "bg_block_bitmap_csum_lo", "H"),  # crc32c(block bitmap) low 16 bits
    Field(0x1A, "bg_inode_bitmap_csum_lo", "H"),  # crc32c(inode bitmap) low 16 bits
    Field(0x1C, "bg_itable_unused_lo", "H"),  # unused inodes at the end of the table
    Field(0x1E, "bg_checksum", "H"),  # crc16 or crc32c of the descriptor
)
GROUP_DESC_FIELDS_64: tuple[Field, ...] = (
    Field(0x20, "bg_block_bitmap_hi", "I"),  # block bitmap block (high 32 bits)
    Field(0x24, "bg_inode_bitmap_hi", "I"),  # inode bitmap block (high 32 bits)
    Field(0x28, "bg_inode_table_hi", "I"),  # inode table block (high 32 bits)
    Field(0x2C, "bg_free_blocks_count_hi", "H"),  # free blocks (high 16 bits)
    Field(0x2E, "bg_free_inodes_count_hi", "H"),  # free inodes (high 16 bits)
    Field(0x30, "bg_used_dirs_count_hi", "H"),  # directories (high 16 bits)
    Field(0x32, "bg_itable_unused_hi", "H"),  # unused inodes (high 16 bits)
    Field(0x34, "bg_exclude_bitmap_hi", "I"),  # snapshot exclude bitmap (high 32 bits)
    Field(0x38, "bg_block_bitmap_csum_hi", "H"),  # crc32c(block bitmap) high 16 bits
    Field(0x3A, "bg_inode_bitmap_csum_hi", "H"),  # crc32c(inode bitmap) high 16 bits
)
GROUP_DESC_MIN_SIZE = 32  # EXT4_MIN_DESC_SIZE
GROUP_DESC_MIN_SIZE_64BIT = 64  # EXT4_MIN_DESC_SIZE_64BIT
GROUP_DESC_MAX_SIZE = 1024  # EXT4_MAX_DESC_SIZE

# s_state
EXT4_VALID_FS = 0x0001  # unmounted cleanly
EXT4_ERROR_FS = 0x0002  # errors detected

# bg_flags
EXT4_BG_INODE_UNINIT = 0x0001  # inode table/bitmap not in use
EXT4_BG_BLOCK_UNINIT = 0x0002  # block bitmap not initialised on disk
EXT4_BG_INODE_ZEROED = 0x0004  # inode table zeroed

# s_feature_compat
COMPAT_DIR_PREALLOC = 0x0001
COMPAT_IMAGIC_INODES = 0x0002
COMPAT_HAS_JOURNAL = 0x0004
COMPAT_EXT_ATTR = 0x0008
COMPAT_RESIZE_INODE = 0x0010
COMPAT_DIR_INDEX = 0x0020
COMPAT_SPARSE_SUPER2 = 0x0200

# s_feature_ro_compat
RO_COMPAT_SPARSE_SUPER = 0x0001
RO_COMPAT_LARGE_FILE = 0x0002
RO_COMPAT_BTREE_DIR = 0x0004
RO_COMPAT_HUGE_FILE = 0x0008
RO_COMPAT_GDT_CSUM = 0x0010  # uninit_bg
RO_COMPAT_DIR_NLINK = 0x0020
RO_COMPAT_EXTRA_ISIZE = 0x0040
RO_COMPAT_QUOTA = 0x0100
RO_COMPAT_BIGALLOC = 0x0200
RO_COMPAT_METADATA_CSUM = 0x0400

# s_feature_incompat
INCOMPAT_COMPRESSION = 0x0001
INCOMPAT_FILETYPE = 0x0002
INCOMPAT_RECOVER = 0x0004  # journal needs recovery
INCOMPAT_JOURNAL_DEV = 0x0008  # this is an external journal device
INCOMPAT_META_BG = 0x0010
INCOMPAT_EXTENTS = 0x0040
INCOMPAT_64BIT = 0x0080
INCOMPAT_MMP = 0x0100
INCOMPAT_FLEX_BG = 0x0200

# What ext2/ext3 drivers understand (libblkid's EXT{2,3}_FEATURE_*_SUPP); anything else is ext4.
EXT3_RO_COMPAT_SUPP = RO_COMPAT_SPARSE_SUPER | RO_COMPAT_LARGE_FILE | RO_COMPAT_BTREE_DIR
EXT2_INCOMPAT_SUPP = INCOMPAT_FILETYPE | INCOMPAT_META_BG
EXT3_INCOMPAT_SUPP = INCOMPAT_FILETYPE | INCOMPAT_RECOVER | INCOMPAT_META_BG


_SUPERBLOCK = Layout(SUPERBLOCK_FIELDS)


def parse_superblock(raw: bytes) -> dict:
    """The superblock fields of a 1024-byte superblock as a dict (``s_backup_bgs`` is a tuple)."""
    values = list(_SUPERBLOCK.struct.unpack_from(raw, 0))
    out = {}
    for name in _SUPERBLOCK.names:
        if name == "s_backup_bgs":
            out[name] = (values.pop(0), values.pop(0))
        else:
            out[name] = values.pop(0)
    return out


def group_desc_dtype(desc_size: int) -> np.dtype:
    """numpy dtype of one group descriptor record of ``desc_size`` bytes."""
    fields = GROUP_DESC_FIELDS + (GROUP_DESC_FIELDS_64 if desc_size >= GROUP_DESC_MIN_SIZE_64BIT else ())
    np_fmt = {"I": "<u4", "H": "<u2"}
    return np.dtype(
        {
            "names": [f.name for f in fields],
            "formats": [np_fmt[f.fmt] for f in fields],
            "offsets": [f.offset for f in fields],
            "itemsize": desc_size,
        }
    )
