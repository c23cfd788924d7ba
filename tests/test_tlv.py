"""Byte-exact and fuzz tests of the board's TLV layer (device/tlv.py), on CPython and MicroPython."""

import pytest
from hypothesis import given, settings, strategies as st
from ndn.encoding import Name, parse_data

from device import control, sign, tlv
from device.errors import MalformedError
from gateway import wire

DEV = "/edge/lab/b1"
KEY = bytes(range(32))


def test_variable_size_numbers_are_byte_exact():
    cases = [(0, "00"), (252, "fc"), (253, "fd00fd"), (0xFFFF, "fdffff"), (0x10000, "fe00010000"),
             (0xFFFFFFFF, "feffffffff"), (0x100000000, "ff0000000100000000")]
    for n, hexed in cases:
        buf = bytearray(9)
        end = tlv.put_num(buf, 0, n)
        assert buf[:end].hex() == hexed and tlv.size_num(n) == end
        p = tlv.Packet()
        p.mv, p.p = memoryview(bytes(buf[:end])), 0
        assert p.num(end) == n


def test_name_encoding_matches_python_ndn():
    assert control.encode_name("/edge/kitchen/th1") == bytes(Name.to_bytes("/edge/kitchen/th1"))[2:]
    assert control.encode_name("/edge") == bytes.fromhex("080465646765")


def test_key_id_and_key_name():
    assert sign.key_id(KEY) == wire.key_id(KEY) == "630dcd29"
    assert wire.key_name(DEV, KEY) == "/edge/lab/b1/KEY/630dcd29"


def test_hmac_matches_stdlib():
    import hashlib
    import hmac
    for key in (b"", b"k", KEY, bytes(100)):
        assert sign.Hmac(key).mac(b"abc") == hmac.new(key, b"abc", hashlib.sha256).digest()


def parsed(w):
    p = tlv.Packet()
    assert p.parse(memoryview(w), 0, len(w)) == tlv.T_INTEREST
    return p


def test_interest_from_python_ndn_parses_to_offsets():
    w, final = wire.make_call(f"{DEV}/echo", {"a": 1}, KEY, 77, signer_owner=DEV)
    p = parsed(w)
    mv = memoryview(w)
    assert p.ncomp == 5 and p.seq == 77 and p.sig_type == 4
    assert bytes(mv[p.kl_s:p.kl_e]) == control.encode_name(wire.key_name(DEV, KEY))
    assert bytes(mv[p.digest_s:p.digest_s + 32]) == bytes(final[-1])[2:]
    assert bytes(mv[p.params_vs:p.params_ve]) == bytes.fromhex("a1616101")
    p.component(3)
    assert bytes(mv[p.p:p.p + p.n]) == b"echo"
    # the device's own check of python-ndn's digest and signature
    assert sign.sha256(mv[p.params_s:p.sv_s + p.sv_n]) == bytes(mv[p.digest_s:p.digest_s + 32])
    mac = sign.Hmac(KEY)
    h = mac.start()
    h.update(mv[p.name_s:p.last_s])
    h.update(mv[p.params_s:p.sinfo_e])
    assert mac.finish(h) == bytes(mv[p.sv_s:p.sv_s + 32])


def test_data_reply_is_parsed_and_verified_by_python_ndn():
    w, final = wire.make_call(f"{DEV}/temperature", None, KEY, 1, signer_owner=DEV)
    p = parsed(w)
    mv = memoryview(w)
    sig_info = control.tlv_bytes(tlv.T_SIG_INFO, control.tlv_bytes(tlv.T_SIG_TYPE, b"\x04") + control.tlv_bytes(
        tlv.T_KEY_LOCATOR, control.tlv_bytes(tlv.T_NAME, control.encode_name(wire.key_name(DEV, KEY)))))
    buf = bytearray(1500)
    s, e = tlv.encode_data(buf, None, mv[p.name_s:p.name_e], 0, 2000, b"\xf9\x3c\x00", sig_info, sign.Hmac(KEY))
    r = wire.parse_reply(bytes(buf[s:e]), KEY)
    assert r.ok and r.value == 1.0 and r.freshness_ms == 2000 and r.name == final
    s, e = tlv.encode_data(buf, b"\x01\x02", mv[p.name_s:p.name_e], 3, 0, b"\xa0", sig_info, sign.Hmac(KEY))
    assert buf[:2] == b"\x64\x2b"[:1] + bytes([buf[1]]) and s > 0
    name, meta, _, _ = parse_data(bytes(buf[s:e]), with_tl=True)
    assert meta.content_type == 3
    with pytest.raises(ValueError):
        tlv.encode_data(bytearray(64), None, mv[p.name_s:p.name_e], 0, 0, bytes(100), sig_info, sign.Hmac(KEY))


def test_two_packets_back_to_back_parse_in_order():
    a, _ = wire.make_call(f"{DEV}/a", None, KEY, 1, signer_owner=DEV)
    b, _ = wire.make_call(f"{DEV}/b", None, KEY, 2, signer_owner=DEV)
    buf = memoryview(a + b)
    p = tlv.Packet()
    assert p.parse(buf, 0, len(buf)) == tlv.T_INTEREST and p.seq == 1 and p.next == len(a)
    assert p.parse(buf, p.next, len(buf)) == tlv.T_INTEREST and p.seq == 2 and p.next == len(buf)


def test_every_truncation_is_malformed():
    w, _ = wire.make_call(f"{DEV}/echo", {"a": [1, 2, 3]}, KEY, 5, signer_owner=DEV)
    for cut in range(len(w)):
        with pytest.raises(MalformedError):
            tlv.Packet().parse(memoryview(w[:cut]), 0, cut)


@pytest.mark.parametrize("hexed,why", [
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
])
def test_malformed_vectors(hexed, why):
    w = bytes.fromhex(hexed)
    p = tlv.Packet()
    if why.endswith("parses"):
        assert p.parse(memoryview(w), 0, len(w)) == tlv.T_INTEREST and p.digest_s == -1
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
    try:
        tlv.Packet().parse(memoryview(bytes(w)), 0, len(w))
    except MalformedError:
        pass


def test_tlv_and_hmac_on_micropython(run_mp):
    w, final = wire.make_call(f"{DEV}/echo", {"a": 1}, KEY, 77, signer_owner=DEV)
    out = run_mp(f"""
from device import tlv, sign
from device.errors import MalformedError
w = bytes.fromhex("{w.hex()}")
p = tlv.Packet()
print(p.parse(memoryview(w), 0, len(w)), p.seq, p.ncomp)
mv = memoryview(w)
mac = sign.Hmac(bytes(range(32)))
h = mac.start(); h.update(mv[p.name_s:p.last_s]); h.update(mv[p.params_s:p.sinfo_e])
print(mac.finish(h) == bytes(mv[p.sv_s:p.sv_s + 32]), sign.key_id(bytes(range(32))))
bad = 0
for cut in range(len(w)):
    try:
        tlv.Packet().parse(memoryview(w[:cut]), 0, cut)
    except MalformedError:
        bad += 1
print(bad == len(w))
""", heap="128K")
    assert out.split() == ["5", "77", "5", "True", "630dcd29", "True"]
