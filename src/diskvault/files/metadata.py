"""Metadata beyond stat: extended attributes (POSIX ACLs are the system.posix_acl_* attributes) and
owner names, read at backup and applied at restore in the order the kernel needs:
owner (clears set-id bits and capabilities) -> mode -> xattrs/ACLs -> times (last: the others touch them).
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat

from diskvault.files.catalog import Entry
from diskvault.files.layout import T_SYMLINK

KEEP_PREFIXES = (b"user.", b"security.", b"trusted.")
KEEP_NAMES = (b"system.posix_acl_access", b"system.posix_acl_default")
_UNSUPPORTED = (errno.ENOTSUP, errno.ENODATA, errno.EOPNOTSUPP)


def read_xattrs(target: int | bytes, follow_symlinks: bool = False) -> list[tuple[bytes, bytes]]:
    """The kept attributes of an fd or path, sorted by name; [] where the filesystem has none."""
    try:
        names = os.listxattr(target, follow_symlinks=follow_symlinks) if not isinstance(target, int) \
            else os.listxattr(target)
    except OSError as e:
        if e.errno in _UNSUPPORTED:
            return []
        raise
    out = []
    for name in sorted(os.fsencode(n) for n in names):
        if name.startswith(KEEP_PREFIXES) or name in KEEP_NAMES:
            try:
                out.append((name, os.getxattr(target, name, follow_symlinks=follow_symlinks)
                            if not isinstance(target, int) else os.getxattr(target, name)))
            except OSError as e:
                if e.errno not in _UNSUPPORTED:
                    raise
    return out


class Owners:
    """uid/gid <-> user/group names, looked up once each."""

    def __init__(self, numeric: bool = False) -> None:
        self.numeric = numeric
        self._names: dict[tuple[str, int], bytes] = {}
        self._ids: dict[tuple[str, bytes], int | None] = {}

    def user(self, uid: int) -> bytes:
        return self._name("u", uid)

    def group(self, gid: int) -> bytes:
        return self._name("g", gid)

    def _name(self, kind: str, num: int) -> bytes:
        key = (kind, num)
        if key not in self._names:
            try:
                name = pwd.getpwuid(num).pw_name if kind == "u" else grp.getgrgid(num).gr_name
                self._names[key] = name.encode()
            except KeyError:
                self._names[key] = b""
        return self._names[key]

    def ids(self, e: Entry) -> tuple[int, int]:
        """Local uid, gid for an entry: by name unless --numeric-owner or the name is unknown here."""
        if self.numeric:
            return e.uid, e.gid
        return self._id("u", e.user, e.uid), self._id("g", e.group, e.gid)

    def _id(self, kind: str, name: bytes, fallback: int) -> int:
        if not name:
            return fallback
        key = (kind, name)
        if key not in self._ids:
            try:
                self._ids[key] = pwd.getpwnam(name.decode()).pw_uid if kind == "u" \
                    else grp.getgrnam(name.decode()).gr_gid
            except (KeyError, UnicodeDecodeError):
                self._ids[key] = None
        found = self._ids[key]
        return fallback if found is None else found


def _set_xattrs(target: int | str, e: Entry, warnings: list[str], follow_symlinks: bool = True) -> None:
    for name, value in e.xattrs:
        try:
            os.setxattr(target, name, value, follow_symlinks=follow_symlinks) if not isinstance(target, int) \
                else os.setxattr(target, name, value)
        except OSError as err:
            warnings.append(f"{e.name}: cannot set attribute {os.fsdecode(name)}: {err.strerror}")


def _chown(fn, e: Entry, warnings: list[str]) -> None:
    try:
        fn()
    except PermissionError:
        if os.geteuid() == 0:
            warnings.append(f"{e.name}: cannot set owner")


def apply_fd(fd: int, e: Entry, owner: tuple[int, int], warnings: list[str]) -> None:
    """Owner, mode, xattrs and times of a file or directory opened as ``fd``."""
    _chown(lambda: os.fchown(fd, *owner), e, warnings)
    os.fchmod(fd, stat.S_IMODE(e.mode))
    _set_xattrs(fd, e, warnings)
    os.utime(fd, ns=(e.atime_ns, e.mtime_ns))


def apply_at(dir_fd: int, name: bytes, e: Entry, owner: tuple[int, int], warnings: list[str]) -> None:
    """The same for an entry that cannot be opened for writing (symlink, FIFO, device, socket),
    addressed relative to its parent's fd and never followed."""
    _chown(lambda: os.chown(name, *owner, dir_fd=dir_fd, follow_symlinks=False), e, warnings)
    where = f"/proc/self/fd/{dir_fd}/{os.fsdecode(name)}"
    if e.type != T_SYMLINK:  # Linux has no symlink modes
        os.chmod(name, stat.S_IMODE(e.mode), dir_fd=dir_fd, follow_symlinks=False)
    _set_xattrs(where, e, warnings, follow_symlinks=False)
    os.utime(name, ns=(e.atime_ns, e.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)
