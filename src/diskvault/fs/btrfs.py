"""btrfs reader (single device, SINGLE/DUP profiles): superblock facts and the used physical bytes.

The chunk tree maps logical addresses to (device, physical offset) stripes; it is bootstrapped
from the superblock's sys_chunk_array. The extent tree (root tree item (2, ROOT_ITEM, 0)) lists
every allocated extent: EXTENT_ITEM (data, and tree blocks without skinny-metadata) and
METADATA_ITEM (tree blocks). Used bytes = those extents mapped through the chunk map (every stripe:
both copies of DUP), the walked tree blocks themselves, the superblock copies and the first MiB
of the device (btrfs never allocates it; boot loaders live there).

With a log tree (fsync'd writes not yet committed: crash or mounted) the extent tree misses what
the log references, so every allocated chunk is imaged whole instead; likewise when the extent
tree's total disagrees with the superblock's bytes_used. Every tree block read is checked (fsid,
bytenr, level, generation, checksum) before it is trusted. The structures are in ``c_btrfs``.
"""

from __future__ import annotations

import hashlib
import struct
from typing import BinaryIO, ClassVar

import numpy as np

from diskvault.errors import FilesystemError
from diskvault.readat import read_at as _read_at
from diskvault.fs import c_btrfs as C
from diskvault.fs.base import FsInfo
from diskvault.fs.crc32c import crc32c, crc32c_many
from diskvault.fs.extents import clip, merge

NODE_BATCH = 256  # tree blocks read and checksummed together

# ----------------------------------------------------------------------------- helpers



def _uuid(raw: bytes) -> str:
    u = raw.hex()
    return f"{u[:8]}-{u[8:12]}-{u[12:16]}-{u[16:20]}-{u[20:]}"


def _keys_ascending(items: np.ndarray) -> bool:
    """Strictly ascending (objectid, type, offset) keys, as the kernel's tree checker demands."""
    gt = {k: items[k][1:] > items[k][:-1] for k in ("objectid", "type", "offset")}
    eq = {k: items[k][1:] == items[k][:-1] for k in ("objectid", "type")}
    return bool(np.all(gt["objectid"] | (eq["objectid"] & (gt["type"] | (eq["type"] & gt["offset"])))))


def _check_superblock(sb: dict, raw: bytes) -> str:
    """Raise on a superblock the kernel would reject; returns a note ("" or what was not checked)."""
    if sb["magic"] != C.MAGIC:
        raise FilesystemError("no btrfs superblock (bad magic)")
    ctype = sb["csum_type"]
    if ctype not in C.CSUM_NAMES:
        raise FilesystemError(f"btrfs superblock has unknown checksum type {ctype}")
    ss, ns = sb["sectorsize"], sb["nodesize"]
    if not 4096 <= ss <= 65536 or ss & (ss - 1):
        raise FilesystemError(f"btrfs sector size {ss} is not a power of two in 4 KiB..64 KiB")
    if not max(ss, 4096) <= ns <= 65536 or ns & (ns - 1):
        raise FilesystemError(f"btrfs node size {ns} is not a power of two in {ss}..65536")
    ok, note = _csum_ok(ctype, raw[: C.SUPER_INFO_SIZE])
    if not ok:
        raise FilesystemError("btrfs superblock checksum mismatch")
    return note


def _csum_ok(ctype: int, block: bytes) -> tuple[bool, str]:
    """(checksum matches, note). xxhash64 is not in the standard library: not checked."""
    if ctype == C.CSUM_TYPE_CRC32:
        return struct.unpack_from("<I", block)[0] == crc32c(block[C.CSUM_SIZE :]), ""
    if ctype == C.CSUM_TYPE_SHA256:
        return block[:32] == hashlib.sha256(block[C.CSUM_SIZE :]).digest(), ""
    if ctype == C.CSUM_TYPE_BLAKE2:
        return block[:32] == hashlib.blake2b(block[C.CSUM_SIZE :], digest_size=32).digest(), ""
    return True, "btrfs xxhash64 checksums are not verified"


class BtrfsReader:
    """A single-device btrfs filesystem opened read-only; see the module docstring."""

    name: ClassVar[str] = "btrfs"

    @classmethod
    def probe(cls, fh: BinaryIO, size: int) -> bool:
        if size < C.SUPER_INFO_OFFSET + C.SUPER_INFO_SIZE:
            return False
        raw = _read_at(fh, C.SUPER_INFO_OFFSET, C.SUPER_INFO_SIZE)
        if len(raw) < C.SUPER_INFO_SIZE or raw[C.MAGIC_OFFSET : C.MAGIC_OFFSET + 8] != C.MAGIC:
            return False
        try:
            _check_superblock(C.parse_superblock(raw), raw)
        except FilesystemError:
            return False
        return True

    def __init__(self, fh: BinaryIO, size: int) -> None:
        self._fh, self._size = fh, size
        raw = _read_at(fh, C.SUPER_INFO_OFFSET, C.SUPER_INFO_SIZE)
        if len(raw) < C.SUPER_INFO_SIZE:
            raise FilesystemError("btrfs superblock is truncated (the partition is too small)")
        sb = self.sb = C.parse_superblock(raw)
        self._csum_note = _check_superblock(sb, raw)
        self.sectorsize, self.nodesize = sb["sectorsize"], sb["nodesize"]
        self.devid, self.dev_size = sb["dev_item_devid"], sb["dev_item_total_bytes"]
        incompat = sb["incompat_flags"]
        self.meta_fsid = sb["metadata_uuid"] if incompat & C.INCOMPAT_METADATA_UUID else sb["fsid"]
        self._extents: np.ndarray | None = None
        self._note = ""
        self.unsupported = ""  # why used_extents() cannot map the device (info() still works)
        self._check_super_fields()

    def _check_super_fields(self) -> None:
        sb, ss = self.sb, self.sectorsize

        def bad(what: str) -> FilesystemError:
            return FilesystemError(f"btrfs superblock is not sane: {what}")

        if sb["bytenr"] != C.SUPER_INFO_OFFSET:
            raise bad(f"primary superblock says it lives at {sb['bytenr']}")
        if sb["dev_item_fsid"] != self.meta_fsid:
            raise bad("the device item belongs to another filesystem (fsid mismatch)")
        if self.dev_size < C.DEVICE_RANGE_RESERVED or self.dev_size > sb["total_bytes"]:
            raise bad(f"device size {self.dev_size} (filesystem size {sb['total_bytes']})")
        if self.dev_size > self._size:
            raise FilesystemError(
                f"btrfs device claims {self.dev_size} bytes but the partition has only {self._size}; "
                "imaging every block"
            )
        for what in ("root", "chunk_root"):
            if sb[what] == 0 or sb[what] % ss:
                raise bad(f"{what} address {sb[what]} is not sector aligned")
        for what in ("root_level", "chunk_root_level", "log_root_level"):
            if sb[what] >= C.MAX_LEVEL:
                raise bad(f"{what} {sb[what]}")
        if not 0 < sb["sys_chunk_array_size"] <= C.SYSTEM_CHUNK_ARRAY_SIZE:
            raise bad(f"sys_chunk_array_size {sb['sys_chunk_array_size']}")
        if sb["bytes_used"] > sb["total_bytes"] or sb["num_devices"] == 0:
            raise bad(f"bytes_used {sb['bytes_used']}, num_devices {sb['num_devices']}")
        incompat = sb["incompat_flags"]
        if incompat & ~C.INCOMPAT_KNOWN:
            raise FilesystemError(f"btrfs has unknown incompatible features {incompat:#x}")
        if sb["flags"] & C.SUPER_FLAGS_UNSAFE:
            raise FilesystemError("btrfs has an interrupted btrfstune conversion (superblock flags)")
        features = [name for bit, name in C.INCOMPAT_UNSUPPORTED.items() if incompat & bit]
        if features:
            self.unsupported = f"btrfs feature {', '.join(features)} is not supported; imaging every block"
        elif sb["num_devices"] > 1:
            self.unsupported = (
                f"btrfs with several devices ({sb['num_devices']}) / RAID profile: imaging every block"
            )

    # ----------------------------------------------------------------- chunk map

    def _add_chunk(self, chunks: dict, logical: int, raw: bytes, off: int, size: int) -> None:
        if size < C.CHUNK_SIZE:
            raise FilesystemError(f"btrfs chunk item at {logical} is truncated")
        c = C.parse_chunk(raw, off)
        n, length = c["num_stripes"], c["length"]
        if n == 0 or size != C.CHUNK_SIZE + n * C.STRIPE.size:
            raise FilesystemError(f"btrfs chunk item at {logical}: {n} stripes in {size} bytes")
        if length == 0 or length % self.sectorsize or logical % self.sectorsize or logical + length >= 1 << 64:
            raise FilesystemError(f"btrfs chunk at {logical} of length {length} is not sector aligned")
        if not c["type"] & C.BLOCK_GROUP_TYPE_MASK:
            raise FilesystemError(f"btrfs chunk at {logical} has no type ({c['type']:#x})")
        profile = c["type"] & C.PROFILE_MASK
        if profile not in (0, C.BLOCK_GROUP_DUP):
            names = "|".join(v for k, v in C.PROFILE_NAMES.items() if profile & k)
            raise FilesystemError(f"btrfs with several devices / RAID profile {names}: imaging every block")
        if n != (2 if profile else 1):
            raise FilesystemError(f"btrfs chunk at {logical}: {n} stripes for its profile")
        stripes = []
        for i in range(n):
            devid, phys, _ = C.STRIPE.unpack_from(raw, off + C.CHUNK_SIZE + i * C.STRIPE.size)
            if devid != self.devid:
                raise FilesystemError(
                    f"btrfs with several devices (chunk at {logical} is on device {devid}): "
                    "imaging every block"
                )
            if phys + length > self.dev_size or phys % self.sectorsize:  # (old mkfs: a chunk at 0)
                raise FilesystemError(f"btrfs chunk at {logical}: stripe at {phys} lies outside the device")
            stripes.append(phys)
        old = chunks.get(logical)
        if old is not None and old != (length, c["type"], tuple(stripes)):
            raise FilesystemError(f"btrfs chunk at {logical} disagrees with the superblock's copy")
        chunks[logical] = (length, c["type"], tuple(stripes))

    def _set_chunk_map(self, chunks: dict) -> None:
        keys = sorted(chunks)
        if not keys:
            raise FilesystemError("btrfs sys_chunk_array holds no chunk")
        self.chunk_start = np.array(keys, dtype=np.uint64)
        self.chunk_len = np.array([chunks[k][0] for k in keys], dtype=np.uint64)
        st = [chunks[k][2] for k in keys]
        self.chunk_stripes = np.array([s + (s[0],) * (2 - len(s)) for s in st], dtype=np.uint64)
        self.chunk_nstripes = np.array([len(s) for s in st], dtype=np.int64)
        if len(keys) > 1 and np.any(self.chunk_start[1:] < self.chunk_start[:-1] + self.chunk_len[:-1]):
            raise FilesystemError("btrfs chunks overlap in the logical address space")
        phys = np.concatenate([self.chunk_stripes[:, 0], self.chunk_stripes[self.chunk_nstripes == 2, 1]])
        lens = np.concatenate([self.chunk_len, self.chunk_len[self.chunk_nstripes == 2]])
        order = np.argsort(phys)
        if np.any(phys[order][1:] < (phys + lens)[order][:-1]):
            raise FilesystemError("btrfs chunk stripes overlap on the device")

    def _load_chunks(self) -> None:
        sb, chunks = self.sb, {}
        arr, pos, end = sb["sys_chunk_array"], 0, sb["sys_chunk_array_size"]
        while pos < end:
            if pos + C.DISK_KEY.size + C.CHUNK_SIZE > end:
                raise FilesystemError("btrfs sys_chunk_array is truncated")
            _, ktype, logical = C.DISK_KEY.unpack_from(arr, pos)
            if ktype != C.CHUNK_ITEM_KEY:
                raise FilesystemError(f"btrfs sys_chunk_array holds a key of type {ktype}")
            pos += C.DISK_KEY.size
            size = C.CHUNK_SIZE + C.parse_chunk(arr, pos)["num_stripes"] * C.STRIPE.size
            if pos + size > end:
                raise FilesystemError("btrfs sys_chunk_array is truncated")
            self._add_chunk(chunks, logical, arr, pos, size)
            pos += size
        self._set_chunk_map(chunks)
        gen = sb["chunk_root_generation"]
        for leaf, items in self._walk(sb["chunk_root"], sb["chunk_root_level"], gen):
            for it in items[items["type"] == C.CHUNK_ITEM_KEY]:
                off = C.HEADER_SIZE + int(it["data_offset"])
                self._add_chunk(chunks, int(it["offset"]), leaf, off, int(it["data_size"]))
        self._set_chunk_map(chunks)

    def _locate(self, logical: np.ndarray, length: np.ndarray) -> np.ndarray:
        """Index of the chunk holding each [logical, +length) whole; raises when one is not."""
        idx = np.searchsorted(self.chunk_start, logical, side="right") - 1
        ok = idx >= 0
        safe = np.where(ok, idx, 0)
        ok &= logical + length <= self.chunk_start[safe] + self.chunk_len[safe]
        if not np.all(ok):
            i = int(np.flatnonzero(~ok)[0])
            raise FilesystemError(f"btrfs logical range {int(logical[i])}+{int(length[i])} is in no chunk")
        return idx

    def _physical(self, logical: np.ndarray, length: np.ndarray) -> np.ndarray:
        """(start, length) physical extents of every stripe (both DUP copies) of logical ranges."""
        logical, length = logical.astype(np.uint64), length.astype(np.uint64)
        idx = self._locate(logical, length)
        rel = logical - self.chunk_start[idx]
        first = np.stack([self.chunk_stripes[idx, 0] + rel, length], axis=1)
        dup = self.chunk_nstripes[idx] == 2
        second = np.stack([self.chunk_stripes[idx[dup], 1] + rel[dup], length[dup]], axis=1)
        return np.concatenate([first, second]).astype(np.uint64)

    # ----------------------------------------------------------------- trees

    def _read_nodes(self, batch: list[tuple[int, int, int]]) -> list[bytes]:
        """Read tree blocks [(logical, level, generation)], each checked; a bad DUP copy is retried."""
        ns = self.nodesize
        logical = np.array([b[0] for b in batch], dtype=np.uint64)
        idx = self._locate(logical, np.full(len(batch), ns, dtype=np.uint64))
        phys = self.chunk_stripes[idx] + (logical - self.chunk_start[idx])[:, None]  # (n, 2)

        def read(i: int, copy: int) -> bytes:
            buf = _read_at(self._fh, int(phys[i, copy]), ns)
            if len(buf) != ns:
                raise FilesystemError(f"cannot read btrfs tree block {batch[i][0]} at {int(phys[i, copy])}")
            return buf

        bufs = [read(i, 0) for i in range(len(batch))]
        for i, err in enumerate(self._check_nodes(bufs, batch)):
            if err and self.chunk_nstripes[idx[i]] == 2:
                alt = read(i, 1)
                if not self._check_nodes([alt], batch[i : i + 1])[0]:
                    bufs[i], err = alt, ""
            if err:
                raise FilesystemError(f"btrfs tree block {batch[i][0]}: {err}")
        return bufs

    def _check_nodes(self, bufs: list[bytes], batch: list[tuple[int, int, int]]) -> list[str]:
        ctype = self.sb["csum_type"]
        if ctype == C.CSUM_TYPE_CRC32:
            arr = np.frombuffer(b"".join(bufs), dtype=np.uint8).reshape(len(bufs), self.nodesize)
            sums = crc32c_many(arr[:, C.CSUM_SIZE :])
            stored = arr[:, :4].copy().view("<u4")[:, 0]
            good = list(sums == stored)
        else:
            good = [_csum_ok(ctype, b)[0] for b in bufs]
        errs = []
        for buf, ok, (addr, level, gen) in zip(bufs, good, batch):
            h = C.parse_header(buf)
            per = C.ITEM_DTYPE.itemsize if level == 0 else C.KEY_PTR_DTYPE.itemsize
            if not ok:
                errs.append("checksum mismatch")
            elif h["fsid"] != self.meta_fsid or h["bytenr"] != addr:
                errs.append(f"header names fsid {_uuid(h['fsid'])} block {h['bytenr']}")
            elif h["level"] != level:
                errs.append(f"level {h['level']}, expected {level}")
            elif gen and h["generation"] != gen:
                errs.append(f"generation {h['generation']}, expected {gen}")
            elif h["generation"] > self.sb["generation"]:
                errs.append(f"generation {h['generation']} is newer than the superblock's")
            elif h["nritems"] * per > self.nodesize - C.HEADER_SIZE or (level and not h["nritems"]):
                errs.append(f"{h['nritems']} items")
            else:
                errs.append("")
        return errs

    def _walk(self, root: int, level: int, gen: int, search: tuple | None = None):
        """Yield (block, items) of the tree's leaves, level by level; only the path towards the key
        ``search`` (objectid, type, offset) when given. Every block read is recorded in self._visited."""
        frontier = [(root, level, gen)]
        limit = self.dev_size // self.nodesize + 1
        while frontier:
            children: dict[int, tuple[int, int, int]] = {}
            for k in range(0, len(frontier), NODE_BATCH):
                batch = frontier[k : k + NODE_BATCH]
                for (addr, lvl, _), buf in zip(batch, self._read_nodes(batch)):
                    self._visited.append(addr)
                    if len(self._visited) > limit:
                        raise FilesystemError("btrfs trees hold more blocks than the device")
                    n = C.parse_header(buf)["nritems"]
                    dtype = C.ITEM_DTYPE if lvl == 0 else C.KEY_PTR_DTYPE
                    items = np.frombuffer(buf, dtype=dtype, count=n, offset=C.HEADER_SIZE)
                    if not _keys_ascending(items):
                        raise FilesystemError(f"btrfs tree block {addr}: keys out of order")
                    if lvl == 0:
                        d_off, d_size = items["data_offset"].astype(np.int64), items["data_size"]
                        if np.any(d_off < n * 25) or np.any(d_off + d_size > self.nodesize - C.HEADER_SIZE):
                            raise FilesystemError(f"btrfs tree block {addr}: item data out of bounds")
                        yield buf, items
                        continue
                    if search is not None:  # the one child whose key range holds ``search``
                        o, t, f = search
                        below = (items["objectid"] < o) | ((items["objectid"] == o) & (
                            (items["type"] < t) | ((items["type"] == t) & (items["offset"] <= f))))
                        items = items[max(0, int(np.count_nonzero(below)) - 1) :][:1]
                    for ptr in items:
                        child = int(ptr["blockptr"])
                        if child % self.sectorsize:
                            raise FilesystemError(f"btrfs tree block {addr} points to unaligned {child}")
                        children[child] = (child, lvl - 1, int(ptr["generation"]))
            frontier = list(children.values())

    def _extent_root(self) -> tuple[int, int, int]:
        sb = self.sb
        key = (C.EXTENT_TREE_OBJECTID, C.ROOT_ITEM_KEY, 0)
        for leaf, items in self._walk(sb["root"], sb["root_level"], sb["generation"], search=key):
            hit = items[(items["objectid"] == key[0]) & (items["type"] == key[1]) & (items["offset"] == 0)]
            if hit.size:
                it = hit[0]
                if it["data_size"] < C.ROOT_ITEM_MIN_SIZE:
                    raise FilesystemError("btrfs extent tree root item is truncated")
                off = C.HEADER_SIZE + int(it["data_offset"])
                gen = struct.unpack_from("<Q", leaf, off + C.ROOT_ITEM_GENERATION)[0]
                bytenr = struct.unpack_from("<Q", leaf, off + C.ROOT_ITEM_BYTENR)[0]
                level = leaf[off + C.ROOT_ITEM_LEVEL]
                if bytenr == 0 or bytenr % self.sectorsize or level >= C.MAX_LEVEL:
                    raise FilesystemError(f"btrfs extent tree root {bytenr} level {level} is not sane")
                return bytenr, level, gen
        raise FilesystemError("btrfs root tree has no extent tree root item")

    def _allocated_extents(self) -> np.ndarray:
        """(logical, length) of every EXTENT_ITEM / METADATA_ITEM in the extent tree."""
        starts, lengths = [], []
        for _, items in self._walk(*self._extent_root()):
            ext = items[items["type"] == C.EXTENT_ITEM_KEY]
            meta = items[items["type"] == C.METADATA_ITEM_KEY]
            starts += [ext["objectid"], meta["objectid"]]
            lengths += [ext["offset"], np.full(meta.size, self.nodesize, dtype=np.uint64)]
        out = np.stack([np.concatenate(starts), np.concatenate(lengths)], axis=1).astype(np.uint64)
        ss = np.uint64(self.sectorsize)
        if np.any((out[:, 0] % ss != 0) | (out[:, 1] % ss != 0) | (out[:, 1] == 0)):
            raise FilesystemError("btrfs extent tree holds an extent that is not sector aligned")
        if np.any((out[:, 1] > np.uint64(self.dev_size)) | (out[:, 0] >= np.uint64(1 << 63))):
            raise FilesystemError("btrfs extent tree holds an extent larger than the device")
        return out

    # ----------------------------------------------------------------- protocol

    def _scan(self) -> np.ndarray:
        self._visited: list[int] = []
        self._load_chunks()
        notes = [self._csum_note] if self._csum_note else []
        whole = False
        if self.sb["log_root"]:
            whole = True
            notes.append("btrfs has a log tree (not cleanly unmounted): imaging every allocated chunk")
        else:
            alloc = self._allocated_extents()
            if int(alloc[:, 1].sum()) != self.sb["bytes_used"]:
                whole = True
                notes.append(
                    f"warning: btrfs extent tree holds {int(alloc[:, 1].sum())} bytes but the "
                    f"superblock says {self.sb['bytes_used']} used; imaging every allocated chunk"
                )
        if whole:
            alloc = np.stack([self.chunk_start, self.chunk_len], axis=1)
        visited = np.array(self._visited, dtype=np.uint64)
        pieces = [self._physical(alloc[:, 0], alloc[:, 1]),
                  self._physical(visited, np.full(visited.size, self.nodesize, dtype=np.uint64)),
                  np.array([[0, C.DEVICE_RANGE_RESERVED]], dtype=np.uint64)]
        for mirror in range(C.SUPER_MIRROR_MAX):
            off = C.sb_offset(mirror)
            if off + C.SUPER_INFO_SIZE <= self.dev_size:
                pieces.append(np.array([[off, C.SUPER_INFO_SIZE]], dtype=np.uint64))
        self._note = "; ".join(notes)
        return clip(merge(np.concatenate(pieces)), 0, self.dev_size)

    def used_extents(self) -> np.ndarray:
        if self.unsupported:
            raise FilesystemError(self.unsupported)
        if self._extents is None:
            self._extents = self._scan()
        return self._extents.copy()

    def info(self) -> FsInfo:
        note = self.unsupported
        if not note:
            self.used_extents()  # cached; sets the note (log tree, count mismatch, csum type)
            note = self._note
        if not note and self.sb["flags"] & C.SUPER_FLAG_ERROR:
            note = "warning: the btrfs filesystem has recorded errors (run btrfs check)"
        label = self.sb["label"].split(b"\0", 1)[0].decode("utf-8", "replace")
        return FsInfo(
            fstype="btrfs",
            size=self.dev_size,
            # logical bytes: each extent once, so DUP metadata occupies up to twice this on disk
            used_bytes=self.sb["bytes_used"],
            block_size=self.sectorsize,
            label=label,
            uuid=_uuid(self.sb["fsid"]),
            note=note,
        )
