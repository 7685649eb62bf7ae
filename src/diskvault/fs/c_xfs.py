"""On-disk structures of XFS (names as in the kernel's fs/xfs/libxfs/xfs_format.h and
xfs_log_format.h). Every field is BIG-endian except the CRCs, which are stored little-endian.

Only declarations live here; the logic that interprets them is in ``diskvault.fs.xfs``.
Each field is ``(offset, name, format)`` with a ``struct`` format character (``16s`` = bytes).
"""

from __future__ import annotations

from diskvault.fs.cstruct import Field, Layout


BBSIZE = 512  # a "basic block": the unit of xfs_daddr_t and of the log
XFS_SB_MAGIC = 0x58465342  # 'XFSB'
XFS_AGF_MAGIC = 0x58414746  # 'XAGF'
XFS_AGF_VERSION = 1
XFS_ABTB_MAGIC = 0x41425442  # 'ABTB': by-block-number free-space btree block, v4
XFS_ABTB_CRC_MAGIC = 0x41423342  # 'AB3B': the same with the v5 (CRC) block header
XFS_BTREE_MAXLEVELS = 9  # deeper than any free-space btree of a 2^31-block AG
XFS_MIN_AG_BLOCKS = 64  # smallest AG mkfs/the kernel accept
XFS_MAX_AG_BLOCKS = (1 << 31) - 1  # agblocks is an xfs_agblock_t < 2^31


# struct xfs_dsb: the primary superblock, sector 0 of AG 0 (the part diskvault reads)
SUPERBLOCK_FIELDS: tuple[Field, ...] = (
    Field(0, "sb_magicnum", "I"),  # XFS_SB_MAGIC
    Field(4, "sb_blocksize", "I"),  # filesystem block size, bytes
    Field(8, "sb_dblocks", "Q"),  # blocks in the data device
    Field(16, "sb_rblocks", "Q"),  # blocks in the realtime device
    Field(24, "sb_rextents", "Q"),  # realtime extents
    Field(32, "sb_uuid", "16s"),  # user-visible filesystem uuid
    Field(48, "sb_logstart", "Q"),  # first log block (an xfs_fsblock_t: agno << agblklog | agbno); 0 = external log
    Field(56, "sb_rootino", "Q"),  # root directory inode
    Field(64, "sb_rbmino", "Q"),  # realtime bitmap inode
    Field(72, "sb_rsumino", "Q"),  # realtime summary inode
    Field(80, "sb_rextsize", "I"),  # realtime extent size, blocks
    Field(84, "sb_agblocks", "I"),  # blocks per allocation group (the last AG may be shorter)
    Field(88, "sb_agcount", "I"),  # number of allocation groups
    Field(92, "sb_rbmblocks", "I"),  # realtime bitmap blocks
    Field(96, "sb_logblocks", "I"),  # blocks of the internal log
    Field(100, "sb_versionnum", "H"),  # low 4 bits: 4 or 5; v4 feature bits above
    Field(102, "sb_sectsize", "H"),  # sector size, bytes
    Field(104, "sb_inodesize", "H"),  # inode size, bytes
    Field(106, "sb_inopblock", "H"),  # inodes per block
    Field(108, "sb_fname", "12s"),  # volume label, NUL padded
    Field(120, "sb_blocklog", "B"),  # log2(sb_blocksize)
    Field(121, "sb_sectlog", "B"),  # log2(sb_sectsize)
    Field(122, "sb_inodelog", "B"),  # log2(sb_inodesize)
    Field(123, "sb_inopblog", "B"),  # log2(sb_inopblock)
    Field(124, "sb_agblklog", "B"),  # log2(sb_agblocks) rounded up: the agbno width in an fsblock number
    Field(125, "sb_rextslog", "B"),  # log2(sb_rextents)
    Field(126, "sb_inprogress", "B"),  # non-zero while mkfs runs
    Field(127, "sb_imax_pct", "B"),  # max % of space for inodes
    Field(128, "sb_icount", "Q"),  # allocated inodes
    Field(136, "sb_ifree", "Q"),  # free inodes
    Field(144, "sb_fdblocks", "Q"),  # free data blocks (incl. AGFL and free-space btree blocks; never the log)
    Field(152, "sb_frextents", "Q"),  # free realtime extents
    Field(192, "sb_dirblklog", "B"),  # log2(directory block size / block size)
    Field(193, "sb_logsectlog", "B"),  # log2(log sector size)
    Field(194, "sb_logsectsize", "H"),  # log sector size, bytes (0 = 512)
    Field(196, "sb_logsunit", "I"),  # log stripe unit, bytes
    Field(200, "sb_features2", "I"),  # more v4 feature bits
    Field(208, "sb_features_compat", "I"),  # v5: compatible features
    Field(212, "sb_features_ro_compat", "I"),  # v5: read-only compatible features
    Field(216, "sb_features_incompat", "I"),  # v5: incompatible features
    Field(220, "sb_features_log_incompat", "I"),  # v5: log features needing a new kernel to replay
    Field(224, "sb_crc", "4s"),  # v5: crc32c of the sector (little-endian)
    Field(248, "sb_meta_uuid", "16s"),  # v5 with META_UUID: the uuid stamped into metadata
)
SB_CRC_OFF = 224

XFS_SB_VERSION_NUMBITS = 0x000F
XFS_SB_VERSION_4 = 4
XFS_SB_VERSION_5 = 5  # CRC-enabled metadata
XFS_SB_VERSION_LOGV2BIT = 0x0400  # v4: version 2 log (always on v5)

# sb_features_incompat (v5)
XFS_SB_FEAT_INCOMPAT_FTYPE = 1 << 0  # file type in directory entries
XFS_SB_FEAT_INCOMPAT_SPINODES = 1 << 1  # sparse inode chunks
XFS_SB_FEAT_INCOMPAT_META_UUID = 1 << 2  # metadata is stamped with sb_meta_uuid
XFS_SB_FEAT_INCOMPAT_BIGTIME = 1 << 3  # timestamps beyond 2038
XFS_SB_FEAT_INCOMPAT_NEEDSREPAIR = 1 << 4  # xfs_repair must run before mounting
XFS_SB_FEAT_INCOMPAT_NREXT64 = 1 << 5  # 64-bit extent counters
XFS_SB_FEAT_INCOMPAT_EXCHRANGE = 1 << 6  # file range exchange
XFS_SB_FEAT_INCOMPAT_PARENT = 1 << 7  # parent pointers
XFS_SB_FEAT_INCOMPAT_METADIR = 1 << 8  # metadata directory tree
# Features whose data-device free-space accounting (AGF + by-bno btree) diskvault understands.
# Anything else (zoned/internal realtime sections, future bits) is refused.
XFS_SB_FEAT_INCOMPAT_KNOWN = (
    XFS_SB_FEAT_INCOMPAT_FTYPE | XFS_SB_FEAT_INCOMPAT_SPINODES | XFS_SB_FEAT_INCOMPAT_META_UUID
    | XFS_SB_FEAT_INCOMPAT_BIGTIME | XFS_SB_FEAT_INCOMPAT_NREXT64 | XFS_SB_FEAT_INCOMPAT_EXCHRANGE
    | XFS_SB_FEAT_INCOMPAT_PARENT | XFS_SB_FEAT_INCOMPAT_METADIR
)

# struct xfs_agf: the free-space header, sector 1 of every AG
AGF_FIELDS: tuple[Field, ...] = (
    Field(0, "agf_magicnum", "I"),  # XFS_AGF_MAGIC
    Field(4, "agf_versionnum", "I"),  # XFS_AGF_VERSION
    Field(8, "agf_seqno", "I"),  # AG number
    Field(12, "agf_length", "I"),  # blocks in this AG
    Field(16, "agf_bno_root", "I"),  # agf_roots[XFS_BTNUM_BNO]: by-block-number btree root (agbno)
    Field(20, "agf_cnt_root", "I"),  # agf_roots[XFS_BTNUM_CNT]: by-size btree root
    Field(24, "agf_rmap_root", "I"),  # agf_roots[XFS_BTNUM_RMAP]: reverse-mapping btree root
    Field(28, "agf_bno_level", "I"),  # agf_levels[XFS_BTNUM_BNO]: levels of the by-bno btree
    Field(32, "agf_cnt_level", "I"),  # agf_levels[XFS_BTNUM_CNT]
    Field(36, "agf_rmap_level", "I"),  # agf_levels[XFS_BTNUM_RMAP]
    Field(40, "agf_flfirst", "I"),  # first AGFL slot in use
    Field(44, "agf_fllast", "I"),  # last AGFL slot in use
    Field(48, "agf_flcount", "I"),  # blocks on the AGFL (reserved for the free-space btrees: in use)
    Field(52, "agf_freeblks", "I"),  # free blocks: the sum of the free-space btree records
    Field(56, "agf_longest", "I"),  # longest free extent
    Field(60, "agf_btreeblks", "I"),  # blocks held by the AGF btrees beyond their roots
    Field(64, "agf_uuid", "16s"),  # v5: sb_meta_uuid
    Field(216, "agf_crc", "4s"),  # v5: crc32c of the sector (little-endian)
)
AGF_CRC_OFF = 216

# struct xfs_btree_block with short (AG-relative, 32-bit) pointers
BTREE_SBLOCK_FIELDS: tuple[Field, ...] = (
    Field(0, "bb_magic", "I"),  # XFS_ABTB_MAGIC / XFS_ABTB_CRC_MAGIC
    Field(4, "bb_level", "H"),  # 0 = leaf
    Field(6, "bb_numrecs", "H"),  # records (leaf) or keys/pointers (node) in this block
    Field(8, "bb_leftsib", "I"),  # left sibling agbno (NULLAGBLOCK = none)
    Field(12, "bb_rightsib", "I"),  # right sibling agbno
)
BTREE_SBLOCK_LEN = 16  # XFS_BTREE_SBLOCK_LEN: the v4 header
BTREE_SBLOCK_CRC_FIELDS: tuple[Field, ...] = BTREE_SBLOCK_FIELDS + (
    Field(16, "bb_blkno", "Q"),  # daddr of this block (512-byte units from the device start)
    Field(24, "bb_lsn", "Q"),  # last write sequence
    Field(32, "bb_uuid", "16s"),  # sb_meta_uuid
    Field(48, "bb_owner", "I"),  # AG number
    Field(52, "bb_crc", "4s"),  # crc32c of the block (little-endian)
)
BTREE_SBLOCK_CRC_LEN = 56  # XFS_BTREE_SBLOCK_CRC_LEN: the v5 header
BTREE_CRC_OFF = 52
# leaf: xfs_alloc_rec_t {__be32 ar_startblock; __be32 ar_blockcount} (agbno, length)
# node: xfs_alloc_key_t (same 8 bytes) keys, then __be32 agbno pointers after maxrecs keys
ALLOC_REC_SIZE = 8
ALLOC_KEY_SIZE = 8
ALLOC_PTR_SIZE = 4

# struct xlog_rec_header: starts every log record, on a 512-byte boundary of the log
XLOG_HEADER_MAGIC_NUM = 0xFEEDBABE  # never a cycle number: tells header blocks from stamped data
LOG_REC_FIELDS: tuple[Field, ...] = (
    Field(0, "h_magicno", "I"),  # XLOG_HEADER_MAGIC_NUM
    Field(4, "h_cycle", "I"),  # write cycle of the log (each pass around the log adds one)
    Field(8, "h_version", "I"),  # 1 or 2 (v2: large records, log stripe unit)
    Field(12, "h_len", "I"),  # bytes of record data after the header blocks
    Field(16, "h_lsn", "Q"),  # lsn of this record: cycle << 32 | basic block in the log
    Field(24, "h_tail_lsn", "Q"),  # lsn of the oldest record still needed
    Field(32, "h_crc", "4s"),  # crc32c of header + data (little-endian)
    Field(36, "h_prev_block", "I"),  # block of the previous record
    Field(40, "h_num_logops", "I"),  # log operations in this record
    Field(300, "h_fmt", "I"),  # XLOG_FMT_*
    Field(304, "h_fs_uuid", "16s"),  # sb_uuid of the filesystem
    Field(320, "h_size", "I"),  # v2: in-core log buffer size (sets the number of header blocks)
)
LOG_CRC_OFF = 32
# bytes of the header covered by h_crc: offsetofend(h_pad0) on 64-bit hosts, (h_size) on i386
XLOG_REC_SIZES = (328, 324)
XLOG_HEADER_CYCLE_SIZE = 32 * 1024  # data bytes whose cycle words one header block holds
XLOG_MAX_RECORD_BSIZE = 256 * 1024  # largest in-core log buffer
XLOG_MAX_ICLOGS = 8  # in-core log buffers that can be in flight at once
XLOG_BIG_RECORD_BSIZE = 32 * 1024  # largest in-core log buffer of a version 1 log
XLOG_VERSION_2 = 2
XLOG_REC_EXT_SIZE = 260  # bytes of an extended header block covered by h_crc (xh_cycle + cycle data)
# struct xlog_op_header: {__be32 oh_tid; __be32 oh_len; __u8 oh_clientid; __u8 oh_flags; __u16 oh_res2}
OP_CLIENTID_OFF = 8
OP_FLAGS_OFF = 9
XFS_LOG = 0xAA  # oh_clientid of log-internal operations (the unmount record)
XLOG_UNMOUNT_TRANS = 0x20  # oh_flags of the record written by a clean unmount


_PARSERS = {
    name: Layout(fields, byte_order=">")
    for name, fields in (
        ("sb", SUPERBLOCK_FIELDS),
        ("agf", AGF_FIELDS),
        ("bt", BTREE_SBLOCK_FIELDS),
        ("bt_crc", BTREE_SBLOCK_CRC_FIELDS),
        ("log", LOG_REC_FIELDS),
    )
}
SUPERBLOCK_SIZE = _PARSERS["sb"].size
AGF_SIZE = _PARSERS["agf"].size
LOG_REC_SIZE = _PARSERS["log"].size


def parse(kind: str, raw: bytes, offset: int = 0) -> dict:
    """Fields of structure ``kind`` ("sb", "agf", "bt", "bt_crc", "log") at ``offset`` of ``raw``."""
    return _PARSERS[kind].parse(raw, offset)
