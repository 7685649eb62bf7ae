"""XFS reader: superblock facts, a clean-log check, and the used blocks.

Used blocks are the whole data device minus the free space each allocation group's
by-block-number free-space B+tree (bnobt) records, cross-checked against the AGF's free count.
Everything the bnobt does not list stays used: AG headers, inodes, file data, the btrees
themselves, the AGFL reserve blocks and the internal log.

The free-space trees are only current when the log holds nothing to replay; after a crash, a
shutdown or while mounted and busy, the log may hold allocations the trees do not show yet. The
log is checked the way log recovery does it (``_Log``): the cycle stamp every 512-byte log block
carries finds the head, the last record before it gives the tail (or the head itself, when that
record is the unmount record), and the log is clean when they meet. Otherwise the reader refuses
and the caller images every block.

``used_bytes`` is ``(sb_dblocks - sb_fdblocks) * blocksize``: what the on-disk counters do not
call free, *including the internal log* (which is imaged). df leaves the log out of both size
and used, so df's Used + the log size is within a few blocks (the in-core set-aside) of
used_bytes. sb_fdblocks counts the AGFL and free-space btree blocks as free; they are read, so
the bytes imaged exceed used_bytes by those few blocks per AG. The structures are in ``c_xfs``.
"""

from __future__ import annotations

import struct
from typing import BinaryIO, ClassVar

import numpy as np

from diskvault.errors import FilesystemError
from diskvault.readat import read_at as _read_at
from diskvault.fs import c_xfs as C
from diskvault.fs.base import FsInfo
from diskvault.fs.crc32c import crc32c
from diskvault.fs.extents import EMPTY, complement

DIRTY_LOG = (
    "XFS log is dirty: mount and unmount the filesystem, or run xfs_repair, before imaging "
    "(or use --forensic)"
)



def _bad(what: str) -> FilesystemError:
    return FilesystemError(f"XFS superblock is not sane: {what}")


def _crc_ok(buf: bytes, off: int) -> bool:
    """The little-endian crc32c at ``off`` matches ``buf`` with that field zeroed."""
    return struct.pack("<I", crc32c(buf[:off] + bytes(4) + buf[off + 4 :])) == buf[off : off + 4]


def _uuid_str(raw: bytes) -> str:
    u = raw.hex()
    return f"{u[:8]}-{u[8:12]}-{u[12:16]}-{u[16:20]}-{u[20:]}"


class _Inconsistent(Exception):
    """The log cannot be interpreted (log recovery would fail): not clean."""


class _Log:
    """An internal log: ``n`` basic blocks at byte ``base``. ``clean()`` follows the rules log
    recovery uses to find the head (the cycle stamps every 512-byte block carries, then backing
    off a record that does not end at the head) and the tail (the last record's tail lsn, or the
    head itself after an unmount record); recovery replays nothing when they meet. Stricter than
    recovery only where that is cheap: the deciding record's crc and a log that is not made of
    one or two consecutive passes count as dirty."""

    def __init__(self, fh: BinaryIO, base: int, n: int, v2: bool, uuid: bytes) -> None:
        self._fh, self._base, self.n, self.v2, self.uuid = fh, base, n, v2, uuid
        rec = C.XLOG_MAX_RECORD_BSIZE if v2 else C.XLOG_BIG_RECORD_BSIZE
        self.rec_scan = rec // C.BBSIZE  # XLOG_REC_SHIFT: one record at most
        self.total_scan = min(n, C.XLOG_MAX_ICLOGS * rec // C.BBSIZE)  # XLOG_TOTAL_REC_SHIFT

    def read(self, first: int, count: int) -> bytes:
        """``count`` basic blocks from ``first``, wrapping around the end of the log."""
        parts = []
        while count > 0:
            first %= self.n
            k = min(count, self.n - first)
            data = _read_at(self._fh, self._base + first * C.BBSIZE, k * C.BBSIZE)
            if len(data) != k * C.BBSIZE:
                raise FilesystemError("cannot read the XFS log")
            parts.append(data)
            first, count = first + k, count - k
        return b"".join(parts)

    def cycles(self, first: int, count: int) -> np.ndarray:
        """Cycle stamp of each block (a record header keeps it in h_cycle, after the magic)."""
        w = np.frombuffer(self.read(first, count), dtype=">u4").reshape(-1, C.BBSIZE // 4)
        return np.where(w[:, 0] == C.XLOG_HEADER_MAGIC_NUM, w[:, 1], w[:, 0]).astype(np.int64)

    def cycle(self, bb: int) -> int:
        return int(self.cycles(bb, 1)[0])

    def cycle_start(self, lo: int, hi: int, cyc: int) -> int:
        """Binary search for the first block stamped ``cyc`` (recovery's exact midpoints)."""
        mid = (lo + hi) // 2
        while mid not in (lo, hi):
            lo, hi = (lo, mid) if self.cycle(mid) == cyc else (mid, hi)
            mid = (lo + hi) // 2
        return hi

    def find_cycle(self, start: int, count: int, cyc: int) -> int:
        """First block of [start, start + count) stamped ``cyc``, or -1."""
        if count <= 0:
            return -1
        hits = np.flatnonzero(self.cycles(start, count) == cyc)
        return start + int(hits[0]) if hits.size else -1

    def header(self, bb: int) -> dict:
        return C.parse("log", self.read(bb, 1))

    def hblks(self, rec: dict) -> int:
        """Header blocks of a record: v2 records bigger than 32 KiB add extended headers."""
        if self.v2 and rec["h_version"] & C.XLOG_VERSION_2 and rec["h_size"] > C.XLOG_HEADER_CYCLE_SIZE:
            return -(-rec["h_size"] // C.XLOG_HEADER_CYCLE_SIZE)
        return 1

    def last_header(self, start: int, end: int) -> int:
        """The last record header in [start, end), or -1."""
        if end <= start:
            return -1
        w = np.frombuffer(self.read(start, end - start), dtype=">u4")[:: C.BBSIZE // 4]
        hits = np.flatnonzero(w == C.XLOG_HEADER_MAGIC_NUM)
        return start + int(hits[-1]) if hits.size else -1

    def back_off_partial(self, start: int, last: int, extra: int) -> int | None:
        """Recovery's head check: the header before ``last`` (searched down to ``start``) must
        begin a record ending there, else the head moves back to it. None: block 0 was reached."""
        i = self.last_header(max(start, 0), last)
        if i < 0:
            if start > 0:
                raise _Inconsistent("no record header before the head")
            return None
        rec = self.header(i)
        if rec["h_fs_uuid"] not in (self.uuid, bytes(16)):
            raise _Inconsistent("the log belongs to another filesystem")
        if last - i + extra != -(-rec["h_len"] // C.BBSIZE) + self.hblks(rec):
            return i
        return last

    def head(self) -> int:
        n, first = self.n, self.cycle(0)
        if first == 0:
            raise _Inconsistent("zeroed log")
        last = self.cycle(n - 1)
        if last == 0:  # never wrapped: the head is where the zeroed blocks begin
            head = self.cycle_start(0, n - 1, 0)
            scan = min(self.total_scan, head)
            hole = self.find_cycle(head - scan, scan, 0)
            head = hole if hole != -1 else head
            head = self.back_off_partial(head - scan, head, 0)
            if head is None:
                raise _Inconsistent("no record before the head")
            return head
        if first == last:  # one whole pass: the head is at the end, unless a hole shows earlier
            head, stop = n, last - 1
        elif first == last + 1:
            head, stop = self.cycle_start(0, n - 1, last), last
        else:
            raise _Inconsistent(f"cycle {first} at the start and {last} at the end")
        scan = self.total_scan
        if head >= scan:
            hole = self.find_cycle(head - scan, scan, stop)
        else:
            hole = self.find_cycle(n - (scan - head), scan - head, stop - 1)
            if hole == -1:
                hole = self.find_cycle(0, head, stop)
        head = hole if hole != -1 else head
        if head >= self.rec_scan:
            head = self.back_off_partial(head - self.rec_scan, head, 0)
            if head is None:
                raise _Inconsistent("no record before the head")
        else:
            backed = self.back_off_partial(0, head, 0)
            if backed is None:  # the record before the head wraps around the end of the log
                backed = self.back_off_partial(n - (self.rec_scan - head), n, head)
                if backed is None:
                    raise _Inconsistent("no record before the head")
                backed = head if backed == n else backed
            head = backed
        return 0 if head == n else head

    def clean(self, check_crc: bool) -> bool:
        n, head = self.n, self.head()
        rblk = self.last_header(max(0, head - self.total_scan), head)
        if rblk < 0:
            rblk = self.last_header(max(head, n - self.total_scan), n)
        if rblk < 0:
            return False
        rec = self.header(rblk)
        hblks = self.hblks(rec)
        data_bb = -(-rec["h_len"] // C.BBSIZE)
        if (
            rec["h_version"] not in (1, C.XLOG_VERSION_2)
            or rec["h_lsn"] != (rec["h_cycle"] << 32 | rblk)
            or not 0 < rec["h_len"] <= C.XLOG_MAX_RECORD_BSIZE
            or rec["h_fs_uuid"] not in (self.uuid, bytes(16))
        ):
            return False
        tail = rec["h_tail_lsn"] & 0xFFFFFFFF
        after = (rblk + hblks + data_bb) % n
        if after == head and rec["h_num_logops"] == 1:
            op = self.read(rblk + hblks, 1)
            if op[C.OP_CLIENTID_OFF] == C.XFS_LOG and op[C.OP_FLAGS_OFF] & C.XLOG_UNMOUNT_TRANS:
                tail = after  # an unmount record: nothing before it needs replaying
        if tail != head:
            return False
        # a torn deciding record is not a clean log (mkfs and xfs_repair write h_crc 0: no crc)
        if check_crc and rec["h_crc"] != bytes(4):
            raw = self.read(rblk, hblks + data_bb)
            ext = b"".join(
                raw[i * C.BBSIZE : i * C.BBSIZE + C.XLOG_REC_EXT_SIZE]
                for i in range(1, -(-rec["h_len"] // C.XLOG_HEADER_CYCLE_SIZE))
            )
            data = raw[hblks * C.BBSIZE : hblks * C.BBSIZE + rec["h_len"]]
            return any(_crc_ok(raw[:size] + ext + data, C.LOG_CRC_OFF) for size in C.XLOG_REC_SIZES)
        return True


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
        """"" when log recovery would find nothing to replay, else DIRTY_LOG (see ``_Log``)."""
        v2 = self.v5 or bool(self.sb["sb_versionnum"] & C.XFS_SB_VERSION_LOGV2BIT)
        base = (self.log_agno * self.agblocks + self.log_agbno) * self.block_size
        log = _Log(self._fh, base, self.log_blocks * self.block_size // C.BBSIZE, v2, self.sb["sb_uuid"])
        try:
            return "" if log.clean(check_crc=self.v5) else DIRTY_LOG
        except _Inconsistent:
            return DIRTY_LOG

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
