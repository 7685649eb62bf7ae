"""ext change tracking (diskvault.changes): an incremental that skips files whose inodes are
unchanged holds exactly the state a full re-read gives; what it cannot vouch for is read."""

import os
import shutil
import stat
import subprocess

import numpy as np
import pytest
from diskutil import MiB, Part, build_disk, fsck_clean, loop_device, mounted, partition_manifest, sha256_file
from test_roundtrip import dv, image

from diskvault.changes import open_tracker
from diskvault.format.chain import Chain
from diskvault.format.reader import KeyRing
from diskvault.fs import extents as ext
from diskvault.fs.base import Window
from diskvault.fs.ext import ExtReader

pytestmark = pytest.mark.root


def state_hash(img: str) -> bytes:
    with Chain(img, KeyRing()) as chain:
        return chain.state.hash(chain.disk_size)


def big_files(disk: str, part: Part, mnt: str, sizes: dict[str, int]) -> None:
    with loop_device(disk, part.start, part.size) as dev, mounted(dev, mnt, "rw"):
        for name, size in sizes.items():
            with open(os.path.join(mnt, name), "wb") as f:
                f.write(os.urandom(size))


def twin_incrementals(disk: str, full_dest: str, tmp_path, kind: str) -> tuple[dict, dict]:
    """The same incremental made with and without change tracking, each on its own copy of the set."""
    tracked, untracked = str(tmp_path / f"{kind}-tracked"), str(tmp_path / f"{kind}-untracked")
    for d in (tracked, untracked):
        shutil.copytree(full_dest, d)
    return (image(disk, tracked, "--type", kind),
            image(disk, untracked, "--type", kind, "--no-change-tracking"))


def test_tracked_incremental_equals_a_full_reread(tmp_path):
    disk = str(tmp_path / "disk.img")
    (part,) = build_disk(disk, [Part(80, "ext4", tree_seed=3)], workdir=str(tmp_path))
    mnt = str(tmp_path / "mnt")
    big_files(disk, part, mnt, {f"big{i}": 6 * MiB for i in range(8)} | {"victim": 2 * MiB})
    dest = str(tmp_path / "full")
    image(disk, dest)
    with loop_device(disk, part.start, part.size) as dev, mounted(dev, mnt, "rw"):
        st = os.stat(os.path.join(mnt, "big1"))
        with open(os.path.join(mnt, "big1"), "r+b") as f:  # same size, mtime put back: only ctime tells
            f.seek(3 * MiB)
            f.write(os.urandom(4096))
        os.utime(os.path.join(mnt, "big1"), ns=(st.st_atime_ns, st.st_mtime_ns))
        with open(os.path.join(mnt, "big2"), "ab") as f:
            f.write(os.urandom(70_000))
        os.unlink(os.path.join(mnt, "victim"))
        with open(os.path.join(mnt, "new"), "wb") as f:  # likely reuses the victim's blocks
            f.write(os.urandom(2 * MiB))
        os.rename(os.path.join(mnt, "big3"), os.path.join(mnt, "renamed"))
        os.chmod(os.path.join(mnt, "big4"), 0o600)
    expected = partition_manifest(disk, part, str(tmp_path / "src"))
    inc, plain = twin_incrementals(disk, dest, tmp_path, "inc")
    assert inc["image_type"] == plain["image_type"] == "inc"
    assert state_hash(inc["image"]) == state_hash(plain["image"])
    # big0, big5-7 untouched (a rename or chmod changes ctime: big3 and big4 are read again)
    assert inc["bytes_read"] <= plain["bytes_read"] - 3 * 4 * MiB

    with loop_device(disk, part.start, part.size) as dev, mounted(dev, mnt, "rw"):
        with open(os.path.join(mnt, "big0"), "r+b") as f:
            f.write(b"changed")
    diff, plain_diff = twin_incrementals(disk, dest, tmp_path, "diff")
    assert state_hash(diff["image"]) == state_hash(plain_diff["image"])

    target = str(tmp_path / "restored.img")
    dv("restore", inc["image"], target, "--yes")
    fsck_clean(target, part)
    assert partition_manifest(target, part, str(tmp_path / "dst")) == expected


def test_an_unwritten_filesystem_is_not_read_again(tmp_path):
    """Its superblock is as the Full found it: nothing of it is read, only the partition table's
    and the boot area's cells; one read-write mount (nothing changed) and metadata is read again."""
    disk = str(tmp_path / "disk.img")
    (part,) = build_disk(disk, [Part(48, "ext4", ("-b", "4096"), tree_seed=3)], workdir=str(tmp_path))
    mnt = str(tmp_path / "mnt")
    big_files(disk, part, mnt, {f"big{i}": 6 * MiB for i in range(4)})
    dest = str(tmp_path / "full")
    image(disk, dest)
    with loop_device(disk, part.start, part.size, read_only=True) as dev, mounted(dev, mnt, "ro"):
        assert sorted(os.listdir(mnt))[:2] == ["big0", "big1"]
    inc, plain = twin_incrementals(disk, dest, tmp_path, "inc")
    assert state_hash(inc["image"]) == state_hash(plain["image"])
    assert inc["bytes_read"] <= 2 * 4 * MiB < 30 * MiB <= plain["bytes_read"]
    with loop_device(disk, part.start, part.size) as dev, mounted(dev, mnt, "rw"):
        pass
    again, plain = twin_incrementals(disk, dest, tmp_path, "diff")
    assert state_hash(again["image"]) == state_hash(plain["image"])
    assert inc["bytes_read"] < again["bytes_read"] < plain["bytes_read"] - 20 * MiB  # the big files: not read


def test_a_write_that_puts_mtime_back_is_seen(tmp_path):
    """Only ctime (and i_version) tell: the written block lies in a cell of that file alone."""
    disk = str(tmp_path / "disk.img")
    (part,) = build_disk(disk, [Part(48, "ext4", tree_seed=None)], workdir=str(tmp_path))
    mnt = str(tmp_path / "mnt")
    big_files(disk, part, mnt, {f"big{i}": 12 * MiB for i in range(3)})
    dest = str(tmp_path / "full")
    image(disk, dest)
    with loop_device(disk, part.start, part.size) as dev, mounted(dev, mnt, "rw"):
        path = os.path.join(mnt, "big1")
        st = os.stat(path)
        with open(path, "r+b") as f:
            f.seek(6 * MiB)
            f.write(os.urandom(4096))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    inc, plain = twin_incrementals(disk, dest, tmp_path, "inc")
    assert inc["bytes_read"] <= plain["bytes_read"] - 8 * MiB  # cells of big0 and big2 alone: not read
    assert state_hash(inc["image"]) == state_hash(plain["image"]) != state_hash(glob_full(dest))


def test_a_partly_known_cell_is_read_only_where_unknown(tmp_path):
    """Changed and unchanged files share every cell: the unchanged files' bytes come from the
    parent's cells, not the disk, and the image is the one a full re-read makes, record for record."""
    disk = str(tmp_path / "disk.img")
    (part,) = build_disk(disk, [Part(48, "ext4", ("-b", "4096"), tree_seed=None)], workdir=str(tmp_path))
    mnt = str(tmp_path / "mnt")
    big_files(disk, part, mnt, {f"f{i:02}": MiB for i in range(16)})
    dest = str(tmp_path / "full")
    image(disk, dest)
    with loop_device(disk, part.start, part.size) as dev, mounted(dev, mnt, "rw"):
        for i in range(0, 16, 3):  # any 4 MiB of consecutive files holds one of these
            with open(os.path.join(mnt, f"f{i:02}"), "r+b") as f:
                f.seek(MiB // 2)
                f.write(os.urandom(4096))
    inc, plain = twin_incrementals(disk, dest, tmp_path, "inc")
    assert records(inc["image"]) == records(plain["image"])
    assert state_hash(inc["image"]) == state_hash(plain["image"]) != state_hash(glob_full(dest))
    assert inc["bytes_read"] <= plain["bytes_read"] - 8 * MiB  # the unchanged files' bytes, not read


def records(img: str) -> list[tuple]:
    """What an image stores for each cell: where, how, and the hashes of the cell and stored bytes."""
    with Chain(img, KeyRing()) as chain:
        return [(int(r["disk_offset"]), int(r["length"]), int(r["flags"]), int(r["codec"]),
                 bytes(r["content_hash"]), bytes(r["stored_hash"])) for r in chain.head.index]


def glob_full(dest: str) -> str:
    (name,) = [n for n in os.listdir(dest) if n.endswith("-00-00.dvimg")]
    return os.path.join(dest, name)


def test_raw_device_writes_are_caught_without_change_tracking(tmp_path):
    disk = str(tmp_path / "disk.img")
    (part,) = build_disk(disk, [Part(32, "ext4", ("-b", "4096"), tree_seed=None)], workdir=str(tmp_path))
    big_files(disk, part, str(tmp_path / "mnt"), {"data": 8 * MiB})
    dest = str(tmp_path / "full")
    image(disk, dest)
    with loop_device(disk, part.start, part.size, read_only=True) as dev:
        blocks = subprocess.run(["debugfs", "-R", "blocks /data", dev], capture_output=True, text=True,
                                check=True).stdout.split()
    offset = part.start + int(blocks[len(blocks) // 2]) * 4096
    with open(disk, "r+b") as f:  # behind the filesystem's back: no inode changes
        f.seek(offset)
        f.write(os.urandom(4096))
    _tracked, plain = twin_incrementals(disk, dest, tmp_path, "inc")
    target = str(tmp_path / "restored.img")
    dv("restore", plain["image"], target, "--yes")
    assert sha256_file(target, offset, 4096) == sha256_file(disk, offset, 4096)


def test_tracker_vouches_for_file_data_or_an_unwritten_filesystem_and_distrusts_a_dirty_one(tmp_path):
    disk = str(tmp_path / "disk.img")
    (part,) = build_disk(disk, [Part(24, "ext4", tree_seed=5)], workdir=str(tmp_path))
    allocated = {}  # inode -> data bytes (small files: no extent tree blocks; no xattr blocks)
    with loop_device(disk, part.start, part.size, read_only=True) as dev, \
            mounted(dev, str(tmp_path / "mnt"), "ro,noload") as mnt:
        for d, _dirs, names in os.walk(mnt):
            for name in names:
                st = os.lstat(os.path.join(d, name))
                if stat.S_ISREG(st.st_mode):
                    allocated[st.st_ino] = st.st_blocks * 512
    data_bytes = sum(allocated.values())
    with open(disk, "rb") as fh:
        used = ExtReader(Window(fh.fileno(), part.start, part.size), part.size).used_extents()
    boot = 2048  # 1 KiB blocks: the boot block and the superblock's, always compared
    fd = os.open(disk, os.O_RDONLY)
    try:
        tracker = open_tracker(fd, part.start, part.size)
        assert tracker is not None and min(tracker.numbers) >= 11  # no journal, no reserved inode
        before = tracker.snapshot()
        for vouch in (tracker.unchanged, tracker.candidates):
            assert ext.total(vouch(before)) == ext.total(used) - boot  # not written since: every used byte
            assert ext.total(vouch(before | {"superblock": "0" * 64})) == data_bytes
            assert len(vouch(before | {"uuid": "0" * 32})) == 0
        files = tracker.unchanged(before | {"superblock": "0" * 64})
        fresh = open_tracker(fd, part.start, part.size)  # asked about a few files only: hashes only theirs
        piece = np.array([[files[0, 0], 1024]], dtype=np.uint64)  # one block of one file
        assert np.array_equal(fresh.unchanged(before | {"superblock": "0" * 64}, piece), piece)
        assert "fingerprints" not in fresh.__dict__
    finally:
        os.close(fd)
    with loop_device(disk, part.start, part.size) as dev, mounted(dev, str(tmp_path / "mnt"), "rw"):
        pass  # mounted read-write, nothing changed: the superblock tells, so only file data is vouched for
    fd = os.open(disk, os.O_RDONLY)
    try:
        tracker = open_tracker(fd, part.start, part.size)
        assert tracker.superblock != before["superblock"] and ext.total(tracker.unchanged(before)) == data_bytes
    finally:
        os.close(fd)
    with loop_device(disk, part.start, part.size) as dev:
        subprocess.run(["debugfs", "-w", "-R", "feature needs_recovery", dev], check=True, capture_output=True)
    fd = os.open(disk, os.O_RDONLY)
    try:
        assert open_tracker(fd, part.start, part.size) is None
    finally:
        os.close(fd)


def test_an_interrupted_restore_leaves_a_target_that_vouches_for_nothing(tmp_path):
    """A restore writes inode tables before the data they describe. Interrupted, the target must
    not offer those inodes to a later delta restore: its superblock is written last."""
    disk = str(tmp_path / "disk.img")
    (part,) = build_disk(disk, [Part(64, "ext4", ("-b", "4096"), tree_seed=None)], workdir=str(tmp_path))
    mnt = str(tmp_path / "mnt")
    big_files(disk, part, mnt, {f"big{i}": 12 * MiB for i in range(3)})
    dest = str(tmp_path / "images")
    full = image(disk, dest)["image"]
    target = str(tmp_path / "target.img")
    dv("restore", full, target, "--yes")
    with loop_device(disk, part.start, part.size) as dev, mounted(dev, mnt, "rw"):
        with open(os.path.join(mnt, "big1"), "r+b") as f:
            f.seek(8 * MiB)
            f.write(os.urandom(MiB))
    with loop_device(disk, part.start, part.size, read_only=True) as dev:
        first_block = int(subprocess.run(["debugfs", "-R", "blocks /big1", dev], capture_output=True, text=True,
                                         check=True).stdout.split()[0])
    inc = image(disk, dest, "--type", "inc")["image"]
    # break the Full's copy of big1's first cell (unchanged, so the restore reads it from the Full)
    cell = (part.start + first_block * 4096) // (4 * MiB) * (4 * MiB)
    with Chain(full, KeyRing()) as chain:
        (rec,) = [r for r in chain.head.index if int(r["disk_offset"]) == cell]
    with open(full, "r+b") as f:
        f.seek(int(rec["file_offset"]) + 100)
        good = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([good[0] ^ 0x10]))
    r = dv("restore", inc, target, "--yes", check=False)
    assert r.returncode != 0 and "diskvault:" in r.stderr
    fd = os.open(target, os.O_RDONLY)
    try:
        assert os.pread(fd, 2, part.start + 1024 + 0x38) == bytes(2)  # no ext magic: vouches for nothing
        assert open_tracker(fd, part.start, part.size) is None
    finally:
        os.close(fd)
    with open(full, "r+b") as f:
        f.seek(int(rec["file_offset"]) + 100)
        f.write(good)
    dv("restore", inc, target, "--delta", "--yes")
    fsck_clean(target, part)
    assert partition_manifest(target, part, str(tmp_path / "a")) == partition_manifest(disk, part, str(tmp_path / "b"))
