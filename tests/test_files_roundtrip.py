"""File backups restore every kind of entry with every property; Diff/Inc chains restore each point
in time and store only what changed; overwrite policies; ls and diff; split parts."""

import json
import os
import random
import shutil

import pytest
from filesutil import T0, backup, build_tree, dvf, getfacl, ls, manifest, set_times, write

pytestmark = pytest.mark.root


def restored(target: str, src: str) -> str:
    return os.path.join(target, src.lstrip("/"))


def test_every_kind_of_entry_round_trips(tmp_path):
    src = str(tmp_path / "src")
    build_tree(src)
    before = manifest(src)
    set_times(src)  # listing the folders for the manifest moved their atimes: put them back
    result = backup(src, str(tmp_path / "out"), "--special", "--verify")
    assert result["archive"].endswith(f"{result['set_id']}-00-00.dvbak") and result["verified"] is True
    assert result["errors"] == [] and result["changed"] == []
    assert not [n for n in os.listdir(tmp_path / "out") if n.endswith(".partial")]
    listed = ls(result["archive"])
    rel = src.lstrip("/")
    assert listed[f"{rel}/sparse.img"]["sparse"] and listed[f"{rel}/docs/rand2.bin"]["type"] == "-" \
        and listed[f"{rel}/hard1"]["type"] == listed[f"{rel}/empty/hard2"]["type"] == "h"
    assert listed[f"{rel}/null"]["type"] == "c" and listed[f"{rel}/sock"]["type"] == "s"
    st = os.lstat(os.path.join(src, "setuid"))
    assert listed[f"{rel}/setuid"]["ctime_ns"] == st.st_ctime_ns  # ctime is recorded (not restorable)
    assert listed[f"{rel}/setgid"]["user"] == "nobody"

    target = str(tmp_path / "restore")
    r = json.loads(dvf("restore", result["archive"], "--to", target, "--json").stdout)
    assert r["ok"] and r["errors"] == [] and r["warnings"] == [], r
    after = manifest(restored(target, src))
    assert after.keys() == before.keys()
    for name in before:  # every property: content, type, mode, owner, mtime/atime to the ns, links, xattrs
        assert after[name] == before[name], name
    out = restored(target, src)
    assert os.lstat(os.path.join(out, "docs", "rand2.bin")).st_nlink == 3
    assert os.lstat(os.path.join(out, "hard1")).st_ino == os.lstat(os.path.join(out, "empty", "hard2")).st_ino
    sp_src, sp_out = os.stat(os.path.join(src, "sparse.img")), os.stat(os.path.join(out, "sparse.img"))
    assert sp_out.st_size == 64 << 20 and sp_out.st_blocks * 512 <= sp_src.st_blocks * 512 + (64 << 10)
    for p in ("docs/rand4.bin", "docs/deep"):
        assert getfacl(os.path.join(out, p)) == getfacl(os.path.join(src, p))
    assert "default:user:1234:r-x" in getfacl(os.path.join(out, "docs/deep"))
    assert "user:1234:rwx" in getfacl(os.path.join(out, "docs/rand4.bin"))

    # one path restores alone, with its parents
    part = str(tmp_path / "part")
    dvf("restore", result["archive"], f"{rel}/docs/deep", "--to", part)
    assert sorted(os.listdir(restored(part, src))) == ["docs"]
    assert manifest(restored(part, src) + "/docs/deep", False) == manifest(os.path.join(src, "docs/deep"), False)
    assert all(p.startswith(f"{rel}/docs/deep") for p in ls(result["archive"], f"/{rel}/docs/deep/"))
    solo = str(tmp_path / "solo")  # a hard link restored without the file it links to: a copy of it
    dvf("restore", result["archive"], f"{rel}/empty/hard2", "--to", solo)
    copy = os.path.join(restored(solo, src), "empty", "hard2")
    assert open(copy, "rb").read() == open(os.path.join(src, "docs", "rand2.bin"), "rb").read()
    assert os.stat(copy).st_nlink == 1


def _change(root: str, seed: int) -> None:
    rng = random.Random(seed)
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)
    for p in files[::6]:
        os.unlink(p)
    for p in files[1::5]:
        if os.path.exists(p):
            with open(p, "r+b") as f:
                f.seek(rng.randrange(max(1, os.path.getsize(p))))
                f.write(rng.randbytes(100))
    os.chmod(files[2], 0o700) if os.path.exists(files[2]) else None
    os.makedirs(os.path.join(root, f"new{seed}", "empty"))
    write(os.path.join(root, f"new{seed}", "f"), rng.randbytes(50_000))
    os.symlink(f"new{seed}/f", os.path.join(root, f"link{seed}"))


def test_full_inc_inc_diff_restore_each_point_and_store_only_changes(tmp_path):
    src, out = str(tmp_path / "src"), str(tmp_path / "out")
    os.makedirs(src)
    rng = random.Random(1)
    for i in range(40):
        d = os.path.join(src, f"d{i % 4}")
        os.makedirs(d, exist_ok=True)
        write(os.path.join(d, f"f{i}"), rng.randbytes(rng.choice([0, 100, 5000, 300_000])))
    big = rng.randbytes(20 << 20)
    write(os.path.join(src, "big"), big)
    set_times(src)
    states, archives = [], []
    full = backup(src, out)
    states.append(manifest(src, atimes=False))
    archives.append(full)
    assert full["archive_type"] == "full" and full["files_read"] == 1 + sum(
        1 for d, _, fs in os.walk(src) for f in fs if os.path.getsize(os.path.join(d, f)) and f != "big")

    _change(src, 2)
    write(os.path.join(src, "big"), b"inserted at the front" + big)  # content-defined chunks realign
    inc1 = backup(src, out, "--type", "inc")
    states.append(manifest(src, atimes=False))
    archives.append(inc1)
    assert inc1["archive_type"] == "inc" and inc1["set_id"] == full["set_id"] and inc1["increment"] == 1
    assert inc1["files_read"] <= 12 and inc1["files_unchanged"] >= 20  # ~8 modified, 1 new, big
    assert inc1["bytes_new"] < 6 << 20, "a 21-byte insertion must not store the whole 20 MiB file again"

    unchanged = backup(src, out, "--type", "inc")
    assert unchanged["files_read"] == 0 and unchanged["bytes_new"] == 0 and unchanged["increment"] == 2
    states.append(states[-1])
    archives.append(unchanged)

    _change(src, 3)
    diff = backup(src, out, "--type", "diff")
    states.append(manifest(src, atimes=False))
    archives.append(diff)
    assert diff["archive_type"] == "diff" and diff["increment"] == 3
    assert ls(diff["archive"])  # parent is the Full
    for n, (state, arch) in enumerate(zip(states, archives)):
        target = str(tmp_path / f"r{n}")
        dvf("restore", arch["archive"], "--to", target)
        assert manifest(restored(target, src), atimes=False) == state, f"point {n}"
    dvf("verify", diff["archive"])

    changes = dvf("diff", full["archive"], inc1["archive"]).stdout.splitlines()
    rel = src.lstrip("/")
    assert f"M {rel}/big  (size {20 << 20} -> {(20 << 20) + 21})" in changes
    assert f"+ {rel}/link2" in changes and f"+ {rel}/new2/empty" in changes
    assert any(c.startswith("- ") for c in changes)
    same = dvf("diff", inc1["archive"], unchanged["archive"]).stdout.splitlines()
    assert [c for c in same if c.split()[1].startswith(rel)] == [], same  # /tmp itself changes meanwhile

    # a missing parent is named
    os.rename(inc1["archive"], inc1["archive"] + ".away")
    r = dvf("restore", unchanged["archive"], "--to", str(tmp_path / "x"), check=False)
    assert r.returncode == 1 and "missing chain member" in r.stderr and os.path.basename(inc1["archive"]) in r.stderr


def test_overwrite_policies(tmp_path):
    src = str(tmp_path / "src")
    os.makedirs(src)
    write(os.path.join(src, "a"), b"archived a")
    write(os.path.join(src, "b"), b"archived b")
    set_times(src)
    arch = backup(src, str(tmp_path / "out"))["archive"]
    target = str(tmp_path / "t")
    dvf("restore", arch, "--to", target)
    a, b = os.path.join(restored(target, src), "a"), os.path.join(restored(target, src), "b")
    for p in (a, b):
        write(p, b"local")
    os.utime(a, ns=(0, (T0 + 10**6) * 10**9))  # newer than the archive's
    os.utime(b, ns=(0, (T0 - 10**6) * 10**9))  # older
    r = dvf("restore", arch, "--to", target)
    assert "kept" in r.stderr and open(a, "rb").read() == open(b, "rb").read() == b"local"
    r = json.loads(dvf("restore", arch, "--to", target, "--overwrite", "older", "--json").stdout)
    assert open(a, "rb").read() == b"local" and open(b, "rb").read() == b"archived b"
    assert any(s.endswith("/a") for s in r["skipped"])
    dvf("restore", arch, "--to", target, "--overwrite", "always")
    assert open(a, "rb").read() == b"archived a"
    r = dvf("restore", arch, "--to", target, "--overwrite", "ask")  # no terminal: keeps
    assert "without a terminal" in r.stderr


def test_split_parts_and_encrypted_chain(tmp_path, monkeypatch):
    monkeypatch.setenv("DISKVAULT_KDF_MEMORY_KIB", "1024")
    src = str(tmp_path / "src")
    os.makedirs(src)
    rng = random.Random(5)
    for i in range(6):
        write(os.path.join(src, f"f{i}"), rng.randbytes(900_000))
    pw = {"DV_PW": "correct horse"}
    full = backup(src, str(tmp_path / "out"), "--split", "1M", "--password-env", "DV_PW", env=pw)
    assert len(full["parts"]) >= 4 and all(os.path.getsize(p) <= (1 << 20) + (1 << 16) for p in full["parts"][:-1])
    write(os.path.join(src, "f0"), b"changed")
    inc = backup(src, str(tmp_path / "out"), "--type", "inc", "--password-env", "DV_PW", env=pw)
    assert inc["archive_type"] == "inc" and inc["files_read"] == 1
    target = str(tmp_path / "t")
    dvf("restore", inc["archive"], "--to", target, "--password-env", "DV_PW", env=pw)
    assert manifest(restored(target, src), atimes=False) == manifest(src, atimes=False)
    os.unlink(full["parts"][1])
    r = dvf("verify", inc["archive"], "--password-env", "DV_PW", check=False, env=pw)
    assert r.returncode == 1 and "missing part" in r.stderr
    shutil.rmtree(target)
