"""Mount a partition's files read-only at MOUNTPOINT/N from MOUNTPOINT/partN.img, and undo it.

    ext2/3/4, XFS, btrfs, FAT : losetup -r (a loop device on partN.img) -> mount -o ro,...
    NTFS, exFAT               : a FUSE driver on partN.img (ntfs-3g, exfat-fuse)
(What this machine cannot mount, the FUSE filesystem may serve itself: tree_view.py.)

Every loop device and mount is reported through ``record`` the moment it exists, so whoever
tears down (the server on a signal, ``diskvault umount`` after a crash) knows all of it. Loop
devices are detached by name, and only when their backing file is the one we attached."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from diskvault.errors import DiskvaultError

# fstype -> (kernel driver, mount options) for loop mounts
KERNEL = {
    "ext2": ("ext2", "ro"),  # ext2 refuses noload
    "ext3": ("ext3", "ro,noload"),
    "ext4": ("ext4", "ro,noload"),
    "xfs": ("xfs", "ro,norecovery,nouuid"),  # nouuid: the source may be mounted here too
    "btrfs": ("btrfs", "ro"),
    "vfat": ("vfat", "ro"),
}
# fstype -> (Debian package, command) for FUSE drivers
HELPERS = {
    "ntfs": ("ntfs-3g", ["ntfs-3g", "-o", "ro"]),
    "exfat": ("exfat-fuse", ["mount.exfat-fuse", "-o", "ro"]),
}


class AttachError(DiskvaultError):
    """cannot mount partition {} ({}): {}"""


@dataclass
class Attachment:
    """One thing to undo: a loop device (``name`` /dev/loopN on file ``source``) or a mount
    (``name`` the mount point, ``source`` the device or file)."""

    kind: str  # "loop" or "mount"
    name: str
    source: str


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=False, capture_output=True, text=True, stdin=subprocess.DEVNULL)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "failed"


def _kernel_has(driver: str) -> bool:
    with open("/proc/filesystems") as f:
        return any(line.split()[-1] == driver for line in f if line.strip())


def why_not_mountable(fstype: str | None) -> str | None:
    """None when partitions of this type can be mounted here, else the reason."""
    if fstype in KERNEL:
        driver = KERNEL[fstype][0]
        return None if _kernel_has(driver) else f"this kernel has no {driver} driver (/proc/filesystems)"
    if fstype in HELPERS:
        package, cmd = HELPERS[fstype]
        return None if shutil.which(cmd[0]) else f"{cmd[0]} is not installed (Debian package {package})"
    return f"{fstype or 'an unknown filesystem'} holds no files to mount"


def attach(number: int, fstype: str, uuid: str, image: str, target: str,
           record: Callable[[Attachment], None]) -> None:
    """Mount the filesystem in ``image`` (a partN.img) read-only at ``target``."""
    if fstype in HELPERS:
        r = _run(*HELPERS[fstype][1], image, target)
        if r.returncode != 0:
            raise AttachError(number, fstype, _last_line(r.stderr or r.stdout))
        record(Attachment("mount", target, image))
        return
    r = _run("losetup", "-r", "-f", "--show", image)
    if r.returncode != 0:
        raise AttachError(number, fstype, f"losetup: {r.stderr.strip()}")
    dev = r.stdout.strip()
    record(Attachment("loop", dev, image))
    driver, options = KERNEL[fstype]
    r = _run("mount", "-t", driver, "-o", options, dev, target)
    if r.returncode != 0:
        if fstype == "btrfs" and uuid and os.path.exists(f"/sys/fs/btrfs/{uuid}"):
            raise AttachError(number, fstype, f"a btrfs with the same filesystem id {uuid} is mounted on this "
                              "machine (the source itself?) and this kernel refuses a second device with that id: "
                              "unmount the source first, or read the files with diskvault ls/cat/extract")
        raise AttachError(number, fstype, _last_line(r.stderr))
    record(Attachment("mount", target, dev))


def mount_table() -> dict[str, str]:
    """Mount point -> filesystem type, from /proc/self/mounts (octal escapes decoded)."""
    out = {}
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            out[re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])] = fields[2]
    return out


def mounts_under(root: str) -> list[str]:
    """Mount points strictly below ``root``."""
    prefix = root.rstrip("/") + "/"
    return [p for p in mount_table() if p.startswith(prefix)]


def is_mounted(path: str) -> bool:
    return path in mount_table()


def loops_backed_by(root: str) -> dict[str, str]:
    """Loop device -> backing file, for backing files below ``root`` (read from sysfs: the files
    themselves are not touched, so this works when the FUSE server is gone)."""
    r = _run("losetup", "-J", "-O", "NAME,BACK-FILE")
    prefix = root.rstrip("/") + "/"
    devices = json.loads(r.stdout or "{}").get("loopdevices", []) if r.returncode == 0 else []
    return {d["name"]: d["back-file"] for d in devices if (d.get("back-file") or "").startswith(prefix)}


class BusyError(DiskvaultError):
    """{} is busy (a process uses files in it); close them and retry, or use --lazy"""


class UnmountError(DiskvaultError):
    """cannot unmount {}: {}"""


def unmount(path: str, lazy: bool) -> None:
    """umount, retried while briefly busy; if it stays busy: BusyError, or with ``lazy`` a lazy
    unmount (gone from the tree now, released when its last user closes it)."""
    r = None
    for attempt in range(8):
        if not is_mounted(path):
            return
        r = _run("umount", path)
        if r.returncode == 0:
            return
        if "busy" not in r.stderr:
            break
        time.sleep(0.05 * (attempt + 1))
    if not is_mounted(path):
        return
    if r is not None and "busy" in r.stderr:
        if not lazy:
            raise BusyError(path)
        r = _run("umount", "-l", path)
        if r.returncode == 0:
            return
    raise UnmountError(path, _last_line(r.stderr if r else ""))


def detach(root: str, attached: list[dict], lazy: bool = False) -> None:
    """Unmount every mount below ``root`` and detach its loop devices (recorded ones, and any
    whose backing file lies below ``root``), deepest and newest first."""
    recorded = {a["name"] for a in attached if a["kind"] == "mount"}
    for path in sorted(set(mounts_under(root)) | recorded, reverse=True):
        if path.startswith(root.rstrip("/") + "/"):
            unmount(path, lazy)
    current = loops_backed_by(root)
    for dev in reversed([a["name"] for a in attached if a["kind"] == "loop"] + sorted(current)):
        if dev in current:  # still attached to our file (a recorded name may have been reused since)
            _run("losetup", "-d", dev)
            current.pop(dev)
