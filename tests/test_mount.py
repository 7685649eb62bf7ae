"""diskvault mount / umount / export on a real GPT disk with FAT32, NTFS, ext4 and swap: every file
read back through the mount (nested loop + ext4, ntfs-3g, FAT served in-process; mtools on
partN.img) for a Full
and an Incremental, plain and encrypted + split; disk.img and exports equal the restored disk;
nothing stays attached, also when the server is killed or an attach fails half-way."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from diskutil import (MiB, build_mixed_disk, extract, fat_manifest, manifest, mixed_disk_state, ntfs_mounted, sh,
                      sha256_file)
from test_chains import change_files
from test_roundtrip import dv, image

from diskvault.format.chain import Chain
from diskvault.format.reader import KeyRing
from diskvault.mount import state as mount_state
from diskvault.mount.attach import is_mounted, loops_backed_by, mounts_under
from diskvault.mount.prefetch import PrefetchReader

pytestmark = pytest.mark.root
PW = ("--password-env", "DV_MOUNT_PW")
NUMBER = {"esp": 1, "ntfs": 2, "ext4": 3}


@pytest.fixture(autouse=True)
def fast_kdf(monkeypatch):
    monkeypatch.setenv("DISKVAULT_KDF_MEMORY_KIB", "1024")
    monkeypatch.setenv("DV_MOUNT_PW", "mount test password")


def _splice(disk: str, part, piece: str) -> None:
    with open(piece, "rb") as src, open(disk, "r+b") as dst:
        dst.seek(part.start)
        dst.write(src.read())
    os.unlink(piece)


def change_mixed(disk: str, parts: dict, workdir: str, seed: int) -> None:
    """Delete, modify and add files on the ext4, NTFS and FAT partitions."""
    rng = random.Random(seed)
    change_files(disk, parts["ext4"], os.path.join(workdir, "chg-ext4"), seed)
    piece = extract(disk, parts["ntfs"], os.path.join(workdir, "chg-ntfs.part"))
    with ntfs_mounted(piece, os.path.join(workdir, "chg-ntfs"), read_only=False) as mnt:
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(mnt) for f in fs)
        for p in files[::6]:
            os.unlink(p)
        for p in files[1::5]:
            with open(p, "ab") as f:
                f.write(rng.randbytes(5000))
        with open(os.path.join(mnt, f"new-{seed}.bin"), "wb") as f:
            f.write(rng.randbytes(300_000))
    _splice(disk, parts["ntfs"], piece)
    piece = extract(disk, parts["esp"], os.path.join(workdir, "chg-esp.part"))
    new = os.path.join(workdir, f"esp-new-{seed}.bin")
    with open(new, "wb") as f:
        f.write(rng.randbytes(200_000))
    sh("mdel", "-i", piece, "::/dir0/sub0/file0.dat")
    sh("mcopy", "-o", "-i", piece, new, "::/dir1/sub1/file1.dat")
    sh("mcopy", "-i", piece, new, "::/")
    _splice(disk, parts["esp"], piece)


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """A mixed disk imaged as Full then Incremental, plainly and encrypted + split (4M), with the
    source's state (files of each filesystem) and a restored copy of the disk at each point."""
    os.environ["DISKVAULT_KDF_MEMORY_KIB"] = "1024"
    os.environ["DV_MOUNT_PW"] = "mount test password"
    tmp = tmp_path_factory.mktemp("mountsets")
    disk = str(tmp / "disk.img")
    parts = build_mixed_disk(disk, str(tmp))
    out = {"parts": parts, "tmp": tmp}
    for point in ("full", "inc"):
        if point == "inc":
            change_mixed(disk, parts, str(tmp), seed=5)
        out[point] = {"state": mixed_disk_state(disk, parts, str(tmp))}
        out[point]["plain"] = image(disk, str(tmp / "plain"), "--type", point)["image"]
        out[point]["encrypted"] = image(disk, str(tmp / "enc"), "--type", point, "--split", "4M", *PW)["image"]
        restored = str(tmp / f"restored-{point}.img")
        dv("restore", out[point]["plain"], restored, "--yes")
        out[point]["restored"] = restored
    assert len(os.listdir(tmp / "enc")) > 2  # split into parts
    assert out["inc"]["state"] != out["full"]["state"]
    return out


def nothing_attached(mnt: str) -> None:
    assert not mounts_under(mnt) and not is_mounted(mnt)
    assert not loops_backed_by(mnt)
    assert not os.path.exists(mount_state.state_path(mnt))


def mount(img: str, mnt: str, *args: str) -> dict:
    os.makedirs(mnt, exist_ok=True)
    return json.loads(dv("mount", img, mnt, "--json", *args).stdout)


@pytest.fixture
def mountpoint(tmp_path):
    mnt = str(tmp_path / "mnt")
    os.makedirs(mnt)
    yield mnt
    if os.path.exists(mount_state.state_path(mnt)) or is_mounted(mnt):
        dv("umount", mnt, "--lazy", check=False)
    nothing_attached(mnt)


def files_through_mount(mnt: str, workdir: str) -> dict:
    """The same shape as mixed_disk_state, read through the mount."""
    def hashes(root: str) -> dict:
        return {k: v[5] for k, v in manifest(root, times=False).items()}

    return {"esp": hashes(os.path.join(mnt, "1")), "esp-mtools": fat_manifest(os.path.join(mnt, "part1.img"), workdir),
            "ntfs": hashes(os.path.join(mnt, "2")), "ext4": manifest(os.path.join(mnt, "3"))}


@pytest.mark.parametrize("kind", ["plain", "encrypted"])
@pytest.mark.parametrize("point", ["full", "inc"])
def test_every_file_reads_back_through_the_mount(sets, mountpoint, tmp_path, kind, point):
    args = PW if kind == "encrypted" else ()
    st = mount(sets[point][kind], mountpoint, "--all", *args)
    assert st["mounted"] == {"1": "vfat", "2": "ntfs", "3": "ext4"}
    assert st["served"] == ["1"]  # no vfat driver in this kernel: the FAT files are read by diskvault
    assert any("partition 4" in n and "swap" in n for n in st["notes"])
    assert sorted(os.listdir(mountpoint)) == ["1", "2", "3", "disk.img", "part1.img", "part2.img", "part3.img",
                                              "part4.img"]
    got = files_through_mount(mountpoint, str(tmp_path))
    want = sets[point]["state"]
    assert got["ext4"] == want["ext4"]  # with modes, owners, links and times
    assert got["ntfs"] == want["ntfs"] and len(want["ntfs"]) > 20
    assert got["esp"] == got["esp-mtools"] == want["esp"] and len(want["esp"]) > 20
    with pytest.raises(OSError, match="Read-only"):
        os.open(os.path.join(mountpoint, "3", "new-file"), os.O_WRONLY | os.O_CREAT)
    dv("umount", mountpoint)
    nothing_attached(mountpoint)


def test_disk_img_is_the_restored_disk_and_exports_match(sets, mountpoint, tmp_path):
    restored, parts = sets["inc"]["restored"], sets["parts"]
    started = time.monotonic()
    mount(sets["inc"]["encrypted"], mountpoint, *PW)
    assert os.listdir(mountpoint) and time.monotonic() - started < 10
    assert sha256_file(os.path.join(mountpoint, "disk.img")) == sha256_file(restored)
    for name, number in NUMBER.items():
        p = parts[name]
        assert os.path.getsize(os.path.join(mountpoint, f"part{number}.img")) == p.size
        assert sha256_file(os.path.join(mountpoint, f"part{number}.img")) == sha256_file(restored, p.start, p.size)
    dv("umount", mountpoint)
    nothing_attached(mountpoint)
    for fmt in ("qcow2", "vmdk", "raw"):
        out = str(tmp_path / f"disk.{fmt}")
        res = json.loads(dv("export", sets["inc"]["encrypted"], out, "--format", fmt, "--json", *PW).stdout)
        assert res["via"] == ("stream" if fmt == "raw" else "fuse") and not os.path.exists(out + ".partial")
        r = sh("qemu-img", "compare", "-f", fmt, "-F", "raw", out, restored, check=False)
        assert r.returncode == 0, r.stdout + r.stderr
    assert os.stat(str(tmp_path / "disk.raw")).st_blocks * 512 < os.path.getsize(restored) / 2  # sparse
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".diskvault-export")]
    r = dv("export", sets["inc"]["plain"], str(tmp_path / "disk.qcow2"), "--format", "qcow2", check=False)
    assert r.returncode == 2 and "exists" in r.stderr


def test_killed_server_is_cleaned_up_by_umount(sets, mountpoint):
    st = mount(sets["full"]["plain"], mountpoint, "--all")
    assert loops_backed_by(mountpoint) and len(mounts_under(mountpoint)) == 2  # ext4 (loop), NTFS (ntfs-3g)
    os.kill(st["pid"], signal.SIGKILL)
    for _ in range(100):
        if not os.path.exists(f"/proc/{st['pid']}"):
            break
        time.sleep(0.05)
    with pytest.raises(OSError):
        os.listdir(mountpoint)  # the FUSE connection is gone
    dv("umount", mountpoint)
    nothing_attached(mountpoint)
    assert os.listdir(mountpoint) == []


def test_sigterm_to_the_server_detaches_everything(sets, mountpoint):
    st = mount(sets["inc"]["plain"], mountpoint, "--partition", "2,3")
    assert st["mounted"] == {"2": "ntfs", "3": "ext4"} and sorted(os.listdir(mountpoint))[:2] == ["2", "3"]
    os.kill(st["pid"], signal.SIGTERM)
    for _ in range(200):
        if not os.path.exists(f"/proc/{st['pid']}"):
            break
        time.sleep(0.05)
    nothing_attached(mountpoint)


def test_attach_failing_half_way_leaves_nothing(sets, mountpoint, tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "mount").write_text("#!/bin/sh\necho 'mount: simulated failure' >&2\nexit 32\n")
    os.chmod(fake / "mount", 0o755)
    env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}")
    r = subprocess.run([sys.executable, "-m", "diskvault", "mount",
                        sets["full"]["plain"], mountpoint, "--all"], check=False, capture_output=True, text=True,
                       env=env)
    assert r.returncode == 1
    assert r.stderr == "diskvault: cannot mount partition 3 (ext4): mount: simulated failure\n"
    nothing_attached(mountpoint)  # NTFS (ntfs-3g) was mounted and the ext4 loop device attached: both undone


def test_refusals(sets, tmp_path):
    img = sets["full"]["plain"]
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    for args, message in (
        ([str(busy)], "is not empty"),
        ([str(busy / "x")], "is not a folder"),
        ([str(tmp_path / "missing")], "does not exist"),
        ([str(tmp_path), "--partition", "9"], "no partition 9 in "),
        ([str(tmp_path), "--partition", "4"], "cannot mount the files of partition 4: swap holds no files"),
    ):
        target = args[0]
        if target == str(tmp_path):
            target = str(tmp_path / "empty")
            os.makedirs(target, exist_ok=True)
        r = dv("mount", img, target, *args[1:], check=False)
        assert r.returncode == 2 and message in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    r = dv("mount", sets["full"]["encrypted"], str(tmp_path / "empty"), check=False)
    assert r.returncode == 2 and "is encrypted" in r.stderr
    r = dv("umount", str(busy), check=False)
    assert r.returncode == 2 and "not a diskvault mount" in r.stderr


def test_fuse_unavailable_is_explained(monkeypatch):
    from diskvault.mount import session
    from diskvault.mount.fuse_fs import FuseUnavailableError

    monkeypatch.setattr(session.shutil, "which", lambda name: None)
    with pytest.raises(FuseUnavailableError, match="fusermount3 is missing .*fuse3"):
        session.check_fuse()
    monkeypatch.setattr(session.os, "stat", lambda path: os.lstat("/dev/null") if path != "/dev/fuse"
                        else (_ for _ in ()).throw(FileNotFoundError(path)))
    with pytest.raises(FuseUnavailableError, match="/dev/fuse is missing"):
        session.check_fuse()


def test_prefetch_reader_reads_what_the_chain_reads(sets):
    with Chain(sets["inc"]["encrypted"], KeyRing(lambda: "mount test password"), cache_chunks=4) as chain:
        reader = PrefetchReader(chain, ahead=3)
        try:
            size = chain.disk_size
            step = 128 << 10
            whole = b"".join(reader.read(off, step) for off in range(0, size, step))
            assert len(whole) == size
            assert whole == chain.read(0, size)
            rng = random.Random(3)
            for _ in range(200):
                off = rng.randrange(size)
                n = min(rng.randrange(1, 3 * MiB), size - off)
                assert reader.read(off, n) == chain.read(off, n)
            assert reader.read(size, 10) == b""
        finally:
            reader.close()


def test_xfs_and_btrfs_files_through_loop_mounts(tmp_path, mountpoint):
    """XFS (ro,norecovery,nouuid) and btrfs (ro), also while the source btrfs is mounted here: this
    kernel gives the copy a temporary fsid; one that refuses must say why."""
    from diskutil import loop_device, make_tree, mounted

    disk = str(tmp_path / "disk.img")
    with open(disk, "wb") as f:
        f.truncate(430 * MiB)
    sh("sfdisk", "-q", disk, input="label: gpt\nstart=2048, size=300MiB, type=L\nsize=120MiB, type=L\n")
    table = json.loads(sh("sfdisk", "-J", disk).stdout)["partitiontable"]["partitions"]
    parts = [(p["start"] * 512, p["size"] * 512) for p in table]
    make_tree(str(tmp_path / "tree"), seed=9, files=25)
    want = []
    for (start, size), mkfs in zip(parts, (["mkfs.xfs", "-q"], ["mkfs.btrfs", "-q"])):
        with loop_device(disk, start, size) as dev:
            sh(*mkfs, dev)
            with mounted(dev, str(tmp_path / "src"), "rw") as src:
                sh("cp", "-a", str(tmp_path / "tree") + "/.", src)
            with mounted(dev, str(tmp_path / "src"), "ro") as src:
                want.append(manifest(src))
    img = image(disk, str(tmp_path / "images"))["image"]
    start, size = parts[1]
    with loop_device(disk, start, size, read_only=True) as dev, mounted(dev, str(tmp_path / "src"), "ro"):
        r = dv("mount", img, mountpoint, "--all", "--json", check=False)
        if r.returncode == 0:
            st = json.loads(r.stdout)
            assert st["mounted"] == {"1": "xfs", "2": "btrfs"}
            assert [manifest(os.path.join(mountpoint, n)) for n in ("1", "2")] == want
            dv("umount", mountpoint)
        else:
            assert "a btrfs with the same filesystem id" in r.stderr, r.stderr
    nothing_attached(mountpoint)


def test_foreground_mount_unmounts_on_ctrl_c(sets, mountpoint):
    proc = subprocess.Popen([sys.executable, "-m", "diskvault", "mount", sets["inc"]["plain"], mountpoint,
                             "--partition", "3", "--foreground"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().startswith("mounted ")
        assert sorted(os.listdir(os.path.join(mountpoint, "3")))[:3] == ["dir0", "dir1", "dir2"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        assert "unmounted" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    nothing_attached(mountpoint)


def test_export_without_fuse_goes_through_a_temporary_raw_file(sets, tmp_path, monkeypatch):
    from diskvault.mount import export
    from diskvault.mount.fuse_fs import FuseUnavailableError

    def no_fuse() -> None:
        raise FuseUnavailableError("/dev/fuse is missing")

    monkeypatch.setattr(export, "check_fuse", no_fuse)
    out = str(tmp_path / "disk.vhdx")
    res = export.export_image(export.ExportOptions(image=sets["full"]["plain"], out=out, format="vhdx"))
    assert res.via == "raw-file" and res.format == "vhdx"
    r = sh("qemu-img", "compare", "-f", "vhdx", "-F", "raw", out, sets["full"]["restored"], check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(os.listdir(tmp_path)) == ["disk.vhdx"]
