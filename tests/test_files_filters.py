"""Backup filters: gitignore-style include/exclude (options and files, negation, anchoring),
CACHEDIR.TAG, --one-file-system (a real tmpfs mount), special files, the destination inside a root."""

import os
import socket
import stat
import subprocess

import pytest
from filesutil import backup, dvf, ls, write

pytestmark = pytest.mark.root

SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55\n# a cache\n"


@pytest.fixture
def src(tmp_path):
    root = str(tmp_path / "src")
    for rel in ("keep.txt", "app.log", "sub/debug.log", "sub/keep.log", "cache/blob", "fakecache/blob",
                "node_modules/x.js", "docs/a.md", "docs/b.txt", "docs/deep/c.md"):
        os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
        write(os.path.join(root, rel), rel.encode())
    write(os.path.join(root, "cache", "CACHEDIR.TAG"), SIGNATURE)
    write(os.path.join(root, "fakecache", "CACHEDIR.TAG"), b"not the signature")
    os.mkfifo(os.path.join(root, "fifo"))
    os.mknod(os.path.join(root, "null"), stat.S_IFCHR | 0o666, os.makedev(1, 3))
    s = socket.socket(socket.AF_UNIX)
    s.bind(os.path.join(root, "sock"))
    s.close()
    os.makedirs(os.path.join(root, "mnt"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "dvfilters", os.path.join(root, "mnt")], check=True)
    try:
        write(os.path.join(root, "mnt", "on-tmpfs"), b"other filesystem")
        yield root
    finally:
        subprocess.run(["umount", os.path.join(root, "mnt")], check=True)


def names(archive: str, root: str) -> set[str]:
    rel = root.lstrip("/") + "/"
    return {p[len(rel):] for p in ls(archive) if p.startswith(rel)}


def test_exclude_patterns_files_caches_and_specials(tmp_path, src):
    patterns = tmp_path / "excludes"
    patterns.write_text(f"# comment\n\nnode_modules/\n/{src.lstrip('/')}/docs/*.txt\n")
    arch = backup(src, str(tmp_path / "out"), "--exclude", "*.log", "--exclude", "!keep.log",
                  "--exclude-file", str(patterns), "--exclude-caches")["archive"]
    assert names(arch, src) == {"keep.txt", "sub", "sub/keep.log", "cache", "cache/CACHEDIR.TAG", "fakecache",
                                "fakecache/blob", "fakecache/CACHEDIR.TAG", "docs", "docs/a.md", "docs/deep",
                                "docs/deep/c.md", "fifo", "mnt", "mnt/on-tmpfs"}
    assert ls(arch)[src.lstrip("/") + "/fifo"]["type"] == "p"  # FIFOs are kept; devices and sockets are not


def test_include_one_file_system_and_special(tmp_path, src):
    arch = backup(src, str(tmp_path / "out"), "--include", "*.md", "--include", "sock", "--special")["archive"]
    assert names(arch, src) == {"docs", "docs/a.md", "docs/deep", "docs/deep/c.md", "sock"}
    arch = backup(src, str(tmp_path / "out2"), "--one-file-system", "--special")["archive"]
    got = names(arch, src)
    assert "mnt" in got and "mnt/on-tmpfs" not in got and {"null", "sock", "fifo"} <= got


def test_destination_inside_the_tree_is_not_backed_up(tmp_path, src):
    dest = os.path.join(src, "backups")
    first = backup(src, dest)
    second = backup(src, dest, "--type", "inc")
    r = dvf("backup", src, "--to", dest, "--type", "inc", "--json")
    assert "is the destination folder: its contents are not backed up" in r.stderr
    got = names(second["archive"], src)
    assert "backups" in got and not [n for n in got if n.startswith("backups/")]
    assert second["files_read"] == 0 and first["set_id"] == second["set_id"]
