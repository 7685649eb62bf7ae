"""Back up files and folders into an archive; ``backup_files`` is what the CLI and web UI call.

    walk -> per entry, in walk order:
        unchanged since the parent catalog (type, size, mtime, ctime, inode)? copy its record
        regular file with data?  read (workers; big files streamed chunk by chunk) -> chunks
        anything else?           record from lstat, readlink, xattrs
    -> catalog (records in walk order) + index + metadata + footer -> rename

A Diff's parent is the set's Full, an Inc's the set's newest archive; either way only chunks the
set does not hold yet are stored.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from diskvault import __version__
from diskvault.crypto.aead import Sealer
from diskvault.crypto.keys import KdfParams, PasswordSource, SetKey, derive
from diskvault.errors import UsageError
from diskvault.files.catalog import Entry, RecordRef, entry_type, scan, stat_key
from diskvault.files.chunker import Chunker, chunker_seed
from diskvault.files.layout import (
    E_CHANGED,
    FLAG_ENCRYPTED,
    T_DIR,
    T_FILE,
    T_HARDLINK,
    T_SYMLINK,
    TYPE_DIFF,
    TYPE_FULL,
    TYPE_INC,
    TYPE_NAMES,
    ArchiveHeader,
)
from diskvault.files.metadata import Owners, read_xattrs
from diskvault.files.reader import ArchiveChain
from diskvault.files.reading import ChunkStore, FileRead, read_batch, stream
from diskvault.files.sets import find_parent, next_increment
from diskvault.files.walker import Filters, Found, normalize_roots, walk
from diskvault.files.writer import ArchiveWriter
from diskvault.format.codec import LEVELS
from diskvault.format.reader import KeyRing
from diskvault.imaging.destination import auto_split_size
from diskvault.imaging.pipeline import ordered_map
from diskvault.ui.files_progress import files_reporter
from diskvault.ui.progress import NullProgress, Progress

TYPES = {"full": TYPE_FULL, "diff": TYPE_DIFF, "inc": TYPE_INC}
STREAM_MIN = 16 << 20  # bigger files are cut by the main thread and encoded chunk by chunk in workers
BATCH_FILES, BATCH_BYTES = 16, 16 << 20  # small files go to workers in batches (fewer handoffs)


@dataclass
class BackupOptions:
    paths: list[str]
    to: str
    filters: Filters = field(default_factory=Filters)
    archive_type: str = "full"
    compression: str = "fast"
    password: PasswordSource | None = None
    split_size: int | None = None


@dataclass
class BackupResult:
    archive: str
    set_id: str
    archive_type: str
    increment: int
    entries: int
    files_read: int
    files_unchanged: int
    skipped: int
    bytes_read: int
    bytes_new: int
    bytes_written: int
    seconds: float
    parts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # kept changing while read (stored flagged)
    errors: list[str] = field(default_factory=list)  # could not be read (left out)

    def to_dict(self) -> dict:
        return asdict(self)


def _new_header(opts: BackupOptions, parent: ArchiveChain | None) -> tuple[ArchiveHeader, SetKey | None]:
    h = ArchiveHeader(set_id=secrets.token_bytes(8), created_ns=time.time_ns(), writer=f"diskvault {__version__}")
    if parent is not None:
        p = parent.head.header
        h.set_id, h.archive_type = p.set_id, TYPES[opts.archive_type]
        h.increment = next_increment(opts.to, p.set_id)
        h.parent_increment, h.parent_digest = p.increment, parent.head.footer_digest
        h.chunk_min, h.chunk_avg, h.chunk_max = p.chunk_min, p.chunk_avg, p.chunk_max
        h.flags, h.cipher_name, h.kdf_name = p.flags, p.cipher_name, p.kdf_name
        h.kdf_salt, h.kdf_time, h.kdf_memory_kib, h.kdf_parallelism, h.key_check = (
            p.kdf_salt, p.kdf_time, p.kdf_memory_kib, p.kdf_parallelism, p.key_check)
        return h, parent.head.key
    if opts.password is None:
        return h, None
    kdf = KdfParams.new()
    key = derive(opts.password(), kdf)
    h.flags |= FLAG_ENCRYPTED
    h.cipher_name, h.kdf_name = "aes-256-gcm", "argon2id"
    h.kdf_salt, h.kdf_time, h.kdf_memory_kib, h.kdf_parallelism = kdf.salt, kdf.time_cost, kdf.memory_kib, \
        kdf.parallelism
    h.key_check = key.key_check
    return h, key


class _Run:
    """One backup's entries: which to copy from the parent, which to read, and their records."""

    def __init__(self, found: list[Found], parent_catalog: bytes, refs: dict[bytes, RecordRef], store: ChunkStore,
                 chunker: Chunker, progress: Progress) -> None:
        self.found, self.store, self.chunker, self.progress = found, store, chunker, progress
        self.catalog, self.refs = parent_catalog, refs
        self.owners = Owners()
        self.records: list[bytes | None] = [None] * len(found)
        self.hardlink_of: dict[int, int] = {}
        self.content: list[int] = []
        self.unchanged = self.files_read = self.bytes_read = 0
        self.changed: list[str] = []
        self.errors: list[str] = []

    def _entry(self, f: Found, st: os.stat_result, **kw) -> Entry:
        return Entry.from_stat(f.rel, st, user=self.owners.user(st.st_uid), group=self.owners.group(st.st_gid), **kw)

    def plan(self) -> None:
        primary: dict[tuple[int, int], int] = {}
        refs, catalog, records = self.refs, self.catalog, self.records
        for i, f in enumerate(self.found):
            st = f.st
            typ = entry_type(st.st_mode)
            if typ != T_DIR and st.st_nlink > 1:
                p = primary.setdefault((st.st_dev, st.st_ino), i)
                if p != i:
                    self.hardlink_of[i] = p
                    records[i] = self._entry(f, st, type=T_HARDLINK, link=self.found[p].rel).encode()
                    continue
            ref = refs.get(f.rel)
            if ref is not None and ref.type == typ and ref.key == stat_key(st) and not ref.flags & E_CHANGED:
                records[i] = catalog[ref.start:ref.end]
                self.unchanged += 1
            elif typ == T_FILE and st.st_size > 0:
                self.content.append(i)
            else:
                records[i] = self._meta_record(f, typ)

    def _meta_record(self, f: Found, typ: int) -> bytes | None:
        try:
            link = os.readlink(f.path) if typ == T_SYMLINK else b""
            return self._entry(f, f.st, link=link, xattrs=read_xattrs(f.path)).encode()
        except FileNotFoundError:
            return None
        except OSError as e:
            self.errors.append(f"{os.fsdecode(f.path)}: {e.strerror}")
            return None

    def _jobs(self) -> Iterator[Callable[[], list]]:
        batch: list[int] = []
        size = 0
        for i in self.content:
            f = self.found[i]
            if f.st.st_size > STREAM_MIN:
                if batch:
                    yield self._batch_job(batch)
                    batch, size = [], 0
                for job in stream(f.path, self.chunker, self.store):
                    yield lambda i=i, job=job: [(i, job())]
                continue
            batch.append(i)
            size += f.st.st_size
            if len(batch) >= BATCH_FILES or size >= BATCH_BYTES:
                yield self._batch_job(batch)
                batch, size = [], 0
        if batch:
            yield self._batch_job(batch)

    def _batch_job(self, batch: list[int]) -> Callable[[], list]:
        items = list(batch)
        return lambda: list(zip(items, (("end", r) for r in read_batch([self.found[i].path for i in items],
                                                                           self.chunker, self.store))))

    def read_content(self) -> None:
        # inode order is close to on-disk order: far fewer seeks than name order on a cold cache
        self.content.sort(key=lambda i: (self.found[i].st.st_dev, self.found[i].st.st_ino))
        self.progress.start("backing up", sum(self.found[i].st.st_size for i in self.content))
        streamed: dict[int, list] = {}
        advanced: dict[int, int] = {}
        done, report_files = 0, files_reporter(self.progress)
        for events in ordered_map(lambda job: job(), self._jobs()):
            for i, (kind, value) in events:
                if kind == "chunk":
                    streamed.setdefault(i, []).append(value)
                    advanced[i] = advanced.get(i, 0) + value[1]
                    self.progress.advance(value[1])
                elif kind == "restart":
                    streamed.pop(i, None)
                else:
                    self.progress.advance(max(0, self.found[i].st.st_size - advanced.pop(i, 0)))
                    self._done(i, value, streamed.pop(i, None))
                    done += 1
                    report_files(done, len(self.content))
        self.progress.finish()

    def _done(self, i: int, r: FileRead, streamed: list | None) -> None:
        if r.vanished:
            return
        if r.error:
            self.errors.append(r.error)
            return
        self.files_read += 1
        self.bytes_read += r.bytes_read
        if r.flags & E_CHANGED:
            self.changed.append(os.fsdecode(self.found[i].path))
        chunks = r.chunks if streamed is None else streamed
        self.records[i] = self._entry(self.found[i], r.st, xattrs=r.xattrs, chunks=chunks, flags=r.flags).encode()

    def catalog_bytes(self) -> tuple[bytes, int]:
        for i, p in self.hardlink_of.items():
            if self.records[p] is None and self.records[i] is not None:
                self.records[i] = None
                self.errors.append(f"{os.fsdecode(self.found[i].path)}: left out with the file it links to")
        kept = [r for r in self.records if r is not None]
        return b"".join(kept), len(kept)


def backup_files(opts: BackupOptions, progress: Progress | None = None) -> BackupResult:
    progress = progress or NullProgress()
    if opts.compression not in LEVELS:
        raise UsageError(f"unknown compression {opts.compression!r} (choose {', '.join(LEVELS)})")
    if opts.archive_type not in TYPES:
        raise UsageError(f"unknown backup type {opts.archive_type!r} (choose full, diff or inc)")
    if not os.path.isdir(opts.to):
        raise UsageError(f"destination {opts.to} is not a folder")
    started = time.monotonic()
    roots = normalize_roots(opts.paths)
    root_names = [os.fsdecode(r) for r in roots]
    notes: list[str] = []
    parent = None
    if opts.archive_type != "full":
        parent, why = find_parent(opts.to, root_names, opts.archive_type, KeyRing(opts.password),
                                  encrypt=opts.password is not None)
        if parent is None:
            notes.append(f"making a Full backup instead of {opts.archive_type}: {why}")
    dest = os.stat(opts.to)
    try:  # the walk waits on the disk: meanwhile derive keys and read the parent's catalog
        with ThreadPoolExecutor(1, thread_name_prefix="dv-walk") as background:
            walking = background.submit(walk, roots, opts.filters, (dest.st_dev, dest.st_ino))
            header, key = _new_header(opts, parent)
            known = parent.hashes() if parent else set()
            parent_catalog = parent.head.catalog if parent else b""
            refs = scan(parent_catalog)
            walked = walking.result()
    finally:
        if parent is not None:
            parent.close()
    sealer = Sealer(key.chunk_key, header.set_id) if key else None
    writer = ArchiveWriter(opts.to, header, known, opts.split_size or auto_split_size(opts.to), sealer)
    try:
        store = ChunkStore(writer, opts.compression, key.hash_key if key else None, sealer)
        chunker = Chunker(chunker_seed(store.hash_key), header.chunk_min, header.chunk_avg, header.chunk_max)
        run = _Run(walked.found, parent_catalog, refs, store, chunker, progress)
        run.plan()
        run.read_content()
        catalog, entries = run.catalog_bytes()
        errors = walked.errors + run.errors
        metadata = {
            "format": 1,
            "type": TYPE_NAMES[header.archive_type],
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(header.created_ns / 1e9)),
            "host": socket.gethostname(),
            "roots": root_names,
            "compression": opts.compression,
            "filters": opts.filters.to_dict(),
            "stats": {"entries": entries, "files_read": run.files_read, "files_unchanged": run.unchanged,
                      "bytes_read": run.bytes_read, "skipped": walked.skipped},
            "changed_during_read": run.changed,
            "errors": errors,
        }
        path = writer.finish(catalog, entries, metadata)
    except BaseException:
        progress.finish()
        writer.abort()
        raise
    return BackupResult(
        archive=path, set_id=header.set_id.hex().upper(), archive_type=TYPE_NAMES[header.archive_type],
        increment=header.increment, entries=entries, files_read=run.files_read, files_unchanged=run.unchanged,
        skipped=walked.skipped, bytes_read=run.bytes_read, bytes_new=writer.logical_bytes,
        bytes_written=sum(os.path.getsize(p) for p in writer.final_paths),
        seconds=round(time.monotonic() - started, 3), parts=writer.final_paths, notes=notes + walked.notes,
        changed=run.changed, errors=errors)
