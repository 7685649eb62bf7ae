"""Build real test disks in files: GPT/MBR tables with sfdisk, filesystems with mkfs at offsets,
loop devices that are always detached, and manifests of file trees for exact comparison."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

MiB = 1 << 20
LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"


def sh(*args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), input=input, text=True, capture_output=True, check=check)


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
        kind = i % 3
        if kind == 0:
            data = rng.randbytes(size)
        elif kind == 1:
            data = (f"line {i} of a text file with words\n" * (size // 30 + 1)).encode()[:size]
        else:
            data = bytes(size)
        with open(p, "wb") as f:
            f.write(data)
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
def loop_device(path: str, offset: int = 0, size: int | None = None, read_only: bool = False) -> Iterator[str]:
    """Attach ``path`` (or a window of it) to a loop device; always detached by name."""
    args = ["losetup", "-f", "--show"]
    if offset:
        args += ["-o", str(offset)]
    if size:
        args += ["--sizelimit", str(size)]
    if read_only:
        args.append("-r")
    dev = sh(*args, path).stdout.strip()
    try:
        yield dev
    finally:
        sh("losetup", "-d", dev, check=False)


@contextlib.contextmanager
def mounted(dev: str, mountpoint: str, options: str = "ro") -> Iterator[str]:
    os.makedirs(mountpoint, exist_ok=True)
    sh("mount", "-o", options, dev, mountpoint)
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
    with open(disk, "rb") as src, open(path, "wb") as dst:
        src.seek(part.start)
        left = part.size
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
