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
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_fs_exfat import fuse_mount
from test_fs_ntfs import ntfs3g
from test_roundtrip import image

from diskvault.browse.exfat import ENTRY, ExfatTree, exfat_time, set_checksum
from diskvault.browse.fat import FatTree, Pieces
from diskvault.browse.ntfs import AT_INDEX_ALLOCATION, I30, NtfsTree, lznt1
from diskvault.errors import FilesystemError
from diskvault.format.chain import Chain, ChainWindow
from diskvault.fs import c_ntfs as C

MiB = 1 << 20
TOOLS = ("mkntfs", "ntfs-3g", "mkfs.vfat", "mcopy", "mdel", "mkfs.exfat", "mount.exfat-fuse", "fsck.exfat", "sfdisk")
pytestmark = [pytest.mark.root, pytest.mark.skipif(
    not all(shutil.which(t) for t in TOOLS) or not os.path.exists("/dev/fuse"),
    reason="needs ntfs-3g, mtools, dosfstools, exfatprogs, exfat-fuse and /dev/fuse")]
ENV = {**os.environ, "LC_ALL": "C.UTF-8", "TZ": "UTC"}  # mtools stores (and reads) local time
MS_DATA = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
UNICODE = ["Données", "日本語 ファイル.txt", "emoji 🎉 party.bin", "Ελληνικά"]


def run(*args, env: dict | None = None) -> str:
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env or ENV)
    assert r.returncode == 0, f"{args[0]} exited {r.returncode}: {r.stdout}{r.stderr}"
    return r.stdout


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def rbytes(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(n)


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


def open_tree(cls, img: Path):
    f = open(img, "rb")
    return cls(f, os.path.getsize(img))
