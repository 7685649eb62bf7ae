"""Facts about a destination folder that change how images are written."""

from __future__ import annotations

import os

FAT_MAX_FILE = (4 << 30) - 1
FAT_TYPES = {"vfat", "msdos", "fat"}


def filesystem_type(path: str) -> str:
    """Type of the filesystem holding ``path``, from the longest matching mount point."""
    path = os.path.realpath(path)
    best, fstype = "", ""
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                mountpoint = fields[4].encode().decode("unicode_escape")
                sep = fields.index("-")
                if (path == mountpoint or path.startswith(mountpoint.rstrip("/") + "/")) and len(mountpoint) >= len(best):
                    best, fstype = mountpoint, fields[sep + 1]
    except OSError:
        return ""
    return fstype


def auto_split_size(folder: str) -> int | None:
    """4 GiB - 1 on FAT destinations (their file size limit), else no split."""
    return FAT_MAX_FILE if filesystem_type(folder) in FAT_TYPES else None
