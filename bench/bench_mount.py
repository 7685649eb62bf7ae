#!/usr/bin/env python3
"""Benchmark ``diskvault mount`` on a 2 GiB image: how fast the mount is usable and how fast it reads.

Why: issue 5 asks that the first ``ls`` of a mounted 2 GiB image returns in under 1 s and that
``disk.img`` reads sequentially through FUSE at 150 MB/s or more. Measured here:

    mount      wall time of `diskvault mount IMAGE MNT --all` (returns once the ext4 files are mounted)
    first ls   `ls -l MNT` and `ls -lR MNT/1` in fresh processes right after the mount
    disk.img   sequential read (1 MiB reads) of the whole disk.img, image file cold (page cache dropped)
               and warm (image file cached; a fresh mount so FUSE serves every byte)
    file       sequential read of the largest file inside the ext4 partition (loop device on part1.img)

    python bench/bench_mount.py [--workdir /var/tmp/dvbench-mount] [--size-gib 2] [--rebuild] [--keep]

Needs root (loop devices, mount, drop_caches), mfusepy, fuse3, e2fsprogs, sfdisk. Results are printed
and written to bench/out/mount-<time>.json. The disk (GPT, one ext4 partition: ~700 MB of system files
and ~500 MB of incompressible files) and its image are cached in the workdir.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "bench" / "out"
RECIPE = 1
MB = 1_000_000
TARGET_LS_S, TARGET_READ_MBS = 1.0, 150.0


def run(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=True, capture_output=True, text=True, **kw)


def dv(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    return run(sys.executable, "-m", "diskvault", *args, env=env)


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def build(work: Path, size_gib: float) -> Path:
    """GPT disk with one ext4 partition holding system files and random 'media' files, imaged."""
    disk, stamp, images = work / "disk.img", work / "recipe.json", work / "images"
    want = {"recipe": RECIPE, "size_gib": size_gib}
    if stamp.exists() and json.loads(stamp.read_text()) == want and images.exists() and any(images.iterdir()):
        return next(images.glob("*-00-00.dvimg"))
    shutil.rmtree(work, ignore_errors=True)
    tree = work / "tree"
    (tree / "media").mkdir(parents=True)
    budget = 700 * MB
    for src in ("/usr/share", "/usr/lib/python3", "/usr/bin", "/usr/lib/x86_64-linux-gnu"):
        if budget <= 0 or not os.path.isdir(src):
            continue
        dst = tree / src.strip("/").replace("/", "_")
        for d, _, files in os.walk(src):
            for name in files:
                p = os.path.join(d, name)
                if budget <= 0 or os.path.islink(p) or not os.path.isfile(p):
                    continue
                target = dst / os.path.relpath(p, src)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(p, target)
                budget -= os.path.getsize(p)
    for i in range(5):
        with open(tree / "media" / f"video{i}.bin", "wb") as f:
            for _ in range(100):
                f.write(os.urandom(MB))
    size = int(size_gib * (1 << 30))
    with open(disk, "wb") as f:
        f.truncate(size)
    run("sfdisk", "-q", str(disk), input="label: gpt\nstart=2048, type=L\n")
    (part,) = json.loads(run("sfdisk", "-J", str(disk)).stdout)["partitiontable"]["partitions"]
    start, part_size = part["start"] * 512, part["size"] * 512
    run("mke2fs", "-q", "-F", "-t", "ext4", "-E", f"offset={start}", "-d", str(tree), str(disk),
        f"{part_size // 1024}k")
    shutil.rmtree(tree)
    images.mkdir()
    dv("image", str(disk), "--to", str(images), "--no-verify")
    stamp.write_text(json.dumps(want))
    return next(images.glob("*-00-00.dvimg"))


def timed(*args: str) -> float:
    started = time.perf_counter()
    run(*args)
    return time.perf_counter() - started


def read_all(path: str) -> tuple[int, float]:
    started, total = time.perf_counter(), 0
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(1 << 20)
        while n := f.readinto(buf):
            total += n
    return total, time.perf_counter() - started


def measure(image: Path, mnt: Path, cold: bool) -> dict:
    if cold:
        drop_caches()
    else:
        read_all(str(image))  # image file in the page cache
    started = time.perf_counter()
    dv("mount", str(image), str(mnt), "--all")
    out = {"mount_s": time.perf_counter() - started}
    try:
        out["first_ls_s"] = timed("ls", "-l", str(mnt))
        out["first_ls_files_s"] = timed("ls", "-lR", str(mnt / "1"))
        n, secs = read_all(str(mnt / "disk.img"))
        out["disk_img_bytes"], out["disk_img_mbs"] = n, n / secs / MB
        biggest = max((p for p in (mnt / "1").rglob("*") if p.is_file() and not p.is_symlink()),
                      key=lambda p: p.stat().st_size)
        n, secs = read_all(str(biggest))
        out["file_bytes"], out["file_mbs"] = n, n / secs / MB
    finally:
        dv("umount", str(mnt))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/var/tmp/dvbench-mount")
    ap.add_argument("--size-gib", type=float, default=2.0)
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the disk and image for the next run")
    args = ap.parse_args()
    work = Path(args.workdir)
    if args.rebuild:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    image = build(work, args.size_gib)
    mnt = work / "mnt"
    mnt.mkdir(exist_ok=True)
    results = {"image": str(image), "image_bytes": image.stat().st_size, "disk_bytes": (work / "disk.img").stat().st_size,
               "cold": measure(image, mnt, cold=True), "warm": measure(image, mnt, cold=False)}
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    out = OUT_DIR / f"mount-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"image {results['image_bytes'] / MB:.0f} MB for a {results['disk_bytes'] / MB:.0f} MB disk")
    ok = True
    for kind in ("cold", "warm"):
        r = results[kind]
        print(f"{kind:5} mount {r['mount_s']:.2f} s | first ls {r['first_ls_s'] * 1000:.0f} ms, ls -lR of the "
              f"ext4 files {r['first_ls_files_s'] * 1000:.0f} ms | disk.img {r['disk_img_mbs']:.0f} MB/s | "
              f"largest file via loop+ext4 {r['file_mbs']:.0f} MB/s")
        ok &= r["first_ls_s"] < TARGET_LS_S and r["disk_img_mbs"] >= TARGET_READ_MBS
    print(f"targets (first ls < {TARGET_LS_S} s, disk.img >= {TARGET_READ_MBS:.0f} MB/s): "
          f"{'PASS' if ok else 'FAIL'}; results in {out}")
    if not args.keep:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
