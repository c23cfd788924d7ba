"""Notifications, long-running operations, publications and sleep on the real MicroPython device,
with this test playing the gateway: it parses and verifies the device's reports and acknowledges them."""
import socket
import time

import cbor2
import pytest
from ndn.encoding import parse_interest

from ndn_edge.wire import packets as wire
from tests.support import ROOT, Board, is_announcement, is_data_for, report_of, send_unicast


@pytest.fixture
def board(micropython, peer, tmp_path):
    b = Board(micropython, peer.port, tmp_path / "flash")
    b.start(peer)
    yield b
    b.stop()


def test_notification_runs_the_handler_and_sends_nothing(board, peer):
    board.seq += 1
    w, final = wire.make_call(f"{board.name}/_n/note", {"x": 1}, board.key, board.seq, signer_owner=board.name)
    peer.send(w)
    from tests.support import is_data_for
    assert peer.recv_until(is_data_for(final), 0.5) is None
    assert board.call(peer, "notes").value == [{"x": 1}]
    peer.send(w)  # the same notification again is a replay: not run twice
    assert board.call(peer, "notes").value == [{"x": 1}]


def test_long_running_operation_reports_progress_and_result_until_acknowledged(board, peer):
    r = board.call(peer, "work", {"steps": 3, "step_ms": 30})
    op = r.value["op"]
    assert len(op) == 8
    progress, final = [], None
    for _ in range(20):
        got = peer.recv_until(report_of(board, "_op"), 3.0)
        assert got is not None
        name, params, _ = got
        assert params["op"] == op
        if params["state"] == "running":
            progress.append(params["progress"])
        else:
            final = (name, params)
            break
    assert progress == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert final[1]["state"] == "done" and final[1]["result"] == {"steps": 3}
    # not acknowledged yet: the same report comes again
    again = peer.recv_until(report_of(board, "_op"), 2.0)
    assert again is not None and again[0] == final[0]
    peer.send(wire.make_ack(final[0], board.key, board.name))
    assert board.call(peer, "_op_get", {"op": op}).value == {"op": op, "state": "done", "progress": 1.0,
                                                             "result": {"steps": 3}}
    h = board.call(peer, "_health").value
    assert h["reports_pending"] == 0


def test_long_running_operation_can_be_cancelled(board, peer):
    op = board.call(peer, "work", {"steps": 100, "step_ms": 50}).value["op"]
    assert board.call(peer, "_op_cancel", {"op": op}).value == {"op": op, "state": "cancelling"}
    final = peer.recv_until(lambda d: (lambda g: g if g and g[1]["state"] != "running" else None)(
        report_of(board, "_op")(d)), 3.0)
    assert final is not None and final[1]["state"] == "cancelled"
    assert board.call(peer, "_op_cancel", {"op": "00000000"}).code == "NOT_FOUND"


def test_publications_are_sequenced_and_resent_until_acknowledged(board, peer):
    assert board.call(peer, "ticks").value is True
    seen = {}
    for _ in range(60):
        got = peer.recv_until(report_of(board, "_pub"), 3.0)
        assert got is not None
        name, params, _ = got
        assert params["topic"] == "tick" and params["retain"] is True and len(params["boot"]) == 8
        if params["seq"] in seen:
            assert seen[params["seq"]] == name  # a resend is the same report
            break
        seen[params["seq"]] = name
    seqs = sorted(seen)
    assert seqs == list(range(1, len(seqs) + 1))
    assert board.call(peer, "ticks", {"on": False}).value is False
    for name in seen.values():
        peer.send(wire.make_ack(name, board.key, board.name))
    # everything acknowledged (the last few ticks may still be in flight): drain and ack until empty
    for _ in range(50):
        pending = board.call(peer, "_health").value["reports_pending"]
        if pending == 0:
            break
        got = peer.recv_until(report_of(board, "_pub"), 1.0)
        if got:
            peer.send(wire.make_ack(got[0], board.key, board.name))
    assert pending == 0


@pytest.mark.parametrize("app", ["board.py", "lean.py"])
def test_sleep_announces_and_wakes(micropython, peer, tmp_path, app):
    # board.py serves through asyncio, lean.py (plain handlers only) from the poll loop: both serve the
    # sockets the face opens again after the sleep, the group's and the unicast one
    board = Board(micropython, peer.port, tmp_path / "flash", app=ROOT / "tests" / "apps" / app)
    board.start(peer)
    try:
        _sleep_announces_and_wakes(board, peer)
    finally:
        board.stop()


def _sleep_announces_and_wakes(board, peer):
    assert board.call(peer, "nap", {"ms": 300}).value == 300
    sleep = peer.recv_until(lambda d: is_announcement()(d) and cbor2.loads(
        bytes(parse_interest(d, with_tl=True)[2])).get("state") == "sleep" and d, 3.0)
    assert sleep is not None
    assert cbor2.loads(bytes(parse_interest(sleep, with_tl=True)[2]))["sleep_ms"] == 300
    up = peer.recv_until(lambda d: is_announcement()(d) and cbor2.loads(
        bytes(parse_interest(d, with_tl=True)[2])).get("state") == "up" and d, 3.0)
    assert up is not None
    assert board.call(peer, "temperature").value == 21.5
    # and by unicast to its address and port (the reply goes to the group, where this test listens)
    board.seq += 1
    w, final = wire.make_call(f"{board.name}/temperature", None, board.key, board.seq, signer_owner=board.name)
    send_unicast(w, board.port)
    got = peer.recv_until(is_data_for(final), 3.0)
    assert got is not None and wire.parse_reply(got, board.key).value == 21.5


def _report_from(sock: socket.socket, check, timeout_s: float):
    """The next datagram on `sock` that `check` accepts: (its value, the sender's address), or None."""
    deadline = time.monotonic() + timeout_s
    while True:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            data, addr = sock.recvfrom(65536)
        except TimeoutError:
            return None
        value = check(data)
        if value:
            return value, addr
        if time.monotonic() > deadline:
            return None


def test_reports_go_to_the_gateway_that_acknowledged_one_and_follow_another_that_answers_a_resend(board, peer):
    """device/outbox.py: reports leave from a socket of their own. Until an acknowledgement came back to it they
    go to the group; then new reports go to where it came from (here a stand-in gateway's unicast socket), and
    only resends to the group. When another gateway acknowledges a resend (the first one went silent), new
    reports follow it. The gateway's hand parser reads what the device sends as python-ndn does."""
    gw1 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    gw2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for s in (gw1, gw2):
        s.bind(("127.0.0.1", 0))
    mine = report_of(board, "_pub")

    def newer_than(seq):
        return lambda d: (lambda g: g if g and g[1]["seq"] > seq else None)(mine(d))
    try:
        assert board.call(peer, "ticks").value is True
        got = _report_from(peer.sock, mine, 3.0)
        assert got is not None
        (first, params, data), source = got
        assert source[1] != peer.port  # not from the group's socket
        req = wire.parse_signed_interest(data)
        _, _, app, sig = parse_interest(data, with_tl=True)
        assert req is not None and req.seq == sig.signature_info.signature_seq_num and not req.fault(board.key)
        assert cbor2.loads(req.params) == cbor2.loads(bytes(app)) == params
        gw1.sendto(wire.make_ack(first, board.key, board.name), source)
        # the next new report comes straight to the gateway that acknowledged
        got = _report_from(gw1, newer_than(params["seq"]), 3.0)
        assert got is not None and got[1] == source
        (silent, silent_params, _), _ = got
        # gw1 goes silent: that report is resent to the group, and another gateway acknowledges the resend
        got = _report_from(peer.sock, lambda d: (lambda g: g if g and g[0] == silent else None)(mine(d)), 3.0)
        assert got is not None and got[1] == source
        gw2.sendto(wire.make_ack(silent, board.key, board.name), source)
        got = _report_from(gw2, newer_than(silent_params["seq"]), 3.0)
        assert got is not None, "new reports did not follow the gateway that answered"
        assert board.call(peer, "ticks", {"on": False}).value is False
    finally:
        gw1.close()
        gw2.close()


ACKS_BACK_TO_BACK = """
import socket
from device import Device, tlv
from device.derive import hmac

KEY = bytes(range(32))
dev = Device("/edge/t/1", KEY, iface="127.0.0.1", port=%(port)d, state_dir=".")
dev.setup()
dev._face.open()
gw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
gw_addr = socket.getaddrinfo("127.0.0.1", %(gw_port)d)[0][-1]
gw.bind(gw_addr)
gw.settimeout(5)
mac = hmac(KEY)
def sign(data):
    h = mac.start()
    h.update(data)
    return mac.finish(h)
content = b"\\x15\\x05\\xa1\\x62ok\\xf5"
ob = dev._reports()
ob._open()
ob.gw = gw_addr
for i in range(3):
    dev.publish("t", i)
acks = []
for _ in range(3):  # the stand-in gateway reads the three reports, then acknowledges them in one datagram
    data, addr = gw.recvfrom(1500)
    p = tlv.Packet()
    p.parse(memoryview(data), 0, len(data))
    signed = bytes(data[p.name_s - 2:p.name_e]) + content + dev._sig_info
    body = signed + b"\\x17\\x20" + sign(signed)
    acks.append(bytes([6, len(body)]) + body)
gw.sendto(b"".join(acks), addr)
for _ in range(1000):  # until that one datagram is read (bounded)
    if dev._acks(ob) is None and len(ob.items) < 3:
        break
print(len(ob.items), ob.acked)
"""


def test_acknowledgements_back_to_back_in_one_datagram_are_all_taken(run_mp, mcast_port):
    # docs/protocol.md "Reports": a gateway sends a batch's acknowledgements for one report socket back to back in
    # one datagram; the device reads it once and takes every packet in it.
    from tests.support import free_udp_port

    out = run_mp(ACKS_BACK_TO_BACK % {"port": mcast_port, "gw_port": free_udp_port()}).split()
    assert out == ["0", "3"]
