"""The mount's server process: serves the FUSE filesystem, attaches the partitions' files once the
kernel has the mount, and on SIGTERM/SIGINT/SIGHUP detaches everything before it unmounts itself.

    parent (diskvault mount) --fork--> child --setsid, fork--> server --pipe--> parent: ready / error

Signals: libfuse's own handlers would end the loop and lazily unmount with the nested mounts still
holding loop devices, so ours stay installed and wake a watcher thread (signal.set_wakeup_fd), which
tears down in order while libfuse keeps serving the nested mounts' last reads."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict

from diskvault.errors import DiskvaultError
from diskvault.format.chain import Chain
from diskvault.mount import state as mount_state
from diskvault.mount.attach import Attachment, attach, detach, unmount
from diskvault.mount.fuse_fs import Slice, load_mfusepy, operations, serve
from diskvault.mount.prefetch import PrefetchReader
from diskvault.mount.tree_view import TreeView

Notify = Callable[[dict], None]
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class MountError(DiskvaultError):
    """{}"""


def _error(e: BaseException) -> dict:
    return {"ok": False, "error": str(e), "exit_code": getattr(e, "exit_code", 1)}


def run_server(chain: Chain, state: dict, plan: list[tuple[int, str, str]], files: dict[str, Slice],
               trees: dict[str, TreeView], notify: Notify) -> None:
    """Serve ``state["mountpoint"]`` until it is unmounted or a signal arrives. ``notify`` gets
    {"ok": True, "state": ...} once every partition in ``plan`` is mounted, or the error (after
    everything attached so far is undone)."""
    mp = state["mountpoint"]
    fuse = load_mfusepy()
    reader = PrefetchReader(chain)
    lock, steps = threading.Lock(), threading.Lock()  # steps: an attach step and a teardown never interleave
    outcome: dict = {}
    stop_requested = threading.Event()

    def send(msg: dict) -> None:
        with lock:  # held while writing: the other sender returns only after, then the process may exit
            if not outcome.get("notified"):
                outcome["notified"] = True
                notify(msg)

    def record(a: Attachment) -> None:
        state["attached"].append(asdict(a))
        mount_state.save(state)

    def teardown() -> None:
        """Detach everything, then unmount: the FUSE loop ends and run_server returns."""
        try:
            with steps:
                detach(mp, state["attached"], lazy=True)
                unmount(mp, lazy=True)
        except DiskvaultError as e:
            print(f"diskvault: {e}", file=sys.stderr, flush=True)

    def setup() -> None:
        try:
            for number, fstype, uuid in plan:
                with steps:
                    if stop_requested.is_set():
                        raise MountError("interrupted")
                    attach(number, fstype, uuid, os.path.join(mp, f"part{number}.img"),
                           os.path.join(mp, str(number)), record)
                    state["mounted"][str(number)] = fstype
                    mount_state.save(state)
            if stop_requested.is_set():
                raise MountError("interrupted")
            send({"ok": True, "state": state})
        except Exception as e:  # noqa: BLE001 - any failure is reported to the parent after undoing
            outcome["error"] = _error(e)  # before teardown: once unmounted, run_server reports it
            teardown()
            send(outcome["error"])

    def watch(fd: int) -> None:
        while os.read(fd, 1):
            stop_requested.set()
            teardown()

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in SIGNALS}
    previous_fd = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    fuse.signal = lambda sig, handler: signal.getsignal(sig)  # mfusepy would hand SIGINT to libfuse
    threading.Thread(target=watch, args=(wake_r,), daemon=True, name="diskvault-signals").start()
    mount_state.save(state)
    try:
        ops = operations(reader, files, [str(n) for n, _, _ in plan], trees, state["created_ns"],
                         on_ready=lambda: threading.Thread(target=setup, name="diskvault-attach").start())
        serve(ops, mp, fsname=f"diskvault:{os.path.basename(state['image'])}")
    except Exception as e:  # noqa: BLE001 - reported to the parent
        outcome.setdefault("error", _error(e))
    finally:
        signal.set_wakeup_fd(previous_fd)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        reader.close()
        mount_state.remove(mp)
        send(outcome.get("error") or {"ok": False, "exit_code": 1,
                                      "error": f"the FUSE server for {mp} stopped before it was ready"})


def daemonize(run: Callable[[Notify], None], log: str) -> dict:
    """Run ``run(notify)`` in a detached process (double fork, new session, output to ``log``) and
    return the first message it notifies."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        sent = False

        def notify(msg: dict) -> None:
            nonlocal sent
            if not sent:
                sent = True
                os.write(write_fd, json.dumps(msg).encode() + b"\n")
                os.close(write_fd)

        try:
            os.close(read_fd)
            os.setsid()
            if os.fork():
                os._exit(0)
            os.chdir("/")
            out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(out, 1)
            os.dup2(out, 2)
            run(notify)
        except BaseException as e:  # noqa: BLE001 - whatever ends the server, the parent must hear why
            notify(_error(e))
        finally:
            os._exit(0)
    os.close(write_fd)
    os.waitpid(pid, 0)
    with os.fdopen(read_fd) as f:
        line = f.readline()
    if not line:
        raise MountError(f"the FUSE server died before it was ready (log: {log})")
    return json.loads(line)
