#!/usr/bin/env python3
"""Benchmark diskvault against partclone|zstd and qemu-img on one realistic ext4 disk image.

Why: issue 2 sets targets relative to the tools people use today: imaging at least 2x faster than
``partclone.ext4 | zstd`` with an image no larger, and restoring at least 1.5x faster than
``zstd -dc | partclone.ext4 -r``. Every tool runs in one invocation on the same disk, with the page
cache dropped before each timed step, so the numbers are comparable with each other.

    python bench/bench_image.py [--size-gib 2.5] [--workdir /var/tmp/dvbench] [--repeat 3] [--keep]
                                [--rebuild]

Needs root (loop devices, mount, drop_caches), partclone, qemu-img, zstd, sfdisk, e2fsprogs, tar, diff;
``make bench`` installs them. diskvault runs as ``sys.executable -m diskvault`` with this repository's
``src`` on PYTHONPATH, so run this script with the Python that has diskvault's dependencies.

The test disk is cached in the workdir (``disk.img`` + ``disk.json``) and rebuilt only when missing,
made by another recipe or size, or with --rebuild. Results go to bench/out/results-<time>.md and
to the "Disk images: ext4 (issue 2)" section of docs/BENCHMARKS.md. The exit status is non-zero only
when something breaks (a tool fails or a restored filesystem does not check clean); missed targets
are reported as FAIL lines but do not fail the run.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import re
import shutil
import stat
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS_FILE = REPO / "docs" / "BENCHMARKS.md"
OUT_DIR = REPO / "bench" / "out"
SECTION = "## Disk images: ext4 (issue 2)"
DV_RESTORED, PC_RESTORED = "dv-restored.img", "pc-restored.part"  # restore targets, under the run dir

RECIPE = 1  # bump when the disk contents recipe changes, so cached disks are rebuilt
MB = 1_000_000
BLOCK = 4096
# Shares of the disk size: system files copied in, files written then deleted (their blocks stay as
# garbage in free space), incompressible "media" files, and a region of random garbage written before
# mkfs (what a used disk's free blocks look like). Together they give ~1.2 GB used on 2.5 GiB.
SYSTEM_SHARE, DELETED_SHARE, RANDOM_SHARE = 0.30, 0.11, 0.11
GARBAGE_REGION = (0.40, 0.90)
SYSTEM_TREES = {"usr/share": 0.35, "usr/bin": 0.20, "usr/lib": 0.45}  # share of the system budget

TARGET_IMAGE_SPEEDUP, TARGET_RESTORE_SPEEDUP = 2.0, 1.5
TOOLS = ["partclone.ext4", "qemu-img", "zstd", "sfdisk", "mke2fs", "e2fsck", "dumpe2fs", "losetup",
         "mount", "umount", "tar", "diff"]
CACHE_NOTE = ("The page cache is dropped (sync; echo 3 > /proc/sys/vm/drop_caches) before every timed "
              "step, but on a VM the host may still cache the disk file, so reads can be faster than "
              "the virtual disk's real speed.")


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """Untimed helper command; its output is captured and shown only if it fails."""
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return proc


# ---------------------------------------------------------------- loop devices and mounts

@contextmanager
def loop_device(path: Path, offset: int, size: int, read_only: bool = True) -> Iterator[str]:
    """A loop device over [offset, offset+size) of ``path``, detached by name however we leave."""
    cmd = ["losetup", "--show", "-f", "-o", str(offset), "--sizelimit", str(size)]
    dev = run(cmd + (["-r"] if read_only else []) + [str(path)]).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


@contextmanager
def mounted(dev: str, where: Path, read_only: bool = False) -> Iterator[Path]:
    """``dev`` mounted at ``where``; read-only mounts skip journal replay so nothing is written."""
    where.mkdir(parents=True, exist_ok=True)
    run(["mount"] + (["-o", "ro,noload"] if read_only else []) + [dev, str(where)])
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)


# ---------------------------------------------------------------- the test disk

@dataclass
class Partition:
    offset: int
    size: int


def partition_of(disk: Path) -> Partition:
    """The disk's only partition, from its GPT."""
    table = json.loads(run(["sfdisk", "-J", str(disk)]).stdout)["partitiontable"]
    part, sector = table["partitions"][0], table.get("sectorsize", 512)
    return Partition(part["start"] * sector, part["size"] * sector)


def gpt_layout(disk: Path) -> dict:
    """The GPT without the device names, to compare a restored disk with the original."""
    table = json.loads(run(["sfdisk", "-J", str(disk)]).stdout)["partitiontable"]
    table.pop("device", None)
    for part in table["partitions"]:
        part.pop("node", None)
    return table


def fs_usage(dev: str) -> dict:
    """Used bytes and inodes of an ext4 filesystem, as counted by its superblock (what partclone and
    diskvault copy: data plus metadata)."""
    out = run(["dumpe2fs", "-h", dev]).stdout
    pairs = (line.split(":", 1) for line in out.splitlines() if ":" in line)
    field = {k.strip(): v.strip() for k, v in pairs}
    block = int(field["Block size"])
    return {"used_bytes": (int(field["Block count"]) - int(field["Free blocks"])) * block,
            "used_inodes": int(field["Inode count"]) - int(field["Free inodes"])}


def write_random(path: Path, offset: int, length: int) -> None:
    """Incompressible bytes, as encrypted or already-compressed files are."""
    chunk = 4 << 20
    with open(path, "r+b" if path.exists() else "wb") as f:
        f.seek(offset)
        f.writelines(os.urandom(min(chunk, length - done)) for done in range(0, length, chunk))


def pick_system_files(budget: int) -> list[str]:
    """Paths (relative to /) of real system files, split over SYSTEM_TREES, up to ``budget`` bytes
    of allocated space: a realistic mix of small text files, binaries and libraries."""
    picked: list[str] = []
    for tree, share in SYSTEM_TREES.items():
        left = int(budget * share)
        for root, dirs, files in os.walk(Path("/") / tree):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(root, name)
                st = os.lstat(full)
                if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                    continue
                size = -(-st.st_size // BLOCK) * BLOCK if stat.S_ISREG(st.st_mode) else 0
                if size > left:
                    continue
                picked.append(os.path.relpath(full, "/"))
                left -= size
            if left < BLOCK:
                break
    return picked


def copy_files(paths: list[str], dest: Path, listfile: Path) -> None:
    """Copy ``paths`` (relative to /) under ``dest`` keeping owners, modes, links and times."""
    listfile.write_bytes(b"\0".join(p.encode() for p in paths) + b"\0")
    dest.mkdir(parents=True, exist_ok=True)
    pack = subprocess.Popen(["tar", "-C", "/", "--null", "--no-recursion", "-T", str(listfile), "-cf", "-"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    unpack = subprocess.run(["tar", "-C", str(dest), "-xpf", "-"], check=False, stdin=pack.stdout,
                            capture_output=True)
    pack.stdout.close()
    # tar exits 1 when a file changed while it was read: harmless for test data
    if pack.wait() not in (0, 1) or unpack.returncode != 0:
        raise RuntimeError(f"copying system files failed: {unpack.stderr.decode()}")


def populate(mnt: Path, disk_size: int, scratch: Path) -> None:
    """Fill the mounted filesystem: system files, then files that get deleted (so free blocks hold
    old data and the used blocks are fragmented), then incompressible files."""
    system = pick_system_files(int(disk_size * SYSTEM_SHARE))
    half = len(system) // 2
    copy_files(system[:half], mnt, scratch / "files-1.lst")
    deleted = mnt / "deleted"
    deleted.mkdir()
    write_random(deleted / "old-download.bin", 0, int(disk_size * DELETED_SHARE / 2))
    copy_files(pick_system_files(int(disk_size * DELETED_SHARE / 2)), deleted, scratch / "deleted.lst")
    copy_files(system[half:], mnt, scratch / "files-2.lst")
    os.sync()
    shutil.rmtree(deleted)
    media = mnt / "home" / "user" / "media"
    media.mkdir(parents=True)
    count = 3
    for i in range(count):
        write_random(media / f"video-{i}.mp4", 0, int(disk_size * RANDOM_SHARE / count))
    os.sync()


def build_disk(disk: Path, size: int, scratch: Path) -> dict:
    """GPT disk image with one ext4 partition filling it, populated through a loop device."""
    log(f"building a {size / 2**30:.2f} GiB test disk at {disk} (cached for later runs)")
    disk.unlink(missing_ok=True)
    with open(disk, "wb") as f:
        f.truncate(size)
    start, end = (int(size * x) // BLOCK * BLOCK for x in GARBAGE_REGION)
    write_random(disk, start, end - start)
    run(["sfdisk", "-q", str(disk)], input="label: gpt\n,,L\n")
    part = partition_of(disk)
    # nodiscard: discarding a regular file punches holes, erasing the garbage (and the backup GPT)
    run(["mke2fs", "-q", "-F", "-t", "ext4", "-b", str(BLOCK), "-L", "dvbench",
         "-E", f"offset={part.offset},nodiscard", str(disk), str(part.size // BLOCK)])
    with loop_device(disk, part.offset, part.size, read_only=False) as dev:
        with mounted(dev, scratch / "mnt") as mnt:
            populate(mnt, size, scratch)
        run(["e2fsck", "-fn", dev])
        facts = fs_usage(dev)
    return {"recipe": RECIPE, "size": size, **facts}


def ensure_disk(workdir: Path, size: int, rebuild: bool) -> tuple[Path, dict]:
    """The cached test disk, rebuilt when missing, stale or asked for; building takes minutes."""
    disk, marker = workdir / "disk.img", workdir / "disk.json"
    if not rebuild and marker.exists() and disk.exists():
        facts = json.loads(marker.read_text())
        if facts.get("recipe") == RECIPE and facts.get("size") == size and disk.stat().st_size == size:
            log(f"reusing cached test disk {disk}")
            return disk, facts
    marker.unlink(missing_ok=True)
    scratch = workdir / "build"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    started = time.monotonic()
    try:
        facts = build_disk(disk, size, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    marker.write_text(json.dumps(facts, indent=2) + "\n")
    log(f"test disk built in {time.monotonic() - started:.0f} s: {facts['used_bytes'] / MB:.0f} MB used")
    return disk, facts


# ---------------------------------------------------------------- timed steps

@dataclass
class Step:
    name: str
    seconds: float
    cpu_seconds: float  # user + system, all processes of the step
    peak_rss: int  # bytes
    output_bytes: int | None = None
    stdout: str = ""
    spread: tuple[float, float] | None = None  # fastest and slowest of repeated runs


def drop_caches() -> None:
    """Make every step start cold, so no tool reads what an earlier one left in the page cache."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as e:
        log(f"could not drop the page cache ({e}); timings may be warm")


def timed(name: str, stages: list[list[str]], logdir: Path, stdin: Path | None = None,
          stdout: Path | None = None, env: dict | None = None) -> Step:
    """Run a pipeline of ``stages`` cold and time it until its output is on disk (the trailing sync
    charges tools that do not fsync for their writeback). Peak memory is the sum of each stage's
    peak RSS from wait4 (stages run at the same time; a stage's own children count as its max)."""
    drop_caches()
    log(f"running {name}")
    procs: list[subprocess.Popen] = []
    with ExitStack() as files:
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        errlog = files.enter_context(open(logdir / f"{slug}.log", "wb"))
        sink = files.enter_context(open(stdout, "wb")) if stdout else subprocess.PIPE
        source = files.enter_context(open(stdin, "rb")) if stdin else subprocess.DEVNULL
        started = time.monotonic()
        for i, cmd in enumerate(stages):
            last = i == len(stages) - 1
            procs.append(subprocess.Popen(cmd, stdin=procs[-1].stdout if procs else source,
                                          stdout=sink if last else subprocess.PIPE, stderr=errlog, env=env))
            if i:
                procs[-2].stdout.close()  # so the upstream stage sees EPIPE if this one dies
        out = ""
        if not stdout:
            with procs[-1].stdout as pipe:
                out = pipe.read().decode()
        peak, cpu, failed = 0, 0.0, []
        for proc in procs:
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            peak += usage.ru_maxrss * 1024
            cpu += usage.ru_utime + usage.ru_stime
            if proc.returncode:
                failed.append(f"{proc.args[0]} exited {proc.returncode}")
        os.sync()
        seconds = time.monotonic() - started
    if failed:
        raise RuntimeError(f"{name} failed ({', '.join(failed)}); see {errlog.name}")
    return Step(name, seconds, cpu, peak, stdout.stat().st_size if stdout else None, out)


def diskvault(*args: str) -> list[str]:
    return [sys.executable, "-m", "diskvault", *args]


def compile_sources() -> None:
    """Byte-compile diskvault as a wheel install does: with PYTHONDONTWRITEBYTECODE set, or after an
    edit, every run would otherwise compile its changed modules again (about 0.1 s)."""
    compileall.compile_dir(str(REPO / "src" / "diskvault"), quiet=1)


def diskvault_env() -> dict:
    """This repository's sources first on the path, whatever Python runs the bench."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    return env


def repeated(repeat: int, attempt: Callable[[], Step]) -> Step:
    """Median time of ``repeat`` cold runs, with the spread kept: on this kind of VM one run can take
    twice as long as the next, depending on the host's writeback. Outputs are the last run's."""
    runs = [attempt() for _ in range(repeat)]
    times = [r.seconds for r in runs]
    return replace(runs[-1], seconds=statistics.median(times), spread=(min(times), max(times)),
                   cpu_seconds=statistics.median(r.cpu_seconds for r in runs),
                   peak_rss=max(r.peak_rss for r in runs))


def image_with_diskvault(name: str, disk: Path, dest: Path, logdir: Path, verify: bool) -> Step:
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir()
    flags = ["--json"] + ([] if verify else ["--no-verify"])
    command = diskvault("image", str(disk), "--to", str(dest), *flags)
    step = timed(name, [command], logdir, env=diskvault_env())
    image = Path(json.loads(step.stdout)["image"])
    step.output_bytes = image.stat().st_size
    step.stdout = str(image)
    return step


def fresh_file(path: Path, size: int) -> Path:
    """A new sparse file: partclone restores into an existing target of the partition's size."""
    path.unlink(missing_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def run_steps(disk: Path, part: Partition, run_dir: Path, repeat: int) -> dict[str, Step]:
    """Every timed step, in an order where each restore follows the image it needs. qemu-img runs
    once: it is a reference far from the targets, and each run takes about a minute."""
    logdir = run_dir / "logs"
    logdir.mkdir()
    env = diskvault_env()
    dv_dir, pc_image, qcow2 = run_dir / "dv", run_dir / "part.pc.zst", run_dir / "disk.qcow2"
    restored, pc_restored = run_dir / DV_RESTORED, run_dir / PC_RESTORED
    steps: dict[str, Step] = {}
    steps["dv_image"] = repeated(repeat, lambda: image_with_diskvault(
        "diskvault image --no-verify", disk, dv_dir, logdir, verify=False))
    image = steps["dv_image"].stdout
    steps["dv_verify"] = repeated(repeat, lambda: timed(
        "diskvault verify", [diskvault("verify", image)], logdir, env=env))
    steps["dv_image_verified"] = repeated(repeat, lambda: image_with_diskvault(
        "diskvault image (verify on)", disk, run_dir / "dv-verified", logdir, verify=True))
    with loop_device(disk, part.offset, part.size) as dev:
        steps["pc_image"] = repeated(repeat, lambda: timed("partclone.ext4 -c | zstd -T2 -3", [
            ["partclone.ext4", "-c", "-q", "-L", str(logdir / "partclone-clone.txt"), "-s", dev, "-o", "-"],
            ["zstd", "-q", "-T2", "-3"]], logdir, stdout=pc_image))
    qcow2.unlink(missing_ok=True)
    steps["qemu_image"] = timed("qemu-img convert -c -O qcow2", [
        ["qemu-img", "convert", "-c", "-O", "qcow2", str(disk), str(qcow2)]], logdir)
    steps["qemu_image"].output_bytes = qcow2.stat().st_size

    def dv_restore() -> Step:
        restored.unlink(missing_ok=True)
        command = diskvault("restore", image, str(restored), "--yes")
        return timed("diskvault restore", [command], logdir, env=env)

    def pc_restore() -> Step:
        target = fresh_file(pc_restored, part.size)
        return timed("zstd -dc | partclone.ext4 -r", [
            ["zstd", "-dc", "-q"],
            ["partclone.ext4", "-r", "-q", "-L", str(logdir / "partclone-restore.txt"), "-s", "-",
             "-O", str(target)]], logdir, stdin=pc_image)

    steps["dv_restore"] = repeated(repeat, dv_restore)
    steps["pc_restore"] = repeated(repeat, pc_restore)
    return steps


# ---------------------------------------------------------------- correctness

def check_restores(disk: Path, part: Partition, run_dir: Path) -> list[str]:
    """Fail loudly unless diskvault's restore has the original GPT, a clean ext4 and the same files;
    partclone's restore must check clean too, or its timing means nothing."""
    restored, pc_restored = run_dir / DV_RESTORED, run_dir / PC_RESTORED
    if gpt_layout(restored) != gpt_layout(disk):
        raise RuntimeError(f"{restored}: partition table differs from the original")
    with ExitStack() as stack:
        new = stack.enter_context(loop_device(restored, part.offset, part.size))
        run(["e2fsck", "-fn", new])
        old = stack.enter_context(loop_device(disk, part.offset, part.size))
        old_mnt = stack.enter_context(mounted(old, run_dir / "mnt-original", read_only=True))
        new_mnt = stack.enter_context(mounted(new, run_dir / "mnt-restored", read_only=True))
        diff = subprocess.run(["diff", "-r", "-q", "--no-dereference", str(old_mnt), str(new_mnt)],
                              check=False, capture_output=True, text=True)
        if diff.returncode != 0:
            raise RuntimeError(f"restored files differ from the original:\n{diff.stdout[:2000]}{diff.stderr}")
    run(["e2fsck", "-fn", str(pc_restored)])
    return ["diskvault restore: GPT identical, e2fsck -fn clean, all files identical (diff -r)",
            "partclone restore: e2fsck -fn clean"]


# ---------------------------------------------------------------- report

def proc_field(path: str, key: str) -> str | None:
    """First ``key: value`` line of a /proc file."""
    with open(path) as f:
        return next((line.split(":", 1)[1].strip() for line in f if line.startswith(key)), None)


def version(cmd: list[str], **kw) -> str:
    """The first x.y.z in a tool's version output (partclone and zstd decorate theirs)."""
    out = run(cmd, **kw)
    found = re.search(r"\d+\.\d+(\.\d+)?", out.stdout + out.stderr)
    return found.group(0) if found else "?"


def source_revision() -> str:
    """Which diskvault was measured: the commit, and whether src/ had uncommitted changes."""
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], check=False,
                          capture_output=True, text=True)
    if head.returncode != 0:
        return "unknown (not a git checkout)"
    dirty = run(["git", "-C", str(REPO), "status", "--porcelain", "src"]).stdout.strip()
    return head.stdout.strip() + (" + uncommitted changes in src/" if dirty else "")


def machine_facts(disk: Path, facts: dict, workdir: Path, load: tuple[float, ...]) -> list[tuple[str, str]]:
    mem_kib = int(proc_field("/proc/meminfo", "MemTotal").split()[0])
    fstype = run(["df", "--output=fstype", str(workdir)]).stdout.split()[-1]
    tools = {
        "diskvault": version(diskvault("--version"), env=diskvault_env()),
        "partclone": version(["partclone.ext4", "-v"]),
        "zstd": version(["zstd", "-V"]),
        "qemu-img": version(["qemu-img", "--version"]),
    }
    return [
        ("date", time.strftime("%Y-%m-%d %H:%M:%S %Z")),
        ("cpu", f"{os.cpu_count()} x {proc_field('/proc/cpuinfo', 'model name') or platform.machine()}"),
        ("memory", f"{mem_kib / 2**20:.1f} GiB"),
        ("kernel", platform.release()),
        ("python", platform.python_version()),
        ("load average at start", "{:.2f} {:.2f} {:.2f} (other work skews the times)".format(*load)),
        ("workdir", f"{workdir} ({fstype})"),
        ("disk", f"{disk.stat().st_size / 2**30:.2f} GiB GPT disk image, one ext4 partition filling it"),
        ("used", (f"{facts['used_bytes'] / MB:.0f} MB in {facts['used_inodes']} inodes: system files "
                  "from /usr and incompressible files; free space holds deleted files and random garbage")),
        ("tools", ", ".join(f"{name} {v}" for name, v in tools.items())),
        ("diskvault source", source_revision()),
    ]


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def table(steps: dict[str, Step], used: int) -> str:
    """One row per step; speed and size are compared with the partclone step of the same kind."""
    baseline = {"dv_image": "pc_image", "dv_image_verified": "pc_image", "dv_verify": None,
                "pc_image": "pc_image", "qemu_image": "pc_image",
                "dv_restore": "pc_restore", "pc_restore": "pc_restore"}
    header = ["step", "time s", "min-max s", "CPU s", "used MB/s", "output MB", "peak RSS MB",
              "speed vs partclone", "size vs partclone"]
    rows = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    for key, base in baseline.items():
        s = steps[key]
        ref = steps[base] if base else None
        size = f"{s.output_bytes / MB:.0f}" if s.output_bytes is not None else "-"
        cell = s.name.replace("|", "\\|")  # a bare | would split the markdown cell
        spread = f"{s.spread[0]:.2f}-{s.spread[1]:.2f}" if s.spread else "-"
        rows.append(f"| `{cell}` | {s.seconds:.2f} | {spread} | {s.cpu_seconds:.2f} | "
                    f"{used / MB / s.seconds:.0f} | {size} | "
                    f"{s.peak_rss / MB:.0f} | {ratio(ref and ref.seconds, s.seconds)} | "
                    f"{ratio(s.output_bytes, ref and ref.output_bytes)} |")
    return "\n".join(rows)


def mark(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def verdicts(steps: dict[str, Step]) -> list[str]:
    image_speedup = steps["pc_image"].seconds / steps["dv_image"].seconds
    restore_speedup = steps["pc_restore"].seconds / steps["dv_restore"].seconds
    dv_size, pc_size = steps["dv_image"].output_bytes, steps["pc_image"].output_bytes

    def fastest(key: str) -> float:
        return steps[key].spread[0] if steps[key].spread else steps[key].seconds
    return [
        (f"{mark(image_speedup >= TARGET_IMAGE_SPEEDUP)} image speed: diskvault image --no-verify is "
         f"{image_speedup:.2f}x partclone|zstd (target >= {TARGET_IMAGE_SPEEDUP}x)"),
        (f"{mark(dv_size <= pc_size)} image size: diskvault {dv_size / MB:.0f} MB vs partclone|zstd "
         f"{pc_size / MB:.0f} MB (target: no larger)"),
        (f"{mark(restore_speedup >= TARGET_RESTORE_SPEEDUP)} restore speed: diskvault restore is "
         f"{restore_speedup:.2f}x partclone restore (target >= {TARGET_RESTORE_SPEEDUP}x)"),
        (f"info fastest runs (a slow outlier moves a median of 3): image "
         f"{fastest('pc_image') / fastest('dv_image'):.2f}x, restore "
         f"{fastest('pc_restore') / fastest('dv_restore'):.2f}x partclone's"),
        (f"info CPU s (user + sys, less moved by other load than time): image "
         f"{steps['dv_image'].cpu_seconds:.2f} vs {steps['pc_image'].cpu_seconds:.2f} partclone|zstd, "
         f"restore {steps['dv_restore'].cpu_seconds:.2f} vs {steps['pc_restore'].cpu_seconds:.2f}"),
    ]


NOTES = [
    ("Times run from a cold page cache until the output is on disk (each step ends with `sync`); "
     "time s is the median of the runs, min-max their spread (qemu-img runs once)."),
    ("used MB/s = bytes used by the filesystem (data + metadata, as partclone counts them) / time, "
     "for every row, so rows compare directly. MB = 10^6 bytes."),
    ("speed vs partclone = partclone time / this time (higher is faster); size vs partclone = this "
     "size / partclone's. Image rows compare with `partclone.ext4 -c | zstd -T2 -3`, restore rows with "
     "`zstd -dc | partclone.ext4 -r`."),
    ("CPU s is user + system time of all the step's processes (median): unlike wall time, it hardly "
     "moves when other work shares the machine. It and peak RSS come from wait4; a pipeline's peak "
     "RSS is the sum of its processes' peaks."),
    ("diskvault images and restores the whole disk (partition table + partition); partclone only the "
     "partition; qemu-img copies every non-zero cluster, free-space garbage included."),
    ("diskvault restore writes a new image file; partclone restores into a sparse file of the "
     "partition's size (`-O`). Both targets are regular files on the workdir's filesystem."),
    CACHE_NOTE,
    ("On this VM some `partclone.ext4 -c | zstd` runs take about 2 s longer than the others (8.2-8.3 s "
     "against 6.3 s, often the first after the loop device is set up); with 3 runs the median can be "
     "such a run, so the verdicts add a ratio of the fastest runs."),
]


def report(machine: list[tuple[str, str]], steps: dict[str, Step], used: int, checks: list[str],
           repeat: int) -> str:
    lines = [SECTION, "", f"Produced by `bench/bench_image.py --repeat {repeat}` (`make bench`).", ""]
    lines += [f"- {k}: {v}" for k, v in machine] + ["", table(steps, used), ""]
    lines += ["```"] + verdicts(steps) + ["```", "", "Correctness checks (run by the bench):", ""]
    lines += [f"- {c}" for c in checks] + ["", "Notes:", ""] + [f"- {n}" for n in NOTES] + [""]
    return "\n".join(lines)


def update_docs(section: str, title: str = SECTION) -> None:
    """Replace the section headed ``title`` of docs/BENCHMARKS.md (or add it), leaving others alone."""
    intro = ("# Benchmarks\n\nMeasurements of diskvault against the tools it replaces. Each section is "
             "written by the script named in it; rerun the script rather than editing numbers by hand.\n")
    text = DOCS_FILE.read_text() if DOCS_FILE.exists() else intro
    pattern = re.compile(rf"^{re.escape(title)}\n.*?(?=^## |\Z)", re.DOTALL | re.MULTILINE)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    DOCS_FILE.write_text(text.rstrip("\n") + "\n")


# ---------------------------------------------------------------- main

def preflight(workdir: Path) -> None:
    """Fail before the slow parts when something the bench needs is missing."""
    if os.geteuid() != 0:
        sys.exit("bench_image.py needs root (loop devices, mount, drop_caches)")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        sys.exit(f"missing tools: {', '.join(missing)} (run scripts/install-system-deps.sh --bench)")
    compile_sources()
    probe = subprocess.run(diskvault("--version"), check=False, capture_output=True, text=True,
                           env=diskvault_env())
    if probe.returncode != 0:
        sys.exit(f"{sys.executable} cannot run diskvault (use the venv's Python):\n{probe.stderr}")
    workdir.mkdir(parents=True, exist_ok=True)
    if run(["df", "--output=fstype", str(workdir)]).stdout.split()[-1] == "tmpfs":
        sys.exit(f"{workdir} is on tmpfs (memory): choose a disk-backed --workdir")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-gib", type=float, default=2.5, help="test disk size (default 2.5, at least 2)")
    p.add_argument("--workdir", type=Path, default=Path("/var/tmp/dvbench"),
                   help="where the test disk and outputs go; not tmpfs (default /var/tmp/dvbench)")
    p.add_argument("--keep", action="store_true", help="keep the images and restored files of this run")
    p.add_argument("--rebuild", action="store_true", help="rebuild the cached test disk")
    p.add_argument("--repeat", type=int, default=3, help="cold runs per step, median reported (default 3)")
    args = p.parse_args()
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    if args.size_gib < 2:
        p.error("--size-gib must be at least 2")
    return args


def main() -> None:
    args = parse_args()
    workdir = args.workdir.resolve()
    preflight(workdir)
    size = int(args.size_gib * 2**30) // (1 << 20) * (1 << 20)
    disk, facts = ensure_disk(workdir, size, args.rebuild)
    part = partition_of(disk)
    run_dir = workdir / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir()
    load = os.getloadavg()
    try:
        steps = run_steps(disk, part, run_dir, args.repeat)
        checks = check_restores(disk, part, run_dir)
    except BaseException:
        log(f"failed: outputs and logs left in {run_dir}")
        raise
    machine = machine_facts(disk, facts, workdir, load)
    section = report(machine, steps, facts["used_bytes"], checks, args.repeat)
    if not args.keep:
        shutil.rmtree(run_dir)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    results = OUT_DIR / f"results-{time.strftime('%Y%m%d-%H%M%S')}.md"
    results.write_text(section)
    update_docs(section)
    print(section)
    log(f"wrote {results} and updated {DOCS_FILE}")


if __name__ == "__main__":
    main()
