"""Write to a restore target: a block device (zero gaps with BLKZEROOUT) or an image file (leave
holes: free space costs no disk space)."""

from __future__ import annotations

import ctypes
import errno
import functools
import fcntl
import os
import stat
import struct

import numpy as np

from diskvault.disk.source import block_device_size

BLKZEROOUT = 0x127F
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
HOLE_BLOCK = 4096
BLKDISCARD = 0x1277
DISCARD_ALIGN = 4096  # discards are trimmed inward to this (a multiple of every sector size)
_ZEROS = bytes(4 << 20)


class Target:
    """An open restore target. Callers check safety (devices.check_target_*) before opening."""

    def __init__(self, path: str, create_size: int | None = None) -> None:
        self.path = path
        self.created = False
        if create_size is not None and not os.path.exists(path):
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            os.ftruncate(self.fd, create_size)
            self.created = True
        else:
            flags = os.O_RDWR | os.O_CLOEXEC
            if stat.S_ISBLK(os.stat(path).st_mode):
                flags |= os.O_EXCL  # fails with EBUSY if mounted or held by the kernel
            self.fd = os.open(path, flags)
        st = os.fstat(self.fd)
        self.is_block = stat.S_ISBLK(st.st_mode)
        self.size = block_device_size(self.fd) if self.is_block else st.st_size

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def zero(self, offset: int, length: int) -> None:
        """Make [offset, offset+length) read as zeros: a hole in a file, zeroed blocks on a device."""
        if length <= 0 or self.created:
            return
        try:
            if self.is_block:
                fcntl.ioctl(self.fd, BLKZEROOUT, struct.pack("<QQ", offset, length))
            else:
                _punch_hole(self.fd, offset, length)
            return
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOTTY):
                raise
        pos, end = offset, offset + length
        while pos < end:
            n = min(len(_ZEROS), end - pos)
            os.pwrite(self.fd, memoryview(_ZEROS)[:n], pos)
            pos += n

    def write(self, offset: int, data: bytes | memoryview) -> int:
        """Write ``data`` at ``offset``; in a file, all-zero 4 KiB blocks are left as holes (the
        range was zeroed first). Returns the bytes actually written."""
        if self.is_block:
            _pwrite_full(self.fd, memoryview(data), offset)
            return len(data)
        view = memoryview(data)
        whole = len(view) - len(view) % HOLE_BLOCK
        if whole == 0 or offset % HOLE_BLOCK:
            _pwrite_full(self.fd, view, offset)
            return len(view)
        blocks = np.frombuffer(view[:whole], dtype=np.uint64).reshape(-1, HOLE_BLOCK // 8).any(axis=1)
        edges = np.diff(np.concatenate(([0], blocks.astype(np.int8), [0])))
        written = 0
        for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)):
            a, b = int(a) * HOLE_BLOCK, int(b) * HOLE_BLOCK
            _pwrite_full(self.fd, view[a:b], offset + a)
            written += b - a
        if whole < len(view) and any(view[whole:]):
            _pwrite_full(self.fd, view[whole:], offset + whole)
            written += len(view) - whole
        return written

    def flush(self) -> None:
        os.fsync(self.fd)

    def discard(self, offset: int, length: int) -> bool:
        """TRIM [offset, offset+length): BLKDISCARD on a device (a loop device punches holes in its
        backing file), a hole in a file. False when the device cannot discard. Contents after a
        discard are undefined on devices: only for space no filesystem uses."""
        start = -(-offset // DISCARD_ALIGN) * DISCARD_ALIGN
        end = (offset + length) // DISCARD_ALIGN * DISCARD_ALIGN
        if end <= start:
            return True
        try:
            if self.is_block:
                fcntl.ioctl(self.fd, BLKDISCARD, struct.pack("<QQ", start, end - start))
            else:
                _punch_hole(self.fd, start, end - start)
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOTTY, errno.EIO):
                return False
            raise
        return True

    def allocated(self) -> np.ndarray:
        """Byte extents that may hold data: a file's data extents (SEEK_DATA/SEEK_HOLE), so that
        holes are not punched again; all of a device."""
        if self.is_block:
            return np.array([[0, self.size]], dtype=np.uint64)
        out, pos = [], 0
        while pos < self.size:
            try:
                start = os.lseek(self.fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:  # no data after pos
                    break
                raise
            pos = os.lseek(self.fd, start, os.SEEK_HOLE)
            out.append((start, pos - start))
        return np.array(out, dtype=np.uint64).reshape(-1, 2)

    def read(self, offset: int, length: int) -> bytes:
        """What the target holds now (delta comparison, verification); zeros past its end."""
        chunks, done = [], 0
        while done < length:  # bytes straight from pread: a bytearray copied to bytes page-faults twice
            chunk = os.pread(self.fd, length - done, offset + done)
            if not chunk:
                break
            chunks.append(chunk)
            done += len(chunk)
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return data if done == length else data + bytes(length - done)


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)  # the libc this process runs on (find_library spawns ldconfig)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    return libc


def _punch_hole(fd: int, offset: int, length: int) -> None:
    if _libc().fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _pwrite_full(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


def supports_discard(path: str) -> bool:
    """True for a block device whose queue takes discards (a partition asks its disk's queue)."""
    st = os.stat(path)
    if not stat.S_ISBLK(st.st_mode):
        return False
    sysdir = os.path.realpath(f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}")
    if os.path.exists(os.path.join(sysdir, "partition")):
        sysdir = os.path.dirname(sysdir)
    try:
        with open(os.path.join(sysdir, "queue", "discard_max_bytes")) as fh:
            return int(fh.read().strip() or 0) > 0
    except (OSError, ValueError):
        return False


class HeldBack:
    """A Target whose writes to ``regions`` are held back until ``release()``, after everything
    else; the regions read as zeros on the device meanwhile (zeroed and fsynced on creation).

    Used for each ext superblock: change tracking trusts a target's inodes only when its
    filesystem is intact, and a restore writes inode tables long before the data they describe.
    An interrupted restore so leaves no filesystem (not one whose inodes lie about its data)."""

    def __init__(self, target: Target, regions: list[tuple[int, int]]) -> None:
        self._target = target
        self._held = {start: bytearray(target.read(start, length)) for start, length in regions}
        for start, length in regions:
            _pwrite_full(target.fd, memoryview(bytes(length)), start)
        target.flush()

    def __getattr__(self, name: str):
        return getattr(self._target, name)

    def _split(self, offset: int, length: int, data: memoryview | None = None) -> list[tuple[int, int]]:
        """The (offset, length) pieces of [offset, offset+length) outside the held regions; the
        parts inside them are kept there (``data``'s bytes, or zeros)."""
        pieces: list[tuple[int, int]] = []
        pos, end = offset, offset + length
        for start, held in sorted(self._held.items()):
            a, b = max(pos, start), min(end, start + len(held))
            if a >= b:
                continue
            held[a - start:b - start] = data[a - offset:b - offset] if data is not None else bytes(b - a)
            if a > pos:
                pieces.append((pos, a - pos))
            pos = b
        if pos < end:
            pieces.append((pos, end - pos))
        return pieces

    def write(self, offset: int, data: bytes | memoryview) -> int:
        view = memoryview(data)
        pieces = self._split(offset, len(view), view)
        held = len(view) - sum(n for _o, n in pieces)
        return held + sum(self._target.write(o, view[o - offset:o - offset + n]) for o, n in pieces)

    def zero(self, offset: int, length: int) -> None:
        for o, n in self._split(offset, length):
            self._target.zero(o, n)

    def read(self, offset: int, length: int) -> bytes:
        data = self._target.read(offset, length)
        overlapping = [(start, held) for start, held in self._held.items()
                       if start < offset + length and offset < start + len(held)]
        if not overlapping:  # the common case (verify reads 8 MiB pieces): no copy
            return data
        out = bytearray(data)
        for start, held in overlapping:
            a, b = max(offset, start), min(offset + length, start + len(held))
            out[a - offset:b - offset] = held[a - start:b - start]
        return bytes(out)

    def release(self) -> None:
        """Everything else is on the device: fsync it, then write the held regions and fsync."""
        self._target.flush()
        for start, held in self._held.items():
            _pwrite_full(self._target.fd, memoryview(held), start)
        self._target.flush()
        self._held = {}
