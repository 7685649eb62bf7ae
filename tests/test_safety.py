"""Refusals and damage: mounted / in-use / too-small targets, flipped bits, truncation, crashes."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from diskutil import MiB, Part, build_disk, loop_device, mounted, sha256_file
from test_roundtrip import dv, image

from diskvault.format.layout import FOOTER_SIZE, HEADER_SIZE
from diskvault.format.reader import ImageFile

pytestmark = pytest.mark.root


@pytest.fixture
def imaged(tmp_path):
    disk = str(tmp_path / "disk.img")
    build_disk(disk, [Part(24, "ext4", tree_seed=9), Part(4, "raw")], workdir=str(tmp_path))
    return disk, image(disk, str(tmp_path / "images"))["image"]


def test_refuses_mounted_target(tmp_path, imaged):
    disk, img = imaged
    target = str(tmp_path / "t.img")
    with open(target, "wb") as f:
        f.truncate(64 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", target], check=True)
    before = sha256_file(target)
    with loop_device(target) as dev, mounted(dev, str(tmp_path / "mnt"), "ro,noload"):  # ro: must stay unchanged
        r = dv("restore", img, dev, "--yes", check=False)
        assert r.returncode == 1
        assert f"refusing target {dev}: mounted at {tmp_path / 'mnt'}" in r.stderr
        assert "Traceback" not in r.stderr
    assert sha256_file(target) == before


def test_refuses_file_in_use_by_loop_device(tmp_path, imaged):
    disk, img = imaged
    target = str(tmp_path / "t.img")
    with open(target, "wb") as f:
        f.truncate(64 * MiB)
    before = sha256_file(target)
    with loop_device(target) as dev:
        r = dv("restore", img, target, "--yes", check=False)
        assert r.returncode == 1 and f"attached to {dev}" in r.stderr
    assert sha256_file(target) == before


def test_refuses_too_small_targets(tmp_path, imaged):
    disk, img = imaged
    small = str(tmp_path / "small.img")
    with open(small, "wb") as f:
        f.write(b"keep me" * 1000)
        f.truncate(16 * MiB)
    before = sha256_file(small)
    r = dv("restore", img, small, "--yes", check=False)
    assert r.returncode == 1
    assert f"refusing target {small}: it is 16 MiB" in r.stderr and "the image needs" in r.stderr
    assert sha256_file(small) == before
    with loop_device(small) as dev:
        r = dv("restore", img, dev, "--yes", check=False)
        assert r.returncode == 1 and "the image needs" in r.stderr
    assert sha256_file(small) == before


def test_refuses_missing_device_path(imaged):
    disk, img = imaged
    r = dv("restore", img, "/dev/diskvault-no-such-disk", "--yes", check=False)
    assert r.returncode == 1 and "no such block device" in r.stderr
    assert not os.path.exists("/dev/diskvault-no-such-disk")


def test_without_terminal_and_yes_nothing_is_written(tmp_path, imaged):
    disk, img = imaged
    target = str(tmp_path / "t.img")
    with open(target, "wb") as f:
        f.truncate(64 * MiB)
    r = subprocess.run([sys.executable, "-m", "diskvault", "restore", img, target], capture_output=True,
                       text=True, stdin=subprocess.DEVNULL)
    assert r.returncode == 1 and "pass --yes" in r.stderr
    assert os.stat(target).st_blocks == 0


def _flip(path: str, offset: int, bit: int = 0) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ (1 << bit)]))


def _places(img: str) -> dict[str, int]:
    with ImageFile(img) as im:
        idx = im.index
        big = int(np.argmax(idx["stored_length"]))
        size = im.file_size
        s = im.footer.sections
        return {
            "header": 40,
            "chunk-start": int(idx[0]["file_offset"]) + 5,
            "chunk-middle": int(idx[big]["file_offset"] + idx[big]["stored_length"] // 2),
            "chunk-last-byte": int(idx[-1]["file_offset"] + idx[-1]["stored_length"] - 1),
            "index": s[0].offset + s[0].stored_length // 2,
            "extents": s[1].offset + 3,
            "metadata": s[2].offset + s[2].stored_length - 1,
            "footer": size - FOOTER_SIZE + 30,
            "footer-crc": size - 1,
        }


@pytest.mark.parametrize("where", ["header", "chunk-start", "chunk-middle", "chunk-last-byte", "index",
                                   "extents", "metadata", "footer", "footer-crc"])
def test_flipped_bit_is_found(tmp_path, imaged, where):
    disk, img = imaged
    _flip(img, _places(img)[where], bit=3)
    r = dv("verify", img, check=False)
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr and r.stderr.strip()
    msg = r.stderr.strip().splitlines()[0]
    if where.startswith("chunk"):
        assert re.search(r"damaged data in (partition \d+ bytes \d+-\d+|disk bytes \d+-\d+)", msg), msg
    elif where in ("index", "extents", "metadata"):
        assert f"{where} section is damaged" in msg
    elif where == "header":
        assert "header checksum mismatch" in msg
    else:
        assert "footer" in msg
    target = str(tmp_path / "r.img")
    r = dv("restore", img, target, "--yes", check=False)
    assert r.returncode != 0 and "Traceback" not in r.stderr


def test_every_byte_of_an_image_is_covered(tmp_path, imaged):
    """A flipped bit at many random places is always found."""
    disk, img = imaged
    pristine = open(img, "rb").read()
    rng = np.random.default_rng(5)
    for off in rng.integers(0, len(pristine), 12).tolist():
        with open(img, "wb") as f:
            f.write(pristine)
        _flip(img, off, bit=int(rng.integers(0, 8)))
        r = dv("verify", img, check=False)
        assert r.returncode != 0, f"flip at {off} of {len(pristine)} not found"


def test_truncated_image_is_incomplete(imaged):
    disk, img = imaged
    size = os.path.getsize(img)
    for cut in (size - 1, size // 2, HEADER_SIZE + 10):
        os.truncate(img, cut)
        r = dv("verify", img, check=False)
        assert r.returncode == 1
        assert "image is incomplete" in r.stderr


def test_not_an_image(tmp_path):
    p = tmp_path / "x.dvimg"
    p.write_bytes(b"hello" * 2000)
    r = dv("info", str(p), check=False)
    assert r.returncode == 2 and "not a diskvault image (bad magic)" in r.stderr


def test_killed_imaging_leaves_no_complete_looking_file(tmp_path):
    disk = str(tmp_path / "big.img")
    with open(disk, "wb") as f:
        for _ in range(160):
            f.write(os.urandom(MiB))
    dest = tmp_path / "images"
    dest.mkdir()
    p = subprocess.Popen([sys.executable, "-m", "diskvault", "image", disk, "--to", str(dest),
                          "--compression", "high"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline and not any(n.endswith(".partial") for n in os.listdir(dest)):
        time.sleep(0.02)
    time.sleep(0.2)
    p.send_signal(signal.SIGKILL)
    p.wait()
    names = os.listdir(dest)
    assert not [n for n in names if n.endswith(".dvimg")], names
    for n in names:  # a .partial is unfinished whatever its content: only the rename commits it
        r = dv("verify", str(dest / n), check=False)
        assert r.returncode == 1 and "image is incomplete" in r.stderr, r.stderr


def test_json_contract(tmp_path, imaged):
    disk, img = imaged
    info = json.loads(dv("info", img, "--json").stdout)
    for key in ("image_id", "disk_size", "partitions", "stored_bytes", "used_bytes", "created", "table"):
        assert key in info
    v = json.loads(dv("verify", img, "--json").stdout)
    assert v["ok"] is True and v["errors"] == []
    d = json.loads(dv("disks", disk, "--json").stdout)
    assert d["table"] == "gpt" and d["partitions"][0]["fs"]["fstype"] == "ext4"
