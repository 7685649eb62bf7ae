"""Build real test disks in files: GPT/MBR tables with sfdisk, filesystems with mkfs at offsets,
loop devices that are always detached, and manifests of file trees for exact comparison."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import stat
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diskvault.fs import base

MiB = 1 << 20
LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"


def sh(*args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), input=input, text=True, capture_output=True, check=check)


def garbage_file(path: str | Path, size: int, seed: int) -> None:
    """``size`` bytes of seeded random junk, as on a used disk: mkfs run on it without discarding
    leaves the junk in free space, which an image must not need."""
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        f.writelines(rng.bytes(min(MiB, size - off)) for off in range(0, size, MiB))


def patch(path: str | Path, offset: int, fmt: str, value) -> None:
    """Overwrite one packed value in place (to damage a structure on purpose)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, value))


_TEST_FDS: list[int] = []


def open_fd(path: str | Path) -> int:
    """A read-only descriptor that stays open for the rest of the test (conftest closes it)."""
    fd = os.open(path, os.O_RDONLY)
    _TEST_FDS.append(fd)
    return fd


def close_test_fds() -> None:
    while _TEST_FDS:
        os.close(_TEST_FDS.pop())


def open_fs_reader(reader_cls, img: str | Path, offset: int = 0, size: int | None = None):
    """``reader_cls`` on ``img`` (or the window ``offset``, ``size`` of it), after its probe agrees."""
    fd = open_fd(img)
    win = base.Window(fd, offset, os.fstat(fd).st_size - offset if size is None else size)
    assert reader_cls.probe(win, win.size)
    return reader_cls(win, win.size)


def gpt_disk(tmp_path: Path, fs_img: Path, type_guid: str) -> tuple[Path, int, int]:
    """A GPT disk holding ``fs_img`` in partition 1 at 1 MiB, 1 MiB of table area after it (sfdisk
    + dd conv=notrunc). Returns the disk, the partition's start and its size."""
    size = fs_img.stat().st_size
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(size + 2 * MiB)
    sh("sfdisk", "-q", str(disk), input=f"label: gpt\nstart=2048, size={size // 512}, type={type_guid}\n")
    sh("dd", f"if={fs_img}", f"of={disk}", "bs=1M", "seek=1", "conv=notrunc", "status=none")
    return disk, MiB, size


def tree_hashes(root: Path) -> dict[str, str]:
    """relative path -> sha256 ('dir' for directories) of everything under ``root``."""
    out = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def varied_content(kind: int, size: int, random_bytes, line: str) -> bytes:
    """``size`` bytes of one of three kinds: 0 random (from ``random_bytes(n)``), 1 ``line``
    repeated (text), 2 zeros - what compresses badly, well and completely."""
    if kind == 0:
        return random_bytes(size)
    if kind == 1:
        return (line * (size // len(line) + 1)).encode()[:size]
    return bytes(size)


def make_fat_tree(root: Path, seed: int, files: int = 40, max_size: int = 200_000,
                  unicode: bool = False) -> Path:
    """Nested directories (long, mixed-case names with spaces), files of varied sizes: random, text,
    zeros. ``unicode``: exFAT's names (Unicode directory and file names), else plain ones for FAT."""
    rng = np.random.default_rng(seed)
    deep = root / "déjà vu" / "a" / "b" if unicode else root / "deep" / "a" / "b" / "c"
    dirs = [root, root / "Docs", root / "Long Directory Name" / "Sub dir", deep]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    (root / "Empty Folder").mkdir()
    if unicode:
        fixed = [0, 1, 511, 512, 4095, 4096, 65537, 131073]
    else:
        fixed = [0, 1, 511, 512, 513, 4095, 4096, 65537]
    for i in range(files):
        size = fixed[i] if i < len(fixed) else int(rng.integers(0, max_size))
        kind = i % 3
        data = varied_content(kind, size, rng.bytes, f"line {i} of a text file\n")
        odd_name = f"Ünïcode {i}.dat" if unicode else f"Z{i}.DAT"
        name = [f"File number {i}.bin", f"text-{i}.txt", odd_name][kind]
        (dirs[i % len(dirs)] / name).write_bytes(data)
    return root


def make_tree(root: str, seed: int = 1, files: int = 60, max_size: int = 300_000) -> None:
    """Files of varied sizes and content (random, text, zeros), dirs, symlinks, hard links,
    modes, owners and old timestamps."""
    rng = random.Random(seed)
    os.makedirs(root, exist_ok=True)
    for i in range(files):
        d = os.path.join(root, f"dir{i % 7}", f"sub{i % 3}")
        os.makedirs(d, exist_ok=True)
        p = os.path.join(d, f"file{i}.dat")
        size = rng.choice([0, 1, 511, 4096, 65537, rng.randrange(max_size)])
        with open(p, "wb") as f:
            f.write(varied_content(i % 3, size, rng.randbytes, f"line {i} of a text file with words\n"))
        os.chmod(p, rng.choice([0o644, 0o600, 0o755, 0o4755, 0o640]))
        os.chown(p, rng.choice([0, 1000, 1234]), rng.choice([0, 100, 4321]))
        t = 1_500_000_000 + rng.randrange(100_000_000)
        os.utime(p, ns=(t * 10**9 + 123456789, t * 10**9 + 987654321))
    os.symlink("dir0/sub0/file0.dat", os.path.join(root, "link"))
    os.link(os.path.join(root, "dir1", "sub1", "file1.dat"), os.path.join(root, "hardlink"))
    os.makedirs(os.path.join(root, "empty-dir"))


def manifest(root: str, times: bool = True) -> dict[str, tuple]:
    """path -> (type, mode, uid, gid, size, sha256 or link target[, mtime_ns, atime_ns]) for every entry."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            if rel == "lost+found" or rel.startswith("lost+found/"):
                continue
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                content = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    content = hashlib.sha256(f.read()).hexdigest()
            else:
                content = ""
            entry = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                     st.st_size if not stat.S_ISDIR(st.st_mode) else 0, content, st.st_nlink)
            if times and not stat.S_ISLNK(st.st_mode):
                entry += (st.st_mtime_ns,)
            out[rel] = entry
    return out


@dataclass
class Part:
    size_mib: int
    fs: str | None = "ext4"  # mkfs type, "raw" (random bytes), or None (left empty)
    mkfs_args: tuple[str, ...] = ()
    tree_seed: int | None = 1  # populate with make_tree(seed)
    start: int = 0  # bytes, filled in by build_disk
    size: int = 0


def build_disk(path: str, parts: list[Part], label: str = "gpt", disk_mib: int | None = None,
               workdir: str | None = None, garbage: bool = False) -> list[Part]:
    """A disk image file with a partition table and real filesystems at their offsets
    (mke2fs -E offset, so no loop device is needed). ``garbage`` fills free space with random
    bytes first, as on a used disk."""
    total = disk_mib or (sum(p.size_mib for p in parts) + 2)
    with open(path, "wb") as f:
        f.truncate(total * MiB)
        if garbage:
            rng = random.Random(7)
            for off in range(0, total * MiB, MiB):
                f.seek(off)
                f.write(rng.randbytes(MiB // 4))
    lines = [f"label: {label}"]
    start = 2048
    for p in parts:
        sectors = p.size_mib * MiB // 512
        typ = LINUX if label == "gpt" else "83"
        lines.append(f"start={start}, size={sectors}, type={typ}")
        p.start, p.size = start * 512, sectors * 512
        start += sectors
    sh("sfdisk", "-q", path, input="\n".join(lines) + "\n")
    for i, p in enumerate(parts):
        if p.fs in ("ext2", "ext3", "ext4"):
            extended = f"offset={p.start}" + (",nodiscard" if garbage else "")  # else mke2fs zeroes the garbage
            args = ["mke2fs", "-q", "-F", "-t", p.fs, "-E", extended, *p.mkfs_args]
            if p.tree_seed is not None:
                tree = os.path.join(workdir or os.path.dirname(path), f"tree-{os.path.basename(path)}-{i}")
                make_tree(tree, seed=p.tree_seed)
                args += ["-d", tree]
            sh(*args, path, f"{p.size // 1024}k")
        elif p.fs == "raw":
            with open(path, "r+b") as f:
                f.seek(p.start)
                f.write(random.Random(i).randbytes(min(p.size, 3 * MiB)))
    return parts


@contextlib.contextmanager
def loop_device(path: str | Path, offset: int = 0, size: int | None = None, read_only: bool = False,
                sector_size: int | None = None) -> Iterator[str]:
    """Attach ``path`` (or a window of it) to a loop device; always detached by name, and waited
    for (a busy device is detached on its last close)."""
    args = ["losetup", "-f", "--show"]
    if offset:
        args += ["-o", str(offset)]
    if size:
        args += ["--sizelimit", str(size)]
    if read_only:
        args.append("-r")
    if sector_size:
        args += ["-b", str(sector_size)]
    dev = sh(*args, str(path)).stdout.strip()
    try:
        yield dev
    finally:
        sh("losetup", "-d", dev, check=False)
        backing = Path(f"/sys/block/{os.path.basename(dev)}/loop/backing_file")
        for _ in range(100):
            if not backing.exists():
                break
            time.sleep(0.05)


@contextlib.contextmanager
def mounted(dev: str, mountpoint: str, options: str = "ro", fstype: str | None = None) -> Iterator[str]:
    os.makedirs(mountpoint, exist_ok=True)
    sh("mount", *(["-t", fstype] if fstype else []), "-o", options, dev, mountpoint)
    try:
        yield mountpoint
    finally:
        sh("umount", mountpoint, check=False)


def partition_manifest(disk: str, part: Part, mnt: str) -> dict[str, tuple]:
    options = "ro" if part.fs == "ext2" else "ro,noload"  # ext2 refuses noload
    with loop_device(disk, part.start, part.size, read_only=True) as dev, mounted(dev, mnt, options):
        return manifest(mnt)


def fsck_clean(disk: str, part: Part) -> str:
    """Run e2fsck -fn on a partition; returns its output, raises if not clean."""
    with loop_device(disk, part.start, part.size, read_only=True) as dev:
        r = sh("e2fsck", "-fn", dev, check=False)
        assert r.returncode == 0, f"e2fsck found problems:\n{r.stdout}{r.stderr}"
        return r.stdout


def sha256_file(path: str, offset: int = 0, length: int | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        remaining = length if length is not None else os.path.getsize(path) - offset
        while remaining > 0:
            chunk = f.read(min(remaining, 4 * MiB))
            if not chunk:
                break
            h.update(chunk)
            remaining -= len(chunk)
    return h.hexdigest()


ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
MS_DATA = "EBD0A0A2-B9E5-4433-87C0-68B97B26B9C7"
SWAP = "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"


@contextlib.contextmanager
def ntfs_mounted(image: str, mountpoint: str, read_only: bool = True) -> Iterator[str]:
    """An NTFS image file through ntfs-3g (FUSE; the kernel here has no NTFS driver)."""
    os.makedirs(mountpoint, exist_ok=True)
    sh("ntfs-3g", "-o", "ro" if read_only else "rw", image, mountpoint)
    try:
        yield mountpoint
    finally:
        sh("umount", mountpoint, check=False)


def fat_manifest(image: str, workdir: str) -> dict[str, tuple]:
    """Files of a FAT image copied out with mtools (no kernel vfat here), as a manifest."""
    out = os.path.join(workdir, "fat-out")
    if os.path.exists(out):
        sh("rm", "-rf", out)
    os.makedirs(out)
    sh("mcopy", "-s", "-n", "-i", image, "::/*", out)
    return {k: v[5] for k, v in manifest(out, times=False).items()}


def extract(disk: str, part: "Part", path: str) -> str:
    """Copy a partition's bytes to a file of its own (for tools that want a file)."""
    return extract_range(disk, part.start, part.size, path)


def extract_range(disk: str | Path, start: int, size: int, path: str | Path) -> str | Path:
    """Copy ``size`` bytes at ``start`` of ``disk`` to a file of their own."""
    with open(disk, "rb") as src, open(path, "wb") as dst:
        src.seek(start)
        left = size
        while left:
            chunk = src.read(min(left, 4 * MiB))
            dst.write(chunk)
            left -= len(chunk)
    return path


def build_mixed_disk(path: str, workdir: str) -> dict[str, Part]:
    """GPT: FAT32 ESP (40 MiB), NTFS (48 MiB), ext4 (48 MiB), swap (8 MiB), each with real files."""
    sizes = {"esp": 40, "ntfs": 48, "ext4": 48, "swap": 8}
    types = {"esp": ESP, "ntfs": MS_DATA, "ext4": LINUX, "swap": SWAP}
    with open(path, "wb") as f:
        f.truncate((sum(sizes.values()) + 2) * MiB)
    start, lines, parts = 2048, ["label: gpt"], {}
    for name, mib in sizes.items():
        lines.append(f'start={start}, size={mib * 2048}, type={types[name]}, name="{name}"')
        parts[name] = Part(mib, name, start=start * 512, size=mib * MiB)
        start += mib * 2048
    sh("sfdisk", "-q", path, input="\n".join(lines) + "\n")
    trees = {}
    for i, name in enumerate(("esp", "ntfs", "ext4")):
        trees[name] = os.path.join(workdir, f"tree-{name}")
        make_tree(trees[name], seed=20 + i, files=30, max_size=400_000)
    piece = os.path.join(workdir, "piece.img")
    for name, part in parts.items():
        with open(piece, "wb") as f:
            f.write(random.Random(part.start).randbytes(part.size))  # garbage where nothing is written
        if name == "esp":
            sh("mkfs.vfat", "-F", "32", "-n", "ESP", piece)
            sh("mcopy", "-s", "-i", piece, *[os.path.join(trees[name], n) for n in sorted(os.listdir(trees[name]))
                                             if not os.path.islink(os.path.join(trees[name], n))], "::/")
        elif name == "ntfs":
            sh("mkntfs", "-q", "-f", "-F", "-L", "WINDOWS", piece)
            with ntfs_mounted(piece, os.path.join(workdir, "ntfs-mnt"), read_only=False) as mnt:
                sh("cp", "-r", "--no-preserve=ownership", *[os.path.join(trees[name], n)
                                                             for n in os.listdir(trees[name])], mnt)
        elif name == "ext4":
            sh("mke2fs", "-q", "-F", "-t", "ext4", "-E", "nodiscard", "-L", "linux", "-d", trees[name], piece)
        else:
            sh("mkswap", "-L", "swap", piece)
        with open(piece, "rb") as src, open(path, "r+b") as dst:
            dst.seek(part.start)
            dst.write(src.read())
    os.unlink(piece)
    return parts


def mixed_disk_state(disk: str, parts: dict[str, Part], workdir: str) -> dict:
    """Checks each filesystem with its own tool and returns its files' content hashes."""
    state = {}
    esp = extract(disk, parts["esp"], os.path.join(workdir, "esp.part"))
    r = sh("fsck.fat", "-n", esp, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    state["esp"] = fat_manifest(esp, workdir)
    ntfs = extract(disk, parts["ntfs"], os.path.join(workdir, "ntfs.part"))
    r = sh("ntfsfix", "-n", ntfs, check=False)
    assert r.returncode == 0 and "bad" not in r.stdout.lower(), r.stdout + r.stderr
    with ntfs_mounted(ntfs, os.path.join(workdir, "ntfs-ro")) as mnt:
        state["ntfs"] = {k: v[5] for k, v in manifest(mnt, times=False).items()}
    fsck_clean(disk, parts["ext4"])
    state["ext4"] = partition_manifest(disk, parts["ext4"], os.path.join(workdir, "ext4-ro"))
    blkid = sh("blkid", "-p", "-o", "export", "--offset", str(parts["swap"].start), disk).stdout
    state["swap"] = sorted(line for line in blkid.splitlines() if line.split("=")[0] in ("TYPE", "UUID", "LABEL"))
    for p in (esp, ntfs):
        os.unlink(p)
    return state
