"""Walk the trees to back up: depth first, names sorted (bytes), parents before children, with
gitignore-style filters (pathspec), --one-file-system, --exclude-caches and special files skipped.

Archive paths are the absolute source paths without the leading '/', so several roots fit in one
archive without clashing (as tar and restic do); the roots' parent directories are entries too.
Filters match these paths: ``*.log``, ``cache/``, ``/home/*/tmp``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import pathspec

from diskvault.errors import UsageError

CACHEDIR_TAG = b"CACHEDIR.TAG"
CACHEDIR_SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55"
SPECIAL = (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFSOCK)
WALK_THREADS = min(4, os.cpu_count() or 2)  # more threads only contend in the kernel


@dataclass(slots=True)
class Found:
    rel: bytes  # archive path
    path: bytes  # source path
    st: os.stat_result


@dataclass
class Filters:
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    exclude_files: list[str] = field(default_factory=list)
    exclude_caches: bool = False
    one_file_system: bool = False
    special: bool = False  # back up device nodes and sockets too

    def exclude_patterns(self) -> list[str]:
        lines = list(self.exclude)
        for name in self.exclude_files:
            try:
                with open(name, encoding="utf-8", errors="surrogateescape") as f:
                    lines += f.read().splitlines()
            except OSError as e:
                raise UsageError(f"cannot read exclude file {name}: {e.strerror}") from None
        return lines

    def to_dict(self) -> dict:
        return {"include": self.include, "exclude": self.exclude_patterns(), "exclude_caches": self.exclude_caches,
                "one_file_system": self.one_file_system, "special": self.special}


@dataclass
class WalkResult:
    found: list[Found] = field(default_factory=list)
    skipped: int = 0  # entries left out by filters
    errors: list[str] = field(default_factory=list)  # what could not be read (left out)
    notes: list[str] = field(default_factory=list)


def normalize_roots(paths: list[str]) -> list[bytes]:
    """Absolute roots with their parents resolved (the root itself is kept as it is, even a
    symlink), sorted, without roots inside other roots."""
    roots = []
    for p in paths:
        a = os.path.abspath(p)
        if a != "/":
            a = os.path.join(os.path.realpath(os.path.dirname(a)), os.path.basename(a))
        if not os.path.lexists(a):
            raise UsageError(f"cannot back up {p}: no such file or directory")
        roots.append(os.fsencode(a))
    roots.sort()
    out: list[bytes] = []
    for r in roots:
        if not any(r == o or r.startswith(o.rstrip(b"/") + b"/") for o in out):
            out.append(r)
    return out


def _spec(lines: list[str]) -> pathspec.GitIgnoreSpec | None:
    lines = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return pathspec.GitIgnoreSpec.from_lines(lines) if lines else None


def _match(spec: pathspec.GitIgnoreSpec, rel: bytes, is_dir: bool) -> bool:
    return spec.match_file(os.fsdecode(rel) + ("/" if is_dir else ""))


def _is_cache_dir(path: bytes) -> bool:
    try:
        with open(os.path.join(path, CACHEDIR_TAG), "rb") as f:
            return f.read(len(CACHEDIR_SIGNATURE)) == CACHEDIR_SIGNATURE
    except OSError:
        return False


def walk(roots: list[bytes], filters: Filters, skip_dir: tuple[int, int] | None = None) -> WalkResult:
    """Everything to back up under ``roots``; ``skip_dir`` (dev, ino) is a folder never descended
    into (the destination, when it lies inside a root)."""
    exclude, include = _spec(filters.exclude_patterns()), _spec(filters.include)
    out = WalkResult()
    seen_parents: set[bytes] = set()
    with ThreadPoolExecutor(WALK_THREADS, thread_name_prefix="dv-walk") as pool:
        for root in roots:
            rel_root = root.lstrip(b"/")
            parts = rel_root.split(b"/")[:-1] if rel_root else []
            for i in range(len(parts)):  # parents of the root, as directories
                rel = b"/".join(parts[:i + 1])
                if rel not in seen_parents:
                    seen_parents.add(rel)
                    out.found.append(Found(rel, b"/" + rel, os.stat(b"/" + rel)))
            _Tree(pool, filters, exclude, skip_dir, out).walk(root, rel_root)
    if include is not None:
        _apply_include(out, include, seen_parents)
    return out


@dataclass
class _Listing:
    children: list[Found] = field(default_factory=list)
    skipped: int = 0
    errors: list[str] = field(default_factory=list)


class _Tree:
    """One root: folders are listed and their entries lstat'ed by a pool of threads (a cold
    cache's inode and directory reads overlap), then put together depth first, in name order."""

    def __init__(self, pool: ThreadPoolExecutor, filters: Filters, exclude, skip_dir, out: WalkResult) -> None:
        self.pool, self.filters, self.exclude, self.skip_dir, self.out = pool, filters, exclude, skip_dir, out
        self.pending: dict[bytes, Future] = {}  # folder rel -> its listing (set before the parent's returns)

    def walk(self, root: bytes, rel_root: bytes) -> None:
        st = os.lstat(root)
        self.root_dev = st.st_dev
        if rel_root:  # "/" itself has no entry
            self.out.found.append(Found(rel_root, root, st))
        if not self._descend(root, st):
            return
        stack = [self._take(self.pool.submit(self._list, root, rel_root))]
        while stack:
            f = next(stack[-1], None)
            if f is None:
                stack.pop()
                continue
            self.out.found.append(f)
            future = self.pending.pop(f.rel, None)
            if future is not None:
                stack.append(self._take(future))

    def _take(self, future: Future) -> Iterator[Found]:
        listing = future.result()
        self.out.skipped += listing.skipped
        self.out.errors += listing.errors
        return iter(listing.children)

    def _descend(self, path: bytes, st: os.stat_result) -> bool:
        if not stat.S_ISDIR(st.st_mode) or (self.filters.one_file_system and st.st_dev != self.root_dev):
            return False
        if self.skip_dir == (st.st_dev, st.st_ino):
            self.out.notes.append(f"{os.fsdecode(path)} is the destination folder: its contents are not backed up")
            return False
        return True

    def _list(self, path: bytes, rel: bytes) -> _Listing:
        """A folder's kept entries, lstat'ed; sub-folders are queued before returning."""
        out = _Listing()
        try:
            names = sorted(os.listdir(path))
        except OSError as e:
            out.errors.append(f"{os.fsdecode(path)}: {e.strerror}")
            return out
        if self.filters.exclude_caches and CACHEDIR_TAG in names and _is_cache_dir(path):
            out.skipped += len(names) - 1
            names = [CACHEDIR_TAG]
        base, prefix = path.rstrip(b"/") + b"/", rel + b"/" if rel else b""
        exclude, special = self.exclude, self.filters.special
        for name in names:
            child, child_rel = base + name, prefix + name
            try:
                st = os.lstat(child)
            except FileNotFoundError:
                continue  # vanished since the folder was listed
            except OSError as e:
                out.errors.append(f"{os.fsdecode(child)}: {e.strerror}")
                continue
            fmt = stat.S_IFMT(st.st_mode)
            if (exclude is not None and _match(exclude, child_rel, fmt == stat.S_IFDIR)) or \
                    (fmt in SPECIAL and not special):
                out.skipped += 1
                continue
            out.children.append(Found(child_rel, child, st))
            if fmt == stat.S_IFDIR and self._descend(child, st):
                self.pending[child_rel] = self.pool.submit(self._list, child, child_rel)
        return out


def _apply_include(out: WalkResult, include, parents: set[bytes]) -> None:
    """Keep entries an include pattern matches, with their parent directories."""
    keep = set(parents)
    for f in out.found:
        if f.rel not in keep and _match(include, f.rel, stat.S_ISDIR(f.st.st_mode)):
            rel = f.rel
            while rel and rel not in keep:
                keep.add(rel)
                rel = rel.rpartition(b"/")[0]
    before = len(out.found)
    out.found = [f for f in out.found if f.rel in keep]
    out.skipped += before - len(out.found)
