"""Helpers for the file-backup tests: the CLI, a tree with every kind of entry, and a manifest of
every property a restore must keep."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import subprocess
import sys

T0 = 1_600_000_000  # seconds: old enough that relatime would update atimes on any read


def dvf(*args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "diskvault", "files", *args], capture_output=True, text=True,
                       env={**os.environ, **(env or {})})
    if check and r.returncode != 0:
        raise AssertionError(f"diskvault files {' '.join(args)} exited {r.returncode}: {r.stderr}")
    return r


def backup(src: str, dest: str, *extra: str, env: dict | None = None) -> dict:
    os.makedirs(dest, exist_ok=True)
    return json.loads(dvf("backup", src, "--to", dest, "--json", *extra, env=env).stdout)


def ls(archive: str, *extra: str) -> dict[str, dict]:
    return {e["path"]: e for e in json.loads(dvf("ls", archive, "--json", *extra).stdout)}


def write(path: str, data: bytes, mode: int = 0o644) -> None:
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def set_times(root: str, seed: int = 0) -> None:
    """Distinct ns times on every entry below root (deepest first, so parents keep theirs)."""
    paths = [os.path.join(d, n) for d, ds, fs in os.walk(root) for n in ds + fs] + [root]
    for i, p in enumerate(sorted(paths, key=lambda p: -p.count("/"))):
        t = (T0 + seed * 1000 + i) * 10**9
        os.utime(p, ns=(t + 123_456_789 + i, t + 987_654_321 - i), follow_symlinks=False)


def build_tree(root: str, special: bool = True) -> None:
    """Regular (small, big, sparse, empty, set-id), text and random files; symlinks (relative,
    absolute, dangling); hard links; empty and read-only directories; FIFO, device, socket;
    odd names; owners with and without names; xattrs in every namespace; access and default ACLs."""
    rnd = __import__("random").Random(7)
    os.makedirs(os.path.join(root, "docs", "deep", "er"))
    os.makedirs(os.path.join(root, "empty", "nested"))
    os.makedirs(os.path.join(root, "ro"))
    for i, size in enumerate([0, 1, 511, 4096, 65537, 700_000, 3 << 20]):
        write(os.path.join(root, "docs", f"rand{i}.bin"), rnd.randbytes(size))
        write(os.path.join(root, "docs", "deep", f"text{i}.txt"), (f"line {i} words words\n" * (size // 20 + 1))
              .encode()[:size], 0o600)
    write(os.path.join(root, "big.bin"), rnd.randbytes(20 << 20))  # streamed in chunks
    with open(os.path.join(root, "sparse.img"), "wb") as f:
        f.truncate(64 << 20)
        for off in (1 << 20, 40 << 20):
            f.seek(off)
            f.write(rnd.randbytes(8192))
    write(os.path.join(root, "ro", "inside"), b"in a read-only dir")
    write(os.path.join(root, "setuid"), b"#!/bin/sh\n", 0o4755)
    write(os.path.join(root, "setgid"), b"#!/bin/sh\n", 0o2750)
    write(os.fsencode(root) + b"/caf\xe9 \nname", b"non-UTF-8 name")
    os.chown(os.path.join(root, "setuid"), 1234, 4321)
    os.chown(os.path.join(root, "setgid"), 65534, 65534)  # nobody / nogroup: names known here
    os.chown(os.path.join(root, "docs", "rand3.bin"), 1234, 0)
    os.link(os.path.join(root, "docs", "rand2.bin"), os.path.join(root, "hard1"))
    os.link(os.path.join(root, "docs", "rand2.bin"), os.path.join(root, "empty", "hard2"))
    os.symlink("docs/rand1.bin", os.path.join(root, "rel-link"))
    os.symlink("/etc/hostname", os.path.join(root, "abs-link"))
    os.symlink("does/not/exist", os.path.join(root, "dangling"))
    os.lchown(os.path.join(root, "dangling"), 1234, 4321)
    os.mkfifo(os.path.join(root, "fifo"), 0o640)
    if special:
        os.mknod(os.path.join(root, "null"), stat.S_IFCHR | 0o666, os.makedev(1, 3))
        s = socket.socket(socket.AF_UNIX)
        s.bind(os.path.join(root, "sock"))
        s.close()
    rand0 = os.path.join(root, "docs", "rand0.bin")
    os.setxattr(rand0, "user.comment", b"hello \0 binary")
    os.setxattr(rand0, "trusted.secret", b"t")
    os.setxattr(rand0, "security.test", b"s")
    os.setxattr(os.path.join(root, "docs"), "user.dir", b"d")
    os.setxattr(os.path.join(root, "abs-link"), "trusted.on-link", b"l", follow_symlinks=False)
    subprocess.run(["setfacl", "-m", "u:1234:rwx,g:4321:r", os.path.join(root, "docs", "rand4.bin")], check=True)
    subprocess.run(["setfacl", "-d", "-m", "u:1234:rx", os.path.join(root, "docs", "deep")], check=True)
    os.chmod(os.path.join(root, "empty"), 0o1777)
    os.chmod(os.path.join(root, "ro"), 0o500)
    set_times(root)


def _sha(path: str) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOATIME)
    h = hashlib.sha256()
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _xattrs(path: str) -> dict:
    try:
        return {n: os.getxattr(path, n, follow_symlinks=False) for n in os.listxattr(path, follow_symlinks=False)}
    except OSError:
        return {}


def manifest(root: str, atimes: bool = True) -> dict[str, dict]:
    """Every property of every entry below root (root included as '.'), lstat taken before any
    read or listing so atimes are as they were; hard links as groups of paths."""
    out: dict[str, dict] = {}
    inodes: dict[int, str] = {}
    stack = [b"."]
    base = os.fsencode(root)
    while stack:
        rel = stack.pop()
        path = os.path.normpath(base + b"/" + rel)
        st = os.lstat(path)
        name = os.fsdecode(rel)
        m = {"type": stat.S_IFMT(st.st_mode), "mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid,
             "mtime": st.st_mtime_ns, "nlink": st.st_nlink, "xattrs": _xattrs(path)}
        if atimes:
            m["atime"] = st.st_atime_ns
        if stat.S_ISREG(st.st_mode):
            m.update(size=st.st_size, sha=_sha(path), link_group=inodes.setdefault(st.st_ino, name))
        elif stat.S_ISLNK(st.st_mode):
            m["target"] = os.readlink(path)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            m["rdev"] = st.st_rdev
        elif stat.S_ISDIR(st.st_mode):
            stack += [rel + b"/" + n for n in sorted(os.listdir(path), reverse=True)]
        out[name] = m
    return out


def getfacl(path: str) -> str:
    return subprocess.run(["getfacl", "-n", "--omit-header", path], capture_output=True, text=True,
                          check=True).stdout
