"""Browsing ext2/3/4 images without mounting (ls/cat/extract/search, and the Python API) gives
what a kernel mount of the restored partition shows: names, kinds, sizes, modes, owners, ns times,
link targets, xattrs and ACLs, hard links and content - on extent trees of depth >= 1, unwritten
extents, double and triple indirect block maps, htree and inline directories, sparse files over
4 GiB, on a Full and on an encrypted, split Incremental."""

import base64
import errno
import hashlib
import json
import os
import random
import re
import stat
import subprocess
import sys

import pytest
from diskutil import MiB, Part, build_disk, loop_device, mounted, sh
from test_roundtrip import dv, image

from diskvault.browse.open import open_tree
from diskvault.browse.search import walk
from diskvault.format.chain import Chain

pytestmark = pytest.mark.root

GiB = 1 << 30
GRAIN = 64 << 10  # sparse digest granularity
BIG_EXT4 = 4 * GiB + 5 * MiB + 123
BIG_EXT2 = 4 * GiB + GiB // 2 + 7
PARTS = {1: "ext4", 2: "ext2", 3: "ext3-128", 4: "ext4-inline"}


@pytest.fixture(autouse=True)
def fast_kdf(monkeypatch):
    monkeypatch.setenv("DISKVAULT_KDF_MEMORY_KIB", "1024")
    monkeypatch.setenv("DV_PW", "browse me")


def dvb(*args: str) -> bytes:
    r = subprocess.run([sys.executable, "-m", "diskvault", *args], capture_output=True, check=False)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def write_at(path: str, offset: int, data: bytes, size: int | None = None) -> None:
    with open(path, "ab") as f:
        pass
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)
        if size is not None:
            f.truncate(size)


def common_extras(mnt: str, rng: random.Random) -> None:
    os.makedirs(f"{mnt}/x", exist_ok=True)
    write_at(f"{mnt}/x/sparse.bin", 0, b"head")
    write_at(f"{mnt}/x/sparse.bin", 8 * MiB, rng.randbytes(MiB), 20 * MiB)
    os.link(f"{mnt}/x/sparse.bin", f"{mnt}/sparse-link")
    os.link(f"{mnt}/x/sparse.bin", f"{mnt}/dir0/third-name")
    os.symlink("/" + "long-target/" * 9 + "end", f"{mnt}/slow-link")  # > 60 bytes: in a block
    os.symlink("../x/sparse.bin", f"{mnt}/dir0/rel-link")
    write_at(f"{mnt}/x/attrs.txt", 0, b"with xattrs\n")
    os.setxattr(f"{mnt}/x/attrs.txt", "user.small", b"v")
    os.setxattr(f"{mnt}/x/attrs.txt", "user.big", rng.randbytes(900))  # beyond the inode: the xattr block
    os.setxattr(f"{mnt}/x", "trusted.dir", b"on a dir")
    os.setxattr(f"{mnt}/slow-link", "trusted.lnk", b"on-a-link", follow_symlinks=False)
    name = os.fsencode(f"{mnt}/x/") + b"caf\xe9-\xff"  # not UTF-8
    write_at(os.fsdecode(name), 0, b"latin-1 name")
    os.mkfifo(f"{mnt}/x/fifo")
    for path, sec in (("old", -86400 * 400 + 1), ("future", 2**33 + 12345)):  # before 1970, after 2038
        write_at(f"{mnt}/x/{path}", 0, path.encode())
        os.utime(f"{mnt}/x/{path}", ns=(sec * 10**9 + 5, sec * 10**9 + 999_999_999))


def extras_ext4(mnt: str) -> None:
    rng = random.Random(11)
    common_extras(mnt, rng)
    write_at(f"{mnt}/big.bin", 0, rng.randbytes(4096))
    write_at(f"{mnt}/big.bin", 4 * GiB + MiB, rng.randbytes(1000), BIG_EXT4)
    os.makedirs(f"{mnt}/many")
    for i in range(3000):  # htree directory
        with open(f"{mnt}/many/entry-with-a-longish-name-{i:04d}", "wb") as f:
            f.write(b"%d" % i if i % 10 == 0 else b"")
    fa, fb = (os.open(f"{mnt}/frag-{n}", os.O_WRONLY | os.O_CREAT, 0o644) for n in "ab")
    for _ in range(150):  # interleaved synced writes: dozens of extents, an extent tree of depth 1
        for fd in (fa, fb):
            os.write(fd, rng.randbytes(4096))
            os.fsync(fd)
    os.close(fa)
    os.close(fb)
    fd = os.open(f"{mnt}/prealloc.bin", os.O_WRONLY | os.O_CREAT, 0o600)
    os.posix_fallocate(fd, 0, 2 * MiB)  # unwritten extents read as zeros
    os.pwrite(fd, rng.randbytes(5000), MiB + 100)
    os.close(fd)
    sh("setfacl", "-m", "u:1234:rwx,g:4321:r", f"{mnt}/x/attrs.txt")
    sh("setfacl", "-d", "-m", "u:1000:rx", f"{mnt}/dir0")


def extras_ext2(mnt: str) -> None:
    rng = random.Random(12)
    common_extras(mnt, rng)
    write_at(f"{mnt}/double.bin", 0, rng.randbytes(2 * MiB))  # 1 KiB blocks: double indirect
    write_at(f"{mnt}/triple.bin", 5000, rng.randbytes(3000))
    write_at(f"{mnt}/triple.bin", 400_000, rng.randbytes(7000))
    write_at(f"{mnt}/triple.bin", BIG_EXT2 - 10, rng.randbytes(10))  # triple indirect, i_size_high


def extras_ext3(mnt: str) -> None:
    common_extras(mnt, random.Random(13))


def extras_inline(mnt: str) -> None:
    common_extras(mnt, random.Random(14))
    write_at(f"{mnt}/tiny.txt", 0, b"fits in i_block\n")
    write_at(f"{mnt}/small.txt", 0, b"i_block and system.data " * 5)
    os.makedirs(f"{mnt}/idir")
    for n in ("a", "b"):
        write_at(f"{mnt}/idir/{n}", 0, n.encode())
    os.makedirs(f"{mnt}/grown")
    for i in range(60):
        write_at(f"{mnt}/grown/file-number-{i}", 0, b"x" * i)


EXTRAS = {1: extras_ext4, 2: extras_ext2, 3: extras_ext3, 4: extras_inline}


def debugfs(disk: str, part: Part, command: str) -> str:
    return sh("debugfs", "-R", command, f"{disk}?offset={part.start}").stdout


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browse")
    disk = str(tmp / "disk.img")
    parts = build_disk(disk, [Part(64, "ext4", ("-b", "4096"), tree_seed=1),
                              Part(24, "ext2", ("-b", "1024"), tree_seed=2),
                              Part(16, "ext3", ("-I", "128"), tree_seed=3),
                              Part(16, "ext4", ("-O", "inline_data"), tree_seed=4),
                              Part(4, "raw")], workdir=str(tmp), garbage=True)
    for n, fill in EXTRAS.items():
        part = parts[n - 1]
        with loop_device(disk, part.start, part.size) as dev, mounted(dev, str(tmp / "rw"), "rw"):
            fill(str(tmp / "rw"))
    full = image(disk, str(tmp / "images"))["image"]
    restored = str(tmp / "restored.img")
    dv("restore", full, restored, "--yes")
    return {"tmp": tmp, "disk": disk, "parts": parts, "image": full, "restored": restored}


# ----------------------------------------------------------------------------- snapshots

def digest(f, ranges: list[tuple[int, int]]) -> str:
    """Content hash independent of where the holes are: offsets and bytes of non-zero grains."""
    h, seen = hashlib.sha256(), set()
    for start, length in ranges:
        for off in range(start - start % GRAIN, start + length, GRAIN):
            if off not in seen:
                seen.add(off)
                f.seek(off)
                block = f.read(GRAIN)
                if block != bytes(len(block)):
                    h.update(off.to_bytes(8, "little") + block)
    return h.hexdigest()


def local_ranges(fd: int, size: int) -> list[tuple[int, int]]:
    out, pos = [], 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
            end = os.lseek(fd, start, os.SEEK_HOLE)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break
            return [(0, size)]  # ext4 answers ENOENT for inline-data files
        out.append((start, end - start))
        pos = end
    return out


KINDS = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink"}


def birth_times(paths: list[str]) -> list[int | None]:
    """statx creation times (GNU stat; None where the filesystem keeps none)."""
    out = subprocess.run(["stat", "--printf", "%.9W\n", "--", *paths], capture_output=True, check=True).stdout
    return [int(t.replace(b".", b"")) or None for t in out.split()]


def local_snapshot(root: str, btime: bool = False) -> dict[str, dict]:
    """Every entry below ``root`` as lstat and listxattr see it (and statx's creation time with
    ``btime``). All stats come first: following a symlink or reading a file (through any of its
    names) would move atimes."""
    stats, todo = [], [root]
    while todo:
        with os.scandir(todo.pop()) as it:
            for e in it:
                stats.append((e.path, e.stat(follow_symlinks=False)))
                if e.is_dir(follow_symlinks=False):
                    todo.append(e.path)
    out = {}
    births = birth_times([p for p, _ in stats]) if btime else [None] * len(stats)
    for (p, st), birth in zip(stats, births):
        kind = KINDS.get(stat.S_IFMT(st.st_mode), "other")
        d = {"kind": kind, "mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid,
             "size": st.st_size, "mtime": st.st_mtime_ns, "atime": st.st_atime_ns, "ctime": st.st_ctime_ns,
             "nlink": st.st_nlink, "ino": st.st_ino, "target": os.readlink(p) if kind == "symlink" else None,
             "xattrs": {k: os.getxattr(p, k, follow_symlinks=False)
                        for k in sorted(os.listxattr(p, follow_symlinks=False))}, "data": None}
        if btime:
            d["btime"] = birth
        if kind == "file":
            with open(p, "rb") as f:
                d["data"] = digest(f, local_ranges(f.fileno(), st.st_size))
        out["/" + os.path.relpath(p, root)] = d
    return out


def tree_snapshot(tree) -> dict[str, dict]:
    out = {}
    for e in walk(tree):
        d = {"kind": e.kind, "mode": e.mode, "uid": e.uid, "gid": e.gid, "size": e.size, "mtime": e.mtime_ns,
             "atime": e.atime_ns, "ctime": e.ctime_ns, "nlink": e.nlink, "ino": e.inode, "target": e.link_target,
             "xattrs": dict(sorted(e.xattrs.items())), "data": None, "btime": e.btime_ns}
        if e.kind == "file":
            with tree.open(e.path) as f:
                d["data"] = digest(f, f.data_ranges() if hasattr(f, "data_ranges") else [(0, e.size)])
        out[e.path] = d
    return out


def kernel_snapshot(setup, n: int, restored: str | None = None) -> dict[str, dict]:
    part = setup["parts"][n - 1]
    options = "ro" if part.fs == "ext2" else "ro,noload"
    mnt = str(setup["tmp"] / f"ro-{n}")
    with loop_device(restored or setup["restored"], part.start, part.size, read_only=True) as dev, \
            mounted(dev, mnt, options):
        return local_snapshot(mnt, btime=True)


def assert_same(got: dict[str, dict], want: dict[str, dict]) -> None:
    """Equal snapshots, or the first differences by path and field."""
    assert sorted(got) == sorted(want)
    diffs = [(p, k, got[p][k], want[p][k]) for p in sorted(want) for k in want[p] if got[p][k] != want[p][k]]
    assert not diffs, diffs[:8]


def link_groups(snap: dict[str, dict]) -> set[frozenset]:
    by_ino: dict[int, set] = {}
    for path, d in snap.items():
        if d["kind"] == "file":
            by_ino.setdefault(d["ino"], set()).add(path)
    return {frozenset(g) for g in by_ino.values() if len(g) > 1}


def as_extracted(snap: dict[str, dict]) -> dict[str, dict]:
    """What an extraction can reproduce: no ctime or creation time, no inode numbers, no directory
    sizes, no fifos."""
    out = {}
    for path, d in snap.items():
        if d["kind"] == "other":
            continue
        d = {k: v for k, v in d.items() if k not in ("ctime", "ino", "btime")}
        if d["kind"] == "dir":
            d["size"] = 0
        out[path] = d
    return out


# ----------------------------------------------------------------------------- tests

def test_the_images_hold_what_the_tests_claim(setup):
    """The hard cases are really there (else the comparisons below would prove less)."""
    disk, parts = setup["disk"], setup["parts"]
    assert "Level" in debugfs(disk, parts[0], "ex /frag-a") and " 1/ 1 " in debugfs(disk, parts[0], "ex /frag-a")
    assert "Uninit" in debugfs(disk, parts[0], "ex /prealloc.bin")
    flags = debugfs(disk, parts[0], "stat /many").split("Flags:")[1].split()[0]
    assert int(flags, 16) & 0x1000  # EXT4_INDEX_FL: an htree directory
    triple = debugfs(disk, parts[1], "stat /triple.bin")
    assert "(DIND)" in debugfs(disk, parts[1], "stat /double.bin") and "(TIND)" in triple
    assert "Size of inline data" in debugfs(disk, parts[3], "stat /small.txt")
    assert "Size of inline data" in debugfs(disk, parts[3], "stat /idir")
    assert re.search(r"Inode size:\s+128\n", sh("dumpe2fs", "-h", f"{disk}?offset={parts[2].start}").stdout)


@pytest.mark.parametrize("n", sorted(PARTS), ids=lambda n: PARTS[n])
def test_tree_matches_the_kernel_mount(setup, n):
    kernel = kernel_snapshot(setup, n)
    with Chain(setup["image"]) as chain:
        tree = open_tree(chain, n)
        ours = tree_snapshot(tree)
    assert_same(ours, kernel)
    assert any(d["xattrs"] for d in kernel.values())
    assert (kernel["/x/attrs.txt"]["btime"] is None) == (n == 3)  # 128-byte inodes keep no creation time
    if n == 1:
        acl = kernel["/x/attrs.txt"]["xattrs"]["system.posix_acl_access"]
        assert len(acl) > 4 and "system.posix_acl_default" in kernel["/dir0"]["xattrs"]
        assert kernel["/big.bin"]["size"] == BIG_EXT4 and len([p for p in kernel if p.startswith("/many/")]) == 3000


@pytest.mark.parametrize("n", sorted(PARTS), ids=lambda n: PARTS[n])
def test_extract_matches_the_kernel_mount(setup, n):
    kernel = kernel_snapshot(setup, n)
    out = str(setup["tmp"] / f"extract-{n}")
    r = subprocess.run([sys.executable, "-m", "diskvault", "extract", setup["image"], f"{n}:/", out, "--json"],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert "special file not extracted" in r.stderr  # the fifo
    assert result["hardlinks"] >= 3 and result["symlinks"] >= 3
    extracted = local_snapshot(out)
    assert_same(as_extracted(extracted), as_extracted(kernel))
    assert link_groups(extracted) == link_groups(kernel)
    if n in (1, 2):
        big = "/big.bin" if n == 1 else "/triple.bin"
        assert os.stat(out + big).st_blocks * 512 < 4 * MiB  # holes stayed holes


def test_ls_json_and_long_and_cat(setup):
    img = setup["image"]
    kernel = kernel_snapshot(setup, 1)
    listing = json.loads(dv("ls", img, "1:/x", "--json").stdout)
    assert [e["path"] for e in listing] == sorted(p for p in kernel if p.count("/") == 2 and p.startswith("/x/"))
    for e in listing:
        k = kernel[e["path"]]
        assert (e["kind"], e["mode"], e["uid"], e["gid"], e["size"], e["mtime_ns"], e["nlink"], e["inode"]) == \
            (k["kind"], k["mode"], k["uid"], k["gid"], k["size"], k["mtime"], k["nlink"], k["ino"])
        assert {a: base64.b64decode(v) for a, v in e["xattrs"].items()} == k["xattrs"]
    long = dv("ls", img, "1:/", "-l").stdout
    assert "slow-link -> /long-target/" in long and "-rw-r--r--" in long
    assert dv("ls", img, "1:/dir0/rel-link").stdout.strip() == "/dir0/rel-link"
    ls_r = dvb("ls", img, "4:/", "-R").splitlines()
    assert sorted(os.fsdecode(p) for p in ls_r) == sorted(kernel_snapshot(setup, 4))
    cats = {1: ("/x/attrs.txt", "/frag-a", "/prealloc.bin", "/x/sparse.bin", "/dir0/rel-link",
                "/many/entry-with-a-longish-name-0010"),
            2: ("/double.bin", "/dir1/sub1/file1.dat"), 3: ("/x/old",), 4: ("/tiny.txt", "/small.txt", "/idir/b")}
    for n, paths in cats.items():
        part = setup["parts"][n - 1]
        with loop_device(setup["restored"], part.start, part.size, read_only=True) as dev, \
                mounted(dev, str(setup["tmp"] / "cat"), "ro" if part.fs == "ext2" else "ro,noload") as mnt:
            for path in paths:
                with open(mnt + path, "rb") as f:
                    assert dvb("cat", img, f"{n}:{path}") == f.read(), path


def test_extract_overwrite_policies_and_unsafe_paths(setup, tmp_path):
    img, dest = setup["image"], str(tmp_path / "out")
    os.makedirs(dest)
    dv("extract", img, "1:/x/attrs.txt", dest)
    target = os.path.join(dest, "attrs.txt")
    original = read(target)
    assert os.getxattr(target, "user.small") == b"v"

    def plant(content: bytes, mtime_s: int) -> None:
        os.chmod(target, 0o644)
        with open(target, "wb") as f:
            f.write(content)
        os.utime(target, (mtime_s, mtime_s))

    plant(b"mine, newer", 4_000_000_000)
    assert "kept 1 existing" in dv("extract", img, "1:/x/attrs.txt", dest).stdout
    dv("extract", img, "1:/x/attrs.txt", dest, "--overwrite", "older")
    assert read(target) == b"mine, newer"
    plant(b"mine, older", 1_000_000_000)
    dv("extract", img, "1:/x/attrs.txt", dest, "--overwrite", "never")
    assert read(target) == b"mine, older"
    dv("extract", img, "1:/x/attrs.txt", dest, "--overwrite", "older")
    assert read(target) == original
    plant(b"mine, newer", 4_000_000_000)
    dv("extract", img, "1:/x/attrs.txt", dest, "--overwrite", "always")
    assert read(target) == original
    r = dv("extract", img, "1:/x/attrs.txt", dest, "--overwrite", "sometimes", check=False)
    assert r.returncode == 2 and "--overwrite" in r.stderr

    # '..' in a path inside the image is refused, never resolved
    for args in (("ls", img, "1:/../etc"), ("cat", img, "1:/x/../../etc/passwd"),
                 ("extract", img, "1:/dir0/..", dest)):
        r = dv(*args, check=False)
        assert r.returncode == 2 and "'..' is not allowed" in r.stderr
    # a symlink already in DEST is never written through: kept (never) or replaced by the directory (always)
    outside = tmp_path / "outside"
    outside.mkdir()
    tree_dest = tmp_path / "tree"
    tree_dest.mkdir()
    os.symlink(str(outside), str(tree_dest / "x"))
    dv("extract", img, "1:/x", str(tree_dest))
    assert os.path.islink(tree_dest / "x") and not os.listdir(outside)
    dv("extract", img, "1:/x", str(tree_dest), "--overwrite", "always")
    assert not os.path.islink(tree_dest / "x") and (tree_dest / "x" / "attrs.txt").is_file()
    assert not os.listdir(outside)
    # extracted symlinks are not followed either: a link pointing out of DEST stays a link
    dv("extract", img, "1:/slow-link", str(tree_dest))
    assert os.readlink(tree_dest / "slow-link").startswith("/long-target/")
    # an unknown filesystem and a wrong partition are clear errors
    r = dv("ls", img, "5:/", check=False)
    assert r.returncode == 1 and "partition 5 holds an unknown filesystem" in r.stderr
    r = dv("ls", img, "9:/", check=False)
    assert r.returncode == 2 and "no partition 9" in r.stderr
    r = dv("ls", img, "/", check=False)
    assert r.returncode == 2 and "name one, as N:/path" in r.stderr
    r = dv("cat", img, "1:/nope", check=False)
    assert r.returncode == 1 and "No such file or directory" in r.stderr


def test_unsafe_names_in_the_filesystem_are_refused(tmp_path):
    disk = str(tmp_path / "disk.img")
    (part,) = build_disk(disk, [Part(8, "ext4", ("-O", "^has_journal"), tree_seed=None)], workdir=str(tmp_path))
    with loop_device(disk, part.start, part.size) as dev, mounted(dev, str(tmp_path / "m"), "rw") as mnt:
        for name in ("zzzzzzzzz", "okay"):
            write_at(f"{mnt}/{name}", 0, b"evil" if name[0] == "z" else b"fine")
    with open(disk, "r+b") as f:  # rename the directory entry "zzzzzzzzz" to "../evil.x" in place
        data = f.read()
        assert data.count(b"zzzzzzzzz") == 1
        f.seek(data.index(b"zzzzzzzzz"))
        f.write(b"../evil.x")
    img = image(disk, str(tmp_path / "images"))["image"]
    assert "../evil.x" in dv("ls", img, "/").stdout.splitlines()
    out = tmp_path / "deep" / "out"
    r = dv("extract", img, "/", str(out))
    assert "refusing the unsafe name '../evil.x'" in r.stderr
    assert (out / "okay").read_bytes() == b"fine"
    assert not (tmp_path / "deep" / "evil.x").exists() and not list(tmp_path.rglob("evil.x"))


def change_files(disk: str, part: Part, mnt: str) -> str:
    """Modify, delete and add files; returns a file changed in content only (same size and mtime)."""
    with loop_device(disk, part.start, part.size) as dev, mounted(dev, mnt, "rw"):
        with open(f"{mnt}/dir1/sub1/file1.dat", "r+b") as f:
            f.write(b"changed!")
        os.unlink(f"{mnt}/dir2/sub2/file2.dat")
        write_at(f"{mnt}/dir0/new-file.dat", 0, random.Random(3).randbytes(200_000))
        sneaky = next(p for p in sorted(os.listdir(f"{mnt}/dir3/sub0")) if os.path.getsize(f"{mnt}/dir3/sub0/{p}"))
        path = f"{mnt}/dir3/sub0/{sneaky}"
        st = os.stat(path)
        with open(path, "r+b") as f:
            first = f.read(1)
            f.seek(0)
            f.write(bytes([first[0] ^ 1]))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        return f"/dir3/sub0/{sneaky}"


def test_encrypted_split_incremental_and_search_chain(tmp_path):
    disk = str(tmp_path / "disk.img")
    (part,) = build_disk(disk, [Part(24, "ext4", tree_seed=5)], workdir=str(tmp_path))
    with loop_device(disk, part.start, part.size) as dev, mounted(dev, str(tmp_path / "rw"), "rw") as mnt:
        write_at(f"{mnt}/random.bin", 0, random.Random(4).randbytes(3 * MiB))  # enough for split parts
    dest, pw = str(tmp_path / "images"), ("--password-env", "DV_PW")
    full = image(disk, dest, "--split", "1M", *pw)["image"]
    sneaky = change_files(disk, part, str(tmp_path / "rw"))
    inc = image(disk, dest, "--type", "inc", "--split", "1M", *pw)
    assert inc["image"] != full and len([n for n in os.listdir(dest) if n.endswith(".dvimg")
                                         and n.startswith(os.path.basename(full)[:20])]) > 1  # split
    setup = {"tmp": tmp_path, "parts": [part]}
    for tag, img in (("full", full), ("inc", inc["image"])):
        restored = str(tmp_path / f"restored-{tag}.img")
        dv("restore", img, restored, "--yes", *pw)
        kernel = kernel_snapshot(setup, 1, restored)
        os.unlink(restored)
        out = str(tmp_path / f"out-{tag}")
        dv("extract", img, "/", out, *pw)
        assert_same(as_extracted(local_snapshot(out)), as_extracted(kernel))
        names = dv("ls", img, "/dir0", "-R", *pw).stdout.split()
        assert ("/dir0/new-file.dat" in names) == (tag == "inc")
    assert dv("cat", inc["image"], "/dir1/sub1/file1.dat", *pw).stdout.startswith("changed!")
    r = dv("ls", inc["image"], "/", check=False)
    assert r.returncode == 2 and "password" in r.stderr

    rows = json.loads(dv("search", inc["image"], "*.dat", "--chain", "--json", *pw).stdout)
    history = {row["path"]: [c["change"] for c in row["changes"]] for row in rows}
    assert history["/dir1/sub1/file1.dat"] == ["added", "changed"]
    assert history[sneaky] == ["added", "changed"]  # same size and mtime: caught by the content hash
    assert history["/dir2/sub2/file2.dat"] == ["added", "deleted"]
    assert history["/dir0/new-file.dat"] == ["added"]
    assert history["/dir4/sub1/file4.dat"] == ["added"]
    found = dv("search", full, "file1*", *pw).stdout.split()
    assert "1:/dir1/sub1/file1.dat" in found
    assert all(p.rsplit("/", 1)[1].startswith("file1") for p in found) and len(found) == len(set(found))
