import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from diskutil import close_test_fds  # noqa: E402 - needs the path above


@pytest.fixture(autouse=True)
def _close_test_fds():
    """Descriptors a test opened with diskutil.open_fd (readers keep them) are closed after it."""
    yield
    close_test_fds()


def _our_loops(base: str) -> set[str]:
    """Loop devices whose backing file lies under this run's temporary folder."""
    out = subprocess.run(["losetup", "-a", "-n", "-O", "NAME,BACK-FILE"], capture_output=True, text=True).stdout
    found = set()
    for line in out.splitlines():
        name, _, back = line.strip().partition(" ")
        if back.strip().startswith(base):
            found.add(name)
    return found


def _our_mounts(base: str) -> list[str]:
    with open("/proc/self/mounts") as f:
        return [line.split()[1] for line in f if line.split()[1].startswith(base)]


@pytest.fixture(autouse=True, scope="session")
def no_leftover_loop_devices_or_mounts(tmp_path_factory):
    """The suite must leave no loop device or mount behind, even after failures."""
    base = str(tmp_path_factory.getbasetemp())
    yield
    mounts = _our_mounts(base)
    for m in reversed(mounts):
        subprocess.run(["umount", "-l", m], capture_output=True)
    loops = _our_loops(base)
    for dev in loops:
        subprocess.run(["losetup", "-d", dev], capture_output=True)
    assert not mounts and not loops, f"tests left mounts {mounts} and loop devices {sorted(loops)} behind"


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="needs root (loop devices, mount)")
        for item in items:
            if "root" in item.keywords:
                item.add_marker(skip)
