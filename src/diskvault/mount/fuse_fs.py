"""The read-only FUSE filesystem over a chain (mfusepy, libfuse's multi-threaded loop):

    /disk.img      the whole disk at the image's point in time (absent cells read as zeros)
    /partN.img     each partition's bytes
    /N/            an empty folder per partition whose files get mounted there (attach.py), or
                   the files of a filesystem this machine cannot mount, served from a browse tree

Content never changes, so the kernel may cache pages and attributes for as long as it likes."""

from __future__ import annotations

import ctypes.util
import errno
import os
import stat
from dataclasses import dataclass

from diskvault.errors import DiskvaultError
from diskvault.mount.prefetch import PrefetchReader
from diskvault.mount.tree_view import TreeView

CACHE_SECONDS = 86400


class FuseUnavailableError(DiskvaultError):
    """FUSE is not available: {}"""


def load_mfusepy():
    """mfusepy bound to libfuse3 when installed (else libfuse2), or a clear error."""
    if "FUSE_LIBRARY_PATH" not in os.environ and ctypes.util.find_library("fuse3"):
        os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
    try:
        import mfusepy
    except ImportError:
        raise FuseUnavailableError("the Python package mfusepy is not installed (pip install mfusepy)") from None
    except (OSError, AttributeError) as e:
        raise FuseUnavailableError(f"libfuse cannot be loaded ({e}); install the Debian package fuse3") from None
    return mfusepy


@dataclass(frozen=True)
class Slice:
    """A file of the mount: ``size`` bytes of the disk from ``start``."""

    start: int
    size: int


def layout(disk_size: int, partitions: list[dict]) -> dict[str, Slice]:
    """File name -> disk slice: disk.img, then partN.img for every partition of the image."""
    files = {"disk.img": Slice(0, disk_size)}
    for p in partitions:
        files[f"part{p['number']}.img"] = Slice(p["start"], p["size"])
    return files


def operations(reader: PrefetchReader, files: dict[str, Slice], folders: list[str], trees: dict[str, TreeView],
               mtime_ns: int, on_ready=None):
    """The mfusepy Operations object serving ``files``, empty ``folders`` (nested mount points) and
    ``trees`` (folder name -> a filesystem served in-process)."""
    fuse = load_mfusepy()
    names = [*files, *folders, *trees]

    def in_tree(path: str) -> tuple[TreeView, str] | None:
        top, _, rest = path.lstrip("/").partition("/")
        view = trees.get(top)
        return (view, "/" + rest) if view else None

    class DiskFS(fuse.Operations):
        use_ns = True

        def init(self, path: str) -> None:
            if on_ready:
                on_ready()

        def _attrs(self, mode: int, size: int, nlink: int) -> dict:
            return {"st_mode": mode, "st_nlink": nlink, "st_size": size, "st_uid": 0, "st_gid": 0,
                    "st_mtime": mtime_ns, "st_atime": mtime_ns, "st_ctime": mtime_ns, "st_blksize": 1 << 20}

        def getattr(self, path: str, fh=None) -> dict:
            name = path.lstrip("/")
            if not name:
                return self._attrs(stat.S_IFDIR | 0o555, 0, 2 + len(folders) + len(trees))
            if name in files:
                return self._attrs(stat.S_IFREG | 0o444, files[name].size, 1)
            if name in folders:
                return self._attrs(stat.S_IFDIR | 0o555, 0, 2)
            if tree := in_tree(path):
                return tree[0].getattr(tree[1])
            raise fuse.FuseOSError(errno.ENOENT)

        def readdir(self, path: str, fh: int) -> list[str]:
            if path == "/":
                return [".", "..", *names]
            if path.lstrip("/") in folders:
                return [".", ".."]
            if tree := in_tree(path):
                return tree[0].readdir(tree[1])
            raise fuse.FuseOSError(errno.ENOENT)

        def readlink(self, path: str) -> str:
            if tree := in_tree(path):
                return tree[0].readlink(tree[1])
            raise fuse.FuseOSError(errno.EINVAL)

        def open(self, path: str, flags: int) -> int:
            if flags & os.O_ACCMODE != os.O_RDONLY:
                raise fuse.FuseOSError(errno.EROFS)
            if tree := in_tree(path):
                return tree[0].open(tree[1])
            if path.lstrip("/") not in files:
                raise fuse.FuseOSError(errno.ENOENT)
            return 0

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            if tree := in_tree(path):
                return tree[0].read(fh, size, offset)
            f = files.get(path.lstrip("/"))
            if f is None:
                raise fuse.FuseOSError(errno.ENOENT)
            if offset >= f.size:
                return b""
            try:
                return reader.read(f.start + offset, min(size, f.size - offset))
            except DiskvaultError:  # damaged chunk: the reader of the file gets EIO, the mount lives on
                raise fuse.FuseOSError(errno.EIO) from None

        def release(self, path: str, fh: int) -> int:
            if tree := in_tree(path):
                tree[0].release(fh)
            return 0

        def statfs(self, path: str) -> dict:
            total = sum(f.size for f in files.values())
            return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": total // 4096, "f_bfree": 0, "f_bavail": 0,
                    "f_files": len(names) + 1, "f_ffree": 0, "f_namemax": 255}

    return DiskFS()


def serve(ops, mountpoint: str, fsname: str) -> None:
    """Mount and serve until unmounted (blocks; runs libfuse's multi-threaded loop)."""
    fuse = load_mfusepy()
    threads = {"max_idle_threads": 8} if fuse.fuse_version_major == 3 else {}  # libfuse 3.14 warns without it
    try:
        fuse.FUSE(ops, mountpoint, foreground=True, ro=True, fsname=fsname, subtype="diskvault",
                  kernel_cache=True, entry_timeout=CACHE_SECONDS, attr_timeout=CACHE_SECONDS,
                  negative_timeout=CACHE_SECONDS, **threads)
    except RuntimeError as e:  # libfuse said why on stderr; mfusepy only passes its return code
        raise FuseUnavailableError(f"libfuse could not mount {mountpoint} (code {e})") from None
