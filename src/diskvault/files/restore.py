"""Restore entries of a file archive into a folder; ``restore_files`` is what the CLI and web UI call.

    open the chain -> decode the catalog -> refuse unsafe names (safepath.py) -> select PATHs
    -> in catalog order: directories (0700 for now), files created O_EXCL|O_NOFOLLOW and filled by
       workers (chunks checked, holes left), symlinks/FIFOs/devices -> hard links
    -> directories' owner, mode, xattrs and times, deepest first

Existing entries are handled by the overwrite policy: never (default), older (the archive's mtime is
newer), always, ask. An existing directory is merged into; its metadata is replaced only with always.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

from diskvault.crypto.keys import PasswordSource
from diskvault.errors import DiskvaultError, IntegrityError, UsageError
from diskvault.files.catalog import Entry, iter_entries, select
from diskvault.files.errors import UnsafeArchiveError, UnsafePathError
from diskvault.files.layout import E_CHANGED, T_BLK, T_CHR, T_DIR, T_FIFO, T_FILE, T_HARDLINK, T_SYMLINK
from diskvault.files.metadata import Owners, apply_at, apply_fd
from diskvault.files.reader import ArchiveChain
from diskvault.files.safepath import SafeTree, check_catalog
from diskvault.format.reader import KeyRing
from diskvault.imaging.pipeline import ordered_map
from diskvault.ui.files_progress import files_reporter
from diskvault.ui.progress import NullProgress, Progress

OVERWRITE = ("never", "older", "always", "ask")
STREAM_MIN = 16 << 20
BATCH_FILES, BATCH_BYTES = 16, 16 << 20
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_NODE = {T_CHR: stat.S_IFCHR, T_BLK: stat.S_IFBLK}


@dataclass
class RestoreOptions:
    archive: str
    to: str
    paths: list[str] = field(default_factory=list)
    overwrite: str = "never"
    numeric_owner: bool = False
    password: PasswordSource | None = None
    confirm: Callable[[str], bool] | None = None  # asked per existing entry with overwrite=ask


@dataclass
class RestoreResult:
    archive: str
    target: str
    entries: int
    files: int
    bytes_written: int
    seconds: float
    skipped: list[str] = field(default_factory=list)  # existing entries kept by the overwrite policy
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        return asdict(self) | {"ok": self.ok}


def _links_as_copies(chosen: list[Entry], entries: list[Entry]) -> list[Entry]:
    """A chosen hard link whose target is not chosen is restored as a copy of the target."""
    paths = {e.path for e in chosen}
    by_path = {e.path: e for e in entries}
    return [dataclasses.replace(by_path[e.link], path=e.path) if e.type == T_HARDLINK and e.link not in paths
            else e for e in chosen]


def restore_files(opts: RestoreOptions, progress: Progress | None = None) -> RestoreResult:
    if opts.overwrite not in OVERWRITE:
        raise UsageError(f"unknown overwrite policy {opts.overwrite!r} (choose {', '.join(OVERWRITE)})")
    started = time.monotonic()
    with ArchiveChain(opts.archive, KeyRing(opts.password)) as chain:
        try:
            entries = list(iter_entries(chain.head.catalog))
        except ValueError as e:
            raise IntegrityError(f"{opts.archive}: catalog is damaged ({e})") from None
        problems = check_catalog(entries)
        if problems:
            more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
            raise UnsafeArchiveError(opts.archive, "; ".join(problems[:5]) + more)
        try:
            chosen = _links_as_copies(select(entries, opts.paths, with_parents=True), entries)
        except ValueError as e:
            raise UsageError(str(e)) from None
        tree = SafeTree(opts.to)
        try:
            run = _Restore(chain, tree, opts, progress or NullProgress())
            run.run(chosen)
        finally:
            tree.close()
    return RestoreResult(archive=opts.archive, target=opts.to, entries=run.count, files=run.files,
                         bytes_written=run.bytes, seconds=round(time.monotonic() - started, 3), skipped=run.skipped,
                         warnings=run.warnings, errors=run.errors)


class _Restore:
    def __init__(self, chain: ArchiveChain, tree: SafeTree, opts: RestoreOptions, progress: Progress) -> None:
        self.chain, self.tree, self.opts, self.progress = chain, tree, opts, progress
        self.owners = Owners(opts.numeric_owner)
        self.restored: set[bytes] = set()  # non-directories made by this restore (hard-link targets)
        self.dirs: list[Entry] = []  # whose metadata is applied at the end
        self.skipped: list[str] = []
        self.warnings: list[str] = []
        self.errors: list[str] = []
        self.count = self.files = self.bytes = 0
        self._total_files = 0
        self._streamed: dict[bytes, int] = {}  # big files: bytes written so far
        self._failed: dict[bytes, str] = {}  # big files: first error
        self._report_files = files_reporter(progress)

    def run(self, entries: list[Entry]) -> None:
        files = [e for e in entries if e.type == T_FILE]
        self._total_files = len(files)
        self.progress.start("restoring", sum(e.size for e in files))
        for events in ordered_map(lambda job: job(), self._jobs(entries)):
            for event in events:
                self._event(*event)
        for e in entries:
            if e.type == T_HARDLINK:
                self._guard(e, self._hardlink)
        for e in reversed(self.dirs):
            self._guard(e, lambda e: apply_fd(self.tree.dir_fd(e.path, False), e, self.owners.ids(e), self.warnings))
        self.progress.finish()
        mask = os.umask(0)
        os.umask(mask)
        mine = {e.path for e in self.dirs}
        for rel in self.tree.created:  # parents the archive has no entry for
            if rel not in mine:
                os.fchmod(self.tree.dir_fd(rel, False), 0o777 & ~mask)

    def _guard(self, e: Entry, fn: Callable[[Entry], object]) -> object:
        try:
            return fn(e)
        except UnsafePathError as err:
            self.errors.append(f"{e.name}: not restored: {err}")
        except OSError as err:
            self.errors.append(f"{e.name}: {err.strerror or err}")
        return None

    # -- jobs ------------------------------------------------------------------------------------
    def _jobs(self, entries: list[Entry]) -> Iterator[Callable[[], list]]:
        batch: list[tuple[int, Entry]] = []
        size = 0
        for e in entries:
            if e.type == T_DIR:
                self._guard(e, self._dir)
            elif e.type == T_FILE:
                fd = self._guard(e, self._create_file)
                if fd is None:
                    continue
                if e.size <= STREAM_MIN:
                    batch.append((fd, e))
                    size += e.size
                    if len(batch) >= BATCH_FILES or size >= BATCH_BYTES:
                        yield self._batch(batch)
                        batch, size = [], 0
                    continue
                for ref in e.chunks:
                    yield lambda fd=fd, e=e, ref=ref: [("chunk", e, self._write(fd, e, [ref]))]
                yield lambda fd=fd, e=e: [("end", e, fd)]
            elif e.type != T_HARDLINK:
                self._guard(e, self._special)
        if batch:
            yield self._batch(batch)

    def _batch(self, batch: list[tuple[int, Entry]]) -> Callable[[], list]:
        items = list(batch)

        def job() -> list:
            out = []
            try:
                for fd, e in items:
                    written, error = self._write(fd, e, e.chunks)
                    out.append(("done", e, (written, error or self._finish(fd, e))))
            finally:
                for fd, _ in items:
                    os.close(fd)
            return out

        return job

    def _write(self, fd: int, e: Entry, refs: list) -> tuple[int, str]:
        """Write chunks into a file: (bytes written, error or "")."""
        written = 0
        try:
            for offset, length, digest in refs:
                data = memoryview(self.chain.chunk(digest))
                if len(data) != length:
                    raise IntegrityError(f"chunk {digest.hex()} has {len(data)} bytes, the catalog says {length}")
                while data:
                    n = os.pwrite(fd, data, offset)
                    data, offset, written = data[n:], offset + n, written + n
        except (OSError, DiskvaultError) as err:
            return written, f"{e.name}: {getattr(err, 'strerror', None) or err}"
        return written, ""

    def _finish(self, fd: int, e: Entry) -> str:
        try:
            os.ftruncate(fd, e.size)  # holes after the last data, and sparse files' holes stay holes
            warnings: list[str] = []
            apply_fd(fd, e, self.owners.ids(e), warnings)
            self.warnings += warnings
        except OSError as err:
            return f"{e.name}: {err.strerror}"
        return ""

    def _event(self, kind: str, e: Entry, value) -> None:
        if kind == "chunk":  # a big file's chunk; the file is finished at its "end"
            written, error = value
            self.bytes += written
            self._streamed[e.path] = self._streamed.get(e.path, 0) + written
            self.progress.advance(written)
            if error:
                self._failed.setdefault(e.path, error)
            return
        if kind == "end":
            error = self._failed.pop(e.path, "") or self._finish(value, e)
            os.close(value)
            self.progress.advance(max(0, e.size - self._streamed.pop(e.path, 0)))  # holes
        else:
            written, error = value
            self.bytes += written
            self.progress.advance(e.size)
        if error:
            self.errors.append(error)
        else:
            self.files += 1
            self.count += 1
            self.restored.add(e.path)
            if e.flags & E_CHANGED:
                self.warnings.append(f"{e.name}: was changing while it was backed up; its content may be torn")
        self._report_files(self.files, self._total_files)

    # -- namespace -------------------------------------------------------------------------------
    def _may_replace(self, e: Entry, st: os.stat_result) -> bool:
        policy = self.opts.overwrite
        ok = policy == "always" or (policy == "older" and st.st_mtime_ns < e.mtime_ns) or \
            (policy == "ask" and self.opts.confirm is not None
             and self.opts.confirm(f"overwrite {os.path.join(self.opts.to, e.name)}?"))
        if not ok:
            self.skipped.append(e.name)
        return ok

    def _make_room(self, dfd: int, name: bytes, e: Entry) -> bool:
        """True when ``name`` is free (after removing what was there, if the policy allows)."""
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return True
        if stat.S_ISDIR(st.st_mode):
            self.errors.append(f"{e.name}: a directory is in the way; not replaced")
            return False
        if not self._may_replace(e, st):
            return False
        os.unlink(name, dir_fd=dfd)
        return True

    def _dir(self, e: Entry) -> None:
        dfd, name = self.tree.parent(e.path)
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISDIR(st.st_mode):
            if not self._may_replace(e, st):
                return
            os.unlink(name, dir_fd=dfd)
            st = None
        self.tree.dir_fd(e.path)
        self.count += 1
        if st is None or self.opts.overwrite == "always":
            self.dirs.append(e)

    def _create_file(self, e: Entry) -> int | None:
        dfd, name = self.tree.parent(e.path)
        if not self._make_room(dfd, name, e):
            return None
        return os.open(name, _CREATE, 0o600, dir_fd=dfd)

    def _special(self, e: Entry) -> None:
        dfd, name = self.tree.parent(e.path)
        if not self._make_room(dfd, name, e):
            return
        if e.type == T_SYMLINK:
            os.symlink(e.link, name, dir_fd=dfd)
        elif e.type == T_FIFO:
            os.mkfifo(name, 0o600, dir_fd=dfd)
        else:
            os.mknod(name, _NODE.get(e.type, stat.S_IFSOCK) | 0o600, e.rdev, dir_fd=dfd)
        apply_at(dfd, name, e, self.owners.ids(e), self.warnings)
        self.restored.add(e.path)
        self.count += 1

    def _hardlink(self, e: Entry) -> None:
        if e.link not in self.restored:
            self.skipped.append(f"{e.name} (its target {os.fsdecode(e.link)} was not restored)")
            return
        dfd, name = self.tree.parent(e.path)
        if not self._make_room(dfd, name, e):
            return
        tfd, tname = self.tree.parent(e.link, create=False)
        os.link(tname, name, src_dir_fd=tfd, dst_dir_fd=dfd, follow_symlinks=False)
        self.count += 1
