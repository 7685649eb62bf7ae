"""Backup sets: Full/Diff/Inc chains restore every point in time; fallbacks; swapped parents;
encryption; split parts; synthetic full (merge), also when killed at random points."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
from diskutil import MiB, Part, build_disk, fsck_clean, loop_device, mounted, partition_manifest, sha256_file
from test_roundtrip import dv, image

from diskvault.format.chain import Chain
from diskvault.format.layout import FOOTER_SIZE, HEADER_SIZE, Footer, Header

pytestmark = pytest.mark.root


@pytest.fixture(autouse=True)
def fast_kdf(monkeypatch):
    monkeypatch.setenv("DISKVAULT_KDF_MEMORY_KIB", "1024")


def change_files(disk: str, part: Part, mnt: str, seed: int) -> None:
    """Add, modify and delete files on the partition (a real rw mount)."""
    rng = random.Random(seed)
    with loop_device(disk, part.start, part.size) as dev, mounted(dev, mnt, "rw"):
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(mnt) for f in fs if "lost+found" not in d)
        for p in files[::5]:
            os.unlink(p)
        for p in files[1::7]:
            if os.path.exists(p):
                with open(p, "r+b") as f:
                    f.seek(rng.randrange(max(1, os.path.getsize(p))))
                    f.write(rng.randbytes(3000))
        os.makedirs(os.path.join(mnt, f"new{seed}"), exist_ok=True)
        for i in range(5):
            with open(os.path.join(mnt, f"new{seed}", f"f{i}"), "wb") as f:
                f.write(rng.randbytes(rng.randrange(1, 400_000)))


def restored_state(img: str, tmp_path, parts: list[Part], tag: str) -> list[dict]:
    target = str(tmp_path / f"restored-{tag}.img")
    dv("restore", img, target, "--yes", "--password-env", "DV_PW")
    out = []
    for i, part in enumerate(parts):
        if part.fs and part.fs.startswith("ext"):
            fsck_clean(target, part)
            out.append(partition_manifest(target, part, str(tmp_path / f"m-{tag}-{i}")))
        else:
            out.append(sha256_file(target, part.start, part.size))
    os.unlink(target)
    return out


def source_state(disk: str, tmp_path, parts: list[Part]) -> list[dict]:
    return [partition_manifest(disk, p, str(tmp_path / "src")) if p.fs and p.fs.startswith("ext")
            else sha256_file(disk, p.start, p.size) for p in parts]


@pytest.mark.parametrize("encrypted", [False, True])
def test_every_point_of_a_chain_restores(tmp_path, monkeypatch, encrypted):
    monkeypatch.setenv("DV_PW", "correct horse battery staple")
    disk = str(tmp_path / "disk.img")
    parts = build_disk(disk, [Part(24, "ext4", tree_seed=1), Part(16, "ext4", tree_seed=2), Part(4, "raw")],
                       workdir=str(tmp_path))
    dest = str(tmp_path / "images")
    pw = ("--password-env", "DV_PW") if encrypted else ()
    expected, images = [], []

    def take(kind: str) -> dict:
        res = image(disk, dest, "--type", kind, *pw)
        expected.append(source_state(disk, tmp_path, parts))
        images.append(res)
        return res

    full = take("inc")  # no parent yet: falls back to a Full
    assert full["image_type"] == "full" and full["increment"] == 0
    assert "making a Full image instead of inc: no earlier" in full["notes"][0]
    change_files(disk, parts[0], str(tmp_path / "mnt"), seed=11)
    inc1 = take("inc")
    change_files(disk, parts[0], str(tmp_path / "mnt"), seed=12)
    with open(disk, "r+b") as f:  # the unknown partition's content rewritten
        f.seek(parts[2].start)
        f.write(os.urandom(parts[2].size))
    inc2 = take("inc")
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-E", f"offset={parts[1].start}", disk,
                    f"{parts[1].size // 1024}k"], check=True)  # partition 2 made anew: empty
    diff = take("diff")
    change_files(disk, parts[0], str(tmp_path / "mnt"), seed=13)
    inc3 = take("inc")
    assert [r["image_type"] for r in images] == ["full", "inc", "inc", "diff", "inc"]
    assert [r["increment"] for r in images] == [0, 1, 2, 3, 4]
    assert inc1["bytes_written"] < full["bytes_written"] / 2
    for n, res in enumerate(images):
        assert restored_state(res["image"], tmp_path, parts, str(n)) == expected[n], f"image {n}"
    tree = json.loads(dv("info", "--chain", inc3["image"], "--json").stdout)
    assert [(m["increment"], m["type"], m["parent"]) for m in tree] == \
        [(0, "full", None), (1, "inc", 0), (2, "inc", 1), (3, "diff", 0), (4, "inc", 3)]


def test_missing_parent_falls_back_to_full_and_restore_names_it(tmp_path):
    disk = str(tmp_path / "disk.img")
    parts = build_disk(disk, [Part(24, "ext4")], workdir=str(tmp_path))
    dest = str(tmp_path / "images")
    full = image(disk, dest)
    change_files(disk, parts[0], str(tmp_path / "mnt"), seed=3)
    inc = image(disk, dest, "--type", "inc")
    os.rename(full["image"], full["image"] + ".away")
    r = dv("restore", inc["image"], str(tmp_path / "r.img"), "--yes", check=False)
    assert r.returncode == 1
    assert f"missing chain member {os.path.basename(full['image'])} (the parent of {os.path.basename(inc['image'])})" in r.stderr
    assert not os.path.exists(tmp_path / "r.img")
    again = image(disk, dest, "--type", "inc")
    assert again["image_type"] == "full" and again["image_id"] != full["image_id"]
    assert "cannot be used as a parent (missing chain member" in again["notes"][0]


def test_changed_layout_makes_a_new_full(tmp_path):
    disk = str(tmp_path / "disk.img")
    build_disk(disk, [Part(16, "ext4")], workdir=str(tmp_path), disk_mib=24)
    dest = str(tmp_path / "images")
    image(disk, dest)
    subprocess.run(["sfdisk", "-q", "--append", disk], input="size=4MiB\n", text=True, check=True)
    res = image(disk, dest, "--type", "inc")
    assert res["image_type"] == "full" and "partition layout changed" in res["notes"][0]


def _forge(src: str, dst: str, image_id: bytes) -> None:
    """Copy image ``src`` to ``dst`` with its header and footer claiming ``image_id``."""
    raw = bytearray(open(src, "rb").read())
    h = Header.unpack(bytes(raw[:HEADER_SIZE]))
    h.image_id = image_id
    raw[:HEADER_SIZE] = h.pack()
    f = Footer.unpack(bytes(raw[-FOOTER_SIZE:]))
    f.image_id = image_id
    raw[-FOOTER_SIZE:] = f.pack()
    open(dst, "wb").write(raw)


def test_swapped_parent_is_detected(tmp_path):
    disk = str(tmp_path / "disk.img")
    parts = build_disk(disk, [Part(24, "ext4")], workdir=str(tmp_path))
    dest, other = str(tmp_path / "images"), str(tmp_path / "other")
    full = image(disk, dest)
    change_files(disk, parts[0], str(tmp_path / "mnt"), seed=4)
    inc = image(disk, dest, "--type", "inc")
    impostor = image(disk, other)  # a Full of the changed disk: a different state
    _forge(impostor["image"], full["image"], bytes.fromhex(full["image_id"]))
    r = dv("verify", inc["image"], check=False)
    assert r.returncode == 1
    assert "is not the image" in r.stderr and "altered or swapped parent" in r.stderr


def test_encrypted_image_hides_plaintext_and_rejects_wrong_password(tmp_path, monkeypatch):
    secret = b"TOP-SECRET-MARKER-" + os.urandom(8).hex().encode()
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "plain.txt").write_bytes((secret + b"\n") * 5000)
    (tree / "note.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 100)
    disk = str(tmp_path / "disk.img")
    with open(disk, "wb") as f:
        f.truncate(40 * MiB)
    subprocess.run(["sfdisk", "-q", disk], input="label: gpt\nstart=2048, size=32MiB, name=\"secret-name\"\n",
                   text=True, check=True)
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "secretlabel", "-E", f"offset={MiB}", "-d", str(tree),
                    disk, "32768k"], check=True)
    pwfile = tmp_path / "pw"
    pwfile.write_text("hunter2 is a fine password\n")
    res = image(disk, str(tmp_path / "images"), "--password-file", str(pwfile))
    blob = open(res["image"], "rb").read()
    for needle in (secret, b"quick brown fox", b"secretlabel", b"plain.txt", "secret-name".encode("utf-16-le"),
                   b"lost+found", b'"partitions"'):
        assert needle not in blob, needle
    info = json.loads(dv("info", res["image"], "--json", "--password-file", str(pwfile)).stdout)
    assert info["encrypted"] is True and info["partitions"][0]["fs"]["label"] == "secretlabel"
    bad = tmp_path / "bad"
    bad.write_text("hunter3\n")
    for cmd in (["verify", res["image"]], ["info", res["image"]],
                ["restore", res["image"], str(tmp_path / "r.img"), "--yes"]):
        r = dv(*cmd, "--password-file", str(bad), check=False)
        assert r.returncode == 2 and r.stderr.strip() == f"diskvault: wrong password for {res['image']}", r.stderr
    r = dv("verify", res["image"], check=False)
    assert r.returncode == 2 and "encrypted: give --password-file or --password-env" in r.stderr
    with open(res["image"], "r+b") as f:  # tamper with a chunk
        f.seek(HEADER_SIZE + 100)
        b = f.read(1)
        f.seek(HEADER_SIZE + 100)
        f.write(bytes([b[0] ^ 0x40]))
    r = dv("verify", res["image"], "--password-file", str(pwfile), check=False)
    assert r.returncode == 1 and "damaged data in disk bytes 0-4194303" in r.stderr


def test_split_multi_gib_disk_restores_exactly_and_names_missing_part(tmp_path):
    disk = str(tmp_path / "disk.img")
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(6):
        (tree / f"big{i}.bin").write_bytes(os.urandom(8 * MiB))
    with open(disk, "wb") as f:
        f.truncate(3 << 30)
    subprocess.run(["sfdisk", "-q", disk], input="label: gpt\nstart=2048, size=2GiB\nsize=512MiB\n", text=True,
                   check=True)
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-E", f"offset={MiB}", "-d", str(tree), disk, "2097152k"],
                   check=True)
    res = image(disk, str(tmp_path / "images"), "--split", "12M")
    assert len(res["parts"]) >= 5
    assert all(os.path.getsize(p) <= 12 * MiB for p in res["parts"])
    assert [os.path.basename(p)[-8:] for p in res["parts"]][:3] == ["00.dvimg", "01.dvimg", "02.dvimg"]
    target = str(tmp_path / "restored.img")
    dv("restore", res["parts"][2], target, "--yes")  # any part opens the image
    assert sha256_file(target) == sha256_file(disk)
    missing = res["parts"][1]
    os.rename(missing, missing + ".away")
    r = dv("verify", res["parts"][0], check=False)
    assert r.returncode == 1 and f"missing part {os.path.basename(missing)}" in r.stderr


def _set_states(dest: str) -> dict[str, bytes]:
    """Image name -> state hash, for every image whose chain opens."""
    out = {}
    for name in sorted(os.listdir(dest)):
        if name.endswith(".dvimg"):
            with Chain(os.path.join(dest, name)) as c:
                out[name] = c.state.hash(c.disk_size)
    return out


def test_merge_keeps_every_state_and_survives_kill_9(tmp_path):
    disk = str(tmp_path / "disk.img")
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(12):
        (tree / f"f{i}.bin").write_bytes(os.urandom(6 * MiB))
    with open(disk, "wb") as f:
        f.truncate(160 * MiB)
    subprocess.run(["sfdisk", "-q", disk], input="label: gpt\nstart=2048, size=150MiB\n", text=True, check=True)
    part = Part(150, "ext4", start=MiB, size=150 * MiB)
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-E", f"offset={MiB}", "-d", str(tree), disk, "153600k"],
                   check=True)
    pristine = str(tmp_path / "pristine")
    for n in range(4):
        if n:
            change_files(disk, part, str(tmp_path / "mnt"), seed=n)
        image(disk, pristine, "--type", "inc", "--no-verify")
    states = _set_states(pristine)
    assert len(states) == 4
    names = sorted(states)
    rng = random.Random(2026)
    outcomes = {"untouched": 0, "merged": 0, "partial": 0}
    for trial in range(20):
        dest = str(tmp_path / f"trial{trial}")
        shutil.copytree(pristine, dest)
        p = subprocess.Popen([sys.executable, "-m", "diskvault", "merge", os.path.join(dest, names[0]), "--keep", "1"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.25, 1.2))
        p.send_signal(signal.SIGKILL)
        p.wait()
        after = _set_states(dest)  # every image left opens, with its links and state checked
        for name, digest in after.items():
            assert digest == states[name], f"trial {trial}: {name} changed state"
        assert names[-1] in after and names[-2] in after, f"trial {trial}: newest images lost"
        r = dv("verify", os.path.join(dest, names[-1]), check=False)
        assert r.returncode == 0, f"trial {trial}: {r.stderr}"
        kind = "untouched" if len(after) == 4 else "merged" if len(after) == 2 else "partial"
        outcomes[kind] += 1
        shutil.rmtree(dest)
    # the merge itself, to the end: the synthetic full restores the same disk
    res = json.loads(dv("merge", os.path.join(pristine, names[0]), "--keep", "1", "--json").stdout)
    assert res["image"].endswith(names[2]) and sorted(os.listdir(pristine)) == names[2:]
    assert _set_states(pristine) == {n: states[n] for n in names[2:]}
    target = str(tmp_path / "r.img")
    dv("restore", os.path.join(pristine, names[-1]), target, "--yes")
    fsck_clean(target, part)
    assert partition_manifest(target, part, str(tmp_path / "m1")) == partition_manifest(disk, part, str(tmp_path / "m2"))
    print("kill -9 outcomes:", outcomes)


def test_small_change_is_stored_as_a_patch(tmp_path):
    from diskvault.format.layout import CHUNK_PATCH
    from diskvault.format.reader import ImageFile

    disk = str(tmp_path / "disk.img")
    (part,) = build_disk(disk, [Part(12, "raw")], workdir=str(tmp_path))
    dest = str(tmp_path / "images")
    image(disk, dest)
    with open(disk, "r+b") as f:
        f.seek(part.start + MiB + 1000)  # inside the random data the Full holds
        f.write(os.urandom(10_000))
    before = sha256_file(disk)
    inc = image(disk, dest, "--type", "inc")
    assert inc["bytes_written"] < 200_000
    with ImageFile(inc["image"]) as img:
        assert len(img.index) == 1 and img.index[0]["flags"] & CHUNK_PATCH
    dv("restore", inc["image"], str(tmp_path / "r1.img"), "--yes")
    assert sha256_file(str(tmp_path / "r1.img")) == before
    dv("merge", inc["image"])
    with ImageFile(inc["image"]) as img:
        assert not (img.index["flags"] & CHUNK_PATCH).any()
    dv("restore", inc["image"], str(tmp_path / "r2.img"), "--yes")
    assert sha256_file(str(tmp_path / "r2.img")) == before
