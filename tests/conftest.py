import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))


def _attached_loops() -> set[str]:
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    return {line.split(":")[0] for line in out.splitlines()}


@pytest.fixture(autouse=True, scope="session")
def no_leftover_loop_devices():
    """The suite must leave no loop device or mount behind, even after failures."""
    before = _attached_loops()
    yield
    leftover = _attached_loops() - before
    for dev in leftover:
        subprocess.run(["losetup", "-d", dev], capture_output=True)
    assert not leftover, f"tests left loop devices attached: {sorted(leftover)}"


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="needs root (loop devices, mount)")
        for item in items:
            if "root" in item.keywords:
                item.add_marker(skip)
