"""A backup set as seen from one of its images: the image and its ancestors, resolved into the
disk state at that image's time.

    members = [Full, ..., parent, image]          (followed by header.parent_increment)
    state   = for every cell, the newest record among the members (ZERO records erase)
    check   : each child's parent_state_hash == state hash of the chain up to its parent

The state hash is BLAKE3 over disk_size (u64le) and, for every cell holding data in the state in
disk order, disk_offset (u64le) || length (u32le) || content_hash (16 bytes). A synthetic full of a
chain has the same state hash as the chain, so merging never breaks the links of later images.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from threading import Lock

import blake3
import numpy as np

from diskvault.errors import IntegrityError, MissingChainMemberError
from diskvault.format.layout import CHUNK_PATCH, CHUNK_ZERO, TYPE_FULL
from diskvault.format.patch import apply_patch, patch_blocks
from diskvault.format.reader import ImageFile, KeyRing
from diskvault.format.writer import image_file_name
from diskvault.readat import ReadAtFile

STATE_DTYPE = np.dtype([("disk_offset", "<u8"), ("length", "<u4"), ("content_hash", "V16")])


def state_hash(disk_size: int, offsets: np.ndarray, lengths: np.ndarray, hashes: np.ndarray) -> bytes:
    rows = np.zeros(len(offsets), dtype=STATE_DTYPE)
    rows["disk_offset"], rows["length"], rows["content_hash"] = offsets, lengths, hashes
    return blake3.blake3(int(disk_size).to_bytes(8, "little") + rows.tobytes()).digest()


class State:
    """Resolved cells of a chain: for each cell with data, which member and record holds it."""

    def __init__(self, members: list[ImageFile]) -> None:
        records = np.concatenate([m.index for m in members])
        member = np.concatenate([np.full(len(m.index), i, dtype=np.int32) for i, m in enumerate(members)])
        record = np.concatenate([np.arange(len(m.index), dtype=np.int64) for m in members])
        offs = records["disk_offset"].astype(np.int64)
        order = np.lexsort((member, offs))  # by offset, then member: the newest record of a cell is last
        offs = offs[order]
        newest = np.ones(len(offs), dtype=bool)
        newest[:-1] = offs[1:] != offs[:-1]
        keep = order[newest]
        keep = keep[(records["flags"][keep] & CHUNK_ZERO) == 0]  # ZERO records erase older data
        self.offsets = records["disk_offset"][keep].astype(np.int64)
        self.lengths = records["length"][keep].astype(np.int64)
        self.hashes = records["content_hash"][keep]
        self.member, self.record = member[keep], record[keep]

    def hash(self, disk_size: int) -> bytes:
        return state_hash(disk_size, self.offsets, self.lengths, self.hashes)

    def lookup(self, disk_offset: int) -> int:
        """Index into the state of the cell at ``disk_offset``, or -1."""
        i = int(np.searchsorted(self.offsets, disk_offset))
        return i if i < len(self.offsets) and self.offsets[i] == disk_offset else -1


class Chain:
    """An image and the ancestors it needs, opened and checked; reads the disk as it was then."""

    def __init__(self, path: str, keyring: KeyRing | None = None, cache_chunks: int = 64) -> None:
        self.keyring = keyring or KeyRing()
        self.members: list[ImageFile] = []
        try:
            self._open(path)
        except BaseException:
            self.close()
            raise
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cache_size = cache_chunks
        self._lock = Lock()

    def _open(self, path: str) -> None:
        newest = ImageFile(path, self.keyring)
        chain = [newest]
        while chain[0].header.image_type != TYPE_FULL:
            child = chain[0]
            parent_path = os.path.join(os.path.dirname(os.path.abspath(child.path)),
                                       image_file_name(child.header.parent_id, child.header.parent_increment))
            if not os.path.exists(parent_path):
                raise MissingChainMemberError(f"missing chain member {os.path.basename(parent_path)} "
                                              f"(the parent of {os.path.basename(child.path)})")
            if len(chain) > 1000:
                raise IntegrityError(f"{path}: chain of parents loops")
            parent = ImageFile(parent_path, self.keyring)
            if parent.header.image_id != child.header.parent_id or parent.header.increment != child.header.parent_increment:
                parent.close()
                raise IntegrityError(f"{parent_path} is not the image {os.path.basename(child.path)} was made from "
                                     f"(altered or swapped parent)")
            chain.insert(0, parent)
        self.members = chain
        for i in range(1, len(chain)):
            expected = chain[i].header.parent_state_hash
            if State(chain[:i]).hash(chain[i - 1].disk_size) != expected:
                raise IntegrityError(f"{chain[i - 1].path} is not the image {os.path.basename(chain[i].path)} "
                                     f"was made from (altered or swapped parent)")
        self.state = State(chain)
        self._offsets = [m.index["disk_offset"].astype(np.int64) for m in chain]
        if self.state.hash(self.head.disk_size) != self.head.footer.state_hash:
            raise IntegrityError(f"{path}: disk state does not match the footer's state hash")

    def close(self) -> None:
        for m in self.members:
            m.close()

    def __enter__(self) -> "Chain":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def head(self) -> ImageFile:
        return self.members[-1]

    @property
    def disk_size(self) -> int:
        return self.head.disk_size

    @property
    def chunk_size(self) -> int:
        return self.head.chunk_size

    @property
    def metadata(self) -> dict:
        return self.head.metadata

    @property
    def extents(self) -> np.ndarray:
        return self.head.extents

    def decode(self, j: int, held: tuple[bytes, bytes | memoryview] | None = None) -> bytes:
        """Bytes of the state's cell ``j`` (checked). ``held``: (content hash, bytes) of this cell's
        bytes that the caller already has, e.g. from a delta target; a patch whose base cell has
        that hash is applied to them instead of decoding the base."""
        return self.decode_record(int(self.state.member[j]), int(self.state.record[j]), held)

    def decode_record(self, m: int, r: int, held: tuple[bytes, bytes | memoryview] | None = None) -> bytes:
        """Bytes of the cell that record ``r`` of member ``m`` gives: a patch is applied over the
        same cell as the older members give it, and the result checked against its content hash."""
        member = self.members[m]
        rec = member.index[r]
        if not rec["flags"] & CHUNK_PATCH:
            return member.decode(r, member.read_stored(r))
        payload = member.payload(r, member.read_stored(r))
        base = self._cell_before(m, int(rec["disk_offset"]), int(rec["length"]), held)
        try:
            data = apply_patch(base, payload, self.chunk_size)
        except ValueError as e:
            raise member.damaged(r, str(e)) from None
        return member.check_content(r, data)

    def patch_base(self, j: int) -> range | None:
        """When a patch gives the state's cell ``j``: the members whose state of the cell the patch
        applies to. None when a whole chunk gives it."""
        m, r = int(self.state.member[j]), int(self.state.record[j])
        rec = self.members[m].index[r]
        if not rec["flags"] & CHUNK_PATCH:
            return None
        disk_offset = int(rec["disk_offset"])
        return range(next((k for k in range(m - 1, -1, -1) if self._record(k, disk_offset) >= 0), 0), m)

    def patch_blocks(self, j: int) -> list[tuple[int, memoryview]]:
        """The blocks (offset in the cell, bytes) of the patch that gives the state's cell ``j``,
        its stored chunk checked."""
        m, r = int(self.state.member[j]), int(self.state.record[j])
        member = self.members[m]
        try:
            return patch_blocks(member.payload(r, member.read_stored(r)), int(member.index[r]["length"]),
                                self.chunk_size)
        except ValueError as e:
            raise member.damaged(r, str(e)) from None

    def _record(self, k: int, disk_offset: int) -> int:
        """Member ``k``'s record of the cell at ``disk_offset``, or -1."""
        offs = self._offsets[k]
        i = int(np.searchsorted(offs, disk_offset))
        return i if i < len(offs) and offs[i] == disk_offset else -1

    def _cell_before(self, m: int, disk_offset: int, length: int,
                     held: tuple[bytes, bytes | memoryview] | None = None) -> bytes | memoryview:
        for k in range(m - 1, -1, -1):
            i = self._record(k, disk_offset)
            if i >= 0:
                if held is not None and bytes(self.members[k].index[i]["content_hash"]) == held[0]:
                    return held[1]
                return self.decode_record(k, i, held)
        return bytes(length)

    def state_cell(self, disk_offset: int) -> bytes | None:
        """The state's bytes of the cell at ``disk_offset``, or None when it holds no data."""
        j = self.state.lookup(disk_offset)
        return self.decode(j) if j >= 0 else None

    def cell(self, j: int) -> bytes:
        with self._lock:
            data = self._cache.get(j)
            if data is not None:
                self._cache.move_to_end(j)
                return data
        data = self.decode(j)
        with self._lock:
            self._cache[j] = data
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return data

    def read(self, offset: int, length: int) -> bytes:
        """Bytes of the disk at ``offset`` as it was at the newest image; absent cells are zeros."""
        pieces: list[bytes | memoryview] = []  # joined in one allocation
        end = min(offset + length, self.disk_size)
        pos, cs = offset, self.chunk_size
        while pos < end:
            cell_start = pos - pos % cs
            cell_end = min(cell_start + cs, end)
            j = self.state.lookup(cell_start)
            pieces.append(memoryview(self.cell(j))[pos - cell_start:cell_end - cell_start] if j >= 0
                          else bytes(cell_end - pos))
            pos = cell_end
        pieces.append(bytes(max(0, offset + length - max(end, offset))))
        return b"".join(pieces)


class ChainWindow(ReadAtFile):
    """A read-only, seekable file-like view of ``size`` bytes at ``offset`` of a chain's disk, so
    filesystem readers (which take a BinaryIO) can read a partition straight out of an image."""

    def __init__(self, chain: Chain, offset: int = 0, size: int | None = None) -> None:
        super().__init__(chain.disk_size - offset if size is None else size,
                         lambda pos, n: chain.read(offset + pos, n))
