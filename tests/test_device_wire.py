"""The board runtime on the real MicroPython unix port, over real multicast on loopback,
checked by independent code: python-ndn builds the Interests and verifies the Data, cbor2 decodes."""
import hashlib

import cbor2
import pytest
from ndn.encoding import Name, parse_interest
from ndn.encoding.ndnlp_v2 import parse_lp_packet_v2

from ndn_edge.wire import packets as wire
from tests.support import Board, is_announcement, is_data_for, lp_wrap, mp_features


@pytest.fixture
def board(micropython, peer, tmp_path):
    b = Board(micropython, peer.port, tmp_path / "flash")
    b.boot_announcement = b.start(peer)
    yield b
    b.stop()


def health(board, peer, seq=None):
    r = board.call(peer, "_health", seq=seq)
    assert r is not None and r.ok
    return r.value


def test_services_answer_signed_interests_from_python_ndn(board, peer):
    r = board.call(peer, "temperature")
    assert (r.ok, r.value, r.freshness_ms) == (True, 21.5, 2000)
    assert board.call(peer, "echo", {"a": 1, "s": "x", "b": b"\x00\xff", "l": [1.5, None, True]}).value == \
        {"a": 1, "s": "x", "b": b"\x00\xff", "l": [1.5, None, True]}
    assert board.call(peer, "add", {"a": 2, "b": 40}).value == 42
    assert board.call(peer, "slow", {"ms": 30}).value == 30  # coroutine handler
    secret = board.call(peer, "secret", {"x": 7}, private=True)
    if mp_features(board.interpreter)["cryptolib"]:
        assert secret.value == {"x": 7, "code": 1234}
    else:  # a unix port built without an SSL library (CI's 32-bit builds) has no AES: said, not silent
        assert (secret.ok, secret.code) == (False, "UNAVAILABLE") and "cryptolib" in secret.message


@pytest.mark.parametrize("service,args,code,fragment", [
    ("fail", None, "INTERNAL", "boom"),
    ("nope", None, "NOT_FOUND", "nope"),
    ("add", {"c": 1}, "INVALID_ARGUMENT", "'c'"),
    ("add", {"a": 1}, "INVALID_ARGUMENT", ""),
    ("refuse", None, "PERMISSION_DENIED", "not today"),
])
def test_errors_are_nacks_with_codes(board, peer, service, args, code, fragment):
    r = board.call(peer, service, args)
    assert r is not None and not r.ok
    assert r.code == code and fragment in r.message
    assert board.call(peer, "temperature").value == 21.5  # keeps serving


def test_reply_data_is_parsed_and_verified_by_python_ndn(board, peer):
    w, final = wire.make_call(f"{board.name}/temperature", None, board.key, 1, signer_owner=board.name)
    peer.send(w)
    got = peer.recv_until(is_data_for(final))
    name, meta, content = wire.verify_data(got, board.key)
    assert name == final and meta.freshness_period == 2000 and cbor2.loads(content) == 21.5
    tampered = bytearray(got)
    tampered[-1] ^= 1
    with pytest.raises(wire.BadPacket):
        wire.verify_data(bytes(tampered), board.key)


def test_lp_packet_with_pit_token_is_answered_with_the_token(board, peer):
    token = bytes.fromhex("0102030405060708")
    w, final = wire.make_call(f"{board.name}/temperature", None, board.key, 1, signer_owner=board.name)
    peer.send(lp_wrap(token, w))
    got = peer.recv_until(is_data_for(final))
    assert got is not None and got[0] == 0x64
    lp = parse_lp_packet_v2(got, with_tl=True)
    assert bytes(lp.pit_token) == token
    assert wire.parse_reply(bytes(lp.fragment), board.key).value == 21.5


def test_idle_lp_packet_is_ignored_not_counted(board, peer):
    peer.send(bytes([0x64, 0x00]))
    assert board.call(peer, "temperature").value == 21.5
    assert health(board, peer)["drops"]["malformed"] == 0


def test_wrong_key_is_never_executed(board, peer):
    other = bytes(32)
    assert board.call(peer, "counter", key=other, timeout_s=0.5) is None
    # forged: the device's key name, but signed with another key
    w, final = wire.make_call(f"{board.name}/counter", None, other, 5, signer_owner=board.name)
    w = w.replace(wire.key_id(other).encode(), wire.key_id(board.key).encode())
    peer.send(w)
    assert peer.recv_until(is_data_for(final), 0.5) is None
    assert board.call(peer, "calls").value == 0
    drops = health(board, peer)["drops"]
    assert drops["key"] == 1 and drops["signature"] + drops["digest"] == 1


def test_tampered_parameters_are_dropped(board, peer):
    w, final = wire.make_call(f"{board.name}/echo", {"v": 1}, board.key, 1, signer_owner=board.name)
    at = w.index(cbor2.dumps({"v": 1}))
    bad = bytearray(w)
    bad[at + len(cbor2.dumps({"v": 1})) - 1] = 2  # {"v": 2}
    peer.send(bytes(bad))
    assert peer.recv_until(is_data_for(final), 0.5) is None
    assert health(board, peer)["drops"]["digest"] == 1


def test_replayed_seq_with_new_parameters_is_dropped(board, peer):
    assert board.call(peer, "counter", seq=10).value == 1
    assert board.call(peer, "echo", {"again": 1}, seq=10, timeout_s=0.5) is None
    assert board.call(peer, "counter", seq=9, timeout_s=0.5).value == 2  # reordered but unseen: accepted
    assert board.call(peer, "counter", seq=9, timeout_s=0.5) is None  # new signature, same number
    assert board.call(peer, "calls", seq=11).value == 2
    assert health(board, peer)["drops"]["replay"] == 2


def test_retransmission_gets_cached_reply_and_runs_once(board, peer):
    w, final = wire.make_call(f"{board.name}/counter", None, board.key, 3, signer_owner=board.name)
    replies = []
    for _ in range(3):
        peer.send(w)
        replies.append(peer.recv_until(is_data_for(final)))
    assert replies[0] is not None and replies[0] == replies[1] == replies[2]
    assert wire.parse_reply(replies[0], board.key).value == 1
    assert board.call(peer, "calls", seq=4).value == 1


def test_an_idempotent_calls_retransmission_runs_again_in_its_own_slot_of_the_reply_cache(board, peer):
    # An idempotent service's reply is not kept (docs/protocol.md "Replay protection"): its retransmission runs the
    # handler again, answered in the slot its first run took, so the replies kept for the others stay.
    def send(service, seq, args=None):
        w, final = wire.make_call(f"{board.name}/{service}", args, board.key, seq, signer_owner=board.name)
        peer.send(w)
        got = peer.recv_until(is_data_for(final), 2.0)
        return w, final, got and wire.parse_reply(got, board.key).value

    counter, counter_name, first = send("counter", 10)  # slot 0
    note, note_name, _ = send("note", 11, {"n": 1})  # slot 1: `note` is idempotent (the default)
    for seq in range(12, 18):  # slots 2..7: the cache (8 replies) is full
        send("counter", seq)
    peer.send(note)  # retransmitted: runs again, answered again
    assert peer.recv_until(is_data_for(note_name), 2.0) is not None
    # a second run that took a new slot would have pushed out counter 10's reply (the oldest): it is still there
    peer.send(counter)
    again = peer.recv_until(is_data_for(counter_name), 2.0)
    assert again is not None and wire.parse_reply(again, board.key).value == first == 1
    assert board.call(peer, "notes", seq=18).value == [{"n": 1}, {"n": 1}]  # it did run twice
    assert health(board, peer, seq=19)["drops"]["replay"] == 0


def test_seq_below_leased_mark_after_restart_is_dropped(micropython, peer, tmp_path):
    b = Board(micropython, peer.port, tmp_path / "flash")
    b.start(peer)
    for seq in (1, 2, 3):
        assert b.call(peer, "counter", seq=seq).value == seq
    b.stop()
    ann = b.start(peer)  # same key and flash: a reboot
    try:
        _, _, params, _ = parse_interest(ann, with_tl=True)
        floor = cbor2.loads(bytes(params))["rx_floor"]
        assert floor > 3 + 1  # the lease moved the mark ahead of what was used
        assert b.call(peer, "counter", seq=4, timeout_s=0.5) is None  # unused but below the mark
        assert b.call(peer, "counter", seq=floor - 1, timeout_s=0.5) is None
        assert b.call(peer, "counter", seq=floor).value == 1  # fresh process, fresh counter
        assert health(b, peer, seq=floor + 1)["drops"]["replay"] == 2
    finally:
        b.stop()


def test_announcements_join_query_renew_leave(micropython, peer, tmp_path):
    b = Board(micropython, peer.port, tmp_path / "flash", lease_ms=600)
    ann = b.start(peer)
    try:
        name, _, params, sig = parse_interest(ann, with_tl=True)
        assert Name.to_str(name[:3]) == "/edge/_sd/ann"
        info = cbor2.loads(bytes(params))
        assert info["state"] == "up" and info["lease_ms"] == 600
        # signed by the device key (python-ndn's signature pointers, checked with hmac)
        import hmac
        mac = hmac.new(b.key, digestmod=hashlib.sha256)
        for part in sig.signature_covered_part:
            mac.update(part)
        assert mac.digest() == bytes(sig.signature_value_buf)
        desc = b.call(peer, "_desc")
        content = cbor2.dumps(desc.value)  # device and cbor2 encode maps the same way
        assert [s["name"] for s in desc.value["services"]] == sorted(s["name"] for s in desc.value["services"])
        assert info["desc"] == hashlib.sha256(content).digest()[:8].hex()
        # only what differs from the defaults (docs/protocol.md "Service descriptions"), so 14 services fit
        by_name = {s["name"]: s for s in desc.value["services"]}
        assert by_name["calls"] == {"name": "calls"}
        assert by_name["counter"] == {"name": "counter", "doc": "Increments and returns a counter", "idempotent": False}
        assert by_name["secret"] == {"name": "secret", "private": True}
        assert by_name["work"] == {"name": "work", "args": {"steps": "int", "step_ms": "int"}, "long_running": True}
        assert len(content) < 700, len(content)
        # renewals (lease/3 plus jitter)
        seqs = [sig.signature_info.signature_seq_num]
        for _ in range(2):
            nxt = peer.recv_until(is_announcement(), 2.0)
            assert nxt is not None
            seqs.append(parse_interest(nxt, with_tl=True)[3].signature_info.signature_seq_num)
        assert seqs == sorted(seqs) and len(set(seqs)) == 3
        # active query
        from ndn.encoding import InterestParam, make_interest
        peer.send(bytes(make_interest("/edge/_sd/query", InterestParam(lifetime=1000))))
        assert peer.recv_until(is_announcement(), 2.0) is not None
    finally:
        b.proc.send_signal(2)
        leave = peer.recv_until(lambda d: is_announcement()(d) and
                                cbor2.loads(bytes(parse_interest(d, with_tl=True)[2]))["state"] == "leave", 5.0)
        b.stop()
    assert leave is not None


def malformed_corpus(board):
    """Datagrams a hostile or broken peer might send; none may be executed or stop the device."""
    good, _ = wire.make_call(f"{board.name}/counter", None, board.key, 900, signer_owner=board.name)
    corpus = [b"", b"\x05", b"\x05\x00", b"\x06\x00", b"\xff" * 9, b"\x05\xfd\xff\xff", b"\x64\x05\x50\x03\x05\x01",
              bytes(range(256)), b"\x05" + bytes([len(good) - 2]) + good[2:],  # wrong outer length
              good[:-1], good[:len(good) // 2], good + b"\x00",
              bytes([0x05, 0x03, 0x07, 0x01, 0x08]), bytes(1400), b"\x64\x04\x6f\x02\x00\x00"]
    flipped = bytearray(good)
    flipped[len(good) // 3] ^= 0xFF
    corpus.append(bytes(flipped))
    return corpus


def test_malformed_corpus_is_dropped_and_device_keeps_serving(board, peer):
    corpus = malformed_corpus(board)
    for i, datagram in enumerate(corpus):
        peer.send(datagram)
        # Answered after every hostile datagram; nothing in the corpus ran `counter`. A valid Interest
        # queued right behind a malformed one in the same socket read is lost with it (the read loses
        # its framing), so the caller retries, as the gateway does.
        replies = (board.call(peer, "calls", seq=1000 + 3 * i + k, timeout_s=1.0) for k in range(3))
        assert next(r for r in replies if r is not None).value == 0
    h = health(board, peer, seq=2000)
    drops = h["drops"]
    # b"" and the empty Data are not for the device and pass quietly; the rest are counted
    assert drops["malformed"] + drops["oversized"] + drops["digest"] >= len(corpus) - 3
    assert board.alive()


def test_invalid_cbor_arguments_are_invalid_argument(board, peer):
    from ndn.encoding import InterestParam, make_interest
    signer = wire.SeqSigner(wire.key_name(board.name, board.key), board.key, 50)
    w, final = make_interest(f"{board.name}/echo", InterestParam(lifetime=1000), b"\xa1\x61", signer=signer,
                             need_final_name=True)
    peer.send(bytes(w))
    got = peer.recv_until(is_data_for(final))
    r = wire.parse_reply(got, board.key)
    assert not r.ok and r.code == "INVALID_ARGUMENT"
    assert board.call(peer, "echo", {"ok": True}, seq=51).value == {"ok": True}


def test_board_app_runs_unchanged_on_cpython(peer, tmp_path):
    import sys
    b = Board(sys.executable, peer.port, tmp_path / "flash")
    b.start(peer)
    try:
        assert b.call(peer, "temperature").value == 21.5
        assert b.call(peer, "slow", {"ms": 5}).value == 5
        assert b.call(peer, "secret", {"x": 1}, private=True).value == {"x": 1, "code": 1234}
        assert b.call(peer, "counter", seq=b.seq, timeout_s=0.5) is None  # replay refused on CPython too
    finally:
        b.stop()


def test_plain_services_are_served_without_asyncio_in_a_small_heap(micropython, peer, tmp_path):
    from tests.support import ROOT
    b = Board(micropython, peer.port, tmp_path / "flash", heap="72K", app=ROOT / "tests" / "apps" / "lean.py")
    b.start(peer)
    try:
        for i in range(1, 201):
            assert b.call(peer, "counter").value == i
        loaded = b.call(peer, "modules").value
        assert "asyncio" not in loaded and "device.control" not in loaded and "device.aio" not in loaded
        assert b.call(peer, "_health").value["requests"] == 202
        assert b.alive()
    finally:
        b.stop()


class _FakeSocketModule:
    """A port's `socket` module as device/net.py sees it: records every setsockopt; like MicroPython's lwIP
    sockets (ESP32, RP2) it knows only SO_REUSEADDR and IP_ADD_MEMBERSHIP unless given more constants."""

    AF_INET, SOCK_DGRAM, SOL_SOCKET, IPPROTO_IP = 2, 2, 1, 0

    def __init__(self, reuse: int, **constants: int) -> None:
        self.SO_REUSEADDR = reuse
        self.calls: list[tuple] = []
        self.bound: list[tuple] = []
        for name, value in constants.items():
            setattr(self, name, value)

    def getaddrinfo(self, host, port):
        return [(2, 2, 0, "", (host, port))]

    def socket(self, af, kind):
        module = self

        class Sock:
            def setsockopt(self, level, opt, value):
                module.calls.append((level, opt, value))

            def bind(self, addr):
                if module.IP_ADD_MEMBERSHIP == 3 and addr[0] != "0.0.0.0":
                    raise OSError(22, "lwIP binds the wildcard address only")
                module.bound.append(addr)

            def close(self):
                pass

            def setblocking(self, flag):
                pass

            def readinto(self, buf):
                return 0

            recv_into = readinto  # the name CPython's sockets have
        return Sock()


@pytest.mark.parametrize("constants, expected", [
    # lwIP as MicroPython ships it: only the membership is set (the others would print a warning and do nothing)
    ({"IP_ADD_MEMBERSHIP": 3}, [(3, "join")]),
    # an lwIP port that exports the multicast options gets them set
    ({"IP_ADD_MEMBERSHIP": 3, "IP_MULTICAST_TTL": 5, "IP_MULTICAST_IF": 6, "IP_MULTICAST_LOOP": 7},
     [(3, "join"), (6, "iface"), (5, 1), (7, 1)]),
    # the unix port exports only IP_ADD_MEMBERSHIP: Linux numbers for the rest
    ({"IP_ADD_MEMBERSHIP": 35}, [(35, "join"), (32, "iface"), (33, 1), (34, 1)]),
])
def test_the_face_sets_only_the_multicast_options_a_port_implements(monkeypatch, constants, expected):
    from device import net, netopen
    fake = _FakeSocketModule(4, **constants)
    monkeypatch.setattr(netopen, "socket", fake)
    face = net.MulticastFace("127.0.0.1", "224.0.23.170", 56363, bytearray(1500))
    face.open()  # on the fake module: nothing is sent or bound
    values = {"join": bytes([224, 0, 23, 170, 127, 0, 0, 1]), "iface": bytes([127, 0, 0, 1])}
    group_options = [(1, 4, 1)] + [(0, opt, values.get(v, v)) for opt, v in expected]
    if constants["IP_ADD_MEMBERSHIP"] == 3:
        # lwIP: one socket on the wildcard address receives the group and unicast alike
        assert fake.calls == group_options and fake.bound == [("0.0.0.0", 56363)] and face.usock is None
    else:
        # Linux: the group socket bound to the group; unicast on a second socket, bound to the interface
        assert fake.calls == [*group_options, (1, 4, 1)]
        assert fake.bound == [("224.0.23.170", 56363), ("127.0.0.1", 56363)] and face.usock is not None


def test_argument_names_cannot_fill_the_heap(micropython, peer, tmp_path):
    """MicroPython interns every keyword name passed with ** for good: a caller sending new names to a service
    without declared arguments grew the device's heap by about 20 bytes a call. At most 32 distinct names are
    taken (then INVALID_ARGUMENT), and a service that declares no arguments (args={}) refuses any."""
    from tests.support import ROOT
    b = Board(micropython, peer.port, tmp_path / "flash", heap="128K", app=ROOT / "tests" / "apps" / "names.py")
    b.start(peer)
    try:
        refused = b.call(peer, "none", {"x": 1})
        assert (refused.ok, refused.code) == (False, "INVALID_ARGUMENT") and "'x'" in refused.message
        for i in range(32):
            assert b.call(peer, "free", {f"name{i}": i}).value == 1
        heap = []
        for i in range(32, 432):
            r = b.call(peer, "free", {f"name{i}": i})
            assert (r.ok, r.code) == (False, "INVALID_ARGUMENT") and "declare args" in r.message
            if i % 200 == 31:  # after 200 and 400 new names, the reply cache full of refusals both times
                heap.append(b.call(peer, "heap").value)
        assert b.call(peer, "free", {"name0": 0, "name31": 31}).value == 2  # the names taken stay usable
        assert heap[0] - heap[1] < 128, f"200 more new names took {heap[0] - heap[1]} bytes"
    finally:
        b.stop()
