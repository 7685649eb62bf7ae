"""Export an image's disk (at its point in the chain) as a virtual disk for VMs.

    raw            : the restore path into a new sparse file (absent and zero blocks stay holes)
    qcow2/vhdx/vmdk: qemu-img convert from disk.img of a temporary FUSE mount (nothing staged);
                     without FUSE, from a temporary raw export beside OUT
Written to OUT.partial, renamed when complete; the temporary mount is always unmounted."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from diskvault.crypto.keys import PasswordSource
from diskvault.errors import DiskvaultError, UsageError
from diskvault.imaging.restore import RestoreOptions, restore_image
from diskvault.mount.fuse_fs import FuseUnavailableError
from diskvault.mount.session import MountOptions, check_fuse, mount_image, unmount_image
from diskvault.ui.progress import NullProgress, Progress

FORMATS = ("raw", "qcow2", "vhdx", "vmdk")


class ExportError(DiskvaultError):
    """export to {} failed: {}"""


@dataclass
class ExportOptions:
    image: str
    out: str
    format: str = "raw"
    password: PasswordSource | None = None
    overwrite: bool = False


@dataclass
class ExportResult:
    image: str
    out: str
    format: str
    via: str  # "stream", "fuse" or "raw-file"
    file_size: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _raw(opts: ExportOptions, target: str, progress: Progress) -> None:
    restore_image(RestoreOptions(image=opts.image, target=target, password=opts.password), confirm=None,
                  progress=progress)


@contextlib.contextmanager
def _source(opts: ExportOptions, workdir: str, progress: Progress) -> Iterator[tuple[str, str]]:
    """(path of the disk's raw bytes, how): disk.img of a temporary mount, else a temporary raw file."""
    try:
        check_fuse()
    except FuseUnavailableError:
        raw = os.path.join(workdir, "disk.raw")
        _raw(opts, raw, progress)
        yield raw, "raw-file"
        return
    mountpoint = os.path.join(workdir, "mnt")
    os.mkdir(mountpoint)
    mount_image(MountOptions(image=opts.image, mountpoint=mountpoint, password=opts.password))
    try:
        yield os.path.join(mountpoint, "disk.img"), "fuse"
    finally:
        unmount_image(mountpoint, lazy=True)


def export_image(opts: ExportOptions, progress: Progress | None = None) -> ExportResult:
    progress = progress or NullProgress()
    if opts.format not in FORMATS:
        raise UsageError(f"unknown format {opts.format!r} (choose {', '.join(FORMATS)})")
    if os.path.exists(opts.out) and not opts.overwrite:
        raise UsageError(f"{opts.out} exists (use --overwrite to replace it)")
    if opts.format != "raw" and not shutil.which("qemu-img"):
        raise UsageError("qemu-img is missing (install the Debian package qemu-utils)")
    started = time.monotonic()
    partial = opts.out + ".partial"
    _remove(partial)
    try:
        if opts.format == "raw":
            _raw(opts, partial, progress)
            via = "stream"
        else:
            folder = os.path.dirname(os.path.abspath(opts.out))
            with tempfile.TemporaryDirectory(prefix=".diskvault-export-", dir=folder) as workdir, \
                    _source(opts, workdir, progress) as (source, via):
                r = subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", opts.format, source, partial],
                                   check=False, capture_output=True, text=True, stdin=subprocess.DEVNULL)
                if r.returncode != 0:
                    raise ExportError(opts.out, (r.stderr or r.stdout).strip() or f"qemu-img exited {r.returncode}")
        with open(partial, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(partial, opts.out)
    except BaseException:
        _remove(partial)
        raise
    return ExportResult(image=opts.image, out=opts.out, format=opts.format, via=via,
                        file_size=os.path.getsize(opts.out), seconds=round(time.monotonic() - started, 3))
