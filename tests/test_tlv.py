"""Byte-exact and fuzz tests of the board's TLV layer (device/tlv.py), on CPython and MicroPython."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ndn.encoding import Name, parse_data
from ndn.encoding.ndnlp_v2 import parse_lp_packet_v2

from device import derive, sign, tlv
from device.errors import MalformedError
from ndn_edge.wire import packets as wire
from ndn_edge.wire.tlv import T
from tests.support import ROOT, lp_wrap

DEV = "/edge/lab/b1"
KEY = bytes(range(32))


def _tl_reference(t: int, n: int) -> bytes:
    """NDN TLV type and length fields by the spec's rule (1, 3, 5 or 9 bytes each)."""
    def num(v: int) -> bytes:
        if v < 253:
            return bytes([v])
        for mark, width in ((0xFD, 2), (0xFE, 4), (0xFF, 8)):
            if v < 1 << (8 * width):
                return bytes([mark]) + v.to_bytes(width, "big")
        raise ValueError(v)
    return num(t) + num(n)


def test_variable_size_numbers_are_byte_exact():
    cases = [(0, "00"), (252, "fc"), (253, "fd00fd"), (0xFFFF, "fdffff"), (0x10000, "fe00010000"),
             (0xFFFFFFFF, "feffffffff"), (0x100000000, "ff0000000100000000")]
    for n, hexed in cases:
        assert _tl_reference(7, n)[1:].hex() == hexed
        p = tlv.Packet()
        p.mv, p.p = memoryview(bytes.fromhex(hexed)), 0
        assert p.num(len(hexed) // 2) == n and p.p == len(hexed) // 2


def test_name_encoding_matches_python_ndn():
    assert derive.encode_name("/edge/kitchen/th1") == bytes(Name.to_bytes("/edge/kitchen/th1"))[2:]
    assert derive.encode_name("/edge") == bytes.fromhex("080465646765")


def test_key_id_and_key_name():
    assert derive.key_id(KEY) == wire.key_id(KEY) == "630dcd29"
    assert wire.key_name(DEV, KEY) == "/edge/lab/b1/KEY/630dcd29"


def test_hmac_matches_stdlib():
    import hashlib
    import hmac
    for key in (b"", b"k", KEY, bytes(100)):
        mac = derive.hmac(key)
        h = mac.start()
        h.update(b"abc")
        assert mac.finish(h) == hmac.new(key, b"abc", hashlib.sha256).digest()


def parsed(w):
    p = tlv.Packet()
    assert p.parse(memoryview(w), 0, len(w)) == T.INTEREST
    return p


def test_interest_from_python_ndn_parses_to_offsets():
    w, final = wire.make_call(f"{DEV}/echo", {"a": 1}, KEY, 77, signer_owner=DEV)
    p = parsed(w)
    mv = memoryview(w)
    assert p.ncomp == 5 and p.seq == 77 and p.sig_type == 4
    assert bytes(mv[p.kl_s:p.kl_e]) == derive.encode_name(wire.key_name(DEV, KEY))
    assert bytes(mv[p.digest_s:p.digest_s + 32]) == bytes(final[-1])[2:]
    assert bytes(mv[p.params_vs:p.params_ve]) == bytes.fromhex("a1616101")
    p.component(3)
    assert bytes(mv[p.p:p.p + p.n]) == b"echo"
    # the device's own check of python-ndn's digest and signature
    assert sign.sha256(mv[p.params_s:p.sv_s + p.sv_n]) == bytes(mv[p.digest_s:p.digest_s + 32])
    mac = derive.hmac(KEY)
    h = mac.start()
    h.update(mv[p.name_s:p.last_s])
    h.update(mv[p.params_s:p.sinfo_e])
    assert mac.finish(h) == bytes(mv[p.sv_s:p.sv_s + 32])



def _with_broken_tail(w: bytes) -> bytes:
    """The Interest w with an unknown critical element (type 0x0F) appended: malformed after its name."""
    inner = w[2:] + b"\x0f\x00"  # make_call's Interests are short: one-byte outer length
    assert w[0] == T.INTEREST and len(inner) < 253
    return bytes([T.INTEREST, len(inner)]) + inner


def test_with_prefixes_another_nodes_interest_stops_after_its_name():
    mine = derive.encode_name(DEV)
    query = derive.encode_name("/edge/_sd/query")
    other, _ = wire.make_call("/edge/bench/b10/echo", {"a": 1}, KEY, 5, signer_owner="/edge/bench/b10")
    own, _ = wire.make_call(f"{DEV}/echo", {"a": 1}, KEY, 5, signer_owner=DEV)
    p = tlv.Packet((mine, query))
    for w, match, seq in ((other, -1, -1), (own, 0, 5)):
        assert p.parse(memoryview(w), 0, len(w)) == T.INTEREST
        assert (p.match, p.seq, p.next) == (match, seq, len(w))
    # another node's Interest is not checked past its name; ours is, and so is any without prefixes
    broken = _with_broken_tail(other)
    assert p.parse(memoryview(broken), 0, len(broken)) == T.INTEREST and p.match == -1
    for packet, w in ((p, _with_broken_tail(own)), (tlv.Packet(), broken)):
        with pytest.raises(MalformedError):
            packet.parse(memoryview(w), 0, len(w))


def test_the_device_ignores_other_nodes_interests_without_counting_them(tmp_path):
    dev = _served_device(tmp_path)
    other, _ = wire.make_call("/edge/bench/b10/temperature", None, KEY, 1, signer_owner="/edge/bench/b10")
    for w in (other, _with_broken_tail(other), lp_wrap(b"\x01\x02", _with_broken_tail(other))):
        assert _deliver(dev, w) is None
    assert dev.drops == [0] * 7 and dev.requests == 0 and dev.errors == 0
    with pytest.raises(MalformedError) as raised:  # our own malformed Interest: dropped and counted
        _deliver(dev, _with_broken_tail(wire.make_call(f"{DEV}/temperature", None, KEY, 1, signer_owner=DEV)[0]))
    dev._fault(raised.value)  # as the serving loop does
    assert dev.drops[0] == 1 and not dev._face.sent
    r = wire.parse_reply(_deliver(dev, wire.make_call(f"{DEV}/temperature", None, KEY, 2, signer_owner=DEV)[0]), KEY)
    assert r.value == 1.0

class _CapturingFace:
    """Stands in for the socket: keeps what the device sends (unit test of the reply encoder)."""

    def __init__(self, mtu):
        self.buf = bytearray(mtu)
        self.mv = memoryview(self.buf)
        self.sock = None
        self.sent = []
        self.n = 0

    def read(self):
        return self.n

    def send(self, data):
        self.sent.append(bytes(data))
        return True


def _served_device(tmp_path, mtu=1500):
    from device import Device
    dev = Device(DEV, KEY, state_dir=str(tmp_path), mtu=mtu)
    dev.service("temperature", cache_ms=2000)(lambda: 1.0)
    dev.service("blob")(lambda n: "x" * n)
    dev.service("odd")(lambda: object())
    dev.service("huge")(lambda: 2 ** 70)

    def fail(why):
        raise ValueError(why)
    dev.service("fail")(fail)
    dev.setup()
    dev._face = _CapturingFace(mtu)
    return dev


def _deliver(dev, packet):
    dev._face.buf[:len(packet)] = packet
    dev._face.n = len(packet)
    dev.receive()
    return dev._face.sent.pop() if dev._face.sent else None


def test_data_reply_is_parsed_and_verified_by_python_ndn(tmp_path):
    dev = _served_device(tmp_path)
    w, final = wire.make_call(f"{DEV}/temperature", None, KEY, 1, signer_owner=DEV)
    r = wire.parse_reply(_deliver(dev, w), KEY)
    assert r.ok and r.value == 1.0 and r.freshness_ms == 2000 and r.name == final
    # with a PIT token: LpPacket{PitToken, Fragment(Data)}, and the retransmission gets the same Data
    w2, final2 = wire.make_call(f"{DEV}/temperature", None, KEY, 2, signer_owner=DEV)
    first = _deliver(dev, lp_wrap(b"\x01\x02\x03", w2))
    lp = parse_lp_packet_v2(first, with_tl=True)
    assert bytes(lp.pit_token) == b"\x01\x02\x03" and wire.parse_reply(bytes(lp.fragment), KEY).name == final2
    again = _deliver(dev, lp_wrap(b"\x09", w2))  # a retransmission: the cached Data under the new token
    lp2 = parse_lp_packet_v2(again, with_tl=True)
    assert bytes(lp2.pit_token) == b"\x09" and bytes(lp2.fragment) == bytes(lp.fragment)
    # an error reply: ContentType NACK, verified; a service name need not be text
    w3, _ = wire.make_call(f"{DEV}/nothing", None, KEY, 3, signer_owner=DEV)
    _name, meta, _, _ = parse_data(_deliver(dev, w3), with_tl=True)
    assert meta.content_type == 3
    w4, _ = wire.make_call(f"{DEV}/%FF%FE", None, KEY, 4, signer_owner=DEV)
    r = wire.parse_reply(_deliver(dev, w4), KEY)
    assert not r.ok and r.code == "NOT_FOUND" and dev.errors == 0


def test_a_reply_that_does_not_fit_the_datagram_becomes_resource_exhausted(tmp_path):
    dev = _served_device(tmp_path, mtu=400)
    for seq, n in enumerate((10, 300, 1000), 1):
        w, _ = wire.make_call(f"{DEV}/blob", {"n": n}, KEY, seq, signer_owner=DEV)
        r = wire.parse_reply(_deliver(dev, w), KEY)
        assert (r.ok and r.value == "x" * n) if n == 10 else (not r.ok and r.code == "RESOURCE_EXHAUSTED")


def test_unencodable_results_are_internal_errors(tmp_path):
    dev = _served_device(tmp_path)
    for seq, service in enumerate(("odd", "huge"), 1):
        w, _ = wire.make_call(f"{DEV}/{service}", None, KEY, seq, signer_owner=DEV)
        r = wire.parse_reply(_deliver(dev, w), KEY)
        assert not r.ok and r.code == "INTERNAL" and "not encodable" in r.message
    assert dev.errors == 2


def test_a_failing_handler_is_answered_and_the_rest_of_the_read_is_served(tmp_path):
    # The serving loop catches what a handler raises (Device._fault) and goes on with the packets
    # that came in the same read; this drives those two steps as _poll_loop does.
    dev = _served_device(tmp_path)
    calls = [wire.make_call(f"{DEV}/{svc}", args, KEY, seq, signer_owner=DEV)[0]
             for seq, (svc, args) in enumerate((("blob", {"n": 1}), ("fail", {"why": "no"}), ("blob", {"n": 2})), 1)]
    packet = b"".join(calls)
    dev._face.buf[:len(packet)] = packet
    dev._face.n = len(packet)
    for step in range(3):
        try:
            dev.receive() if step == 0 else dev._walk()
            break
        except Exception as e:
            dev._fault(e)
    replies = [wire.parse_reply(d, KEY) for d in dev._face.sent]
    assert [(r.ok, r.value if r.ok else r.code) for r in replies] == [(True, "x"), (False, "INVALID_ARGUMENT"),
                                                                      (True, "xx")]
    assert "no" in replies[1].message and dev.errors == 1 and not dev._calling


def test_a_renewal_out_of_memory_is_counted_and_retried_half_a_second_later_and_timers_still_run(tmp_path):
    from device.port import ticks_diff, ticks_ms
    dev = _served_device(tmp_path)
    ran = []
    dev.every(100)(lambda: ran.append(1))
    dev._renew_at = dev._due = dev.conf.boot  # the announcement is due, and so is the timer

    def broken(state):
        raise MemoryError("no heap for the control plane")
    dev._announce = broken
    dev._timers[0][0] = dev.conf.boot
    assert 0 < dev.tick() <= 100  # caught in tick, not at once again: the loop polls for packets in between
    assert dev.oom == 1 and ran == [1]  # counted; the app timer ran all the same (it may be what frees the heap)
    assert 400 <= ticks_diff(dev._renew_at, ticks_ms()) <= 500


def test_a_tick_that_raises_is_retried_a_second_later_not_at_once(tmp_path):
    dev = _served_device(tmp_path)
    dev._due = dev.conf.boot

    def broken():
        raise MemoryError("no heap for _run_due's frame")
    dev._run_due = broken
    with pytest.raises(MemoryError):
        dev.tick()  # the serving loop catches this (Device._fault) and goes on
    assert 900 <= dev.tick() <= 1000  # the loop polls for packets in between



def test_a_query_is_answered_right_after_boot_and_at_most_once_per_half_second(tmp_path):
    from ndn.encoding import InterestParam, make_interest

    from device.port import ticks_add, ticks_ms
    dev = _served_device(tmp_path)
    query = bytes(make_interest("/edge/_sd/query", InterestParam(lifetime=1000)))

    def answered() -> bool:
        dev._query_at = ticks_ms()  # the random delay has passed
        dev.tick()
        sent = [d for d in dev._face.sent if b"\x08\x03_sd\x08\x03ann" in d[:40]]
        dev._face.sent.clear()
        return len(sent) == 1

    assert _deliver(dev, query) is None and dev._query_at is not None  # just booted: answered (after a delay)
    assert answered()
    assert _deliver(dev, query) is None and dev._query_at is None  # within 500 ms of the answer: ignored
    dev._last_query = ticks_add(ticks_ms(), -500)
    assert _deliver(dev, query) is None and dev._query_at is not None and answered()
    dev._last_query = ticks_add(ticks_ms(), 1000)  # a ticks difference gone negative (e.g. after days asleep)
    dev._due = ticks_ms()
    dev.tick()
    assert dev._last_query is None  # forgotten by the next tick, so queries are answered again

def test_backward_writers_match_the_spec():
    for t, n in ((7, 0), (7, 252), (21, 253), (21, 1400), (0x64, 0xFFFF)):
        back = bytearray(8)
        assert back[tlv.tl_back(back, 8, t, n):] == _tl_reference(t, n)
    for n in (0, 255, 256, 0xFFFF, 0x10000, 2 ** 32 - 1, 2 ** 32, 2 ** 40):
        width = 1 if n < 256 else 2 if n < 1 << 16 else 4 if n < 1 << 32 else 8
        back = bytearray(12)
        assert back[tlv.nni_back(back, 12, 0x19, n):] == _tl_reference(0x19, width) + n.to_bytes(width, "big")
    assert derive.tlv_bytes(8, b"edge") == b"\x08\x04edge"
    assert derive.tlv_bytes(21, bytes(300))[:4] == b"\x15\xfd\x01\x2c"


def test_two_packets_back_to_back_parse_in_order():
    a, _ = wire.make_call(f"{DEV}/a", None, KEY, 1, signer_owner=DEV)
    b, _ = wire.make_call(f"{DEV}/b", None, KEY, 2, signer_owner=DEV)
    buf = memoryview(a + b)
    p = tlv.Packet()
    assert p.parse(buf, 0, len(buf)) == T.INTEREST and p.seq == 1 and p.next == len(a)
    assert p.parse(buf, p.next, len(buf)) == T.INTEREST and p.seq == 2 and p.next == len(buf)


def test_every_truncation_is_malformed():
    w, _ = wire.make_call(f"{DEV}/echo", {"a": [1, 2, 3]}, KEY, 5, signer_owner=DEV)
    for cut in range(len(w)):
        with pytest.raises(MalformedError):
            tlv.Packet().parse(memoryview(w[:cut]), 0, cut)


MALFORMED = [
    ("0500", "no Name"),
    ("0503070108", "component length past name end"),
    ("050407020800", "zero-length generic ok but no digest: parses"),
    ("0506070408000801" + "", "truncated"),
    ("05040702" + "0000", "component type 0"),
    ("0506070202000800", "digest of 0 bytes"),
    ("0504070001ff", "unknown critical element 1"),
    ("6403510100", "lp without fragment: idle"),
    ("6406530102500100", "fragmented"),
    ("64036f0100", "unknown lp field"),
    ("0900", "not interest or data"),
    ("050607020800" + "0700", "a second Name"),
    ("05080a0401020304" + "0700", "Name not first"),
    ("060607020800" + "0700", "a Data's second Name"),
    ("06041500" + "0700", "a Data's Name not first"),
]


@pytest.mark.parametrize("hexed,why", MALFORMED)
def test_malformed_vectors(hexed, why):
    w = bytes.fromhex(hexed)
    p = tlv.Packet()
    if why.endswith("parses"):
        assert p.parse(memoryview(w), 0, len(w)) == T.INTEREST and p.digest_s == -1
    elif why.endswith("idle"):
        assert p.parse(memoryview(w), 0, len(w)) == 0
    else:
        with pytest.raises(MalformedError):
            p.parse(memoryview(w), 0, len(w))


@settings(max_examples=600, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes_only_raise_malformed(data):
    try:
        tlv.Packet().parse(memoryview(data), 0, len(data))
    except MalformedError:
        pass


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_fuzz_mutated_interests_only_raise_malformed(data):
    w, _ = wire.make_call(f"{DEV}/echo", {"k": "v"}, KEY, 9, signer_owner=DEV)
    w = bytearray(w)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(w) - 1))
        w[i] = data.draw(st.integers(0, 255))
    mv = memoryview(bytes(w))
    full = tlv.Packet()
    try:
        full.parse(mv, 0, len(w))
    except MalformedError:
        full = None
    # With prefixes (as a device parses), the same bytes only raise MalformedError too, and a packet that
    # parses fully gets the same offsets when its name is ours, or stops after the name when it is not.
    for prefixes in ((derive.encode_name(DEV),), (derive.encode_name("/edge/other"),)):
        p = tlv.Packet(prefixes)
        try:
            p.parse(mv, 0, len(w))
        except MalformedError:
            assert full is None  # stopping early never finds a fault the full parse does not
            continue
        assert full is not None or p.match == -1  # only another node's packet may skip its faults
        if full is not None:
            assert (p.name_s, p.name_e, p.next) == (full.name_s, full.name_e, full.next)
            if p.match == 0:
                assert (p.seq, p.sv_s, p.params_s, p.digest_s) == (full.seq, full.sv_s, full.params_s, full.digest_s)


def test_tlv_and_hmac_on_micropython(run_mp):
    w, _final = wire.make_call(f"{DEV}/echo", {"a": 1}, KEY, 77, signer_owner=DEV)
    out = run_mp(f"""
from device import tlv, derive
from device.errors import MalformedError
w = bytes.fromhex("{w.hex()}")
p = tlv.Packet()
print(p.parse(memoryview(w), 0, len(w)), p.seq, p.ncomp)
mv = memoryview(w)
mac = derive.hmac(bytes(range(32)))
h = mac.start(); h.update(mv[p.name_s:p.last_s]); h.update(mv[p.params_s:p.sinfo_e])
print(mac.finish(h) == bytes(mv[p.sv_s:p.sv_s + 32]), derive.key_id(bytes(range(32))))
bad = 0
for cut in range(len(w)):
    try:
        tlv.Packet().parse(memoryview(w[:cut]), 0, cut)
    except MalformedError:
        bad += 1
print(bad == len(w))
p = tlv.Packet((bytes.fromhex("{derive.encode_name('/edge/other').hex()}"), mv[p.name_s:p.name_e]))
print(p.parse(mv, 0, len(w)), p.match, p.seq)
p.prefixes = p.prefixes[:1]
print(p.parse(mv, 0, len(w)), p.match, p.seq)
""", heap="128K")
    assert out.split() == ["5", "77", "5", "True", "630dcd29", "True", "5", "1", "77", "5", "-1", "-1"]


def test_malformed_vectors_on_micropython(run_mp):
    # The same verdicts from the board's interpreter: the parser runs there, not only on CPython.
    out = run_mp(f"""
from device import tlv
from device.errors import MalformedError
for h in {[h for h, _ in MALFORMED]!r}:
    w = bytes.fromhex(h)
    try:
        print(tlv.Packet().parse(memoryview(w), 0, len(w)))
    except MalformedError:
        print("M")
""", heap="128K")
    assert out.split() == ["5" if why.endswith("parses") else "0" if why.endswith("idle") else "M"
                           for _, why in MALFORMED]


# -- one vocabulary: the device's protocol numbers are the host's

# device name (after T_ / _T_) -> host name in ndn_edge.wire.tlv.T, where they differ
_DEVICE_TLV_NAMES = {
    "GENERIC": "GENERIC_COMPONENT", "PARAMS_DIGEST": "DIGEST_COMPONENT", "LIFETIME": "INTEREST_LIFETIME",
    "FWD_HINT": "FORWARDING_HINT", "APP_PARAMS": "APPLICATION_PARAMETERS", "ISIG_INFO": "INTEREST_SIGNATURE_INFO",
    "ISIG_VALUE": "INTEREST_SIGNATURE_VALUE", "SIG_INFO": "SIGNATURE_INFO", "SIG_VALUE": "SIGNATURE_VALUE",
    "FRESHNESS": "FRESHNESS_PERIOD", "SIG_TYPE": "SIGNATURE_TYPE", "SIG_NONCE": "SIGNATURE_NONCE",
    "SIG_TIME": "SIGNATURE_TIME", "SIG_SEQ": "SIGNATURE_SEQ_NUM",
}


def _device_constants():
    """{(file, name): value} of every `NAME = const(N)` in the runtime."""
    import re

    out = {}
    for path in sorted((ROOT / "device").glob("*.py")):
        for m in re.finditer(r"^(\w+) = const\((0x[0-9A-Fa-f]+|-?\d+)\)", path.read_text(), re.M):
            out[(path.name, m.group(1))] = int(m.group(2), 0)
    return out


def test_every_tlv_type_the_device_uses_is_the_hosts():
    from ndn_edge.wire import tlv as host

    checked = 0
    for (file, name), value in _device_constants().items():
        bare = name.lstrip("_")
        if not bare.startswith("T_"):
            continue
        kind = bare[2:]
        host_name = _DEVICE_TLV_NAMES.get(kind, kind)
        assert getattr(host.T, host_name, None) == value, f"device/{file} {name} = {value:#x}, host T.{host_name}"
        checked += 1
    assert checked >= 40
    consts = _device_constants()
    assert consts[("runtime.py", "_CONTENT_NACK")] == host.CONTENT_NACK
    assert consts[("tlv.py", "_DIGEST_LEN")] == consts[("report.py", "_DIGEST_LEN")] == host.DIGEST_BYTES


def test_the_devices_defaults_and_error_codes_are_the_hosts():
    import re

    from ndn_edge.errors import CallError
    from ndn_edge.wire import protocol

    runtime = (ROOT / "device" / "runtime.py").read_text()
    control = (ROOT / "device" / "control.py").read_text()  # Device()'s defaults are control.init's
    assert _device_constants()[("control.py", "_DEFAULT_PORT")] == protocol.DEFAULT_PORT
    assert re.search(r'^_DEFAULT_GROUP = "([0-9.]+)"', control, re.M).group(1) == protocol.DEFAULT_GROUP
    codes = eval(re.search(r"^CODES = (\(.*?\))", runtime, re.M | re.S).group(1))
    assert set(codes) == {cls.code for cls in CallError.__subclasses__() if cls.code != "CANCELLED"}
    assert (ROOT / "device" / "seal.py").read_text().count('b"ndn-edge enc"') == 1
    assert protocol.ENC_LABEL == b"ndn-edge enc"
