"""Restore never writes outside its target (crafted archives with '..', absolute names, symlink and
hard-link tricks; symlinks already in the target); owners by name or number; wrong passwords;
flipped bits found by verify; files changing while read are retried and reported."""

import os
import subprocess
import sys
import time

import pytest
from filesutil import backup, dvf, ls, write

from diskvault.files.backup import BackupOptions, backup_files
from diskvault.files.catalog import Entry
from diskvault.files.layout import (
    FOOTER_SIZE,
    SECTION_CATALOG,
    T_DIR,
    T_FILE,
    T_HARDLINK,
    T_SYMLINK,
    ArchiveFooter,
    ArchiveHeader,
)
from diskvault.files.reading import ChunkStore
from diskvault.files.writer import ArchiveWriter

pytestmark = pytest.mark.root


def craft(dest: str, entries: list[Entry]) -> str:
    """An archive with exactly these entries (a regular file's content is its path, repeated)."""
    os.makedirs(dest, exist_ok=True)
    writer = ArchiveWriter(dest, ArchiveHeader(set_id=os.urandom(8), created_ns=time.time_ns(), writer="crafted"))
    store = ChunkStore(writer, "none", None, None)
    for e in entries:
        if e.type == T_FILE:
            data = e.path * 3
            e.size, e.chunks = len(data), [(0, len(data), store.put(data))]
    return writer.finish(b"".join(e.encode() for e in entries), len(entries), {"format": 1, "roots": ["/"]})


def F(path: bytes, **kw) -> Entry:
    return Entry(path, T_FILE, 0o100644, mtime_ns=10**18, **kw)


def tree(path: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, n), path) for d, ds, fs in os.walk(path) for n in ds + fs)


@pytest.mark.parametrize("name,entries,why", [
    ("dotdot", [F(b"../escape")], "'..' component (would leave the target)"),
    ("nested-dotdot", [Entry(b"a", T_DIR, 0o40755), F(b"a/../../escape")], "'..' component"),
    ("absolute", [F(b"OUTSIDE/abs")], "absolute name"),
    ("symlink-then-file", [Entry(b"evil", T_SYMLINK, 0o120777, link=b"OUTSIDE"), F(b"evil/x")],
     "evil/x: lies below evil, which is a symlink in the archive"),
    ("symlink-deeper", [Entry(b"d", T_DIR, 0o40755), Entry(b"d/evil", T_SYMLINK, 0o120777, link=b"../../OUTSIDE"),
                        Entry(b"d/evil/sub", T_DIR, 0o40755), F(b"d/evil/sub/x")], "lies below d/evil"),
    ("hardlink-out", [F(b"f"), Entry(b"h", T_HARDLINK, 0o100644, link=b"../../OUTSIDE/x")], "hard link to"),
    ("duplicate", [Entry(b"x", T_SYMLINK, 0o120777, link=b"OUTSIDE"), Entry(b"x", T_DIR, 0o40755)], "appears twice"),
])
def test_crafted_archive_restores_nothing_and_says_why(tmp_path, name, entries, why):
    outside = str(tmp_path / "outside")
    os.makedirs(outside)
    for e in entries:  # OUTSIDE stands for the real folder outside the target
        e.path = e.path.replace(b"OUTSIDE", os.fsencode(outside))
        e.link = e.link.replace(b"OUTSIDE", os.fsencode(outside))
    archive = craft(str(tmp_path / "out"), entries)
    target = str(tmp_path / "target")
    r = dvf("restore", archive, "--to", target, check=False)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith(f"diskvault: refusing to restore {archive}: ") and why in r.stderr, r.stderr
    assert not os.path.exists(target) or tree(target) == []
    assert tree(outside) == [] and not os.path.exists(tmp_path / "escape")


def test_symlinks_already_in_the_target_are_never_followed(tmp_path):
    outside = str(tmp_path / "outside")
    os.makedirs(outside)
    write(os.path.join(outside, "precious"), b"keep me")
    archive = craft(str(tmp_path / "out"), [Entry(b"d", T_DIR, 0o40755), F(b"d/x"), F(b"f"), F(b"g")])
    target = str(tmp_path / "target")
    os.makedirs(target)
    os.symlink(outside, os.path.join(target, "d"))
    os.symlink(os.path.join(outside, "precious"), os.path.join(target, "f"))
    r = dvf("restore", archive, "--to", target, check=False)  # --overwrite never: the symlinks stay
    assert r.returncode == 1
    assert "d/x: not restored: d: is a symlink or not a directory in the target; not following it" in r.stderr
    assert tree(outside) == ["precious"] and open(os.path.join(outside, "precious"), "rb").read() == b"keep me"
    assert os.path.islink(os.path.join(target, "f")) and open(os.path.join(target, "g"), "rb").read() == b"ggg"
    dvf("restore", archive, "--to", target, "--overwrite", "always")  # replaced, never followed
    assert tree(outside) == ["precious"] and open(os.path.join(outside, "precious"), "rb").read() == b"keep me"
    assert not os.path.islink(os.path.join(target, "d")) and not os.path.islink(os.path.join(target, "f"))
    assert open(os.path.join(target, "d", "x"), "rb").read() == b"d/xd/xd/x"
    assert open(os.path.join(target, "f"), "rb").read() == b"fff"


def test_owners_by_name_unless_numeric(tmp_path):
    archive = craft(str(tmp_path / "out"), [F(b"named", uid=1234, gid=4321, user=b"nobody", group=b"nogroup"),
                                            F(b"unknown", uid=1234, gid=4321, user=b"no-such-user-here")])
    dvf("restore", archive, "--to", str(tmp_path / "a"))
    st = os.stat(tmp_path / "a" / "named")
    assert (st.st_uid, st.st_gid) == (65534, 65534)
    assert os.stat(tmp_path / "a" / "unknown").st_uid == 1234
    dvf("restore", archive, "--to", str(tmp_path / "b"), "--numeric-owner")
    st = os.stat(tmp_path / "b" / "named")
    assert (st.st_uid, st.st_gid) == (1234, 4321)


def test_encryption_hides_content_and_wrong_password_is_named(tmp_path):
    src = str(tmp_path / "src")
    os.makedirs(src)
    write(os.path.join(src, "secret-name.txt"), b"PLAINTEXT-MARKER " * 5000)
    env = {"DISKVAULT_KDF_MEMORY_KIB": "1024", "DV_PW": "right", "DV_BAD": "wrong"}
    res = backup(src, str(tmp_path / "out"), "--password-env", "DV_PW", env=env)
    raw = open(res["archive"], "rb").read()
    assert b"PLAINTEXT-MARKER" not in raw and b"secret-name" not in raw
    for cmd in (["ls", res["archive"]], ["verify", res["archive"]],
                ["restore", res["archive"], "--to", str(tmp_path / "t")]):
        r = dvf(*cmd, "--password-env", "DV_BAD", check=False, env=env)
        assert r.returncode == 2 and r.stderr.strip() == f"diskvault: wrong password for {res['archive']}", r.stderr
        r = dvf(*cmd, check=False, env=env)
        assert r.returncode == 2 and "encrypted: give --password-file or --password-env" in r.stderr
    assert not os.path.exists(tmp_path / "t") or tree(str(tmp_path / "t")) == []
    dvf("restore", res["archive"], "--to", str(tmp_path / "t"), "--password-env", "DV_PW", env=env)
    assert open(tmp_path / "t" / src.lstrip("/") / "secret-name.txt", "rb").read() == b"PLAINTEXT-MARKER " * 5000


def _flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x10]))


def test_flipped_bits_are_found(tmp_path):
    src = str(tmp_path / "src")
    os.makedirs(src)
    for i in range(5):
        write(os.path.join(src, f"f{i}"), os.urandom(200_000))
    archive = backup(src, str(tmp_path / "out"))["archive"]
    dvf("verify", archive)
    with open(archive, "rb") as f:
        f.seek(-FOOTER_SIZE, os.SEEK_END)
        catalog = ArchiveFooter.unpack(f.read()).sections[SECTION_CATALOG]
    cases = [(4096 + 300_000, "damaged chunk"), (catalog.offset + 5, "catalog section is damaged"),
             (100, "header checksum mismatch"), (os.path.getsize(archive) - 100, "footer checksum mismatch")]
    for offset, message in cases:
        _flip(archive, offset)
        r = dvf("verify", archive, check=False)
        assert r.returncode == 1 and message in r.stderr, (offset, r.stderr)
        if offset == 4096 + 300_000:
            r = dvf("restore", archive, "--to", str(tmp_path / "t"), check=False)
            assert r.returncode == 1 and "f1: " in r.stderr and "damaged chunk" in r.stderr, r.stderr
        _flip(archive, offset)
    dvf("verify", archive)
    os.truncate(archive, os.path.getsize(archive) - 1)
    r = dvf("verify", archive, check=False)
    assert r.returncode == 1 and "incomplete" in r.stderr


def test_file_changing_while_read_is_retried_then_reported(tmp_path):
    src = str(tmp_path / "src")
    os.makedirs(src)
    busy, calm = os.path.join(src, "busy.log"), os.path.join(src, "calm")
    write(busy, os.urandom(4 << 20))
    write(calm, b"still")
    writer = subprocess.Popen([sys.executable, "-c", f"""
import os
fd = os.open({busy!r}, os.O_WRONLY)
n = 0
while True:
    n += 1
    os.pwrite(fd, n.to_bytes(8, "little"), (n * 4096) % (4 << 20))
    os.ftruncate(fd, (4 << 20) + n % 2)
"""])
    try:
        time.sleep(0.2)
        os.makedirs(tmp_path / "out")
        result = backup_files(BackupOptions(paths=[src], to=str(tmp_path / "out")))
    finally:
        writer.kill()
        writer.wait()
    assert result.changed == [busy] and result.errors == []
    listed = ls(result.archive)
    assert listed[busy.lstrip("/")]["changed_while_read"] is True
    assert listed[calm.lstrip("/")]["changed_while_read"] is False
    r = dvf("restore", result.archive, "--to", str(tmp_path / "t"))
    assert "busy.log: was changing while it was backed up" in r.stderr


class _CtrlC:
    """A progress display whose user presses Ctrl-C after the first bytes were stored."""

    def start(self, description: str, total: int) -> None:
        pass

    def advance(self, amount: int) -> None:
        raise KeyboardInterrupt

    def finish(self) -> None:
        pass


def test_interrupted_backup_leaves_no_archive_and_leftovers_are_ignored(tmp_path):
    src, out = str(tmp_path / "src"), str(tmp_path / "out")
    os.makedirs(src)
    os.makedirs(out)
    for i in range(3):
        write(os.path.join(src, f"f{i}"), os.urandom(20 << 20))
    with pytest.raises(KeyboardInterrupt):
        backup_files(BackupOptions(paths=[src], to=out), _CtrlC())
    assert os.listdir(out) == []
    full = backup(src, out)
    with open(full["archive"].replace("-00-00.dvbak", "-01-00.dvbak.partial"), "wb") as f:
        f.write(b"a crashed run's leftover")
    inc = backup(src, out, "--type", "inc")
    assert inc["increment"] == 1 and inc["files_read"] == 0
    dvf("verify", inc["archive"])
