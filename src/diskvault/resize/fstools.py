"""Minimum size, resize and check of one filesystem, with the filesystem's own tools.

Every function takes ``path``: a file or device holding exactly the filesystem (a stage file, or a
loop device on a window of the target). Shrinks run on stage files, grows in place; XFS only
grows. btrfs and XFS are resized mounted (a private mount under a temporary folder).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator

from diskvault.errors import FilesystemError
from diskvault.resize import fat

EXT = ("ext2", "ext3", "ext4")
CHECKS = {"ext2": ["e2fsck", "-fn"], "ext3": ["e2fsck", "-fn"], "ext4": ["e2fsck", "-fn"],
          "ntfs": ["ntfsfix", "-n"], "vfat": ["fsck.fat", "-n"], "xfs": ["xfs_repair", "-n"],
          "btrfs": ["btrfs", "check", "--readonly"]}
SWAP_MIN = 1 << 20
MIN_RESIZE = {"btrfs": 256 << 20}  # the kernel's btrfs resize ioctl refuses sizes below 256 MiB


def _run(*args: str) -> str:
    proc = subprocess.run(list(args), capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    if proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:]
        raise FilesystemError(f"{args[0]} failed ({proc.returncode}): {' / '.join(detail)}")
    return proc.stdout


@contextlib.contextmanager
def loop_window(path: str, offset: int = 0, size: int | None = None, read_only: bool = False) -> Iterator[str]:
    """A loop device on ``size`` bytes at ``offset`` of a file or block device (this kernel makes
    no partition devices for loops); always detached, by name."""
    args = ["losetup", "-f", "--show", "-o", str(offset)]
    if size:
        args += ["--sizelimit", str(size)]
    if read_only:
        args.append("-r")
    dev = _run(*args, path).strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True, check=False)


@contextlib.contextmanager
def mounted(dev: str, fstype: str) -> Iterator[str]:
    """``dev`` (a device, or a file mount loops itself) mounted on a private temporary folder."""
    with tempfile.TemporaryDirectory(prefix="diskvault-mnt-") as mnt:
        _run("mount", "-t", fstype, dev, mnt)
        try:
            yield mnt
        finally:
            subprocess.run(["umount", mnt], capture_output=True, check=False)


def can_shrink(fstype: str | None) -> bool:
    return fstype in (*EXT, "ntfs", "vfat", "btrfs", "swap")


def can_grow(fstype: str | None, new_size: int | None = None) -> bool:
    """True when the filesystem can be resized (to ``new_size``) in place."""
    return (can_shrink(fstype) or fstype == "xfs") and (new_size is None or new_size >= MIN_RESIZE.get(fstype, 0))


def min_size(fstype: str, path: str) -> int:
    """The smallest size (bytes) the filesystem in ``path`` can shrink to."""
    if fstype in EXT:
        blocks = int(re.search(r"minimum size of the filesystem: (\d+)", _run("resize2fs", "-P", path)).group(1))
        block_size = int(re.search(r"Block size:\s+(\d+)", _run("dumpe2fs", "-h", path)).group(1))
        return blocks * block_size
    if fstype == "ntfs":
        out = _run("ntfsresize", "-i", "-f", path)
        match = re.search(r"You might resize at (\d+) bytes", out)
        if not match:
            raise FilesystemError(f"ntfsresize gave no minimum size for {path}")
        return int(match.group(1))
    if fstype == "vfat":
        return fat.min_size(path)
    if fstype == "btrfs":
        with mounted(path, "btrfs") as mnt:
            found = int(_run("btrfs", "inspect-internal", "min-dev-size", mnt).split()[0])
        return max(found, min(MIN_RESIZE["btrfs"], _size(path)))
    if fstype == "swap":
        return SWAP_MIN
    raise FilesystemError(f"{fstype or 'unknown content'} cannot shrink")


def resize(fstype: str, path: str, new_size: int, label: str = "", uuid: str = "") -> None:
    """Grow or shrink the filesystem in ``path`` to ``new_size`` bytes (``path`` is at least that
    big); swap is made anew with its label and UUID."""
    if fstype in EXT:
        _run("resize2fs", "-f", path, f"{new_size // 1024}K")
    elif fstype == "ntfs":
        if new_size < _size(path):
            _run("ntfsresize", "-f", "-f", "-s", str(new_size), path)
            os.truncate(path, new_size)
        # fill the device: the backup boot sector goes to its last sector, where Windows and ntfsfix look
        _run("ntfsresize", "-f", "-f", path)
    elif fstype == "vfat":
        fat.resize(path, new_size)
    elif fstype == "btrfs":
        with mounted(path, "btrfs") as mnt:
            _run("btrfs", "filesystem", "resize", str(new_size) if new_size < _size(path) else "max", mnt)
    elif fstype == "xfs":
        with mounted(path, "xfs") as mnt:
            _run("xfs_growfs", mnt)
    elif fstype == "swap":
        _run("mkswap", *(["-L", label] if label else []), *(["-U", uuid] if uuid else []), path)
    else:
        raise FilesystemError(f"{fstype or 'unknown content'} cannot be resized")


def check(fstype: str | None, path: str) -> str:
    """Run the filesystem's checker read-only; raises with its last lines when it finds problems."""
    cmd = CHECKS.get(fstype or "")
    if cmd is None:
        return ""
    try:
        return _run(*cmd, path)
    except FilesystemError as e:
        raise FilesystemError(f"{fstype} does not check clean after resizing: {e}") from None


def _size(path: str) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def boot_sectors(fstype: str | None, sector0: bytes, size: int) -> list[int]:
    """Offsets in a filesystem of ``size`` bytes of the boot sector copies that record the partition's
    start LBA (BPB hidden sectors, which Windows boot code uses): NTFS keeps its backup in the
    partition's last sector, FAT32 at BPB_BkBootSec."""
    if len(sector0) < 512 or sector0[510:512] != b"\x55\xaa":
        return []
    if fstype == "ntfs" and sector0[3:11] == b"NTFS    ":
        return [0, size - 512]
    if fstype == "vfat":
        fat32 = int.from_bytes(sector0[0x16:0x18], "little") == 0
        backup = int.from_bytes(sector0[0x32:0x34], "little") if fat32 else 0
        return [0, backup * int.from_bytes(sector0[0x0B:0x0D], "little")] if backup else [0]
    return []
