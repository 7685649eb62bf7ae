"""Clone disk to disk: smaller and larger targets (files and loop devices), verification, Rapid Delta
Clone, and the targets clone refuses."""

import json
import os

import pytest
from diskutil import MiB, build_mixed_disk, loop_device, mixed_disk_state, mounted, sh, sha256_file
from test_resize import parts_of, sgdisk_clean
from test_roundtrip import dv

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    work = tmp_path_factory.mktemp("clone")
    disk = str(work / "disk.img")
    build_mixed_disk(disk, str(work))
    return disk, mixed_disk_state(disk, parts_of(disk), str(work))


def test_clone_to_a_smaller_file(tmp_path, mixed):
    disk, expected = mixed
    target = str(tmp_path / "small.img")
    with open(target, "wb") as f:
        f.truncate(110 * MiB)
    r = json.loads(dv("clone", disk, target, "--layout", "fit", "--yes", "--json").stdout)
    assert [p["action"] for p in r["plan"]["partitions"]] == ["shrink"] * 4
    assert len(r["checked"]) == 4
    sgdisk_clean(target)
    assert mixed_disk_state(target, parts_of(target), str(tmp_path)) == expected
    assert os.stat(target).st_blocks * 512 < r["bytes_restored"] + 4 * MiB


def test_clone_from_a_device_to_a_larger_loop_device(tmp_path, mixed):
    disk, expected = mixed
    target = str(tmp_path / "big.img")
    with open(target, "wb") as f:
        f.write(os.urandom(8 * MiB))  # old contents that must not survive as "free space"
        f.truncate(2 * os.path.getsize(disk))
    with loop_device(disk, read_only=True) as src, loop_device(target) as dev:
        r = json.loads(dv("clone", src, dev, "--layout", "fit", "--yes", "--json").stdout)
    assert r["plan"]["partitions"][-1]["action"] == "grow" and r["bytes_discarded"] > 100 * MiB
    sgdisk_clean(target)
    assert mixed_disk_state(target, parts_of(target), str(tmp_path)) == expected
    assert os.stat(target).st_blocks * 512 < r["bytes_restored"] + 4 * MiB


def test_exact_clone_is_the_same_disk_apart_from_free_space(tmp_path, mixed):
    disk, expected = mixed
    target = str(tmp_path / "copy.img")
    out = dv("clone", disk, target, "--yes").stdout
    assert out.startswith("cloned ") and os.path.getsize(target) == os.path.getsize(disk)
    table = 34 * 512
    assert sha256_file(target, 0, table) == sha256_file(disk, 0, table)
    assert mixed_disk_state(target, parts_of(target), str(tmp_path)) == expected


def test_delta_clone_writes_only_the_change(tmp_path, mixed):
    disk, expected = mixed
    source = str(tmp_path / "source.img")
    sh("cp", "--sparse=always", disk, source)
    target = str(tmp_path / "target.img")
    first = json.loads(dv("clone", source, target, "--yes", "--json").stdout)
    ext4 = parts_of(source)["ext4"]
    with loop_device(source, ext4.start, ext4.size) as dev, mounted(dev, str(tmp_path / "mnt"), "rw") as mnt, \
            open(os.path.join(mnt, "new.bin"), "wb") as f:
            f.write(os.urandom(2 * MiB))
    r = json.loads(dv("clone", source, target, "--delta", "--yes", "--json").stdout)
    assert r["bytes_compared"] >= first["bytes_restored"] // 2
    assert 2 * MiB <= r["bytes_written"] < first["bytes_written"] // 2, (r, first)
    state = mixed_disk_state(target, parts_of(target), str(tmp_path))
    assert state["ext4"] == mixed_disk_state(source, parts_of(source), str(tmp_path))["ext4"]
    assert "new.bin" in state["ext4"] and state["ntfs"] == expected["ntfs"]


def test_clone_refuses_the_source_and_busy_targets(tmp_path, mixed):
    disk, _ = mixed
    before = sha256_file(disk)
    r = dv("clone", disk, disk, "--yes", check=False)
    assert r.returncode == 1 and "it is the source" in r.stderr
    with loop_device(disk, read_only=True) as dev:
        r = dv("clone", dev, disk, "--yes", check=False)
        assert r.returncode == 1 and ("it is the source" in r.stderr or "attached to" in r.stderr), r.stderr
    target = str(tmp_path / "t.img")
    with open(target, "wb") as f:
        f.truncate(200 * MiB)
    sh("mkfs.ext4", "-q", "-F", target)
    mounted_before = sha256_file(target)
    with loop_device(target) as dev, mounted(dev, str(tmp_path / "mnt"), "ro,noload"):
        r = dv("clone", disk, dev, "--yes", check=False)
        assert r.returncode == 1 and "mounted at" in r.stderr
    assert sha256_file(target) == mounted_before and sha256_file(disk) == before
    r = dv("clone", disk, target, check=False)  # no terminal and no --yes: nothing written
    assert r.returncode == 1 and "pass --yes" in r.stderr and sha256_file(target) == mounted_before
