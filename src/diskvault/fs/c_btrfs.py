"""On-disk structures of btrfs (names as in the kernel's include/uapi/linux/btrfs_tree.h), little-endian.

Only declarations live here; the logic that interprets them is in ``diskvault.fs.btrfs``.
Each field is ``(offset, name, format)`` with a ``struct`` format character (``16s`` = bytes).
Tree items are parsed with the numpy record dtypes at the end (many items per leaf).
"""

from __future__ import annotations

import struct

import numpy as np

from diskvault.fs.cstruct import Field, Layout

SUPER_INFO_OFFSET = 0x10000  # BTRFS_SUPER_INFO_OFFSET: the primary superblock is 64 KiB in
SUPER_INFO_SIZE = 4096  # BTRFS_SUPER_INFO_SIZE
SUPER_MIRROR_MAX = 3  # primary + two copies
SUPER_MIRROR_SHIFT = 12  # btrfs_sb_offset(i) = 16 KiB << (12 * i) for i > 0: 64 MiB, 256 GiB
MAGIC = b"_BHRfS_M"  # BTRFS_MAGIC, 8 bytes at offset 0x40 of the superblock
MAGIC_OFFSET = 0x40
DEVICE_RANGE_RESERVED = 1 << 20  # BTRFS_DEVICE_RANGE_RESERVED: chunks never start below 1 MiB
CSUM_SIZE = 32  # BTRFS_CSUM_SIZE: room for the checksum at the start of superblock and nodes
SYSTEM_CHUNK_ARRAY_SIZE = 2048  # BTRFS_SYSTEM_CHUNK_ARRAY_SIZE
MAX_LEVEL = 8  # BTRFS_MAX_LEVEL: tree levels are 0..7
LABEL_SIZE = 256  # BTRFS_LABEL_SIZE


def sb_offset(mirror: int) -> int:
    """btrfs_sb_offset(): byte offset of superblock copy ``mirror`` (0, 1, 2)."""
    return (16384 << (SUPER_MIRROR_SHIFT * mirror)) if mirror else SUPER_INFO_OFFSET


# struct btrfs_super_block (4096 bytes); the embedded struct btrfs_dev_item starts at 0xC9
SUPERBLOCK_FIELDS: tuple[Field, ...] = (
    Field(0x000, "csum", "32s"),  # checksum of everything after this field
    Field(0x020, "fsid", "16s"),  # filesystem uuid (what blkid shows as UUID)
    Field(0x030, "bytenr", "Q"),  # physical address of this copy
    Field(0x038, "flags", "Q"),  # BTRFS_SUPER_FLAG_*
    Field(0x040, "magic", "8s"),  # "_BHRfS_M"
    Field(0x048, "generation", "Q"),  # transaction id of this commit
    Field(0x050, "root", "Q"),  # logical address of the root tree root
    Field(0x058, "chunk_root", "Q"),  # logical address of the chunk tree root
    Field(0x060, "log_root", "Q"),  # logical address of the log tree root (0: no log)
    Field(0x068, "log_root_transid", "Q"),  # deprecated
    Field(0x070, "total_bytes", "Q"),  # size of the whole filesystem (all devices)
    Field(0x078, "bytes_used", "Q"),  # logical bytes used (each extent once, whatever its profile)
    Field(0x080, "root_dir_objectid", "Q"),  # usually 6
    Field(0x088, "num_devices", "Q"),  # devices in the filesystem
    Field(0x090, "sectorsize", "I"),  # smallest allocation unit
    Field(0x094, "nodesize", "I"),  # tree block size
    Field(0x098, "leafsize", "I"),  # deprecated, == nodesize
    Field(0x09C, "stripesize", "I"),  # unused
    Field(0x0A0, "sys_chunk_array_size", "I"),  # bytes used in sys_chunk_array
    Field(0x0A4, "chunk_root_generation", "Q"),  # generation of the chunk tree root
    Field(0x0AC, "compat_flags", "Q"),  # compatible features
    Field(0x0B4, "compat_ro_flags", "Q"),  # read-only compatible features
    Field(0x0BC, "incompat_flags", "Q"),  # incompatible features
    Field(0x0C4, "csum_type", "H"),  # BTRFS_CSUM_TYPE_*
    Field(0x0C6, "root_level", "B"),  # level of the root tree root
    Field(0x0C7, "chunk_root_level", "B"),  # level of the chunk tree root
    Field(0x0C8, "log_root_level", "B"),  # level of the log tree root
    # struct btrfs_dev_item of this device (98 bytes)
    Field(0x0C9, "dev_item_devid", "Q"),  # device id inside the filesystem
    Field(0x0D1, "dev_item_total_bytes", "Q"),  # size of this device
    Field(0x0D9, "dev_item_bytes_used", "Q"),  # bytes allocated to chunks on this device
    Field(0x0E1, "dev_item_io_align", "I"),
    Field(0x0E5, "dev_item_io_width", "I"),
    Field(0x0E9, "dev_item_sector_size", "I"),
    Field(0x0ED, "dev_item_type", "Q"),
    Field(0x0F5, "dev_item_generation", "Q"),
    Field(0x0FD, "dev_item_start_offset", "Q"),
    Field(0x105, "dev_item_dev_group", "I"),
    Field(0x109, "dev_item_seek_speed", "B"),
    Field(0x10A, "dev_item_bandwidth", "B"),
    Field(0x10B, "dev_item_uuid", "16s"),  # device uuid (blkid's UUID_SUB)
    Field(0x11B, "dev_item_fsid", "16s"),  # metadata uuid of the filesystem this device belongs to
    # end of the dev item
    Field(0x12B, "label", "256s"),  # NUL padded
    Field(0x22B, "cache_generation", "Q"),  # space cache v1 generation
    Field(0x233, "uuid_tree_generation", "Q"),
    Field(0x23B, "metadata_uuid", "16s"),  # fsid stamped in tree block headers (METADATA_UUID)
    Field(0x32B, "sys_chunk_array", "2048s"),  # (disk key, chunk item) pairs of the SYSTEM chunks
    Field(0xB2B, "super_roots", "672s"),  # 4 x struct btrfs_root_backup (168 bytes)
)

# super flags
SUPER_FLAG_ERROR = 1 << 2  # the kernel hit an error and forced read-only
SUPER_FLAG_SEEDING = 1 << 32
SUPER_FLAG_METADUMP = 1 << 33  # a btrfs-image metadata dump: no file data
SUPER_FLAG_METADUMP_V2 = 1 << 34
SUPER_FLAG_CHANGING_FSID = 1 << 35  # btrfstune -u interrupted: headers hold mixed fsids
SUPER_FLAG_CHANGING_FSID_V2 = 1 << 36
SUPER_FLAG_CHANGING_BG_TREE = 1 << 38  # btrfstune --convert-to-block-group-tree interrupted
SUPER_FLAG_CHANGING_DATA_CSUM = 1 << 39
SUPER_FLAG_CHANGING_META_CSUM = 1 << 40
SUPER_FLAGS_UNSAFE = (
    SUPER_FLAG_CHANGING_FSID
    | SUPER_FLAG_CHANGING_FSID_V2
    | SUPER_FLAG_CHANGING_BG_TREE
    | SUPER_FLAG_CHANGING_DATA_CSUM
    | SUPER_FLAG_CHANGING_META_CSUM
)

# csum_type
CSUM_TYPE_CRC32 = 0  # crc32c (Castagnoli), 4 bytes
CSUM_TYPE_XXHASH = 1  # xxhash64, 8 bytes
CSUM_TYPE_SHA256 = 2  # sha256, 32 bytes
CSUM_TYPE_BLAKE2 = 3  # blake2b-256, 32 bytes
CSUM_NAMES = {0: "crc32c", 1: "xxhash64", 2: "sha256", 3: "blake2b"}

# incompat_flags
INCOMPAT_MIXED_BACKREF = 1 << 0
INCOMPAT_DEFAULT_SUBVOL = 1 << 1
INCOMPAT_MIXED_GROUPS = 1 << 2  # data and metadata share block groups (mkfs --mixed)
INCOMPAT_COMPRESS_LZO = 1 << 3
INCOMPAT_COMPRESS_ZSTD = 1 << 4
INCOMPAT_BIG_METADATA = 1 << 5  # nodesize > 4 KiB
INCOMPAT_EXTENDED_IREF = 1 << 6
INCOMPAT_RAID56 = 1 << 7
INCOMPAT_SKINNY_METADATA = 1 << 8  # tree blocks as METADATA_ITEM keys
INCOMPAT_NO_HOLES = 1 << 9
INCOMPAT_METADATA_UUID = 1 << 10  # headers carry metadata_uuid instead of fsid
INCOMPAT_RAID1C34 = 1 << 11
INCOMPAT_ZONED = 1 << 12
INCOMPAT_EXTENT_TREE_V2 = 1 << 13
INCOMPAT_RAID_STRIPE_TREE = 1 << 14
INCOMPAT_SIMPLE_QUOTA = 1 << 16
# what this reader understands; the others change where used space is recorded
INCOMPAT_UNSUPPORTED = {
    INCOMPAT_ZONED: "zoned",
    INCOMPAT_EXTENT_TREE_V2: "extent-tree-v2",
    INCOMPAT_RAID_STRIPE_TREE: "raid-stripe-tree",
}
INCOMPAT_KNOWN = (1 << 17) - 1 & ~(1 << 15)

# struct btrfs_header: at the start of every tree block (101 bytes)
HEADER_FIELDS: tuple[Field, ...] = (
    Field(0x00, "csum", "32s"),  # checksum of the block after this field
    Field(0x20, "fsid", "16s"),  # metadata uuid of the filesystem
    Field(0x30, "bytenr", "Q"),  # logical address of this block
    Field(0x38, "flags", "Q"),  # BTRFS_HEADER_FLAG_* and the backref revision in the top byte
    Field(0x40, "chunk_tree_uuid", "16s"),
    Field(0x50, "generation", "Q"),  # transaction that wrote the block
    Field(0x58, "owner", "Q"),  # objectid of the tree owning the block
    Field(0x60, "nritems", "I"),  # items (leaf) or key pointers (node)
    Field(0x64, "level", "B"),  # 0 = leaf
)
HEADER_SIZE = 0x65

# struct btrfs_disk_key (17 bytes) + struct btrfs_item (leaf item: key, data offset, data size)
ITEM_DTYPE = np.dtype(
    {
        "names": ["objectid", "type", "offset", "data_offset", "data_size"],
        "formats": ["<u8", "u1", "<u8", "<u4", "<u4"],
        "offsets": [0, 8, 9, 17, 21],  # data_offset is from the end of the header
        "itemsize": 25,
    }
)
# struct btrfs_key_ptr (node entry: key, child block, child generation)
KEY_PTR_DTYPE = np.dtype(
    {
        "names": ["objectid", "type", "offset", "blockptr", "generation"],
        "formats": ["<u8", "u1", "<u8", "<u8", "<u8"],
        "offsets": [0, 8, 9, 17, 25],
        "itemsize": 33,
    }
)
DISK_KEY = struct.Struct("<QBQ")  # objectid, type, offset

# struct btrfs_chunk (48 bytes, then num_stripes x struct btrfs_stripe)
CHUNK_FIELDS: tuple[Field, ...] = (
    Field(0x00, "length", "Q"),  # logical length of the chunk
    Field(0x08, "owner", "Q"),  # objectid of the root referencing it (extent root, 2)
    Field(0x10, "stripe_len", "Q"),  # RAID stripe unit (64 KiB)
    Field(0x18, "type", "Q"),  # BLOCK_GROUP_* flags
    Field(0x20, "io_align", "I"),
    Field(0x24, "io_width", "I"),
    Field(0x28, "sector_size", "I"),
    Field(0x2C, "num_stripes", "H"),  # copies/stripes (2 for DUP)
    Field(0x2E, "sub_stripes", "H"),  # RAID10 only
)
CHUNK_SIZE = 0x30
STRIPE = struct.Struct("<QQ16s")  # struct btrfs_stripe: devid, physical offset, dev_uuid

# struct btrfs_root_item: only the fields naming the tree root block
ROOT_ITEM_GENERATION = 160  # after the 160-byte struct btrfs_inode_item
ROOT_ITEM_BYTENR = 176  # logical address of the tree's root block
ROOT_ITEM_LEVEL = 238  # level of that block
ROOT_ITEM_MIN_SIZE = 239

# key types
INODE_ITEM_KEY = 1
ROOT_ITEM_KEY = 132
EXTENT_ITEM_KEY = 168  # (bytenr, EXTENT_ITEM, num_bytes): data extent / non-skinny tree block
METADATA_ITEM_KEY = 169  # (bytenr, METADATA_ITEM, level): skinny tree block, nodesize bytes
BLOCK_GROUP_ITEM_KEY = 192
DEV_EXTENT_KEY = 204
DEV_ITEM_KEY = 216
CHUNK_ITEM_KEY = 228

# objectids
ROOT_TREE_OBJECTID = 1
EXTENT_TREE_OBJECTID = 2
CHUNK_TREE_OBJECTID = 3
FIRST_CHUNK_TREE_OBJECTID = 256

# block group / chunk type flags
BLOCK_GROUP_DATA = 1 << 0
BLOCK_GROUP_SYSTEM = 1 << 1
BLOCK_GROUP_METADATA = 1 << 2
BLOCK_GROUP_RAID0 = 1 << 3
BLOCK_GROUP_RAID1 = 1 << 4
BLOCK_GROUP_DUP = 1 << 5
BLOCK_GROUP_RAID10 = 1 << 6
BLOCK_GROUP_RAID5 = 1 << 7
BLOCK_GROUP_RAID6 = 1 << 8
BLOCK_GROUP_RAID1C3 = 1 << 9
BLOCK_GROUP_RAID1C4 = 1 << 10
BLOCK_GROUP_TYPE_MASK = BLOCK_GROUP_DATA | BLOCK_GROUP_SYSTEM | BLOCK_GROUP_METADATA
PROFILE_NAMES = {
    BLOCK_GROUP_RAID0: "RAID0",
    BLOCK_GROUP_RAID1: "RAID1",
    BLOCK_GROUP_DUP: "DUP",
    BLOCK_GROUP_RAID10: "RAID10",
    BLOCK_GROUP_RAID5: "RAID5",
    BLOCK_GROUP_RAID6: "RAID6",
    BLOCK_GROUP_RAID1C3: "RAID1C3",
    BLOCK_GROUP_RAID1C4: "RAID1C4",
}
PROFILE_MASK = sum(PROFILE_NAMES)


_SUPERBLOCK = Layout(SUPERBLOCK_FIELDS)
_HEADER = Layout(HEADER_FIELDS)
_CHUNK = Layout(CHUNK_FIELDS)


def parse_superblock(raw: bytes) -> dict:
    return _SUPERBLOCK.parse(raw)


def parse_header(raw: bytes) -> dict:
    return _HEADER.parse(raw)


def parse_chunk(raw: bytes, offset: int = 0) -> dict:
    return _CHUNK.parse(raw, offset)
