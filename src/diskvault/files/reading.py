"""Read a file's content for backup: its data map (holes skipped with SEEK_DATA/SEEK_HOLE), the
bytes, and proof that they were not torn: the file is fstat'ed before and after reading and read
again (up to RETRIES times) when size, mtime, ctime or inode moved; a file that never holds still
is stored from its last read and flagged, never silently.

File timestamps are coarse (a clock tick, up to 10 ms), so a write in the same tick as the last
change is invisible to fstat. A read counts as stable only if the file's ctime is older than the
read's start by more than RACY_NS; a file changed just before is first left to settle that long.

Small files are read whole by a worker, a batch at a time (``read_batch``); big files are streamed by the caller in
chunks (``stream``) so that several workers hash and compress one big file together.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from diskvault.crypto.aead import Sealer
from diskvault.files.catalog import ChunkRef, stat_key
from diskvault.files.chunker import Chunker
from diskvault.files.layout import E_CHANGED, E_SPARSE, chunk_aad
from diskvault.files.metadata import read_xattrs
from diskvault.files.writer import ArchiveWriter
from diskvault.format import codec
from diskvault.readat import pread_full

RETRIES = 3
RACY_NS = 30_000_000  # more than two ticks of the coarse clock file timestamps come from
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


@dataclass
class FileRead:
    """What reading one file gave: the fstat of the bytes stored, their chunks, attributes."""

    st: os.stat_result | None = None
    chunks: list[ChunkRef] = field(default_factory=list)
    xattrs: list[tuple[bytes, bytes]] = field(default_factory=list)
    flags: int = 0
    bytes_read: int = 0
    error: str = ""  # set when the file could not be read (the entry is left out)
    vanished: bool = False


class ChunkStore:
    """Hash a chunk, and store it (compressed, sealed) unless the set already has it."""

    def __init__(self, writer: ArchiveWriter, level: str, hash_key: bytes | None, sealer: Sealer | None) -> None:
        self.writer, self.level, self.hash_key, self.sealer = writer, level, hash_key, sealer
        self.set_id = writer.header.set_id

    def put(self, data: bytes | memoryview) -> bytes:
        digest = codec.content_hash(data, self.hash_key)

        def encode() -> tuple[int, bytes]:
            codec_id, stored = codec.compress(data, self.level)
            if self.sealer:
                stored = self.sealer.seal(stored, chunk_aad(self.set_id, digest, len(data), codec_id))
            return codec_id, stored

        self.writer.add_chunk(digest, len(data), encode)
        return digest


def open_source(path: bytes) -> tuple[int, os.stat_result]:
    """Open for reading without following a symlink swapped in since the walk, without blocking on
    a FIFO swapped in, and without touching atime where allowed; the fd and its fstat."""
    try:
        fd = os.open(path, _OPEN_FLAGS | os.O_NOATIME)
    except PermissionError:  # O_NOATIME needs ownership or CAP_FOWNER
        fd = os.open(path, _OPEN_FLAGS)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "no longer a regular file", path)
    return fd, st


def data_segments(fd: int, st: os.stat_result) -> list[tuple[int, int]]:
    """(start, end) of the file's data; one segment unless it has fewer blocks than bytes."""
    size = st.st_size
    if size == 0:
        return []
    if st.st_blocks * 512 >= size:
        return [(0, size)]
    segments, pos = [], 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break
            return [(0, size)]  # no SEEK_DATA here: read it all
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        if start >= size:
            break
        segments.append((start, end))
        pos = end
    return segments


def _settle(fd: int, st: os.stat_result) -> tuple[os.stat_result, int]:
    """Wait until a change at ``st``'s ctime is RACY_NS old: (fstat then, time reading starts)."""
    now = time.time_ns()
    wait = st.st_ctime_ns + RACY_NS - now
    if 0 < wait <= 2 * RACY_NS:  # a ctime far in the future (clock set back): nothing to wait for
        time.sleep(wait / 1e9)
        return os.fstat(fd), time.time_ns()
    return st, now


def _held_still(before: os.stat_result, after: os.stat_result, started_ns: int) -> bool:
    return stat_key(after) == stat_key(before) and (before.st_ctime_ns < started_ns - RACY_NS
                                                    or before.st_ctime_ns > started_ns + 2 * RACY_NS)


def _finish(fd: int, st: os.stat_result, segments: list[tuple[int, int]], result: FileRead, stable: bool) -> FileRead:
    result.st = st
    result.xattrs = read_xattrs(fd)
    if sum(e - s for s, e in segments) < st.st_size:
        result.flags |= E_SPARSE
    if not stable:
        result.flags |= E_CHANGED
    return result


def _read_open(path: bytes, fd: int, st: os.stat_result, chunker: Chunker, store: ChunkStore) -> FileRead:
    """Read a whole (small) open file, check it held still, then chunk and store it; closes fd."""
    try:
        for _ in range(RETRIES):
            st, started = _settle(fd, st)
            segments = data_segments(fd, st)
            data = [(s, pread_full(fd, s, e - s)) for s, e in segments]
            after = os.fstat(fd)
            stable = _held_still(st, after, started) and all(len(d) == e - s for (s, e), (_, d)
                                                             in zip(segments, data))
            if stable:
                break
            st = after
        result = FileRead()
        for start, buf in data:
            result.bytes_read += len(buf)
            for off, view in chunker.cut(buf):
                result.chunks.append((start + off, len(view), store.put(view)))
        return _finish(fd, st, segments, result, stable)
    except OSError as e:
        return FileRead(error=f"{os.fsdecode(path)}: {e.strerror}")
    finally:
        os.close(fd)


def read_batch(paths: list[bytes], chunker: Chunker, store: ChunkStore) -> list[FileRead]:
    """Read small files: open them all and ask for all their data at once (a deep queue of reads,
    so a cold disk serves them in its best order), then read, check and store each."""
    opened: list[tuple[int, os.stat_result] | FileRead] = []
    for path in paths:
        try:
            fd, st = open_source(path)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            opened.append((fd, st))
        except FileNotFoundError:
            opened.append(FileRead(vanished=True))
        except OSError as e:
            opened.append(FileRead(error=f"{os.fsdecode(path)}: {e.strerror}"))
    results: list[FileRead] = []
    try:
        for path, o in zip(paths, opened):
            results.append(o if isinstance(o, FileRead) else _read_open(path, *o, chunker, store))
    finally:
        for o in opened[len(results) + 1:]:  # _read_open closes its own fd whatever happens
            if not isinstance(o, FileRead):
                os.close(o[0])
    return results


class _Segment:
    """A readinto() stream over [start, end) of a file."""

    def __init__(self, fd: int, start: int, end: int) -> None:
        self.fd, self.pos, self.end = fd, start, end

    def readinto(self, buf) -> int:
        view = memoryview(buf)[:max(0, self.end - self.pos)]
        n = os.preadv(self.fd, [view], self.pos) if len(view) else 0
        self.pos += n
        return n


# Events of a streamed file, in order: ("chunk", ChunkRef) ... then ("end", FileRead); a
# ("restart", None) means the file moved while read: forget its chunks so far, it is read again.
Event = tuple[str, object]


def stream(path: bytes, chunker: Chunker, store: ChunkStore) -> Iterator[Callable[[], Event]]:
    """Jobs for a big file: cutting happens here (the caller's thread, GIL released while cutting),
    hashing, compressing and storing each chunk happen in whichever worker runs its job."""
    try:
        fd, st = open_source(path)
    except FileNotFoundError:
        yield lambda: ("end", FileRead(vanished=True))
        return
    except OSError as e:
        message = f"{os.fsdecode(path)}: {e.strerror}"
        yield lambda: ("end", FileRead(error=message))
        return

    def chunk_job(offset: int, data: bytes) -> Callable[[], Event]:
        return lambda: ("chunk", (offset, len(data), store.put(data)))

    try:
        for attempt in range(RETRIES):
            st, started = _settle(fd, st)
            done = 0
            segments = data_segments(fd, st)
            for s, e in segments:
                for off, data in chunker.cut_stream(_Segment(fd, s, e)):
                    done += len(data)
                    yield chunk_job(s + off, data)
            after = os.fstat(fd)
            stable = _held_still(st, after, started) and done == sum(e - s for s, e in segments)
            if stable or attempt == RETRIES - 1:
                break
            st = after
            yield lambda: ("restart", None)
        result = _finish(fd, st, segments, FileRead(bytes_read=done), stable)
        yield lambda: ("end", result)
    except OSError as e:
        message = f"{os.fsdecode(path)}: {e.strerror}"
        yield lambda: ("end", FileRead(error=message))
    finally:
        os.close(fd)
