"""XFS reader: superblock facts, a clean-log check, and the used blocks.

Used blocks are the whole data device minus the free space each allocation group's
by-block-number free-space B+tree (bnobt) records, cross-checked against the AGF's free count.
Everything the bnobt does not list stays used: AG headers, inodes, file data, the btrees
themselves, the AGFL reserve blocks and the internal log.

The free-space trees describe the filesystem only as of the last log checkpoint written back;
a log that still holds changes (crash, shutdown, still mounted) may have allocated more. So the
log is read first, the way log recovery finds its head: the per-512-byte cycle stamps locate the
head, and the log is clean only when the record just before the head is the unmount record.
Anything irregular near the head counts as dirty, which images every block (never too few).

``used_bytes`` is ``(sb_dblocks - sb_fdblocks) * blocksize``: everything the counters do not
call free, *including the internal log* (df leaves the log out of both size and used, and also
hides the AG reservations, so df's Used is smaller by about the log size). sb_fdblocks counts AGFL
and free-space btree blocks as free, so the bytes imaged exceed used_bytes by those few blocks.
The structures are declared in ``c_xfs``.
"""

from __future__ import annotations

import struct
from functools import lru_cache
from typing import BinaryIO, ClassVar

import numpy as np

from diskvault.errors import FilesystemError
from diskvault.fs import c_xfs as C
from diskvault.fs.base import FsInfo
from diskvault.fs.extents import EMPTY, complement

DIRTY_LOG = (
    "XFS log is dirty: mount and unmount the filesystem, or run xfs_repair, before imaging "
    "(or use --forensic)"
)
LOG_WINDOW_BB = C.XLOG_MAX_ICLOGS * C.XLOG_MAX_RECORD_BSIZE // C.BBSIZE  # writes in flight at a crash


def _read_at(fh: BinaryIO, offset: int, length: int) -> bytes:
    pread = getattr(fh, "pread", None)
    if pread is not None:
        return pread(offset, length)
    fh.seek(offset)
    return fh.read(length) or b""


def _bad(what: str) -> FilesystemError:
    return FilesystemError(f"XFS superblock is not sane: {what}")


# ----------------------------------------------------------------------------- crc32c

_CRC_CHUNK = 512


@lru_cache(maxsize=1)
def _crc_tables() -> tuple[list[int], np.ndarray, list[list[int]]]:
    """Byte table, per-position contributions within a 512-byte chunk, and the shift of a
    register through 512 zero bytes (one table per register byte). CRC is linear, so a chunk's
    effect is the XOR of its bytes' contributions: numpy does a block in a few operations."""
    t = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        t = np.where(t & 1, (t >> np.uint32(1)) ^ np.uint32(0x82F63B78), t >> np.uint32(1))

    def step(reg: np.ndarray) -> np.ndarray:  # one zero byte through the register
        return (reg >> np.uint32(8)) ^ t[reg & np.uint32(0xFF)]

    pos = np.empty((_CRC_CHUNK, 256), dtype=np.uint32)
    cur = t.copy()
    for p in range(_CRC_CHUNK - 1, -1, -1):
        pos[p] = cur
        cur = step(cur)
    shift = np.arange(256, dtype=np.uint32)[None, :] << (np.uint32(8) * np.arange(4, dtype=np.uint32))[:, None]
    for _ in range(_CRC_CHUNK):
        shift = step(shift)
    return t.tolist(), pos, shift.tolist()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as XFS stores it (little-endian) in its metadata."""
    table, pos, (s0, s1, s2, s3) = _crc_tables()
    n = len(data) // _CRC_CHUNK * _CRC_CHUNK
    reg = 0xFFFFFFFF
    if n:
        chunks = np.frombuffer(data, dtype=np.uint8, count=n).reshape(-1, _CRC_CHUNK)
        contrib = np.bitwise_xor.reduce(pos[np.arange(_CRC_CHUNK), chunks], axis=1)
        for c in contrib.tolist():
            reg = s0[reg & 255] ^ s1[(reg >> 8) & 255] ^ s2[(reg >> 16) & 255] ^ s3[reg >> 24] ^ c
    for b in data[n:]:
        reg = (reg >> 8) ^ table[(reg ^ b) & 0xFF]
    return reg ^ 0xFFFFFFFF


def _crc_ok(buf: bytes, off: int, length: int | None = None) -> bool:
    """The little-endian crc32c at ``off`` matches ``buf[:length]`` with that field zeroed."""
    end = len(buf) if length is None else length
    want = buf[off : off + 4]
    return struct.pack("<I", crc32c(buf[:off] + bytes(4) + buf[off + 4 : end])) == want


def _uuid_str(raw: bytes) -> str:
    u = raw.hex()
    return f"{u[:8]}-{u[8:12]}-{u[12:16]}-{u[16:20]}-{u[20:]}"


class XfsReader:
    """An XFS filesystem opened read-only; see the module docstring."""

    name: ClassVar[str] = "xfs"

    @classmethod
    def probe(cls, fh: BinaryIO, size: int) -> bool:
        if size < C.BBSIZE:
            return False
        raw = _read_at(fh, 0, C.BBSIZE)
        if len(raw) < C.BBSIZE:
            return False
        sb = C.parse("sb", raw)
        bs = sb["sb_blocksize"]
        return (
            sb["sb_magicnum"] == C.XFS_SB_MAGIC
            and 512 <= bs <= 65536
            and bs & (bs - 1) == 0
            and sb["sb_agcount"] > 0
            and sb["sb_agblocks"] > 0
            and sb["sb_dblocks"] > 0
        )

    def __init__(self, fh: BinaryIO, size: int) -> None:
        self._fh, self._size = fh, size
        raw = _read_at(fh, 0, C.BBSIZE)
        if len(raw) < C.BBSIZE:
            raise FilesystemError("XFS superblock is truncated (the partition is too small)")
        sb = self.sb = C.parse("sb", raw)
        if sb["sb_magicnum"] != C.XFS_SB_MAGIC:
            raise FilesystemError("no XFS superblock (bad magic)")
        self._extents: np.ndarray | None = None
        self._note = ""
        # why used_extents() cannot trust the free-space trees (info() still works); "" when it can
        self.unsupported = ""
        self._check_superblock()
        if not self.unsupported:
            self.unsupported = self._log_state()

    # ----------------------------------------------------------------- superblock

    def _check_superblock(self) -> None:
        sb = self.sb
        self.version = sb["sb_versionnum"] & C.XFS_SB_VERSION_NUMBITS
        if self.version not in (C.XFS_SB_VERSION_4, C.XFS_SB_VERSION_5):
            raise _bad(f"unknown superblock version {self.version}")
        self.v5 = self.version == C.XFS_SB_VERSION_5
        bs, ss = sb["sb_blocksize"], sb["sb_sectsize"]
        if not 512 <= bs <= 65536 or bs & (bs - 1) or 1 << sb["sb_blocklog"] != bs:
            raise _bad(f"block size {bs} (log {sb['sb_blocklog']})")
        if not 512 <= ss <= min(bs, 32768) or ss & (ss - 1) or 1 << sb["sb_sectlog"] != ss:
            raise _bad(f"sector size {ss} (log {sb['sb_sectlog']}) with block size {bs}")
        self.block_size, self.sect_size = bs, ss
        agb, agc, db = sb["sb_agblocks"], sb["sb_agcount"], sb["sb_dblocks"]
        if not C.XFS_MIN_AG_BLOCKS <= agb <= C.XFS_MAX_AG_BLOCKS:
            raise _bad(f"{agb} blocks per allocation group")
        if sb["sb_agblklog"] != (agb - 1).bit_length():
            raise _bad(f"AG block log {sb['sb_agblklog']} does not fit {agb} blocks per AG")
        if agc < 1 or not (agc - 1) * agb < db <= agc * agb:
            raise _bad(f"{agc} allocation groups of {agb} blocks do not make {db} data blocks")
        self.agblocks, self.agcount, self.dblocks = agb, agc, db
        if db * bs > self._size:
            raise FilesystemError(
                f"XFS filesystem claims {db * bs} bytes but the partition has only {self._size}; "
                "imaging every block"
            )
        if sb["sb_fdblocks"] > db:
            raise _bad(f"{sb['sb_fdblocks']} free blocks of {db}")
        if sb["sb_inprogress"]:
            raise FilesystemError("XFS filesystem was never finished by mkfs.xfs (sb_inprogress set)")
        if self.v5:
            raw = _read_at(self._fh, 0, ss)
            if len(raw) != ss or not _crc_ok(raw, C.SB_CRC_OFF):
                raise FilesystemError("XFS superblock checksum mismatch; run xfs_repair")
            incompat = sb["sb_features_incompat"]
            self.meta_uuid = sb["sb_meta_uuid" if incompat & C.XFS_SB_FEAT_INCOMPAT_META_UUID else "sb_uuid"]
            if incompat & C.XFS_SB_FEAT_INCOMPAT_NEEDSREPAIR:
                self.unsupported = "XFS filesystem is marked as needing xfs_repair; imaging every block"
            elif incompat & ~C.XFS_SB_FEAT_INCOMPAT_KNOWN:
                self.unsupported = (
                    f"XFS incompatible features {incompat & ~C.XFS_SB_FEAT_INCOMPAT_KNOWN:#x} are not "
                    "supported; imaging every block"
                )
        if sb["sb_rblocks"]:
            self._note = "note: the XFS realtime device is separate and not part of this image"
        if sb["sb_logstart"] == 0:
            self.unsupported = self.unsupported or (
                "XFS with an external log device: cannot check the log is clean; imaging every block"
            )
            return
        lagno, lagbno = sb["sb_logstart"] >> sb["sb_agblklog"], sb["sb_logstart"] & ((1 << sb["sb_agblklog"]) - 1)
        nlog = sb["sb_logblocks"]
        if lagno >= agc or nlog == 0 or lagbno + nlog > self._ag_length(lagno) or nlog * bs < 64 * C.BBSIZE:
            raise _bad(f"internal log of {nlog} blocks at AG {lagno} block {lagbno}")
        self.log_agno, self.log_agbno, self.log_blocks = lagno, lagbno, nlog

    def _ag_length(self, agno: int) -> int:
        return self.agblocks if agno < self.agcount - 1 else self.dblocks - (self.agcount - 1) * self.agblocks

    # ----------------------------------------------------------------- log

    def _log_state(self) -> str:
        """"" when the internal log ends with an unmount record at its head, else DIRTY_LOG."""
        n = self.log_blocks * self.block_size // C.BBSIZE  # log size in basic blocks
        base = (self.log_agno * self.agblocks + self.log_agbno) * self.block_size

        def read_bb(first: int, count: int) -> bytes:  # ``count`` basic blocks, wrapping around
            parts = []
            while count > 0:
                first %= n
                k = min(count, n - first)
                data = _read_at(self._fh, base + first * C.BBSIZE, k * C.BBSIZE)
                if len(data) != k * C.BBSIZE:
                    raise FilesystemError("cannot read the XFS log")
                parts.append(data)
                first, count = first + k, count - k
            return b"".join(parts)

        def cycles(raw: bytes) -> np.ndarray:  # the cycle stamp of each basic block
            w = np.frombuffer(raw, dtype=">u4").reshape(-1, C.BBSIZE // 4)
            return np.where(w[:, 0] == C.XLOG_HEADER_MAGIC_NUM, w[:, 1], w[:, 0]).astype(np.int64)

        def cycle(bb: int) -> int:
            return int(cycles(read_bb(bb, 1))[0])

        first, last = cycle(0), cycle(n - 1)
        if first == 0:  # a zeroed log: not what mkfs or an unmount leaves
            return DIRTY_LOG
        if first == last:  # the whole log is one pass: the head is at its end (== block 0)
            head = 0
        elif first == last + 1:  # binary search for the first block of the older pass
            lo, hi = 0, n - 1
            mid = (lo + hi) // 2
            while mid not in (lo, hi):
                lo, hi = (lo, mid) if cycle(mid) == last else (mid, hi)
                mid = (lo + hi) // 2
            head = hi
        else:
            return DIRTY_LOG
        # Around the head every stamp must be exact: the current pass before it, the older one
        # after it. Holes or stray stamps are writes in flight at a crash.
        count = min(n, 2 * LOG_WINDOW_BB)
        start = (head - count // 2) % n
        window = read_bb(start, count)
        pos = (start + np.arange(count)) % n
        want = np.where((pos < head) | (first == last), first, last)
        if not np.array_equal(cycles(window), want):
            return DIRTY_LOG

        def at(bb: int) -> int:  # byte offset of log block ``bb`` in ``window``
            return ((bb - start) % n) * C.BBSIZE

        words0 = np.frombuffer(window, dtype=">u4")[:: C.BBSIZE // 4]
        rblk = None
        for back in range(1, min(n, count // 2)):
            bb = (head - back) % n
            if words0[at(bb) // C.BBSIZE] == C.XLOG_HEADER_MAGIC_NUM:
                rblk = bb
                break
        if rblk is None:
            return DIRTY_LOG
        rec = C.parse("log", window, at(rblk))
        hblks = 1
        if rec["h_version"] == C.XLOG_VERSION_2 and rec["h_size"] > C.XLOG_HEADER_CYCLE_SIZE:
            hblks = -(-rec["h_size"] // C.XLOG_HEADER_CYCLE_SIZE)
        data_bb = -(-rec["h_len"] // C.BBSIZE)
        if (
            rec["h_version"] not in (1, C.XLOG_VERSION_2)
            or rec["h_lsn"] != (rec["h_cycle"] << 32 | rblk)
            or rec["h_num_logops"] != 1
            or not 0 < rec["h_len"] <= C.XLOG_MAX_RECORD_BSIZE
            or rec["h_size"] > C.XLOG_MAX_RECORD_BSIZE
            or (rblk + hblks + data_bb) % n != head
            or rec["h_fs_uuid"] not in (self.sb["sb_uuid"], bytes(16))
        ):
            return DIRTY_LOG
        op = at((rblk + hblks) % n)
        if window[op + C.OP_CLIENTID_OFF] != C.XFS_LOG or not window[op + C.OP_FLAGS_OFF] & C.XLOG_UNMOUNT_TRANS:
            return DIRTY_LOG
        # CRC-enabled logs: a torn unmount record is not a clean log (mkfs writes h_crc 0, which
        # log recovery accepts on v5 too)
        if self.v5 and rec["h_crc"] != bytes(4):
            header = window[at(rblk) : at(rblk) + C.BBSIZE]
            data = read_bb((rblk + hblks) % n, data_bb)[: rec["h_len"]]
            ext = b"".join(
                window[at((rblk + i) % n) : at((rblk + i) % n) + 260]
                for i in range(1, -(-rec["h_len"] // C.XLOG_HEADER_CYCLE_SIZE))
            )
            if not any(_crc_ok(header[:size] + ext + data, C.LOG_CRC_OFF) for size in C.XLOG_REC_SIZES):
                return DIRTY_LOG
        return ""

    # ----------------------------------------------------------------- free space

    def _btree_free(self, agno: int, length: int, root: int, levels: int) -> tuple[np.ndarray, np.ndarray]:
        """(records as (N, 2) agbno/length, agbnos of the tree's own blocks) of AG ``agno``'s bnobt."""
        bs = self.block_size
        hdr, magic = (C.BTREE_SBLOCK_CRC_LEN, C.XFS_ABTB_CRC_MAGIC) if self.v5 else (C.BTREE_SBLOCK_LEN, C.XFS_ABTB_MAGIC)
        leaf_max = (bs - hdr) // C.ALLOC_REC_SIZE
        node_max = (bs - hdr) // (C.ALLOC_KEY_SIZE + C.ALLOC_PTR_SIZE)
        ag0 = agno * self.agblocks
        level_blocks, seen, leaves = [root], set(), []
        for level in range(levels - 1, -1, -1):
            children: list[int] = []
            for agbno in level_blocks:
                where = f"XFS free-space btree block {agbno} of AG {agno}"
                if agbno in seen or not self._ag_hdr_blocks <= agbno < length:
                    raise FilesystemError(f"{where} is out of range or revisited; run xfs_repair")
                seen.add(agbno)
                raw = _read_at(self._fh, (ag0 + agbno) * bs, bs)
                if len(raw) != bs:
                    raise FilesystemError(f"cannot read {where}")
                h = C.parse("bt_crc" if self.v5 else "bt", raw)
                n = h["bb_numrecs"]
                if h["bb_magic"] != magic or h["bb_level"] != level:
                    raise FilesystemError(f"{where} has a bad magic or level; run xfs_repair")
                if n > (node_max if level else leaf_max) or (n == 0 and levels > 1):
                    raise FilesystemError(f"{where} holds {n} records; run xfs_repair")
                if self.v5 and (
                    h["bb_blkno"] != (ag0 + agbno) * (bs // C.BBSIZE)
                    or h["bb_uuid"] != self.meta_uuid
                    or h["bb_owner"] != agno
                    or not _crc_ok(raw, C.BTREE_CRC_OFF)
                ):
                    raise FilesystemError(f"{where} fails its self-check (location, owner, uuid or crc)")
                if level:
                    off = hdr + node_max * C.ALLOC_KEY_SIZE
                    children.extend(np.frombuffer(raw, dtype=">u4", count=n, offset=off).tolist())
                else:
                    leaves.append(np.frombuffer(raw, dtype=">u4", count=2 * n, offset=hdr).reshape(-1, 2))
            level_blocks = children
        recs = np.concatenate(leaves).astype(np.int64) if leaves else np.zeros((0, 2), dtype=np.int64)
        return recs, np.array(sorted(seen), dtype=np.int64)

    def _ag_free(self, agno: int) -> np.ndarray:
        """Free (start, length) byte extents of AG ``agno``, proven by its AGF and bnobt."""
        bs, ss = self.block_size, self.sect_size
        length = self._ag_length(agno)
        ag0 = agno * self.agblocks
        raw = _read_at(self._fh, ag0 * bs + ss, ss)  # the AGF is the AG's second sector
        if len(raw) != ss:
            raise FilesystemError(f"cannot read the XFS AGF of AG {agno}")
        agf = C.parse("agf", raw)
        if (
            agf["agf_magicnum"] != C.XFS_AGF_MAGIC
            or agf["agf_versionnum"] != C.XFS_AGF_VERSION
            or agf["agf_seqno"] != agno
            or agf["agf_length"] != length
        ):
            raise FilesystemError(f"XFS AGF of AG {agno} is corrupt (magic, version, number or length)")
        if self.v5 and (agf["agf_uuid"] != self.meta_uuid or not _crc_ok(raw, C.AGF_CRC_OFF)):
            raise FilesystemError(f"XFS AGF of AG {agno} fails its uuid or crc check; run xfs_repair")
        levels, root, freeblks = agf["agf_bno_level"], agf["agf_bno_root"], agf["agf_freeblks"]
        if not 1 <= levels <= C.XFS_BTREE_MAXLEVELS or freeblks > length:
            raise FilesystemError(f"XFS AGF of AG {agno} is corrupt ({levels} btree levels, {freeblks} free)")
        recs, tree = self._btree_free(agno, length, root, levels)
        starts, counts = recs[:, 0], recs[:, 1]
        ends = starts + counts
        if recs.size and (
            np.any(counts == 0)
            or np.any(starts < self._ag_hdr_blocks)
            or np.any(ends > length)
            or np.any(starts[1:] < ends[:-1])
        ):
            raise FilesystemError(f"XFS free-space records of AG {agno} are out of order or range; run xfs_repair")
        if int(counts.sum()) != freeblks:
            raise FilesystemError(f"XFS free-space btree disagrees with AGF in AG {agno}; run xfs_repair")
        # nothing in use may be listed free: the tree's own blocks, the log
        idx = np.searchsorted(starts, tree, side="right") - 1
        if np.any((idx >= 0) & (tree < ends[np.maximum(idx, 0)])):
            raise FilesystemError(f"XFS free-space btree of AG {agno} lists its own blocks as free")
        if agno == getattr(self, "log_agno", -1) and recs.size:
            lo, hi = self.log_agbno, self.log_agbno + self.log_blocks
            if np.any((starts < hi) & (ends > lo)):
                raise FilesystemError(f"XFS free-space btree of AG {agno} lists log blocks as free")
        out = np.empty((starts.size, 2), dtype=np.uint64)
        out[:, 0] = (starts + ag0).astype(np.uint64) * np.uint64(bs)
        out[:, 1] = counts.astype(np.uint64) * np.uint64(bs)
        return out

    # ----------------------------------------------------------------- protocol

    def used_extents(self) -> np.ndarray:
        if self.unsupported:
            raise FilesystemError(self.unsupported)
        if self._extents is None:
            # the superblock, AGF, AGI and AGFL sectors that open every AG
            self._ag_hdr_blocks = -(-4 * self.sect_size // self.block_size)
            free = [self._ag_free(agno) for agno in range(self.agcount)]
            allfree = np.concatenate(free) if free else EMPTY
            self._extents = complement(allfree, self.dblocks * self.block_size)
        return self._extents.copy()

    def info(self) -> FsInfo:
        note = self.unsupported or self._note
        bs = self.block_size
        label = self.sb["sb_fname"].split(b"\0", 1)[0].decode("utf-8", "replace")
        return FsInfo(
            fstype="xfs",
            size=self.dblocks * bs,
            used_bytes=(self.dblocks - self.sb["sb_fdblocks"]) * bs,
            block_size=bs,
            label=label,
            uuid=_uuid_str(self.sb["sb_uuid"]),
            note=note,
        )
