#!/usr/bin/env python3
"""Benchmark diskvault against partclone|zstd on one ~1 GiB disk per filesystem (issue 3).

For each of ext4, ntfs, vfat (FAT32), exfat, xfs and btrfs a filesystem image is built holding the
same ~350 MB of real files from /usr/share and /usr/lib, and put in a GPT disk image at 1 MiB. With a
cold page cache each step then times ``diskvault image`` of the disk and ``partclone.<fs> -c`` of the
bare filesystem piped through ``zstd -T2 -3``. diskvault should read only the used blocks: its
bytes_read should be within 5 % of the filesystem's used space plus the 2 MiB of GPT areas.

    python bench/bench_filesystems.py [--workdir /var/tmp/dvfsbench] [--rebuild]

Needs root (loop devices, mount, FUSE, drop_caches), mkfs.* for each filesystem, ntfs-3g,
exfat-fuse, mtools, partclone, zstd and sfdisk. Built filesystems are cached in the workdir. Results
go to the "Filesystems: used blocks vs partclone (issue 3)" section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_image import drop_caches, log, run, update_docs  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TITLE = "## Filesystems: used blocks vs partclone (issue 3)"
RECIPE = 1  # bump when the contents recipe changes, so cached filesystems are rebuilt
MB, MiB = 1_000_000, 1 << 20
FS_SIZE = 1 << 30
BUDGET = {"usr/share": 150 * MB, "usr/lib": 200 * MB}  # bytes of real files copied from each tree
MAX_FILE = 32 * MB
SAFE_NAME = re.compile(r"^[A-Za-z0-9._+-]{1,100}$")  # valid on every filesystem, FAT included
PARTCLONE = {"ext4": ["partclone.ext4"], "ntfs": ["partclone.ntfs"], "vfat": ["partclone.fat32", "partclone.vfat"],
             "exfat": ["partclone.exfat"], "xfs": ["partclone.xfs"], "btrfs": ["partclone.btrfs"]}
BASIC_DATA = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"  # GPT type of Windows filesystems; others get Linux
MKFS = {"ext4": ["mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096"], "ntfs": ["mkfs.ntfs", "-q", "-F", "-f"],
        "vfat": ["mkfs.vfat", "-F", "32"], "exfat": ["mkfs.exfat"], "xfs": ["mkfs.xfs", "-q", "-f"],
        "btrfs": ["mkfs.btrfs", "-q", "-f"]}


# ---------------------------------------------------------------- building the filesystems

def stage_files(src: Path) -> None:
    """Copy real files into ``src`` once: regular files only, names every filesystem accepts, no two
    names in a directory equal ignoring case (FAT and exFAT would clash)."""
    if (src / ".done").exists():
        return
    shutil.rmtree(src, ignore_errors=True)
    for tree, budget in BUDGET.items():
        for root, dirs, files in os.walk(Path("/") / tree):
            dirs[:] = sorted(d for d in dirs if SAFE_NAME.match(d))
            seen: set[str] = set()
            for name in sorted(files):
                full = Path(root) / name
                if not SAFE_NAME.match(name) or name.lower() in seen or full.is_symlink() or not full.is_file():
                    continue
                size = full.stat().st_size
                if size > min(budget, MAX_FILE):
                    continue
                dest = src / full.relative_to("/")
                dest.parent.mkdir(parents=True, exist_ok=True)
                try:
                    shutil.copyfile(full, dest)
                except OSError:
                    continue
                seen.add(name.lower())
                budget -= size
            if budget < MB:
                break
    (src / ".done").touch()


@contextmanager
def mounted(fs: str, image: Path, mnt: Path):
    """``image`` mounted at ``mnt``: ntfs-3g on the file, others on a loop device (exfat via FUSE)."""
    mnt.mkdir(parents=True, exist_ok=True)
    dev = None if fs == "ntfs" else run(["losetup", "--show", "-f", str(image)]).stdout.strip()
    try:
        if fs == "ntfs":
            run(["ntfs-3g", str(image), str(mnt)])
        elif fs == "exfat":  # exfat-fuse wants a block device
            run(["mount.exfat-fuse", dev, str(mnt)])
        else:
            run(["mount", "-t", fs, dev, str(mnt)])
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        if dev:
            subprocess.run(["losetup", "-d", dev], check=False)


def df_used(path: Path) -> int:
    return int(run(["df", "-B1", "--output=used", str(path)]).stdout.split()[-1])


def build_fs(fs: str, image: Path, src: Path, mnt: Path) -> int:
    """Make and fill the filesystem in ``image``; returns its used bytes (df where it mounts, else
    the filesystem's own tool)."""
    image.unlink(missing_ok=True)
    with open(image, "wb") as f:
        f.truncate(FS_SIZE)
    files = [str(p) for p in sorted(src.iterdir()) if p.name != ".done"]
    if fs == "ext4":
        run(MKFS[fs] + ["-d", str(src), str(image)])
        out = run(["dumpe2fs", "-h", str(image)]).stdout
        field = dict((k.strip(), v.strip()) for k, v in (ln.split(":", 1) for ln in out.splitlines() if ":" in ln))
        return (int(field["Block count"]) - int(field["Free blocks"])) * int(field["Block size"])
    run(MKFS[fs] + [str(image)])
    if fs == "vfat":  # no vfat in this kernel: mtools writes it, and reports the free space
        os.environ["MTOOLS_SKIP_CHECK"] = "1"
        run(["mcopy", "-s", "-D", "s", "-i", str(image), *files, "::/"])
        free = re.search(r"([\d ]+) bytes free", run(["mdir", "-i", str(image), "::/"]).stdout).group(1)
        return FS_SIZE - int(free.replace(" ", ""))
    with mounted(fs, image, mnt):
        run(["cp", "-r", *files, str(mnt)])
        os.sync()
        return df_used(mnt)


def make_disk(fs: str, image: Path, disk: Path) -> None:
    """A GPT disk holding ``image`` as its one partition at 1 MiB, with 1 MiB left for the backup GPT."""
    disk.unlink(missing_ok=True)
    with open(disk, "wb") as f:
        f.truncate(FS_SIZE + 2 * MiB)
    kind = BASIC_DATA if fs in ("ntfs", "vfat", "exfat") else "L"
    run(["sfdisk", "-q", str(disk)], input=f"label: gpt\nstart=2048, size={FS_SIZE // 512}, type={kind}\n")
    run(["dd", f"if={image}", f"of={disk}", "bs=1M", "seek=1", "conv=notrunc,sparse", "status=none"])


def ensure(fs: str, work: Path, src: Path, rebuild: bool) -> tuple[Path, Path, int]:
    image, disk, marker = work / f"{fs}.fs", work / f"{fs}.disk", work / f"{fs}.json"
    if not rebuild and marker.exists() and image.exists() and disk.exists():
        facts = json.loads(marker.read_text())
        if facts.get("recipe") == RECIPE:
            log(f"reusing cached {fs} filesystem")
            return image, disk, facts["used"]
    marker.unlink(missing_ok=True)
    log(f"building {fs}")
    used = build_fs(fs, image, src, work / "mnt")
    make_disk(fs, image, disk)
    marker.write_text(json.dumps({"recipe": RECIPE, "used": used}) + "\n")
    return image, disk, used


# ---------------------------------------------------------------- timed steps

def time_diskvault(disk: Path, dest: Path) -> dict:
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    cmd = [sys.executable, "-m", "diskvault", "image", str(disk), "--to", str(dest), "--json", "--no-verify"]
    drop_caches()
    started = time.monotonic()
    out = run(cmd, env=env).stdout
    os.sync()
    seconds = time.monotonic() - started
    result = json.loads(out)
    return {"seconds": seconds, "read": result["bytes_read"], "size": Path(result["image"]).stat().st_size}


def time_partclone(fs: str, image: Path, out: Path, logfile: Path) -> dict | None:
    """``partclone.<fs> -c -s image -o - | zstd -T2 -3 > out``, or None if no partclone handles it."""
    for tool in PARTCLONE[fs]:
        if not shutil.which(tool):
            continue
        drop_caches()
        started = time.monotonic()
        with open(out, "wb") as sink, open(logfile, "wb") as err:
            pc = subprocess.Popen([tool, "-c", "-s", str(image), "-o", "-"], stdout=subprocess.PIPE, stderr=err)
            zs = subprocess.Popen(["zstd", "-T2", "-3", "-q", "-c"], stdin=pc.stdout, stdout=sink, stderr=err)
            pc.stdout.close()
            codes = pc.wait(), zs.wait()
        os.sync()
        seconds = time.monotonic() - started
        if codes == (0, 0):
            return {"seconds": seconds, "size": out.stat().st_size}
        log(f"{tool} failed on {fs} (exit {codes}); see {logfile}")
    return None


# ---------------------------------------------------------------- report

def row(fs: str, used: int, dv: dict | None, pc: dict | None) -> tuple[str, bool]:
    na = "n/a"
    if dv:
        ok = dv["read"] <= used * 1.05 + 2 * MiB
        cells = [f"{dv['read'] / MB:.0f}", f"{dv['read'] / used:.3f}{'' if ok else ' (over)'}",
                 f"{dv['seconds']:.1f}", f"{dv['size'] / MB:.0f}"]
    else:
        ok, cells = False, [na] * 4
    cells += [f"{pc['seconds']:.1f}", f"{pc['size'] / MB:.0f}"] if pc else [na, na]
    return "| " + " | ".join([fs, f"{used / MB:.0f}", *cells]) + " |", ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp/dvfsbench"))
    ap.add_argument("--rebuild", action="store_true", help="rebuild the cached filesystems")
    args = ap.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    log("staging files from /usr/share and /usr/lib")
    stage_files(work / "src")
    lines, failed = [], []
    for fs in MKFS:
        image, disk, used = ensure(fs, work, work / "src", args.rebuild)
        try:
            dv = time_diskvault(disk, work / "out-dv")
        except (RuntimeError, KeyError, ValueError) as e:
            log(f"diskvault failed on {fs}: {e}")
            dv = None
        pc = time_partclone(fs, image, work / "out-pc.zst", work / f"partclone-{fs}.log")
        line, ok = row(fs, used, dv, pc)
        log(line)
        lines.append(line)
        if not ok:
            failed.append(fs)
    shutil.rmtree(work / "out-dv", ignore_errors=True)
    (work / "out-pc.zst").unlink(missing_ok=True)
    target = ("all within target" if not failed else f"over target or failed: {', '.join(failed)}")
    section = "\n".join([
        TITLE, "",
        "Produced by `bench/bench_filesystems.py`. Each filesystem is 1 GiB, holding the same ~350 MB of "
        "real files from /usr/share and /usr/lib, as the one partition (at 1 MiB) of a GPT disk image. "
        "diskvault images the disk (`--no-verify`); partclone copies the bare filesystem through "
        "`zstd -T2 -3`. The page cache is dropped before every timed step; one run each. Used space is "
        "df on a mount (dumpe2fs for ext4, mtools free space for FAT32). Target: diskvault reads at most "
        f"5 % more than used + 2 MiB of GPT areas ({target}). MB = 10^6 bytes.", "",
        "| fs | used MB | diskvault read MB | read/used | diskvault s | diskvault MB | partclone\\|zstd s "
        "| partclone MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|", *lines])
    update_docs(section, TITLE)
    print(section)


if __name__ == "__main__":
    main()
