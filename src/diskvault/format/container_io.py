"""Writing and reading the parts of a container (container.py), for images and file archives alike.

    write: part 0 .. n as NAME.partial: header, chunks (a new part when the next would pass the split
           size) -> sections sealed, then the footer, into the last part -> fsync -> every part renamed,
           the footer's part last -> folder fsynced. A crash never leaves a set that looks complete.
    read:  parts found by name, gaps named -> footer of the last part -> sections, each digest
           checked -> every byte of every part accounted for (header, chunk, section or footer).

Each format supplies its header and footer classes, its part names and its index records.
"""

from __future__ import annotations

import ctypes
import os
import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Self

import numpy as np

from diskvault.crypto.aead import Sealer
from diskvault.crypto.keys import KdfParams, PasswordSource, SetKey, unlock
from diskvault.errors import (ImageFormatError, IncompleteImageError, IntegrityError, MissingChainMemberError,
                              UsageError)
from diskvault.format import codec
from diskvault.format.container import FOOTER_SIZE, HEADER_SIZE, Section

PARTIAL_SUFFIX = ".partial"
MIN_SPLIT = 1 << 20
# Start writing chunks out every this many bytes, so the closing fsync has little left to wait
# for: without it the page cache holds the whole image (below the dirty thresholds) until the end.
WRITE_OUT_STEP = 32 << 20
_SYNC_FILE_RANGE_WRITE = 2  # start write-out of dirty pages, do not wait


def _sync_file_range():
    """libc's sync_file_range (Linux), or None."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return fn


_sync_range = _sync_file_range()


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def find_parts(path: str, name_re: re.Pattern[str], file_name: Callable[[bytes, int, int], str],
               noun: str = "") -> list[str]:
    """All split parts of the container ``path`` belongs to, in order. ``name_re`` matches part names
    as (id, increment, part); a gap in the numbering is a missing part and is named (``noun`` adds
    which set it belongs to)."""
    folder, name = os.path.split(path)
    m = name_re.match(name)
    if not m:
        return [path]
    prefix = f"{m.group(1)}-{m.group(2)}-"
    parts = sorted(int(n[len(prefix):len(prefix) + 2]) for n in os.listdir(folder or ".")
                   if n.startswith(prefix) and name_re.match(n))
    container_id, increment = bytes.fromhex(m.group(1)), int(m.group(2))
    for expected, found in enumerate(parts):
        if expected != found:
            missing = file_name(container_id, increment, expected)
            of_set = f" of {noun} {prefix}NN" if noun else ""
            raise MissingChainMemberError(f"missing part {missing}{of_set}")
    return [os.path.join(folder, file_name(container_id, increment, p)) for p in parts] or [path]


class KeyRing:
    """Passwords are asked once and each set key derived once, however many images are opened."""

    def __init__(self, password: PasswordSource | None = None) -> None:
        self._password = password
        self._cached_password: str | None = None
        self._keys: dict[tuple, SetKey] = {}

    def key_for(self, header: Any, path: str) -> SetKey:
        """The set key for a header with the KDF fields (kdf_salt, kdf_time, ..., key_check)."""
        kdf = KdfParams(header.kdf_salt, header.kdf_time, header.kdf_memory_kib, header.kdf_parallelism)
        cache_key = (kdf, header.key_check)
        if cache_key not in self._keys:
            if self._cached_password is None:
                if self._password is None:
                    raise UsageError(f"{path} is encrypted: give --password-file or --password-env")
                self._cached_password = self._password()
            try:
                self._keys[cache_key] = unlock(self._cached_password, kdf, header.key_check, path)
            except ValueError as e:
                raise ImageFormatError(path, e) from None
        return self._keys[cache_key]


class ContainerWriter:
    """Append-only writer of one container's parts. Subclasses name the parts (``_part_path``),
    append chunks (``_f``, ``_offset``, ``_records``, ``_room_for``) and call ``_commit``."""

    section_names: dict[int, str] = {}

    def __init__(self, directory: str, header: Any, split_size: int | None, sealer: Sealer | None) -> None:
        if split_size is not None and split_size < MIN_SPLIT:
            raise ValueError(f"split size must be at least {MIN_SPLIT} bytes")
        self.directory = directory
        self.header = header  # a dataclass with split_part, increment and pack()
        self.split_size = split_size
        self.sealer = sealer
        self.temp_paths: list[str] = []
        self.final_paths: list[str] = []
        self._records: list[tuple] = []
        self.stored_bytes = 0
        self.logical_bytes = 0
        self._f = None
        self._open_part()

    def _part_path(self, part: int) -> str:
        """The final path of split part ``part``."""
        raise NotImplementedError

    def _open_part(self) -> None:
        part = len(self.final_paths)
        final = self._part_path(part)
        if os.path.exists(final):
            raise FileExistsError(final)
        if self._f is not None:
            os.fsync(self._f.fileno())
            self._f.close()
        self.final_paths.append(final)
        self.temp_paths.append(final + PARTIAL_SUFFIX)
        self._f = open(self.temp_paths[-1], "wb", buffering=0)
        self._f.write(replace(self.header, split_part=part).pack())
        self._offset = HEADER_SIZE
        self._written_out = 0  # write-out started up to here
        self._part_has_chunks = False

    def _start_write_out(self) -> None:
        """Every WRITE_OUT_STEP bytes, start (not wait for) writing the part's new bytes to disk."""
        if _sync_range and self._offset - self._written_out >= WRITE_OUT_STEP:
            _sync_range(self._f.fileno(), self._written_out, self._offset - self._written_out,
                        _SYNC_FILE_RANGE_WRITE)  # a failure here shows at the fsync
            self._written_out = self._offset

    def _room_for(self, n: int) -> None:
        """Start a new part when ``n`` more bytes would pass the split size (a part holds at least
        one chunk)."""
        if self.split_size and self._part_has_chunks and self._offset + n > self.split_size:
            self._open_part()

    def _seal_section(self, number: int, raw: bytes) -> bytes:
        stored = codec.pack_section(raw)
        if self.sealer:
            stored = self.sealer.seal(stored, self.sealer.section_aad(self.section_names[number],
                                                                      self.header.increment))
        return stored

    def _commit(self, raws: dict[int, bytes], footer_for: Callable[[int], Any]) -> str:
        """Write the sections (by number) and the footer ``footer_for(part_count)`` gives; fsync; rename
        every part into place, the footer's part last. Returns part 0's path."""
        stored = {n: self._seal_section(n, raw) for n, raw in raws.items()}
        self._room_for(sum(map(len, stored.values())) + FOOTER_SIZE)  # else: a part of their own
        footer = footer_for(len(self.final_paths))
        for n in sorted(stored):
            footer.sections[n] = Section(offset=self._offset, stored_length=len(stored[n]),
                                         raw_length=len(raws[n]), digest=codec.section_digest(stored[n]))
            self._f.write(stored[n])
            self._offset += len(stored[n])
        self._f.write(footer.pack())
        os.fsync(self._f.fileno())
        self._f.close()
        self._f = None
        for temp, final in zip(self.temp_paths, self.final_paths):  # the footer's part goes last
            os.replace(temp, final)
        fsync_dir(self.directory)
        return self.final_paths[0]

    def abort(self) -> None:
        """Remove the partial files (after an error or an interruption)."""
        if self._f is not None:
            self._f.close()
            self._f = None
        for temp in self.temp_paths:
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass


class ContainerFile:
    """One complete container (all its split parts) opened read-only. Subclasses open the parts and
    check their headers in ``_open``, then use the checked reads here."""

    noun = "container"  # in messages: image | archive
    section_names: dict[int, str] = {}

    def __init__(self, path: str, keyring: KeyRing | None = None) -> None:
        self.path = path
        self._fds: list[int] = []
        self.key: SetKey | None = None
        self.sealer: Sealer | None = None
        try:
            self._open(path, keyring or KeyRing())
        except BaseException:
            self.close()
            raise

    def _open(self, path: str, keyring: KeyRing) -> None:
        """Set header, part_paths, part_sizes, footer, index and metadata (using the helpers below)."""
        raise NotImplementedError

    def _read_footer(self, unpack: Callable[[bytes], Any], no_footer: Callable[[], Exception]) -> None:
        """Read the last part's footer into ``footer_raw`` and ``footer``; ``no_footer`` is the error
        for a file that has none."""
        last, last_size = self.part_paths[-1], self.part_sizes[-1]
        if last_size < HEADER_SIZE + FOOTER_SIZE:
            raise IncompleteImageError(last)
        self.footer_raw = os.pread(self._fds[-1], FOOTER_SIZE, last_size - FOOTER_SIZE)
        try:
            self.footer = unpack(self.footer_raw)
        except ValueError as e:
            if "checksum" in str(e):
                raise IntegrityError(f"{last}: {e}") from None
            raise no_footer() from None

    def _check_footer_matches(self, header_id: bytes, footer_id: bytes,
                              file_name: Callable[[bytes, int, int], str]) -> None:
        """The footer counts every part and belongs to the same container as the headers."""
        if self.footer.part_count != len(self.part_paths):
            missing = file_name(header_id, self.header.increment, len(self.part_paths))
            raise MissingChainMemberError(f"{self.noun} {self.path} has {self.footer.part_count} parts: "
                                          f"missing {missing}")
        if footer_id != header_id or self.footer.increment != self.header.increment:
            raise IntegrityError(f"{self.part_paths[-1]}: footer belongs to another {self.noun}")

    def _unlock(self, keyring: KeyRing, container_id: bytes) -> None:
        if self.header.encrypted:
            self.key = keyring.key_for(self.header, self.path)
            self.sealer = Sealer(self.key.chunk_key, container_id)

    def _section(self, number: int) -> bytes:
        """Section ``number``'s raw bytes: place, digest, seal and length checked."""
        s = self.footer.sections[number]
        name, last = self.section_names[number], self.part_paths[-1]
        if s.offset < HEADER_SIZE or s.offset + s.stored_length > self.part_sizes[-1] - FOOTER_SIZE:
            raise IntegrityError(f"{last}: {name} section lies outside the file")
        stored = os.pread(self._fds[-1], s.stored_length, s.offset)
        if codec.section_digest(stored) != s.digest:
            raise IntegrityError(f"{last}: {name} section is damaged (checksum mismatch)")
        try:
            if self.sealer:
                stored = self.sealer.open(stored, self.sealer.section_aad(name, self.header.increment))
            raw = codec.unpack_section(stored, s.raw_length)
        except Exception:
            raise IntegrityError(f"{last}: {name} section cannot be decoded") from None
        if len(raw) != s.raw_length:
            raise IntegrityError(f"{last}: {name} section has the wrong length")
        return raw

    def _check_totals(self) -> None:
        idx = self.index
        if len(idx) != self.footer.chunk_count or int(idx["stored_length"].sum()) != self.footer.stored_bytes:
            raise IntegrityError(f"{self.path}: footer totals do not match the index")

    def _check_parts(self, stored: np.ndarray, in_file_order: bool) -> None:
        """Every byte of every part belongs to its header, a chunk, a section or the footer.
        ``stored``: the index records with bytes in the files; ``in_file_order``: the index lists
        each part's chunks in file order already (else they are sorted by file offset first)."""
        if np.any(self.index["part"] >= len(self.part_paths)):
            raise IntegrityError(f"{self.path}: index refers to a part that does not exist")
        for part, (p, size) in enumerate(zip(self.part_paths, self.part_sizes)):
            mine = stored[stored["part"] == part]
            if not in_file_order:
                mine = mine[np.argsort(mine["file_offset"])]
            offs = mine["file_offset"].astype(np.int64)
            lens = mine["stored_length"].astype(np.int64)
            back_to_back = HEADER_SIZE + np.concatenate(([0], np.cumsum(lens)[:-1]))
            if len(lens) and not np.array_equal(offs, back_to_back):
                raise IntegrityError(f"{p}: index does not describe the file (overlapping or missing chunks)")
            end = HEADER_SIZE + int(lens.sum())
            if part == len(self.part_paths) - 1:
                for number in sorted(self.section_names):
                    s = self.footer.sections[number]
                    if s.offset != end:
                        name = self.section_names[number]
                        raise IntegrityError(f"{p}: {name} section is not where expected")
                    end += s.stored_length
                end += FOOTER_SIZE
            if end != size:
                raise IntegrityError(f"{p}: file size does not match its index and footer")

    @property
    def hash_key(self) -> bytes | None:
        return self.key.hash_key if self.key else None

    def read_stored(self, i: int) -> bytes:
        rec = self.index[i]
        return os.pread(self._fds[int(rec["part"])], int(rec["stored_length"]), int(rec["file_offset"]))

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
