"""The gateway's hand-written packet code (ndn_edge.wire.packets) against python-ndn, the reference.

`call_interest`, `parse_signed_interest` and `parse_reply`/`verify_reply` replace python-ndn on the hot path. For
the layouts they accept they must agree with python-ndn field for field; anything else they must hand back
(None) so that python-ndn decides; and they must never raise anything but the documented errors, whatever the
bytes.
"""
from __future__ import annotations

import os
import random

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ndn.encoding import InterestParam, MetaInfo, Name, make_data, make_interest, parse_data, parse_interest
from ndn.security.signer.sha256_hmac_signer import HmacSha256Signer

from ndn_edge.wire import client_protocol as cw
from ndn_edge.wire import packets as wire

KEY = bytes(range(32))
DEVICE = "/edge/sim/1"


def _client_request(params: bytes = b"\xa0", seq: int = 1795960666987412, **kw) -> bytes:
    packet, _ = wire.encode_signed_interest(
        cw.request_name("edge", "call", ("sim", "1", "echo")), params, KEY,
        cw.encoded_name(cw.client_key_name("edge", "alice", KEY)), seq, time_ms=kw.get("time_ms", 1795960666987),
        signature_nonce=kw.get("signature_nonce", b"\x81" * 8), nonce=b"\x01\x02\x03\x04",
        lifetime_ms=kw.get("lifetime_ms", 4750))
    return packet


def _reference(packet: bytes):
    """python-ndn's view of a signed Interest, in the terms the server reads."""
    name, interest, params, sig = parse_interest(packet, with_tl=True)
    info = sig.signature_info
    return (b"".join(bytes(c) for c in name[:-1]), bytes(name[-1])[2:], bytes(params or b""), info.signature_type,
            b"".join(bytes(c) for c in info.key_locator.name), info.signature_nonce, info.signature_time,
            info.signature_seq_num, b"".join(bytes(p) for p in sig.signature_covered_part),
            bytes(sig.signature_value_buf), b"".join(bytes(p) for p in sig.digest_covered_part), interest.lifetime)


def _ours(packet: bytes):
    r = wire.parse_signed_interest(packet)
    if r is None or wire.split_components(r.prefix) is None or wire.split_components(r.key_locator) is None:
        return None  # handed back, or a name that matches no route and no client key: dropped unread
    return (r.prefix, r.digest, r.params, r.sig_type, r.key_locator, r.nonce, r.time_ms, r.seq, r.signed,
            r.signature, r.digest_covered, r.lifetime_ms)


# -- signed Interests


@pytest.mark.parametrize("params", [b"", b"\xa0", cbor2.dumps({"args": {"x": b"y" * 300}, "timeout_ms": 4750})])
@pytest.mark.parametrize("seq", [1, 255, 2 ** 40, 2 ** 64 - 1])
def test_signed_interest_parses_as_python_ndn_parses_it(params, seq):
    packet = _client_request(params, seq)
    assert _ours(packet) == _reference(packet)


def test_python_ndn_made_interests_parse_the_same_or_are_handed_back():
    signer = wire.SeqSigner(cw.client_key_name("edge", "alice", KEY), KEY, 77)
    for param in (InterestParam(), InterestParam(must_be_fresh=True, can_be_prefix=True, hop_limit=9, nonce=7),
                  InterestParam(lifetime=70000)):
        packet = bytes(make_interest("/edge/_gw/devices", param, b"\xa0", signer=signer))
        assert _ours(packet) == _reference(packet)
    hinted = bytes(make_interest("/edge/_gw/devices", InterestParam(forwarding_hint=["/x"]), b"\xa0", signer=signer))
    assert wire.parse_signed_interest(hinted) is None  # a ForwardingHint: python-ndn's job
    unsigned = bytes(make_interest("/edge/_gw/devices", InterestParam(), b"\xa0"))
    assert wire.parse_signed_interest(unsigned) is None


def test_every_truncation_and_bit_flip_is_handed_back_or_agrees_with_python_ndn():
    packet = _client_request(cbor2.dumps({"args": {"a": 1}}))
    rnd = random.Random(5)
    variants = [packet[:n] for n in range(len(packet))]
    for _ in range(400):
        flipped = bytearray(packet)
        flipped[rnd.randrange(len(flipped))] ^= 1 << rnd.randrange(8)
        variants.append(bytes(flipped))
    for variant in variants:
        _agrees(variant)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_are_handed_back_or_agree(data):
    _agrees(data)
    _agrees(b"\x05" + bytes([min(len(data), 252)]) + data[:252])


def _agrees(packet: bytes) -> None:
    ours = _ours(packet)
    if ours is None:
        return
    assert ours == _reference(packet), packet.hex()


# -- device calls


def test_call_interest_is_what_make_call_signs():
    comps = b"".join(wire.name_components(f"{DEVICE}/echo"))
    signer = wire.InterestSigner(KEY, wire.encoded_name(wire.key_name(DEVICE, KEY)))
    packet = wire.call_interest(signer, comps, cbor2.dumps({"a": 1}), 42, lifetime_ms=1234)
    name, param, params, sig = parse_interest(packet, with_tl=True)
    assert Name.to_str(name[:-1]) == f"{DEVICE}/echo" and cbor2.loads(bytes(params)) == {"a": 1}
    assert param.must_be_fresh and param.lifetime == 1234 and param.nonce is not None
    info = sig.signature_info
    assert (info.signature_type, info.signature_seq_num) == (4, 42)
    assert Name.to_str(info.key_locator.name) == wire.key_name(DEVICE, KEY)
    import hashlib
    import hmac
    mac = hmac.new(KEY, b"".join(bytes(p) for p in sig.signature_covered_part), hashlib.sha256).digest()
    assert mac == bytes(sig.signature_value_buf)
    reference, _ = wire.make_call(f"{DEVICE}/echo", {"a": 1}, KEY, 42, signer_owner=DEVICE)
    assert len(packet) == len(reference) + 6  # the same fields, plus a Nonce (4 bytes and its TL)
    assert _ours(packet) == _reference(packet)


# -- replies


def _reply(content: bytes, meta: MetaInfo | None, key: bytes = KEY, name: str = f"{DEVICE}/echo") -> bytes:
    full = [*Name.from_str(name), b"\x02 " + bytes(32)]
    return bytes(make_data(full, meta, content, signer=HmacSha256Signer(wire.key_name(DEVICE, key), key)))


@pytest.mark.parametrize("meta", [None, MetaInfo(), MetaInfo(freshness_period=2000), MetaInfo(content_type=3),
                                  MetaInfo(content_type=3, freshness_period=1000),
                                  MetaInfo(freshness_period=5, final_block_id=b"\x08\x01x")])
@pytest.mark.parametrize("content", [b"", cbor2.dumps(21.5), cbor2.dumps({"code": "NOT_FOUND", "message": "x"}),
                                     cbor2.dumps(list(range(300)))])
def test_reply_fields_match_python_ndn(meta, content):
    packet = _reply(content, meta)
    name, meta_ref, content_ref, _ = parse_data(packet, with_tl=True)
    fast = wire._plain_data(packet, KEY)
    assert fast is not None
    fast_name, fast_type, fast_fresh, fast_content = fast
    assert (fast_name, fast_type or 0, fast_fresh, fast_content) == (  # no ContentType is BLOB (0)
        [bytes(c) for c in name], (meta_ref.content_type or 0) if meta_ref else 0,
        meta_ref.freshness_period if meta_ref else None, bytes(content_ref or b""))
    assert wire.verify_reply(packet, KEY) == fast


def test_reply_with_a_bad_signature_is_refused_both_ways():
    packet = _reply(cbor2.dumps(1), MetaInfo(freshness_period=10), key=os.urandom(32))
    with pytest.raises(wire.BadPacket):
        wire.verify_reply(packet, KEY)
    with pytest.raises(wire.BadPacket):
        wire.parse_reply(packet, KEY)
    tampered = bytearray(_reply(cbor2.dumps(1), None))
    tampered[tampered.index(cbor2.dumps(1))] ^= 1
    with pytest.raises(wire.BadPacket):
        wire.verify_reply(bytes(tampered), KEY)


def test_parse_reply_values_errors_and_freshness():
    ok = wire.parse_reply(_reply(cbor2.dumps({"x": 1}), MetaInfo(freshness_period=2000)), KEY)
    assert (ok.ok, ok.value, ok.freshness_ms) == (True, {"x": 1}, 2000)
    err = wire.parse_reply(_reply(cbor2.dumps({"code": "NOT_FOUND", "message": "no"}), MetaInfo(content_type=3)),
                           KEY)
    assert (err.ok, err.code, err.message) == (False, "NOT_FOUND", "no")


def test_reply_mutations_never_raise_anything_but_bad_packet():
    packet = _reply(cbor2.dumps({"v": 1}), MetaInfo(freshness_period=10))
    rnd = random.Random(9)
    variants = [packet[:n] for n in range(len(packet))]
    for _ in range(300):
        flipped = bytearray(packet)
        flipped[rnd.randrange(len(flipped))] ^= 1 << rnd.randrange(8)
        variants.append(bytes(flipped))
    variants += [b"\x06\x01\x07", b"\x06\x03\x07\x00\x16"]  # an element's head cut short by the packet's end
    for variant in variants:
        try:
            wire.verify_reply(variant, KEY)
        except wire.BadPacket:
            pass


@pytest.mark.parametrize("value", [21.5, None, {"x": [1, 2, {"y": b"z"}]}, "t" * 300, -(2 ** 40)])
@pytest.mark.parametrize("cached, age_ms, stale, fresh_ms", [(False, 0, False, 0), (True, 1234567, True, 0),
                                                             (True, 5, False, 995), (False, 0, False, 2 ** 33)])
def test_call_result_splices_the_devices_cbor_byte_for_byte(value, cached, age_ms, stale, fresh_ms):
    from ndn_edge.answers import Answer

    answer = Answer(cbor2.dumps(value), cached, age_ms, stale, fresh_ms)
    expected = {"value": value, "cached": cached, "age_ms": age_ms, "stale": stale}
    if fresh_ms:
        expected["fresh_ms"] = fresh_ms
    assert cw.encode_call_result(answer) == cbor2.dumps(expected)
