"""This machine's block devices, and the safety checks run before anything is written to a target.

Nothing here writes to a device. ``list_disks`` only runs lsblk (sysfs + udev database);
``device_info`` opens the device read-only for its size ioctls; ``check_target_free`` opens it
read-only with O_EXCL to detect other users, and closes it at once.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import json
import os
import stat
import struct
import subprocess

from diskvault.errors import TargetError

BLKROGET = 0x125E
BLKGETSIZE64 = 0x80081272
BLKSSZGET = 0x1268
BLKPBSZGET = 0x127B
LOOP_GET_STATUS64 = 0x4C05
LOOP_INFO64_SIZE = 232

SYS_CLASS_BLOCK = "/sys/class/block"
LSBLK_COLUMNS = ("NAME,KNAME,PATH,MAJ:MIN,SIZE,TYPE,MODEL,SERIAL,WWN,VENDOR,TRAN,RM,RO,LOG-SEC,PHY-SEC,"
                 "PTTYPE,PTUUID,FSTYPE,FSVER,LABEL,UUID,PARTUUID,PARTLABEL,PARTTYPE,PARTFLAGS,"
                 "FSUSED,FSSIZE,MOUNTPOINTS,START")
DISK_TYPES = ("disk", "loop")


# ----------------------------------------------------------------------------- listing


def _run_lsblk(*args: str) -> dict:
    proc = subprocess.run(["lsblk", "-J", "-b", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0 and not proc.stdout.strip():
        raise OSError(f"lsblk failed: {proc.stderr.strip() or proc.returncode}")
    return json.loads(proc.stdout or "{}")


def _read_sys(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read().strip()
    except OSError:
        return None


def _mountpoints(node: dict) -> list[str]:
    points = node.get("mountpoints")
    if points is None:
        single = node.get("mountpoint")
        points = [single] if single else []
    return [p for p in points if p]


def _int(value) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _partition_number(node: dict) -> int | None:
    kname = node.get("kname") or node.get("name") or ""
    number = _int(_read_sys(os.path.join(SYS_CLASS_BLOCK, kname, "partition")))
    if number is None:
        digits = ""
        for ch in reversed(kname):
            if not ch.isdigit():
                break
            digits = ch + digits
        number = int(digits) if digits else None
    return number


def _holder_names(node: dict) -> list[str]:
    return sorted({c.get("kname") or c.get("name") for c in node.get("children") or []
                   if c.get("type") != "part"})


def _partition_dict(node: dict) -> dict:
    start = _int(node.get("start"))
    return {
        "number": _partition_number(node),
        "name": node.get("name"),
        "path": node.get("path"),
        "start": start * 512 if start is not None else None,  # sysfs start is always 512-byte units
        "size": _int(node.get("size")),
        "type": node.get("parttype"),
        "partuuid": node.get("partuuid"),
        "partlabel": node.get("partlabel"),
        "fstype": node.get("fstype"),
        "label": node.get("label"),
        "uuid": node.get("uuid"),
        "used": _int(node.get("fsused")),
        "fssize": _int(node.get("fssize")),
        "mountpoints": _mountpoints(node),
        "holders": _holder_names(node),
        "ro": bool(node.get("ro")),
    }


def _disk_dict(node: dict) -> dict:
    kname = node.get("kname") or node.get("name")
    parts = [_partition_dict(c) for c in node.get("children") or [] if c.get("type") == "part"]
    parts.sort(key=lambda p: (p["number"] is None, p["number"] or 0))
    return {
        "name": node.get("name"),
        "path": node.get("path"),
        "maj_min": node.get("maj:min"),
        "size": _int(node.get("size")) or 0,
        "type": node.get("type"),
        "model": (node.get("model") or "").strip(),
        "serial": (node.get("serial") or "").strip(),
        "wwn": node.get("wwn") or "",
        "vendor": (node.get("vendor") or "").strip(),
        "transport": node.get("tran") or "",
        "removable": bool(node.get("rm")),
        "ro": bool(node.get("ro")),
        "sector_size": _int(node.get("log-sec")) or 512,
        "physical_sector_size": _int(node.get("phy-sec")) or 512,
        "pttype": node.get("pttype"),
        "ptuuid": node.get("ptuuid"),
        "fstype": node.get("fstype"),  # a filesystem on the whole disk
        "label": node.get("label"),
        "uuid": node.get("uuid"),
        "used": _int(node.get("fsused")),
        "mountpoints": _mountpoints(node),
        "holders": _holder_names(node),
        "backing_file": _read_sys(os.path.join(SYS_CLASS_BLOCK, kname or "", "loop", "backing_file")),
        "partitions": parts,
    }


def list_disks() -> list[dict]:
    """Disks and loop devices of this machine (size > 0), each with its partitions.

    Sizes and partition starts are bytes; ``used`` is known only for mounted filesystems.
    """
    data = _run_lsblk("-o", LSBLK_COLUMNS)
    disks = [_disk_dict(node) for node in data.get("blockdevices", []) if node.get("type") in DISK_TYPES]
    return [d for d in disks if d["size"] > 0]


# ----------------------------------------------------------------------------- one device


def is_block_device(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


def sysfs_name(path: str) -> str:
    """Kernel name (``sda1``, ``loop3``) of a block device node, found by its device number."""
    st = os.stat(path)
    if not stat.S_ISBLK(st.st_mode):
        raise TargetError(path, "not a block device")
    link = f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    return os.path.basename(os.path.realpath(link))


def _sys_dir(name: str) -> str:
    return os.path.realpath(os.path.join(SYS_CLASS_BLOCK, name))


def partitions_of(name: str) -> list[str]:
    """Kernel names of the partitions of disk ``name`` (empty for a partition or unpartitioned disk)."""
    base = _sys_dir(name)
    out = []
    for entry in sorted(glob.glob(os.path.join(base, "*", "partition"))):
        out.append(os.path.basename(os.path.dirname(entry)))
    return out


def _ioctl_int(fd: int, request: int, fmt: str) -> int:
    buf = fcntl.ioctl(fd, request, bytes(struct.calcsize(fmt)))
    return struct.unpack(fmt, buf)[0]


def device_info(path: str) -> dict:
    """Size, sector sizes, model/serial and read-only flag of a block device (opened read-only)."""
    st = os.stat(path)
    if not stat.S_ISBLK(st.st_mode):
        raise TargetError(path, "not a block device")
    name = sysfs_name(path)
    sysdir = _sys_dir(name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        fd = None  # not openable here (permissions, no medium): sysfs has the same numbers
    if fd is not None:
        try:
            size = _ioctl_int(fd, BLKGETSIZE64, "Q")
            sector_size = _ioctl_int(fd, BLKSSZGET, "i")
            physical = _ioctl_int(fd, BLKPBSZGET, "I")
            read_only = bool(_ioctl_int(fd, BLKROGET, "i"))
        finally:
            os.close(fd)
    else:
        queue = os.path.join(sysdir if not os.path.exists(os.path.join(sysdir, "partition"))
                             else os.path.dirname(sysdir), "queue")
        size = (_int(_read_sys(os.path.join(sysdir, "size"))) or 0) * 512
        sector_size = _int(_read_sys(os.path.join(queue, "logical_block_size"))) or 512
        physical = _int(_read_sys(os.path.join(queue, "physical_block_size"))) or sector_size
        read_only = _read_sys(os.path.join(sysdir, "ro")) == "1"
    sysdir = _sys_dir(name)
    is_partition = os.path.exists(os.path.join(sysdir, "partition"))
    disk_dir = os.path.dirname(sysdir) if is_partition else sysdir
    model = _read_sys(os.path.join(disk_dir, "device", "model")) or ""
    serial = (_read_sys(os.path.join(disk_dir, "device", "serial"))
              or _read_sys(os.path.join(disk_dir, "serial")) or "")
    if not model or not serial:
        try:
            nodes = _run_lsblk("-d", "-o", "MODEL,SERIAL", path).get("blockdevices") or [{}]
            model = model or (nodes[0].get("model") or "").strip()
            serial = serial or (nodes[0].get("serial") or "").strip()
        except (OSError, ValueError):
            pass
    return {
        "path": path,
        "name": name,
        "maj_min": f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}",
        "size": size,
        "sector_size": sector_size,
        "physical_sector_size": physical,
        "read_only": read_only,
        "model": model,
        "serial": serial,
        "is_partition": is_partition,
        "disk": os.path.basename(disk_dir),
    }


# ----------------------------------------------------------------------------- safety checks


def _unescape_mount(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    out, i = [], 0
    while i < len(field):
        code = field[i + 1:i + 4]
        if field[i] == "\\" and len(code) == 3 and all(c in "01234567" for c in code):
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _rdev_key(path: str) -> str | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISBLK(st.st_mode):
        return None
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"


def parse_mountinfo(text: str) -> dict[str, str]:
    """major:minor → first mountpoint, from mountinfo text (both the st_dev field and the source device)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        mountpoint = _unescape_mount(fields[4])
        out.setdefault(fields[2], mountpoint)
        try:
            source = fields[fields.index("-") + 2]
        except (ValueError, IndexError):
            continue
        if source.startswith("/dev/"):
            # btrfs and friends report an anonymous 0:N in field 3; the source names the real device
            key = _rdev_key(_unescape_mount(source))
            if key:
                out.setdefault(key, mountpoint)
    return out


def swap_areas() -> list[str]:
    """Paths listed in /proc/swaps (devices and files)."""
    text = _read_sys("/proc/swaps") or ""
    return [_unescape_mount(line.split()[0]) for line in text.splitlines()[1:] if line.split()]


def mounted_devices() -> dict[str, str]:
    """major:minor → mountpoint for every mounted filesystem, plus swap devices as "[SWAP]"."""
    out = parse_mountinfo(_read_sys("/proc/self/mountinfo") or "")
    for area in swap_areas():
        key = _rdev_key(area)
        if key:
            out.setdefault(key, "[SWAP]")
    return out


def holders(path: str) -> list[str]:
    """Kernel names of devices stacked on the device or its partitions (dm, md, bcache ...)."""
    name = sysfs_name(path)
    found: set[str] = set()
    for dev in [name, *partitions_of(name)]:
        try:
            found.update(os.listdir(os.path.join(_sys_dir(dev), "holders")))
        except OSError:
            pass
    return sorted(found)


def check_target_path(path: str) -> bool:
    """Refuse paths that cannot be a target; True for a block device, False for a (new) regular file.

    A missing path under /dev is never created as a file: it is a mistyped device name.
    """
    apath = os.path.abspath(path)
    try:
        st = os.stat(apath)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise TargetError(path, exc.strerror or str(exc)) from None
    if st is not None:
        if stat.S_ISBLK(st.st_mode):
            return True
        if stat.S_ISREG(st.st_mode):
            return False
        if apath.startswith("/dev/"):
            raise TargetError(path, "not a block device")
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file or block device"
        raise TargetError(path, kind)
    real = os.path.realpath(apath)
    if _under_devfs(apath) or _under_devfs(real):
        raise TargetError(path, "no such block device")
    return False


def _under_devfs(path: str) -> bool:
    """True for a path in /dev itself (devtmpfs), not in a filesystem mounted below it like /dev/shm."""
    if path != "/dev" and not path.startswith("/dev/"):
        return False
    parent = os.path.dirname(path)
    while parent and not os.path.isdir(parent):
        parent = os.path.dirname(parent)
    try:
        return os.stat(parent).st_dev == os.stat("/dev").st_dev
    except OSError:
        return True


def _loop_backing(loopdir: str) -> tuple[str | None, tuple[int, int, int] | None]:
    """(backing file path, (major, minor, inode)) of an attached loop device."""
    name = os.path.basename(loopdir)
    backing = _read_sys(os.path.join(loopdir, "loop", "backing_file"))
    ident = None
    try:
        fd = os.open(f"/dev/{name}", os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return backing, None
    try:
        buf = fcntl.ioctl(fd, LOOP_GET_STATUS64, bytes(LOOP_INFO64_SIZE))
        lo_device, lo_inode = struct.unpack_from("<QQ", buf)
        # the kernel's new_encode_dev
        major = (lo_device & 0xFFF00) >> 8
        minor = (lo_device & 0xFF) | ((lo_device >> 12) & 0xFFF00)
        ident = (major, minor, lo_inode)
    except OSError:
        pass
    finally:
        os.close(fd)
    return backing, ident


def loop_devices_of(path: str) -> list[str]:
    """/dev/loopN devices whose backing file is ``path`` (same path or same device+inode)."""
    real = os.path.realpath(path)
    try:
        st = os.stat(path)
        ident = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    except OSError:
        ident = None
    found = []
    for loopdir in sorted(glob.glob("/sys/block/loop*")):
        if not os.path.exists(os.path.join(loopdir, "loop", "backing_file")):
            continue
        backing, lo_ident = _loop_backing(loopdir)
        # " (deleted)": the file the loop holds is gone; a new file at that path is another file
        same_path = bool(backing) and not backing.endswith(" (deleted)") and os.path.realpath(backing) == real
        if same_path or (ident is not None and lo_ident == ident):
            found.append("/dev/" + os.path.basename(loopdir))
    return found


def check_target_free(path: str) -> None:
    """Raise TargetError when writing ``path`` would hit something in use."""
    is_block = check_target_path(path)
    if not is_block:
        if not os.path.exists(path):
            return
        loops = loop_devices_of(path)
        if loops:
            raise TargetError(path, f"in use: attached to {loops[0]}")
        real = os.path.realpath(path)
        if any(os.path.realpath(a) == real for a in swap_areas()):
            raise TargetError(path, "in use as swap")
        return
    name = sysfs_name(path)
    mounts = mounted_devices()
    for dev in [name, *partitions_of(name)]:
        key = _read_sys(os.path.join(_sys_dir(dev), "dev"))
        where = mounts.get(key or "")
        label = "" if dev == name else f"partition /dev/{dev} "
        if where == "[SWAP]":
            raise TargetError(path, f"{label}in use as swap")
        if where:
            raise TargetError(path, f"{label}mounted at {where}")
    used_by = holders(path)
    if used_by:
        raise TargetError(path, f"in use by {', '.join(used_by)}")
    if _read_sys(os.path.join(_sys_dir(name), "ro")) == "1":
        raise TargetError(path, "device is read-only")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise TargetError(path, "in use by another program") from None
        raise TargetError(path, exc.strerror or str(exc)) from None
    os.close(fd)


def open_exclusive(path: str, create: bool = False) -> int:
    """A read-write fd: O_EXCL for block devices (no one else may hold them), plain for files.

    ``create`` makes a missing regular file (never under /dev).
    """
    is_block = check_target_path(path)
    flags = os.O_RDWR | os.O_CLOEXEC
    if is_block:
        flags |= os.O_EXCL
    elif create:
        flags |= os.O_CREAT
    try:
        return os.open(path, flags, 0o666)
    except OSError as exc:
        if is_block and exc.errno == errno.EBUSY:
            raise TargetError(path, "in use by another program") from None
        raise TargetError(path, exc.strerror or str(exc)) from None
