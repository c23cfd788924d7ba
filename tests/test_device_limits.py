"""Caps and memory exhaustion on the real MicroPython device: long-running operations beyond `max_ops` are refused
with RESOURCE_EXHAUSTED, pending reports stay within `max_reports`, and a board whose heap runs out keeps serving
and announcing (docs/protocol.md "Long-running operations", "Reports", "Memory")."""
import cbor2
import pytest
from ndn.encoding import parse_interest

from ndn_edge.wire import packets as wire
from tests.support import Board, is_data_for, mp_features, report_of, wait_until

DEFAULT_MAX_OPS = 4  # Device(max_ops=...), docs/operations.md


@pytest.fixture
def board(micropython, peer, tmp_path):
    b = Board(micropython, peer.port, tmp_path / "flash")
    b.start(peer)
    yield b
    b.stop()


def send_call(board, peer, service, args=None):
    """Send a signed invocation without waiting; its final name."""
    board.seq += 1
    w, final = wire.make_call(f"{board.name}/{service}", args, board.key, board.seq, signer_owner=board.name)
    peer.send(w)
    return final


def collect(board, peer, finals, timeout_s):
    """Replies to the invocations named in `finals` that arrive within `timeout_s`: {index in finals: Reply}."""
    got = {}
    checks = [is_data_for(final) for final in finals]

    def one(data):
        for i, check in enumerate(checks):
            if i not in got and check(data):
                got[i] = wire.parse_reply(data, board.key)
                return len(got) == len(finals)
        return False
    peer.recv_until(one, timeout_s)
    return got


def test_starts_beyond_max_ops_are_refused_and_the_running_ones_complete(board, peer):
    started = [board.call(peer, "work", {"steps": 2, "step_ms": 500}).value["op"] for _ in range(DEFAULT_MAX_OPS)]
    assert len(set(started)) == DEFAULT_MAX_OPS
    for _ in range(3):
        r = board.call(peer, "work", {"steps": 2, "step_ms": 500})
        assert not r.ok and r.code == "RESOURCE_EXHAUSTED" and "max_ops" in r.message, r
    h = board.call(peer, "_health").value
    assert (h["ops_running"], h["ops_refused"]) == (DEFAULT_MAX_OPS, 3)
    # every started operation reports its result; no other operation ever reports (the refused ones never ran)
    done = {}

    def final(data):
        got = report_of(board, "_op")(data)
        if got is None:
            return False
        name, params, _ = got
        assert params["op"] in started, f"a report for an operation that was refused: {params}"
        if params["state"] != "running":
            done[params["op"]] = params
            peer.send(wire.make_ack(name, board.key, board.name))
        return len(done) == DEFAULT_MAX_OPS
    assert peer.recv_until(final, 10.0), f"final reports: {done}"
    assert all(p["state"] == "done" and p["result"] == {"steps": 2} for p in done.values())
    # finished operations free their place
    assert board.call(peer, "work", {"steps": 1, "step_ms": 10}).ok
    assert board.call(peer, "_health").value["ops_refused"] == 3


CONFIG = """
import json
from device import Device
with open("ndn_config.json", "w") as f:
    json.dump({"name": "/edge/lab/c1", "key": "%s", "max_ops": 1, "max_reports": 3}, f)
dev = Device.from_config(state_dir=".")
for i in range(5):
    dev.publish("t", i)  # the face is not open: queued, not sent
ob = dev._outbox
print(dev.max_ops, dev.max_reports, len(ob.items), ob.dropped)
"""


def test_caps_come_from_the_config_file_and_the_outbox_drops_its_oldest_report(run_mp):
    out = run_mp(CONFIG % bytes(range(32)).hex()).split()
    assert out == ["1", "3", "3", "2"]


def _alive(board) -> None:
    if not board.alive():
        raise AssertionError(f"the board died ({board.proc.returncode}): {board.proc.communicate(timeout=5)}")


def _heap_leaving(micropython, peer, tmp_path, free_kib: int) -> str:
    # A heap that leaves the board app free_kib KiB once it serves (_health's mem_free is measured after a
    # collection), whatever the interpreter carries: the runtime as .mpy (its code in the heap) or frozen in, on 64
    # or 32 bits.
    probe = Board(micropython, peer.port, tmp_path / "probe", heap="256K")
    probe.start(peer)
    try:
        free = probe.call(peer, "_health").value["mem_free"]
    finally:
        probe.stop()
    return f"{256 - free // 1024 + free_kib}K"


def test_a_board_out_of_memory_keeps_serving_and_announcing(micropython, peer, tmp_path):
    # The heap leaves this app 24 KiB free once it serves on 64 bits (as `ndn-edge sim`'s 96 KiB did with the
    # runtime as .mpy), 16 KiB on 32 bits (objects are half the size there; the packets of pending reports are
    # not). Coroutine calls that take 1.5 s are not capped; a few dozen in flight fill the heap, so the storm below
    # runs the device out of memory wherever it happens to allocate: receiving, answering, starting an operation,
    # renewing its announcement.
    free_kib = 24 if mp_features(micropython)["bits"] == 64 else 16
    b = Board(micropython, peer.port, tmp_path / "flash", heap=_heap_leaving(micropython, peer, tmp_path, free_kib),
              lease_ms=1500)
    b.start(peer)
    try:
        answered = 0
        for _ in range(8):
            finals = [send_call(b, peer, "work", {"steps": 1, "step_ms": 1500}) for _ in range(2)]
            finals += [send_call(b, peer, "slow", {"ms": 1500}) for _ in range(12)]
            finals += [send_call(b, peer, "counter") for _ in range(3)]
            answered += len(collect(b, peer, finals, 0.3))
            _alive(b)
        assert answered > 0
        # after the storm it answers calls
        reply = None
        for _ in range(15):
            reply = b.call(peer, "temperature", timeout_s=1.0)
            if reply is not None:
                break
        if reply is None:
            b.proc.kill()
            raise AssertionError(f"no answer after the storm: {b.proc.communicate(timeout=5)}")
        assert reply.value == 21.5
        # it still renews its announcement (every lease/3, about 0.5 s; a renewal that finds no memory is tried
        # again every 0.5 s until the storm's coroutines have ended and freed it)
        renewal = peer.recv_until(b._my_announcement(), 6.0)
        if renewal is None:
            b.proc.kill()
            raise AssertionError(f"no announcement after the storm: {b.proc.communicate(timeout=5)}")
        assert cbor2.loads(bytes(parse_interest(renewal, with_tl=True)[2]))["state"] == "up"
        # its health counts the MemoryErrors it survived (answered RESOURCE_EXHAUSTED while memory is still short:
        # the management plane is loaded for it)

        def health():
            r = b.call(peer, "_health", timeout_s=0.5)
            return r.value if r is not None and r.ok else None
        assert wait_until(health, 10.0, 0.1, "_health")["oom"] > 0
        # no operation is left holding its place: out of memory or not, each one ends
        wait_until(lambda: (health() or {}).get("ops_running") == 0, 10.0, 0.1, "every operation to end")
        assert b.call(peer, "counter").ok and b.call(peer, "work", {"steps": 1, "step_ms": 10}).ok
        assert b.alive()
    finally:
        code = b.stop()
    assert code == 0, "the board did not exit cleanly on Ctrl-C"


def test_a_plain_board_survives_memory_errors_in_its_poll_loop(micropython, peer, tmp_path):
    # Served without asyncio (tests/apps/oom.py). Injected: the serving loop's first poller runs out of memory (it
    # is made again, not left half-made); a handler's MemoryError whose error answer runs out of memory too, as
    # does every send (announcement renewals, replies) until an app timer frees the heap 0.3 s later; then an app
    # timer's own MemoryError.
    from tests.support import ROOT
    b = Board(micropython, peer.port, tmp_path / "flash", heap="96K", lease_ms=600,
              app=ROOT / "tests" / "apps" / "oom.py")
    b.start(peer)
    try:
        assert b.call(peer, "oom", {"ms": 300}, timeout_s=0.5) is None  # its answer failed
        assert b.alive()
        reply = None
        for _ in range(10):  # answered once the timer has run (renewals fail meanwhile, every 0.2 s)
            reply = b.call(peer, "temperature", timeout_s=0.5)
            if reply is not None:
                break
        assert reply is not None and reply.value == 21.5
        assert b.call(peer, "oom_timer").value is True

        def ticked():
            r = b.call(peer, "ticked", timeout_s=0.5)
            return r is not None and r.value > 2
        wait_until(ticked, 5.0, 0.05, "the timer to run again after its MemoryError")
        renewal = peer.recv_until(b._my_announcement(), 3.0)
        assert renewal is not None, "no announcement after the injected MemoryErrors"
        health = b.call(peer, "_health").value
        assert health["oom"] >= 5 and health["errors"] == 1, health  # the handler's error answer counts as an error
        assert b.alive()
    finally:
        code = b.stop()
    assert code == 0, "the board did not exit cleanly on Ctrl-C"


FAILED_IMPORT = """
import gc, sys, micropython
import device
from device import runtime
NAME = "device.report"
report = None
broken = unbound = loaded = 0


def use_report():
    from device import report
    return report.announce


for attempt in range(3):
    from device import report  # its names interned and a free slot in sys.modules: importing it again after
    runtime.release()          # release() allocates the module object first
    report = None
    gc.collect()
    micropython.heap_lock()  # every allocation fails, as on a full heap
    try:
        __import__(NAME)  # (`from device import report` first allocates the dotted name, then the module)
    except MemoryError:
        pass
    micropython.heap_unlock()
    if NAME in sys.modules and sys.modules.get(NAME) is None:
        broken += 1  # MicroPython's own state after such a failure: the name mapped to nothing
        try:
            use_report()
        except NameError:  # what every later import of it in a function gives (at module level: a crash)
            unbound += 1
    runtime._forget_failed_imports()  # what Device._oom does
    loaded += use_report() is not None
    runtime.release()
print(broken, unbound, loaded)
"""


def test_an_import_that_runs_out_of_memory_is_loaded_again_later(run_mp):
    # MicroPython (py/objmodule.c) enters a module in sys.modules before allocating it: an import that fails right
    # there leaves the name mapped to nothing, and every later import of it binds nothing. A board whose
    # announcement renewal failed so never announced again (a NameError each second, seen in CI). The device
    # forgets such entries whenever it survives a MemoryError (Device._oom); then the import works again.
    assert run_mp(FAILED_IMPORT, heap="128K").split() == ["3", "3", "3"]


RELEASE = """
import sys
from device import runtime
from device import report
runtime.release()
alone = "device.report" in sys.modules  # no module uses it: dropped
from device import outbox
runtime.release()
from device import report
print(alone, report is outbox.report)
"""


def test_release_drops_the_report_module_unless_a_loaded_module_uses_it(run_mp):
    # outbox.py keeps report.py alive through its own import: dropping it from sys.modules freed nothing, and every
    # announcement loaded a second copy of it (1.5 KB on 32 bits) beside the first.
    assert run_mp(RELEASE).split() == ["False", "True"]
