"""Device listing and target safety checks, on loop devices over files in tmp_path
(always detached by name; mounts always unmounted)."""

from __future__ import annotations

import os
import subprocess

import pytest

from diskvault.disk import devices
from diskvault.errors import TargetError

MiB = 1 << 20


def sh(*args: str) -> str:
    proc = subprocess.run(list(args), capture_output=True, text=True)
    assert proc.returncode == 0, f"{args}: {proc.stdout}{proc.stderr}"
    return proc.stdout


def make_file(path, mib: int = 8) -> str:
    with open(path, "wb") as f:
        f.truncate(mib * MiB)
    return str(path)


@pytest.fixture
def loop(tmp_path):
    """(device, backing file) of a freshly attached loop device; detached by name afterwards."""
    backing = make_file(tmp_path / "backing.img")
    dev = sh("losetup", "--find", "--show", backing).strip()
    try:
        yield dev, backing
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True)


# ----------------------------------------------------------------------------- no root needed


def test_mounted_devices_has_root():
    mounts = devices.mounted_devices()
    assert "/" in mounts.values()
    root_dev = os.stat("/").st_dev
    assert mounts[f"{os.major(root_dev)}:{os.minor(root_dev)}"] == "/"


def test_parse_mountinfo_unescapes():
    text = ("27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
            "40 27 7:3 / /mnt/with\\040space rw,relatime shared:1 - ext4 /dev/loop3 rw\n"
            "41 27 0:50 / /srv rw - btrfs /dev/does-not-exist rw\n")
    mounts = devices.parse_mountinfo(text)
    assert mounts["7:3"] == "/mnt/with space"
    assert mounts["0:50"] == "/srv"
    assert mounts["254:0"] == "/"


def test_check_target_path_refuses_missing_dev_path(tmp_path):
    with pytest.raises(TargetError, match="no such block device") as exc:
        devices.check_target_path("/dev/nonexistent-xyz")
    assert str(exc.value) == "refusing target /dev/nonexistent-xyz: no such block device"
    with pytest.raises(TargetError, match="no such block device"):
        devices.check_target_path("/dev/disk/by-id/nonexistent-xyz")
    with pytest.raises(TargetError, match="no such block device"):
        devices.open_exclusive("/dev/nonexistent-xyz", create=True)
    assert not os.path.exists("/dev/nonexistent-xyz")
    with pytest.raises(TargetError, match="not a block device"):
        devices.check_target_path("/dev/null")
    with pytest.raises(TargetError, match="directory"):
        devices.check_target_path(str(tmp_path))
    assert devices.check_target_path(str(tmp_path / "new.img")) is False
    assert devices.is_block_device("/dev/nonexistent-xyz") is False
    assert devices.is_block_device(str(tmp_path)) is False


def test_new_file_in_filesystem_mounted_under_dev_is_allowed():
    if not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == os.stat("/dev").st_dev:
        pytest.skip("/dev/shm is not a separate filesystem here")
    assert devices.check_target_path("/dev/shm/diskvault-test-does-not-exist.img") is False


def test_regular_file_target(tmp_path):
    path = make_file(tmp_path / "target.img", 1)
    assert devices.check_target_path(path) is False
    devices.check_target_free(path)
    devices.check_target_free(str(tmp_path / "not-yet.img"))
    fd = devices.open_exclusive(str(tmp_path / "created.img"), create=True)
    os.close(fd)
    assert os.path.isfile(tmp_path / "created.img")
    with pytest.raises(TargetError):
        devices.open_exclusive(str(tmp_path / "missing.img"))


def test_list_disks_shape():
    disks = devices.list_disks()
    assert isinstance(disks, list)
    for d in disks:
        assert d["type"] in ("disk", "loop") and d["size"] > 0 and d["path"].startswith("/dev/")
        for p in d["partitions"]:
            assert set(p) >= {"number", "path", "start", "size", "fstype", "label", "uuid", "used",
                              "mountpoints"}


# ----------------------------------------------------------------------------- loop devices


@pytest.mark.root
def test_attached_file_is_refused(loop, tmp_path):
    dev, backing = loop
    with pytest.raises(TargetError, match=f"in use: attached to {dev}$"):
        devices.check_target_free(backing)
    # another name for the same file: found by device + inode
    other = tmp_path / "hardlink.img"
    os.link(backing, other)
    with pytest.raises(TargetError, match=f"attached to {dev}"):
        devices.check_target_free(str(other))
    assert devices.loop_devices_of(str(tmp_path / "sub" / ".." / "backing.img")) == [dev]


@pytest.mark.root
def test_unmounted_loop_device_is_free(loop):
    dev, _ = loop
    assert devices.check_target_path(dev) is True
    devices.check_target_free(dev)
    assert devices.holders(dev) == []


@pytest.mark.root
def test_mounted_loop_device_is_refused(tmp_path):
    backing = make_file(tmp_path / "ext4.img")
    sh("mkfs.ext4", "-q", "-F", backing)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    dev = sh("losetup", "--find", "--show", backing).strip()
    try:
        sh("mount", dev, str(mnt))
        try:
            key = open(f"/sys/class/block/{os.path.basename(dev)}/dev").read().strip()
            assert devices.mounted_devices()[key] == str(mnt)
            with pytest.raises(TargetError, match=f"refusing target {dev}: mounted at {mnt}$"):
                devices.check_target_free(dev)
            with pytest.raises(TargetError, match=f"attached to {dev}"):
                devices.check_target_free(backing)
        finally:
            subprocess.run(["umount", str(mnt)], capture_output=True)
        devices.check_target_free(dev)
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True)


@pytest.mark.root
def test_exclusively_opened_device_is_refused(loop):
    dev, _ = loop
    fd = devices.open_exclusive(dev)
    try:
        with pytest.raises(TargetError, match="in use by another program"):
            devices.check_target_free(dev)
        with pytest.raises(TargetError, match="in use by another program"):
            devices.open_exclusive(dev)
    finally:
        os.close(fd)
    devices.check_target_free(dev)


@pytest.mark.root
def test_read_only_loop_device_is_refused(tmp_path):
    backing = make_file(tmp_path / "ro.img", 1)
    dev = sh("losetup", "--find", "--show", "--read-only", backing).strip()
    try:
        with pytest.raises(TargetError, match="read-only"):
            devices.check_target_free(dev)
        assert devices.device_info(dev)["read_only"] is True
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True)


@pytest.mark.root
def test_list_disks_and_device_info_show_the_loop(loop):
    dev, backing = loop
    found = [d for d in devices.list_disks() if d["path"] == dev]
    assert len(found) == 1
    disk = found[0]
    assert disk["size"] == 8 * MiB
    assert disk["type"] == "loop"
    assert disk["backing_file"] == backing
    assert disk["partitions"] == []
    info = devices.device_info(dev)
    assert info["size"] == 8 * MiB
    assert info["sector_size"] == 512
    assert info["name"] == os.path.basename(dev)
    assert info["read_only"] is False
    assert info["is_partition"] is False


@pytest.mark.root
def test_open_exclusive_writes_only_to_our_loop(loop):
    dev, backing = loop
    fd = devices.open_exclusive(dev)
    try:
        os.pwrite(fd, b"diskvault", 4096)
        os.fsync(fd)
    finally:
        os.close(fd)
    with open(backing, "rb") as f:
        f.seek(4096)
        assert f.read(9) == b"diskvault"

