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

from diskvault.browse.open import browsable_partitions, open_tree, pick_partition
from diskvault.crypto.keys import PasswordSource
from diskvault.errors import DiskvaultError, UsageError
from diskvault.format.chain import Chain
from diskvault.format.reader import KeyRing
from diskvault.mount import state as mount_state
from diskvault.mount.attach import detach, mount_table, unmount, why_not_mountable
from diskvault.mount.fuse_fs import FuseUnavailableError, layout, load_mfusepy
from diskvault.mount.server import MountError, daemonize, run_server
from diskvault.mount.tree_view import TreeView

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


def _how(chain: Chain, part: dict) -> tuple[int, str, str] | TreeView:
    """How partition ``part``'s files get to MOUNTPOINT/N: attached by this machine's driver
    (number, fstype, uuid), else served from a browse tree; UsageError with the reason if neither."""
    number, fs = part["number"], part.get("fs") or {}
    reason = why_not_mountable(fs.get("fstype"))
    if reason is None:
        return number, fs["fstype"], fs.get("uuid") or ""
    try:
        return TreeView(open_tree(chain, number), chain.head.header.created_ns)
    except DiskvaultError:
        raise UsageError(f"cannot mount the files of partition {number}: {reason}") from None


def _plan(chain: Chain, opts: MountOptions) -> tuple[list[dict], list[tuple[int, str, str]], dict[str, TreeView],
                                                      list[str]]:
    """(partitions served as partN.img, partitions to attach at N/, trees served at N/, notes)."""
    parts = {p["number"]: p for p in browsable_partitions(chain)}
    wanted = sorted(parts) if opts.all_partitions else opts.partitions or []
    plan, trees, notes = [], {}, []
    for number in wanted:
        try:
            how = _how(chain, pick_partition(chain, number))
        except UsageError as e:
            if not opts.all_partitions:
                raise
            notes.append(f"partition {number}: not mounted: {str(e).split(': ', 1)[-1]}")
            continue
        if isinstance(how, TreeView):
            trees[str(number)] = how
        else:
            plan.append(how)
    if plan and os.geteuid() != 0:
        raise UsageError("mounting the files of partitions needs root (loop devices, mount)")
    return list(parts.values()), plan, trees, notes


def mount_image(opts: MountOptions, on_ready: Callable[[dict], None] | None = None) -> dict:
    """Mount ``opts.image`` read-only at ``opts.mountpoint``; returns the mount's state (files,
    partitions mounted, loop devices, server pid). With ``foreground`` this call serves until the
    mount is unmounted or interrupted, and ``on_ready`` is called once it is ready."""
    mountpoint = os.path.realpath(opts.mountpoint)
    image = os.path.abspath(opts.image)
    check_mountpoint(mountpoint)
    check_fuse()
    with Chain(image, KeyRing(opts.password)) as chain:
        parts, plan, trees, notes = _plan(chain, opts)
        files = layout(chain.disk_size, parts)
        state = {"mountpoint": mountpoint, "image": image, "pid": os.getpid(), "files": sorted(files),
                 "created_ns": chain.head.header.created_ns, "attached": [], "notes": notes,
                 "mounted": {str(p["number"]): p["fs"]["fstype"] for p in parts if str(p["number"]) in trees},
                 "served": sorted(trees)}  # the files of these are served by the FUSE filesystem itself
        os.makedirs(mount_state.STATE_DIR, mode=0o700, exist_ok=True)

        def run(notify: Callable[[dict], None]) -> None:
            state["pid"] = os.getpid()
            run_server(chain, state, plan, files, trees, notify)

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
