"""Restore to other disk sizes: fit / keep layouts, shrink and grow of FAT, NTFS, ext4, swap, XFS and
btrfs, MBR logical partitions, refusals, Rapid Delta and TRIM."""

import json
import os
import shutil

import pytest
from diskutil import (
    MiB,
    Part,
    build_disk,
    build_mixed_disk,
    fsck_clean,
    loop_device,
    make_tree,
    mixed_disk_state,
    mounted,
    partition_manifest,
    sh,
    sha256_file,
)
from test_roundtrip import dv, image

from diskvault.disk.table import read_partition_table
from diskvault.format.chain import Chain
from diskvault.format.layout import CHUNK_PATCH
from diskvault.fs import extents as ext
from diskvault.fs.base import Window
from diskvault.fs.ext import ExtReader
from diskvault.format.reader import KeyRing
from diskvault.resize import fat

pytestmark = pytest.mark.root
NAMES = ("esp", "ntfs", "ext4", "swap")


def table_of(path: str):
    with open(path, "rb") as f:
        return read_partition_table(f, os.path.getsize(path))


def parts_of(path: str, names=NAMES) -> dict[str, Part]:
    """The Part of each partition as the disk's own table places it now."""
    parts = sorted(table_of(path).data_partitions(), key=lambda p: p.number)
    return {n: Part(p.size // MiB, n, start=p.start, size=p.size) for n, p in zip(names, parts)}


def sgdisk_clean(path: str) -> None:
    out = sh("sgdisk", "-v", path).stdout
    assert "No problems found" in out, out


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """The GPT FAT32 + NTFS + ext4 + swap disk, its image and the state every restore must give."""
    work = tmp_path_factory.mktemp("mixed")
    disk = str(work / "disk.img")
    build_mixed_disk(disk, str(work))
    img = image(disk, str(work / "images"))["image"]
    return disk, img, mixed_disk_state(disk, parts_of(disk), str(work)), work


@pytest.mark.parametrize("size_mib", [146, 292, 110])
def test_fit_to_same_larger_and_smaller_disk(tmp_path, mixed, size_mib):
    disk, img, expected, _ = mixed
    target = str(tmp_path / "t.img")
    with open(target, "wb") as f:
        f.write(os.urandom(MiB))  # an old disk's leftovers
        f.truncate(size_mib * MiB)
    r = json.loads(dv("restore", img, target, "--layout", "fit", "--yes", "--json").stdout)
    assert os.path.getsize(target) == size_mib * MiB
    sgdisk_clean(target)
    parts = parts_of(target)
    assert mixed_disk_state(target, parts, str(tmp_path)) == expected
    old = parts_of(disk)
    new_table, old_table = table_of(target), table_of(disk)
    assert new_table.disk_id == old_table.disk_id
    for a, b in zip(old_table.partitions, new_table.partitions):
        assert (a.type, a.uuid, a.name, a.attributes) == (b.type, b.uuid, b.name, b.attributes)
        assert b.start % MiB == 0
    actions = {p["number"]: p["action"] for p in r["plan"]["partitions"]}
    if size_mib == 146:
        assert set(actions.values()) == {"copy"} and r["checked"] == []
    elif size_mib == 292:
        assert actions[4] == "grow" and parts["swap"].size > 150 * MiB  # the last partition takes the rest
    else:
        assert all(parts[n].size < old[n].size for n in NAMES), parts
        assert set(actions.values()) == {"shrink"} and len(r["checked"]) == 4
    # free space, the old leftovers included, is holes
    assert os.stat(target).st_blocks * 512 < r["bytes_restored"] + 4 * MiB


def test_keep_on_a_larger_disk_moves_the_gpt_backup(tmp_path, mixed):
    disk, img, expected, _ = mixed
    target = str(tmp_path / "t.img")
    dv("restore", img, target, "--layout", "keep", "--size", "300M", "--yes")
    sgdisk_clean(target)
    assert [(p.start, p.size) for p in table_of(target).partitions] == \
        [(p.start, p.size) for p in table_of(disk).partitions]
    assert mixed_disk_state(target, parts_of(target), str(tmp_path)) == expected
    r = dv("restore", img, str(tmp_path / "small.img"), "--layout", "keep", "--size", "120M", "--yes", check=False)
    assert r.returncode == 1 and "the partitions need" in r.stderr
    assert not os.path.exists(tmp_path / "small.img")


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, mixed):
    _, img, _, _ = mixed
    target = str(tmp_path / "t.img")
    with open(target, "wb") as f:
        f.write(b"keep me" * 1000)
        f.truncate(110 * MiB)
    before = sha256_file(target)
    out = dv("restore", img, target, "--layout", "fit", "--resize", "1=36M", "--dry-run").stdout
    lines = out.splitlines()
    assert lines[0].startswith("layout fit: gpt table, 146 MiB -> 110 MiB")
    assert lines[1].split() == ["#", "fs", "old", "start", "old", "size", "new", "start", "new", "size", "minimum",
                                "action"]
    assert lines[2].split()[:2] == ["1", "vfat"] and "36 MiB" in lines[2] and lines[2].endswith("shrink")
    assert "dry run: nothing written" in out
    assert sha256_file(target) == before


def test_shrinking_below_the_used_size_is_refused_before_writing(tmp_path, mixed):
    _, img, _, _ = mixed
    target = str(tmp_path / "t.img")
    with open(target, "wb") as f:
        f.write(b"keep me" * 1000)
        f.truncate(120 * MiB)
    before = sha256_file(target)
    r = dv("restore", img, target, "--layout", "fit", "--resize", "3=8M", "--yes", check=False)
    assert r.returncode == 1
    assert "partition 3 (ext4) cannot shrink to 8 MiB (8388608 bytes): its minimum size is" in r.stderr
    os.truncate(target, 45 * MiB)
    before = sha256_file(target)
    r2 = dv("restore", img, target, "--layout", "fit", "--yes", check=False)
    assert r2.returncode == 1 and "at its minimum" in r2.stderr and "partition 3 " in r2.stderr
    assert sha256_file(target) == before
    r3 = dv("restore", img, str(tmp_path / "tiny.img"), "--size", "45M", "--layout", "fit", "--yes", check=False)
    assert r3.returncode == 1 and not os.path.exists(tmp_path / "tiny.img")
    r4 = dv("restore", img, target, "--size", "200M", "--layout", "fit", "--yes", check=False)
    assert r4.returncode == 2 and "--size" in r4.stderr
    assert sha256_file(target) == before


def _fat_files(img: str, out: str) -> dict[str, str]:
    os.makedirs(out)
    sh("mcopy", "-s", "-n", "-i", img, "::/*", out)
    return {os.path.relpath(os.path.join(d, n), out): sha256_file(os.path.join(d, n))
            for d, _, files in os.walk(out) for n in files}


@pytest.mark.parametrize("bits,size_mib,sizes", [(12, 4, (2, 7, 2)), (16, 20, (9, 30, 9)), (32, 40, (35, 64, 34))])
def test_fat_moves_clusters_and_directories(tmp_path, bits, size_mib, sizes):
    """Files behind a large freed area: a shrink must move them (and their directories) down."""
    img = str(tmp_path / "fat.img")
    with open(img, "wb") as f:
        f.truncate(size_mib * MiB)
    sh("mkfs.vfat", "-F", str(bits), *(["-s", "2"] if bits == 12 else []), img)
    filler = str(tmp_path / "filler")
    with open(filler, "wb") as f:
        f.write(os.urandom(size_mib * MiB // 2))
    sh("mcopy", "-i", img, filler, "::/filler")
    tree = str(tmp_path / "tree")
    make_tree(tree, seed=bits, files=12, max_size=60_000)
    sh("mcopy", "-s", "-i", img, *[os.path.join(tree, n) for n in sorted(os.listdir(tree))
                                   if not os.path.islink(os.path.join(tree, n))], "::/")
    sh("mdel", "-i", img, "::/filler")
    listing = sh("mdir", "-/", "-b", "-i", img, "::/").stdout
    expected = _fat_files(img, str(tmp_path / "before"))
    assert len(expected) >= 12
    for mib in sizes:
        if mib * MiB > os.path.getsize(img):
            os.truncate(img, mib * MiB)
        fat.resize(img, mib * MiB)
        os.truncate(img, mib * MiB)
        r = sh("fsck.fat", "-n", img, check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        assert sh("mdir", "-/", "-b", "-i", img, "::/").stdout == listing
        assert _fat_files(img, str(tmp_path / f"after{len(os.listdir(tmp_path))}")) == expected
    assert fat.min_size(img) < sizes[-1] * MiB


def test_mbr_with_logical_partitions_fits_smaller_and_larger(tmp_path):
    disk = str(tmp_path / "mbr.img")
    with open(disk, "wb") as f:
        f.truncate(90 * MiB)
    sh("sfdisk", "-q", disk, input="label: dos\nstart=2048, size=40960, type=83\nstart=43008, size=139264, type=5\n"
                                   "start=45056, size=40960, type=83\nstart=88064, size=40960, type=83\n")
    parts = [Part(20, "ext4", start=2048 * 512, size=20 * MiB), Part(20, "ext4", start=45056 * 512, size=20 * MiB),
             Part(20, "ext4", start=88064 * 512, size=20 * MiB)]
    for i, p in enumerate(parts):
        tree = str(tmp_path / f"tree{i}")
        make_tree(tree, seed=40 + i, files=20, max_size=100_000)
        sh("mke2fs", "-q", "-F", "-t", "ext4", "-E", f"offset={p.start}", "-d", tree, disk, "20M")
    img = image(disk, str(tmp_path / "images"))["image"]
    expected = [partition_manifest(disk, p, str(tmp_path / "m")) for p in parts]
    for name, size in (("small", "56M"), ("big", "300M")):
        target = str(tmp_path / f"{name}.img")
        dv("restore", img, target, "--size", size, "--layout", "fit", "--yes")
        table = table_of(target)
        assert table.kind == "mbr" and [p.number for p in table.partitions] == [1, 2, 5, 6]
        assert table.warnings == []
        new = [Part(0, "ext4", start=p.start, size=p.size) for p in table.data_partitions()]
        assert (new[-1].size > 200 * MiB) if name == "big" else all(p.size < 20 * MiB for p in new)
        for p, want in zip(new, expected):
            fsck_clean(target, p)
            assert partition_manifest(target, p, str(tmp_path / "m")) == want


def test_xfs_grows_and_btrfs_grows_and_shrinks(tmp_path):
    disk = str(tmp_path / "disk.img")
    with open(disk, "wb") as f:
        f.truncate(602 * MiB)
    linux = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
    sh("sfdisk", "-q", disk, input=f"label: gpt\nstart=2048, size={300 * 2048}, type={linux}\n"
                                   f"start={301 * 2048}, size={300 * 2048}, type={linux}\n")
    tree = str(tmp_path / "tree")
    make_tree(tree, seed=50, files=30)
    expected = []
    for i, (fstype, start) in enumerate((("xfs", MiB), ("btrfs", 301 * MiB))):
        with loop_device(disk, start, 300 * MiB) as dev:
            sh(f"mkfs.{fstype}", "-q", "-f", dev)
            with mounted(dev, str(tmp_path / "mnt"), "rw") as mnt:
                shutil.copytree(tree, os.path.join(mnt, "tree"), symlinks=True)
                expected.append(sorted(os.listdir(os.path.join(mnt, "tree"))))
    img = image(disk, str(tmp_path / "images"))["image"]
    cases = (("big", "800M", ["--resize", "1=400M"], ("grow", "grow")), ("small", "580M", ["--resize", "1=300M"], ("copy", "shrink")))
    for name, size, extra, actions in cases:
        target = str(tmp_path / f"{name}.img")
        r = json.loads(dv("restore", img, target, "--size", size, "--layout", "fit", *extra, "--yes", "--json").stdout)
        assert tuple(p["action"] for p in r["plan"]["partitions"]) == actions
        sgdisk_clean(target)
        for p, action, fstype, files in zip(table_of(target).partitions, actions, ("xfs", "btrfs"), expected):
            with loop_device(target, p.start, p.size) as dev:
                sh("xfs_repair" if fstype == "xfs" else "btrfs", *(["-n"] if fstype == "xfs" else ["check"]), dev)
                with mounted(dev, str(tmp_path / "mnt"), "ro") as mnt:
                    assert sorted(os.listdir(os.path.join(mnt, "tree"))) == files
                    size_line = sh("df", "-B1", "--output=size", mnt).stdout.split()[-1]
                    assert (int(size_line) > 285 * MiB) == (action == "grow"), (fstype, action, size_line)


CELL = 4 * MiB  # an image's default chunk size


def test_delta_writes_only_what_changed(tmp_path):
    disk = str(tmp_path / "disk.img")
    (part,) = build_disk(disk, [Part(160, "ext4", tree_seed=7)], workdir=str(tmp_path))
    with loop_device(disk, part.start, part.size) as dev, mounted(dev, str(tmp_path / "mnt"), "rw") as mnt, \
            open(os.path.join(mnt, "big"), "wb") as f:
            f.write(os.urandom(100 * MiB))
    images = str(tmp_path / "images")
    full = image(disk, images)["image"]
    target = str(tmp_path / "target.img")
    first = json.loads(dv("restore", full, target, "--yes", "--json").stdout)
    with loop_device(disk, part.start, part.size) as dev, mounted(dev, str(tmp_path / "mnt"), "rw") as mnt, \
            open(os.path.join(mnt, "big"), "r+b") as f:
            f.seek(50 * MiB)
            f.write(os.urandom(2 * MiB))
    inc = image(disk, images, "--type", "inc")["image"]
    r = json.loads(dv("restore", inc, target, "--delta", "--yes", "--json").stdout)
    # the target's superblock is the Full's: only the cells the inc stores, and those holding the
    # partition table and the boot area, are compared
    with Chain(inc, KeyRing()) as chain:
        stored = int(chain.head.index["length"].sum())
    assert 2 * MiB <= r["bytes_compared"] <= stored + 3 * CELL
    assert 2 * MiB <= r["bytes_written"] < first["bytes_written"] // 5, (r, first)
    fsck_clean(target, part)
    assert partition_manifest(target, part, str(tmp_path / "a")) == partition_manifest(disk, part, str(tmp_path / "b"))
    again = json.loads(dv("restore", inc, target, "--delta", "--yes", "--json").stdout)
    assert again["bytes_written"] == 4096  # the superblock's block: every restore writes it last
    assert again["bytes_compared"] <= 3 * CELL  # the target's superblock is the inc's
    with loop_device(target, part.start, part.size) as dev, mounted(dev, str(tmp_path / "mnt"), "rw"):
        pass  # a read-write mount changes the superblock: then file data is all that can be vouched for
    after_mount = json.loads(dv("restore", inc, target, "--delta", "--yes", "--json").stdout)
    assert 10 * MiB < after_mount["bytes_compared"] <= first["bytes_restored"] - 64 * MiB  # big: skipped
    fresh = str(tmp_path / "fresh.img")
    dv("restore", inc, fresh, "--yes")
    assert sha256_file(target, part.start, part.size) == sha256_file(fresh, part.start, part.size)
    # free space written behind diskvault's back is punched out again
    with open(target, "r+b") as f:
        f.seek(part.start + part.size - 8 * MiB)
        f.write(os.urandom(4 * MiB))
    blocks = os.stat(target).st_blocks
    dv("restore", inc, target, "--delta", "--yes")
    assert os.stat(target).st_blocks * 512 <= blocks * 512 - 4 * MiB


def test_delta_writes_patches_only_onto_what_the_target_is_vouched_to_hold(tmp_path):
    """The inc's patches are written unread onto cells the target is vouched to hold the Full's
    bytes in. Not onto a cell with blocks the Full did not use (junk written behind diskvault's
    back, and zeros the inc newly uses, in no patch), nor one with a file changed on the target."""
    disk = str(tmp_path / "disk.img")
    (part,) = build_disk(disk, [Part(64, "ext4", ("-b", "4096"), tree_seed=None)], workdir=str(tmp_path))
    mnt = str(tmp_path / "mnt")
    with loop_device(disk, part.start, part.size) as dev, mounted(dev, mnt, "rw"):
        with open(os.path.join(mnt, "big"), "wb") as f:
            f.write(os.urandom(24 * MiB))
    with loop_device(disk, part.start, part.size, read_only=True) as dev:
        blocks = [int(b) for b in sh("debugfs", "-R", "blocks /big", dev).stdout.split()]
    assert blocks == list(range(blocks[0], blocks[0] + len(blocks)))  # one run: offsets map simply
    big_start = part.start + blocks[0] * 4096
    cell = (big_start + 8 * MiB) // CELL * CELL  # a cell inside big
    images = str(tmp_path / "images")
    full = image(disk, images)["image"]
    target = str(tmp_path / "target.img")
    dv("restore", full, target, "--yes")
    with open(target, "r+b") as f:  # junk in the free space; the superblock cannot tell
        used = ExtReader(Window(f.fileno(), part.start, part.size), part.size).used_extents()
        for start, length in ext.complement(used, part.size).tolist():
            f.seek(part.start + start)
            f.write(os.urandom(length))
    with loop_device(disk, part.start, part.size) as dev, mounted(dev, mnt, "rw"):
        with open(os.path.join(mnt, "big"), "r+b") as f:
            for offset in (2 * MiB, 16 * MiB, cell + 256 * 1024 - big_start):
                f.seek(offset)
                f.write(os.urandom(128 * 1024))
        with open(os.path.join(mnt, "new"), "wb") as f:  # its zeros are in no patch: the Full's free space
            f.write(os.urandom(MiB // 2) + bytes(MiB) + os.urandom(MiB // 2))
    inc = image(disk, images, "--type", "inc")["image"]
    fresh = str(tmp_path / "fresh.img")
    dv("restore", inc, fresh, "--yes")
    with Chain(inc, KeyRing()) as chain:
        patched = [int(rec["disk_offset"]) for rec in chain.head.index if rec["flags"] & CHUNK_PATCH]
    assert cell in patched
    spare = str(tmp_path / "spare.img")
    shutil.copyfile(target, spare)
    r = json.loads(dv("restore", inc, target, "--delta", "--yes", "--json").stdout)
    assert sha256_file(target, part.start, part.size) == sha256_file(fresh, part.start, part.size)
    assert r["bytes_compared"] <= 3 * CELL, r  # the table's two cells and new's; not big's three changed ones

    with loop_device(spare, part.start, part.size) as dev, mounted(dev, mnt, "rw"):
        with open(os.path.join(mnt, "big"), "r+b") as f:  # big's cell changed on the target too
            f.seek(cell + 2 * MiB - big_start)
            f.write(os.urandom(64 * 1024))
    dv("restore", inc, spare, "--delta", "--yes")
    assert sha256_file(spare, part.start, part.size) == sha256_file(fresh, part.start, part.size)


def test_trim_on_a_loop_device_leaves_free_space_as_holes(tmp_path, mixed):
    disk, img, expected, _ = mixed
    target = str(tmp_path / "t.img")
    with open(target, "wb") as f:
        f.write(os.urandom(os.path.getsize(disk)))
    with loop_device(target) as dev:
        r = json.loads(dv("restore", img, dev, "--no-trim", "--yes", "--json").stdout)
    assert r["bytes_discarded"] == 0 and os.stat(target).st_blocks * 512 > 100 * MiB
    with loop_device(target) as dev:
        r = json.loads(dv("restore", img, dev, "--yes", "--json").stdout)
    assert r["bytes_discarded"] > 100 * MiB
    assert os.stat(target).st_blocks * 512 < r["bytes_restored"] + 4 * MiB
    assert mixed_disk_state(target, parts_of(target), str(tmp_path)) == expected


def test_moved_ntfs_and_fat_record_their_new_start(tmp_path):
    """Windows boots through the BPB's hidden-sectors field: it must follow a moved partition."""
    disk = str(tmp_path / "disk.img")
    with open(disk, "wb") as f:
        f.truncate(64 * MiB)
    sh("sfdisk", "-q", disk, input="label: gpt\nstart=2048, size=40960, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\n"
                                   "start=43008, size=40960, type=EBD0A0A2-B9E5-4433-87C0-68B97B26B9C7\n")
    with loop_device(disk, 2048 * 512, 20 * MiB) as dev:
        sh("mkfs.vfat", "-F", "32", "-h", "2048", dev)
    with loop_device(disk, 43008 * 512, 20 * MiB) as dev:
        sh("mkntfs", "-q", "-f", "-F", "-p", "43008", "-H", "255", "-S", "63", dev)
    img = image(disk, str(tmp_path / "images"))["image"]
    target = str(tmp_path / "t.img")
    dv("restore", img, target, "--size", "80M", "--layout", "fit", "--resize", "1=30M", "--yes")
    esp, ntfs = table_of(target).partitions
    assert ntfs.start == 31 * MiB
    with open(target, "rb") as f:
        for where in (esp.start, esp.start + 6 * 512, ntfs.start, ntfs.end - 512):
            f.seek(where)
            sector = f.read(512)
            assert int.from_bytes(sector[0x1C:0x20], "little") == (ntfs.start if where >= ntfs.start
                                                                    else esp.start) // 512, where
    with loop_device(target, ntfs.start, ntfs.size, read_only=True) as dev:
        sh("ntfsfix", "-n", dev)
