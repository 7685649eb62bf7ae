"""``mount_image`` / ``unmount_image``: what the CLI and the web UI call.

mount: check FUSE and the mount point -> open the chain (asks the password here, before
detaching) -> plan which partitions' files to mount -> start the server (server.py) in the
background, or in this process with ``foreground`` -> return once everything is mounted.
umount: nested mounts -> loop devices -> the FUSE mount -> wait for the server to end."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass

from diskvault.crypto.keys import PasswordSource
from diskvault.errors import UsageError
from diskvault.format.chain import Chain
from diskvault.format.reader import KeyRing
from diskvault.mount import state as mount_state
from diskvault.mount.attach import check_partition, detach, mount_table, unmount, why_not_mountable
from diskvault.mount.fuse_fs import FuseUnavailableError, layout, load_mfusepy
from diskvault.mount.server import MountError, daemonize, run_server

FUSE_TYPE = "fuse.diskvault"


@dataclass
class MountOptions:
    image: str
    mountpoint: str
    partitions: list[int] | None = None  # mount these partitions' files at MOUNTPOINT/N
    all_partitions: bool = False  # ... or every partition whose files can be mounted
    password: PasswordSource | None = None
    foreground: bool = False


def check_fuse() -> None:
    """Explain what is missing when FUSE cannot work here."""
    try:
        is_char = stat.S_ISCHR(os.stat("/dev/fuse").st_mode)
    except OSError:
        is_char = False
    if not is_char:
        raise FuseUnavailableError("/dev/fuse is missing (modprobe fuse; in a container, pass the device "
                                   "/dev/fuse through)")
    if not (shutil.which("fusermount3") or shutil.which("fusermount")):
        raise FuseUnavailableError("fusermount3 is missing (install the Debian package fuse3)")
    load_mfusepy()


def check_mountpoint(path: str) -> None:
    if not os.path.isdir(path):
        raise UsageError(f"mount point {path} is not a folder" if os.path.exists(path)
                         else f"mount point {path} does not exist")
    if path in mount_table():
        raise UsageError(f"{path} is already a mount point")
    if os.listdir(path):
        raise UsageError(f"mount point {path} is not empty")


def _plan(chain: Chain, opts: MountOptions) -> tuple[list[dict], list[tuple[int, str, str]], list[str]]:
    """(partitions served as partN.img, (number, fstype, uuid) to mount at N/, notes)."""
    every = {p["number"]: p for p in chain.metadata["partitions"]}
    parts = {n: p for n, p in every.items() if p.get("method") != "skipped"}
    notes, plan = [], []
    if opts.all_partitions:
        for number, p in sorted(parts.items()):
            reason = why_not_mountable((p.get("fs") or {}).get("fstype"))
            if reason:
                notes.append(f"partition {number}: not mounted: {reason}")
            else:
                plan.append((number, p["fs"]["fstype"], p["fs"].get("uuid") or ""))
    else:
        plan = [(number, *check_partition(number, every)) for number in opts.partitions or []]
    if plan and os.geteuid() != 0:
        raise UsageError("mounting the files of partitions needs root (loop devices, mount)")
    return list(parts.values()), plan, notes


def mount_image(opts: MountOptions, on_ready: Callable[[dict], None] | None = None) -> dict:
    """Mount ``opts.image`` read-only at ``opts.mountpoint``; returns the mount's state (files,
    partitions mounted, loop devices, server pid). With ``foreground`` this call serves until the
    mount is unmounted or interrupted, and ``on_ready`` is called once it is ready."""
    mountpoint = os.path.realpath(opts.mountpoint)
    image = os.path.abspath(opts.image)
    check_mountpoint(mountpoint)
    check_fuse()
    with Chain(image, KeyRing(opts.password)) as chain:
        parts, plan, notes = _plan(chain, opts)
        files = layout(chain.disk_size, parts)
        state = {"mountpoint": mountpoint, "image": image, "pid": os.getpid(), "files": sorted(files),
                 "created_ns": chain.head.header.created_ns, "mounted": {}, "attached": [], "notes": notes}
        os.makedirs(mount_state.STATE_DIR, mode=0o700, exist_ok=True)

        def run(notify: Callable[[dict], None]) -> None:
            state["pid"] = os.getpid()
            run_server(chain, state, plan, files, notify)

        if not opts.foreground:
            reply = daemonize(run, mount_state.log_path(mountpoint))
        else:
            replies: list[dict] = []

            def notify(msg: dict) -> None:
                replies.append(msg)
                if msg["ok"] and on_ready:
                    on_ready(msg["state"])

            run(notify)
            reply = replies[0]
    if not reply["ok"]:
        error = MountError(reply["error"])
        error.exit_code = reply.get("exit_code", 1)
        raise error
    return reply["state"]


def _server_alive(pid: int | None) -> bool:
    if not pid or pid == os.getpid():
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
        with open(f"/proc/{pid}/stat") as f:
            zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False
    return b"diskvault" in cmdline and not zombie


def unmount_image(mountpoint: str, lazy: bool = False, timeout: float = 10.0) -> dict:
    """Undo a mount, also one whose server was killed: nested mounts, then loop devices (by name,
    checked against their backing file), then the FUSE mount; then the server is waited for."""
    mountpoint = os.path.realpath(mountpoint)
    state = mount_state.load(mountpoint)
    if state is None:
        if mount_table().get(mountpoint) != FUSE_TYPE:
            raise UsageError(f"{mountpoint} is not a diskvault mount")
        state = {"mountpoint": mountpoint, "attached": [], "pid": None}
    detach(mountpoint, state["attached"], lazy)
    unmount(mountpoint, lazy)
    pid = state.get("pid")
    deadline = time.monotonic() + timeout
    while _server_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _server_alive(pid):
        os.kill(pid, signal.SIGKILL)
    mount_state.remove(mountpoint)
    return {"mountpoint": mountpoint, "detached": state["attached"]}
