"""NtfsTree, FatTree and ExfatTree against real volumes: made by mkntfs / mkfs.vfat / mkfs.exfat,
filled through ntfs-3g / mtools / exfat-fuse, and read back by the same tools as the oracle
(names, kinds, sizes, sha256 of content, link targets, mtimes, inodes, xattrs). Then the same
volumes on a GPT disk imaged by diskvault, read through ChainWindow(Chain(image)), which holds
only the blocks the used-block readers kept: the trees must not need any other.
"""

from __future__ import annotations

import calendar
import contextlib
import hashlib
import os
import random
import shutil
import stat
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import test_fs_exfat
from test_fs_exfat import fuse_mount
from test_fs_ntfs import ntfs3g
from test_roundtrip import image

from diskvault.browse.exfat import ENTRY, ExfatTree, exfat_time, set_checksum
from diskvault.browse.fat import FatTree
from diskvault.browse.ntfs import AT_INDEX_ALLOCATION, I30, NtfsTree, lznt1
from diskvault.errors import FilesystemError
from diskvault.format.chain import Chain, ChainWindow
from diskvault.fs import c_ntfs as C

MiB = 1 << 20
TOOLS = ("mkntfs", "ntfs-3g", "mkfs.vfat", "mcopy", "mdel", "mkfs.exfat", "mount.exfat-fuse", "fsck.exfat",
         "sfdisk")
pytestmark = [pytest.mark.root, pytest.mark.skipif(
    not all(shutil.which(t) for t in TOOLS) or not os.path.exists("/dev/fuse"),
    reason="needs ntfs-3g, mtools, dosfstools, exfatprogs, exfat-fuse and /dev/fuse")]
ENV = {**os.environ, "LC_ALL": "C.UTF-8", "TZ": "UTC"}  # mtools stores (and reads) local time
MS_DATA = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
UNICODE = ["Données", "日本語 ファイル.txt", "emoji 🎉 party.bin", "Ελληνικά"]


def run(*args, input: str | None = None) -> str:
    r = subprocess.run([str(a) for a in args], input=input, capture_output=True, text=True, env=ENV,
                       check=False)
    assert r.returncode == 0, f"{args[0]} exited {r.returncode}: {r.stdout}{r.stderr}"
    return r.stdout


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def text(n: int, seed: int = 0) -> bytes:
    return "".join(f"line {i} of text {seed} with some words\n" for i in range(n // 30 + 1)).encode()[:n]


# ----------------------------------------------------------------------------- manifests


def driver_manifest(root: Path, dir_times: bool = True) -> dict[str, tuple]:
    """path -> (kind, size, sha256 / link target, mtime_ns) as a mounted driver shows the tree."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            kind, content, size = "other", "", 0
            if stat.S_ISDIR(st.st_mode):
                kind = "dir"
            elif stat.S_ISLNK(st.st_mode):
                kind, content = "symlink", os.readlink(p).removeprefix(str(root))
            elif stat.S_ISREG(st.st_mode):
                kind, size = "file", st.st_size
                with open(p, "rb") as f:
                    content = sha(f.read())
            mtime = st.st_mtime_ns if kind != "dir" or dir_times else None
            out[os.path.relpath(p, root)] = (kind, size, content, mtime)
    return out


def tree_entries(tree) -> dict[str, object]:
    """path -> Entry of every entry below the root, through listdir only."""
    out, todo = {}, ["/"]
    while todo:
        for e in tree.listdir(todo.pop()):
            out[e.path[1:]] = e
            if e.kind == "dir":
                todo.append(e.path)
    return out


def tree_manifest(tree, dir_times: bool = True) -> dict[str, tuple]:
    out = {}
    for rel, e in tree_entries(tree).items():
        content = e.link_target if e.kind == "symlink" else ""
        if e.kind == "file":
            with tree.open(e.path) as f:
                content = sha(f.read())
        mtime = e.mtime_ns if e.kind != "dir" or dir_times else None
        out[rel] = (e.kind, e.size if e.kind == "file" else 0, content, mtime)
    return out


def assert_same(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    bad = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
    assert not bad, f"{len(bad)} entries differ, e.g. {list(bad.items())[:3]}"


_OPEN: list = []


@pytest.fixture(autouse=True)
def _close_images():
    yield
    while _OPEN:
        _OPEN.pop().close()


def open_tree(cls, img: Path):
    f = open(img, "rb")  # noqa: SIM115 - closed by _close_images
    _OPEN.append(f)
    return cls(f, os.path.getsize(img))


# ----------------------------------------------------------------------------- NTFS

TAG_MOUNT_POINT, TAG_SYMLINK, TAG_LX_SYMLINK = 0xA0000003, 0xA000000C, 0xA000001D


def reparse(tag: int, target: str = "", relative: bool = False) -> bytes:
    """A reparse point value as Windows (SYMLINK, MOUNT_POINT) or WSL (LX_SYMLINK) write them."""
    if tag == TAG_LX_SYMLINK:
        body = struct.pack("<I", 2) + target.encode()
    elif tag == TAG_SYMLINK:
        s = target.encode("utf-16-le")
        body = struct.pack("<HHHHI", 0, len(s), len(s), len(s), int(relative)) + s + s
    else:
        s = target.encode("utf-16-le")
        body = struct.pack("<HHHH", 0, len(s), len(s) + 2, len(s)) + s + b"\0\0" + s + b"\0\0"
    return struct.pack("<IHH", tag, len(body), 0) + body


def wsl_ea(**values: int) -> bytes:
    """An $EA value holding WSL's $LXUID/$LXGID/$LXMOD: entries of (next entry offset, flags,
    name length, value length, name, NUL, value), each padded to 4 bytes."""
    out = b""
    for name, value in values.items():
        entry = struct.pack("<xBH", len(name) + 1, 4) + f"${name}".encode() + b"\0" + struct.pack("<I", value)
        entry += bytes(-(len(entry) + 4) % 4)
        out += struct.pack("<I", len(entry) + 4) + entry
    return out


def fill_and_fragment(m: Path, rng: random.Random) -> None:
    """A file scattered over ~280 one-cluster-pair holes: its run list overflows its MFT record,
    so ntfs-3g moves attributes to extension records behind an $ATTRIBUTE_LIST."""
    frag = m / "frag"
    frag.mkdir()
    for i in range(600):
        (frag / f"s{i:03d}").write_bytes(rng.randbytes(8192))
    chunk = rng.randbytes(MiB)
    with open(m / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
        while f.write(chunk) == len(chunk):
            pass
    for i in range(0, 600, 2):
        (frag / f"s{i:03d}").unlink()
    (frag / "big.bin").write_bytes(rng.randbytes(280 * 8192))
    (m / "filler").unlink()


def build_ntfs(tmp: Path) -> Path:
    img = tmp / "ntfs.img"
    with open(img, "wb") as f:
        f.truncate(64 * MiB)
    run("mkntfs", "-F", "-q", "-f", "-L", "BROWSE", img)
    rng = random.Random(5)
    with ntfs3g(img, tmp / "ntfs-rw", ro=False) as m:
        files = m / "files"
        files.mkdir()
        for i, size in enumerate([0, 1, 600, 700, 4095, 4096, 4097, 65536, 300_001]):
            (files / f"f{i}.bin").write_bytes(rng.randbytes(size))
        (files / "init.bin").write_bytes(rng.randbytes(20_000))
        with open(m / "sparse.bin", "wb") as f:  # data, a hole of MiBs, data, a hole at the end
            f.write(b"head" * 1024)
            f.seek(5 * MiB)
            f.write(b"tail" * 1024)
            f.truncate(9 * MiB)
        comp = m / "compressed"
        comp.mkdir()
        os.setxattr(comp, "system.ntfs_attrib_be", (0x800).to_bytes(4, "big"))  # FILE_ATTR_COMPRESSED
        (comp / "text.txt").write_bytes(text(300_000))
        (comp / "random.bin").write_bytes(rng.randbytes(100_000))
        (comp / "mixed.bin").write_bytes(text(70_000, 1) + bytes(140_000) + rng.randbytes(30_001))
        (comp / "small.txt").write_bytes(text(100, 2))
        os.link(files / "f3.bin", m / "hardlink")
        os.symlink("files/f1.bin", m / "interix-link")  # ntfs-3g's default: an Interix symlink
        os.mkfifo(m / "interix-fifo")
        (m / "junction").mkdir()
        points = {"junction": reparse(TAG_MOUNT_POINT, r"\??\C:\files"),
                  "abs-symlink": reparse(TAG_SYMLINK, r"\??\C:\files\f1.bin"),
                  "rel-symlink": reparse(TAG_SYMLINK, r"files\f2.bin", relative=True),
                  "wsl-symlink": reparse(TAG_LX_SYMLINK, "files/f3.bin")}
        for name, value in points.items():
            (m / name).touch()
            os.setxattr(m / name, "system.ntfs_reparse_data", value)
        (m / "wsl-owned").write_bytes(b"owned by uid 1000")
        owner = wsl_ea(LXUID=1000, LXGID=100, LXMOD=stat.S_IFREG | 0o640)
        os.setxattr(m / "wsl-owned", "system.ntfs_ea", owner)
        os.setxattr(files / "f2.bin", "user.comment", b"an alternate data stream")
        os.setxattr(files / "f4.bin", "system.ntfs_dos_name", b"F4~1.BIN")  # a Win32 + DOS name pair
        many = m / "many"
        many.mkdir()
        for i in range(1200):
            (many / f"entry {i:04d} with a longer name.txt").write_bytes(b"%d" % i)
        for i, name in enumerate(UNICODE):
            (m / name).write_bytes(text(1000 * i, i))
        fill_and_fragment(m, rng)
    patch_initialized_size(img, "/files/init.bin", 5000)
    return img


def record_offset(tree: NtfsTree, recno: int) -> int:
    """Where MFT record ``recno`` lies in the volume."""
    vol = tree._vol
    pos, cs = recno * vol.record_size, vol.cluster_size
    vcn, lcn, _ = next(r for r in vol._mft.runs if r[0] * cs <= pos < (r[0] + r[2]) * cs)
    return lcn * cs + pos - vcn * cs


def patch_initialized_size(img: Path, path: str, value: int) -> None:
    """Lower a file's $DATA initialized_size in its MFT record: bytes past it must read as zeros."""
    with open(img, "rb") as fh:
        tree = NtfsTree(fh, os.path.getsize(img))
        recno = tree.stat(path).inode
        ((_, a),) = tree._load(recno).all(C.AT_DATA)
        field = a["_off"] + 0x38  # initialized_size
        assert field % 512 < 504  # not under an update sequence number
        at = record_offset(tree, recno) + field
    with open(img, "r+b") as f:
        f.seek(at)
        f.write(struct.pack("<q", value))


# ----------------------------------------------------------------------------- FAT and exFAT

FSI_NXT_FREE = 0x1EC  # FSInfo (sector 1): the cluster to start looking for free ones at
FAT_SIZES = {12: (4, ()), 16: (16, ()), 32: (40, ("-s", "1"))}  # MiB, mkfs.vfat args


def host_tree(root: Path, seed: int) -> Path:
    """Long, mixed-case, lowercase-8.3 and Unicode names, nested dirs, a multi-cluster directory,
    files of varied sizes with old, odd-second mtimes."""
    rng = random.Random(seed)
    deep = root / "Sub Dir" / "deeper" / "deepest"
    deep.mkdir(parents=True)
    (root / "Empty Folder").mkdir()
    files = {"short.txt": 3, "UPPER.TXT": 10, "MixedCase.Txt": 700, "A Long File Name.text": 5000,
             "Sub Dir/random.bin": 100_000, "Sub Dir/deeper/zeros.bin": 20_000,
             "Sub Dir/deeper/deepest/text.txt": 33_333, "empty": 0}
    files.update({name: 1000 + 7 * i for i, name in enumerate(UNICODE)})
    files.update({f"many/Entry number {i:03d} with a long name": i for i in range(300)})
    (root / "many").mkdir()
    for i, (name, size) in enumerate(files.items()):
        p = root / name
        p.write_bytes(bytes(size) if "zeros" in name else text(size, i) if i % 2 else rng.randbytes(size))
        t = 1_400_000_001 + rng.randrange(200_000_000)
        os.utime(p, ns=(t * 10**9 + 5, t * 10**9 + 987_654_321))
    return root


def build_fat(tmp: Path, bits: int) -> Path:
    mib, args = FAT_SIZES[bits]
    img = tmp / f"fat{bits}.img"
    with open(img, "wb") as f:
        f.truncate(mib * MiB)
    run("mkfs.vfat", "-F", str(bits), *args, img)
    src = host_tree(tmp / f"fat{bits}-src", bits)
    run("mcopy", "-s", "-m", "-i", img, *sorted(src.iterdir()), "::/")
    # interleaved files, every other one deleted, then one file across the holes
    frag, rng = tmp / f"fat{bits}-frag", random.Random(bits)
    frag.mkdir()
    names = [f"{k}{i:02d}" for i in range(20) for k in "ab"]
    for name in names:
        (frag / name).write_bytes(rng.randbytes(2500))
    run("mmd", "-i", img, "::/frag")
    run("mcopy", "-m", "-i", img, *[frag / n for n in names], "::/frag/")
    run("mdel", "-i", img, *[f"::/frag/{n}" for n in names if n[0] == "b"])
    if bits == 32:  # else mtools goes on from FSInfo's next-free hint, past the holes
        with open(img, "r+b") as f:
            f.seek(512 + FSI_NXT_FREE)
            f.write(struct.pack("<I", 2))
    (frag / "big.bin").write_bytes(rng.randbytes(20 * 2500))
    run("mcopy", "-m", "-i", img, frag / "big.bin", "::/frag/")
    return img


def mtools_manifest(img: Path, out: Path) -> dict[str, tuple]:
    """Every file copied out by mtools (keeping mtimes) and read back from the host."""
    out.mkdir()
    run("mcopy", "-s", "-m", "-n", "-i", img, "::/*", out)
    return driver_manifest(out, dir_times=False)


def build_exfat(tmp: Path) -> Path:
    img = tmp / "exfat.img"
    with open(img, "wb") as f:
        f.truncate(32 * MiB)
    run("mkfs.exfat", img)
    src = host_tree(tmp / "exfat-src", 7)
    rng = random.Random(7)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(test_fs_exfat.ENV, "TZ", "Asia/Kolkata")  # exfat-fuse writes a +05:30 UtcOffset
        with fuse_mount(img, tmp / "exfat-rw") as m:
            shutil.copytree(src, m, dirs_exist_ok=True, copy_function=shutil.copy2)
            frag = m / "frag"
            frag.mkdir()
            for i in range(20):
                (frag / f"a{i:02d}").write_bytes(rng.randbytes(40_000))
                (frag / f"b{i:02d}").write_bytes(rng.randbytes(40_000))
            for i in range(20):
                (frag / f"b{i:02d}").unlink()
            with open(frag / "a03", "ab") as f:  # grows into the next hole: a FAT chain
                f.write(rng.randbytes(300_000))
            (frag / "Ünïcode long name that needs several File Name entries.bin").write_bytes(b"x")
    return img


# ----------------------------------------------------------------------------- fixtures


@dataclass
class Vol:
    img: Path
    cls: type
    want: dict[str, tuple]  # the driver's manifest
    dir_times: bool = True  # whether the oracle shows directory mtimes (mtools does not)
    ids: dict[str, tuple] | None = None  # NTFS: inodes, links, xattrs and times as ntfs-3g shows them


def ntfs_ids(m: Path) -> dict[str, tuple]:
    """path -> (inode, links, user.* xattrs, atime, ctime, creation time) as ntfs-3g shows them
    (xattrs are the named streams; the creation time is its system.ntfs_crtime, in NT time)."""
    out = {}
    for dirpath, dirs, files in os.walk(m):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            xattrs = {} if stat.S_ISLNK(st.st_mode) else \
                {k: os.getxattr(p, k, follow_symlinks=False) for k in os.listxattr(p, follow_symlinks=False)}
            crtime = struct.unpack("<Q", os.getxattr(p, "system.ntfs_crtime", follow_symlinks=False))[0]
            out[os.path.relpath(p, m)] = (st.st_ino, st.st_nlink, xattrs, st.st_atime_ns, st.st_ctime_ns,
                                          (crtime - 116444736000000000) * 100)
    return out


@pytest.fixture(scope="module")
def vols(tmp_path_factory) -> dict[str, Vol]:
    tmp = tmp_path_factory.mktemp("browse")
    out = {}
    ntfs = build_ntfs(tmp)
    with ntfs3g(ntfs, tmp / "ntfs-ro") as m:
        out["ntfs"] = Vol(ntfs, NtfsTree, driver_manifest(m), ids=ntfs_ids(m))
    for bits in FAT_SIZES:
        img = build_fat(tmp, bits)
        out[f"fat{bits}"] = Vol(img, FatTree, mtools_manifest(img, tmp / f"fat{bits}-out"), dir_times=False)
    exfat = build_exfat(tmp)
    with fuse_mount(exfat, tmp / "exfat-ro", ro=True) as m:
        out["exfat"] = Vol(exfat, ExfatTree, driver_manifest(m))
    return out


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name", ["ntfs", "fat12", "fat16", "fat32", "exfat"])
def test_tree_matches_the_driver(vols, name):
    v = vols[name]
    tree = open_tree(v.cls, v.img)
    if name.startswith("fat"):
        assert tree._vol.bits == int(name[3:])
    assert_same(tree_manifest(tree, v.dir_times), v.want)
    assert len(v.want) > 300


def assert_random_reads(tree, path: str) -> None:
    """Reads at odd offsets and lengths, seeks from the end: the same bytes as one whole read."""
    with tree.open(path) as f:
        whole = f.read()
        rng = random.Random(path)
        for _ in range(40):
            off, n = rng.randrange(len(whole) + 10), rng.choice([1, 7, 4095, 4097, 65537, 200_000])
            f.seek(off)
            assert f.read(n) == whole[off : off + n]
        f.seek(-3, os.SEEK_END)
        assert f.read() == whole[-3:] and f.tell() == len(whole)


def test_ntfs_details(vols):
    v = vols["ntfs"]
    tree = open_tree(NtfsTree, v.img)
    entries = tree_entries(tree)
    got = {k: (e.inode, e.nlink, e.xattrs, e.atime_ns, e.ctime_ns, e.btime_ns) for k, e in entries.items()}
    want = dict(v.ids)
    ino, links, *rest = want["files/f4.bin"]
    assert links == 2  # ntfs-3g (without -o posix_nlink) counts the DOS 8.3 twin as a link; POSIX does not
    want["files/f4.bin"] = (ino, 1, *rest)
    assert_same(got, want)  # inodes are record numbers; hard links share one; streams are xattrs
    assert entries["hardlink"].inode == entries["files/f3.bin"].inode and entries["hardlink"].nlink == 2
    assert entries["files/f2.bin"].xattrs == {"user.comment": b"an alternate data stream"}

    def data(path):
        return tree._stream(tree._load(tree.stat(path).inode).all(C.AT_DATA), path)

    st, unit = data("/sparse.bin")
    assert unit == 0 and any(lcn < 0 for _, lcn, _ in st.runs) and st.initialized_size < st.data_size
    with tree.open("/sparse.bin") as f:  # holes and the uninitialized tail are named as such
        whole, ranges = f.read(), f.data_ranges()
    assert sum(n for _, n in ranges) <= 64 * 1024 and whole.count(0) >= len(whole) - 8192
    assert all(not any(whole[a:b]) for a, b in gaps(ranges, len(whole)))
    for name in ("text.txt", "mixed.bin", "random.bin"):
        st, unit = data(f"/compressed/{name}")
        assert unit == 16 and any(lcn < 0 for _, lcn, _ in st.runs)  # compressed units end in holes
        with tree.open(f"/compressed/{name}") as f:
            whole, ranges = f.read(), f.data_ranges()
        assert all(not any(whole[a:b]) for a, b in gaps(ranges, len(whole)))
    assert sum(n for _, n in ranges) == len(whole)
    assert len(data("/compressed/text.txt")[0].runs) > 2
    st, _ = data("/frag/big.bin")
    assert len(st.runs) > 100 and tree._load(tree.stat("/frag/big.bin").inode).all(C.AT_ATTRIBUTE_LIST)
    st, _ = data("/files/init.bin")
    assert st.initialized_size == 5000
    with tree.open("/files/init.bin") as f:
        assert f.read()[5000:] == bytes(15_000)
    for path in ("/compressed/mixed.bin", "/compressed/text.txt", "/sparse.bin", "/frag/big.bin"):
        assert_random_reads(tree, path)
    # a Win32 + DOS name pair is one entry; the 8.3 twin is in the index all the same
    names = {n for n, _, _ in tree._index(tree._load(tree.stat("/files").inode))}
    assert "F4~1.BIN" in names and "F4~1.BIN" not in {e.name for e in tree.listdir("/files")}
    assert tree._load(tree.stat("/many").inode).all(AT_INDEX_ALLOCATION, I30)
    assert len(tree.listdir("/many")) == 1200
    owned = entries["wsl-owned"]
    assert (owned.mode, owned.uid, owned.gid) == (0o640, 1000, 100)
    assert entries["files/f1.bin"].mode is None and entries["files/f1.bin"].uid is None
    assert entries["junction"].link_target == "/files" and entries["interix-fifo"].kind == "other"
    assert abs(entries["files/f0.bin"].btime_ns - time.time_ns()) < 600 * 10**9


def gaps(ranges: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    """The (start, end) stretches of a file that its data ranges leave out."""
    out, pos = [], 0
    for start, length in ranges:
        out.append((pos, start))
        pos = start + length
    return out + [(pos, size)]


def test_fat_details(vols, tmp_path):
    for bits in FAT_SIZES:
        tree = open_tree(FatTree, vols[f"fat{bits}"].img)
        e, first = tree._resolve("/frag/big.bin")
        assert len(tree._chain(first, "big.bin", e.size)) > 5  # spread over the holes
        assert_random_reads(tree, "/frag/big.bin")
        e = tree.stat("/Sub Dir/random.bin")  # mcopy -m sets the creation time to the mtime too
        assert abs(e.btime_ns - e.mtime_ns) < 2 * 10**9 and e.atime_ns % (86400 * 10**9) == 0
        assert e.ctime_ns is None
        bmp = [n for n in UNICODE if max(map(ord, n)) < 0x10000]  # mtools drops the emoji from the name
        assert {x.name for x in tree.listdir("/")} >= {"short.txt", "UPPER.TXT", "MixedCase.Txt", *bmp}
        assert len(tree.listdir("/many")) == 300
    # a long name is dropped for the 8.3 name, as mtools drops it, when its pieces disagree on the
    # checksum, or when the 8.3 entry was renamed by a tool that knows no long names
    source = vols["fat16"].img.read_bytes()
    first = source.find("A Lo".encode("utf-16-le")) - 1  # the long name's last piece (2 of 2: seq 1)
    assert first % 32 == 0 and source[first + 11] == 0x0F and source[first] == 0x01
    cases = (("checksum", first + 13, bytes([source[first + 13] ^ 0xFF]), "ALONGF~1.TEX"),
             ("renamed", first + 32, b"RENAMED TXT", "RENAMED.TXT"))
    for case, at, value, short in cases:
        img = tmp_path / f"{case}.img"
        raw = bytearray(source)
        raw[at : at + len(value)] = value
        img.write_bytes(raw)
        tree = open_tree(FatTree, img)
        assert_same(tree_manifest(tree, dir_times=False), mtools_manifest(img, tmp_path / case))
        assert short in {e.name for e in tree.listdir("/")}


def exfat_stream_offset(tree: ExfatTree, img: Path, path: str) -> int:
    """Volume offset of the entry set of ``path`` (its File entry)."""
    parent, name = path.rsplit("/", 1)
    pieces = tree._pieces(tree._resolve(parent)[1], "dir")
    volume = img.read_bytes()
    raw = b"".join(volume[o : o + n] for o, n in pieces)
    want = name.encode("utf-16-le")
    for off in range(0, len(raw), ENTRY):
        if raw[off] == 0x85 and raw[off + 2 * ENTRY + 2 : off + 2 * ENTRY + 2 + len(want)] == want:
            for base, n in pieces:
                if off < n:
                    return base + off
                off -= n
    raise AssertionError(f"no entry set for {path}")


def test_exfat_details(vols, tmp_path):
    v = vols["exfat"]
    tree = open_tree(ExfatTree, v.img)
    frag = {e.name: tree._resolve(e.path)[1] for e in tree.listdir("/frag")}
    assert frag["a04"].flags & 2 and not frag["a03"].flags & 2  # NoFatChain vs FAT chain
    assert len(tree._pieces(frag["a03"], "a03")) > 1
    assert_random_reads(tree, "/frag/a03")
    e = tree.stat("/frag/a03")
    assert abs(e.btime_ns - time.time_ns()) < 600 * 10**9 and e.ctime_ns is None
    # ValidDataLength below DataLength: the rest reads as zeros (fsck.exfat finds the set sound)
    img = tmp_path / "vdl.img"
    shutil.copyfile(v.img, img)
    with tree.open("/frag/a05") as f:
        original = f.read()
    at = exfat_stream_offset(tree, img, "/frag/a05")
    with open(img, "r+b") as f:
        f.seek(at)
        entry_set = bytearray(f.read(3 * ENTRY))
        struct.pack_into("<Q", entry_set, ENTRY + 8, 10_000)
        struct.pack_into("<H", entry_set, 2, set_checksum(entry_set))
        f.seek(at)
        f.write(entry_set)
    run("fsck.exfat", "-n", img)
    with open_tree(ExfatTree, img).open("/frag/a05") as f:
        assert f.read() == original[:10_000] + bytes(len(original) - 10_000)
    # UtcOffset: local 2021-03-04 05:06:08.57 at -01:00 is 06:06:08.57 UTC; invalid offset = UTC
    stamp = (41 << 25 | 3 << 21 | 4 << 16) | (5 << 11 | 6 << 5 | 4)
    utc = calendar.timegm((2021, 3, 4, 6, 6, 8)) * 10**9 + 570_000_000
    assert exfat_time(stamp, 57, 0x80 | 0x7C) == utc
    assert exfat_time(stamp, 57, 0x7C) == utc - 3600 * 10**9


def test_lookup_errors_and_case_insensitive_names(vols):
    for name, (file, folded) in {"ntfs": ("/files/f1.bin", "/FILES/F1.BIN"),
                                 "fat16": ("/Sub Dir/random.bin", "/sub dir/RANDOM.BIN"),
                                 "exfat": ("/Sub Dir/random.bin", "/SUB DIR/Random.bin")}.items():
        tree = open_tree(vols[name].cls, vols[name].img)
        assert tree.stat(folded).path == file
        assert tree.stat(file.replace("/", "/./")).path == file
        assert tree.stat("/").kind == "dir"
        with pytest.raises(FileNotFoundError):
            tree.stat("/no/such")
        with pytest.raises(NotADirectoryError):
            tree.listdir(file)
        with pytest.raises(NotADirectoryError):
            tree.stat(file + "/x")
        with pytest.raises(IsADirectoryError):
            tree.open("/")
    # symlinks are followed inside the volume on the way, and at the end by open and listdir
    tree = open_tree(NtfsTree, vols["ntfs"].img)
    assert tree.stat("/junction/f1.bin").path == "/files/f1.bin" and tree.stat("/junction").kind == "symlink"
    assert [e.name for e in tree.listdir("/junction")] == [e.name for e in tree.listdir("/files")]
    for link, target in (("interix-link", "f1.bin"), ("rel-symlink", "f2.bin"), ("wsl-symlink", "f3.bin")):
        with tree.open(link) as a, tree.open(f"/files/{target}") as b:
            assert a.read() == b.read()
    with pytest.raises(OSError):
        tree.open("/interix-fifo")


def test_damage_is_an_error_not_wrong_data(vols, tmp_path):
    # FAT: a chain cut short (the file's first cluster marked free in every FAT copy)
    img = tmp_path / "fat.img"
    shutil.copyfile(vols["fat16"].img, img)
    vol = open_tree(FatTree, img)._vol
    first = open_tree(FatTree, img)._resolve("/Sub Dir/random.bin")[1]
    with open(img, "r+b") as f:
        for copy in range(vol.nfats):
            f.seek((vol.reserved + copy * vol.fat_sectors) * vol.sector_size + 2 * first)
            f.write(b"\0\0")
    with pytest.raises(FilesystemError, match="chain is broken"):
        open_tree(FatTree, img).open("/Sub Dir/random.bin")
    # NTFS: a torn MFT record (update sequence mismatch) fails the listing that needs it
    img = tmp_path / "ntfs.img"
    shutil.copyfile(vols["ntfs"].img, img)
    tree = open_tree(NtfsTree, img)
    at = record_offset(tree, tree.stat("/files/f5.bin").inode) + 510
    with open(img, "r+b") as f:
        f.seek(at)
        f.write(b"\xde\xad")
    with pytest.raises(FilesystemError, match="update sequence"):
        open_tree(NtfsTree, img).listdir("/files")
    # exFAT: an entry set whose checksum is wrong is left out; its neighbours are not
    img = tmp_path / "exfat.img"
    shutil.copyfile(vols["exfat"].img, img)
    at = exfat_stream_offset(open_tree(ExfatTree, img), img, "/frag/a05")
    with open(img, "r+b") as f:
        f.seek(at + 2)
        f.write(b"\xff\xff")
    names = {e.name for e in open_tree(ExfatTree, img).listdir("/frag")}
    assert "a05" not in names and {"a04", "a06"} <= names


def test_lznt1_refuses_bad_back_references():
    with pytest.raises(FilesystemError):
        lznt1(bytes([0x02, 0xB0, 0x01, 0x00, 0x00]), 4096)  # a reference before the first byte
    assert lznt1(bytes([0x02, 0xB0, 0x00, ord("a"), ord("b")]) + bytes(2), 8192) == b"ab" + bytes(8190)


def test_through_an_image_of_a_gpt_disk(vols, tmp_path):
    """The volumes on one GPT disk, imaged by diskvault (used blocks only), read back through
    ChainWindow: the same trees, and each probe knows its own filesystem only."""
    names = ["ntfs", "fat12", "fat16", "fat32", "exfat"]
    disk, start, lines, parts = tmp_path / "disk.img", 2048, ["label: gpt"], {}
    for name in names:
        sectors = os.path.getsize(vols[name].img) // 512
        lines.append(f"start={start}, size={sectors}, type={MS_DATA}")
        parts[name] = (start * 512, sectors * 512)
        start += sectors
    with open(disk, "wb") as f:
        f.truncate((start + 2048) * 512)
    run("sfdisk", "-q", disk, input="\n".join(lines) + "\n")
    with open(disk, "r+b") as f:
        for name in names:
            f.seek(parts[name][0])
            f.write(vols[name].img.read_bytes())
    result = image(str(disk), str(tmp_path / "images"))
    assert result["bytes_written"] < os.path.getsize(disk) // 2
    with Chain(result["image"]) as chain:
        for name in names:
            v = vols[name]
            window = ChainWindow(chain, *parts[name])
            assert [c.probe(window, window.size) for c in (NtfsTree, FatTree, ExfatTree)] == \
                [c is v.cls for c in (NtfsTree, FatTree, ExfatTree)]
            assert_same(tree_manifest(v.cls(window, window.size), v.dir_times), v.want)
