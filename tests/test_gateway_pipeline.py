"""The device side's pieces in isolation: framing, cache, circuit breaker, backoff, requester and directory.

No processes and no sockets: an in-memory face, fake clocks where time matters, python-ndn as the independent
encoder of the packets fed in.
"""
from __future__ import annotations

import asyncio
import os

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ndn.encoding import InterestParam, MetaInfo, Name, make_data, make_interest
from ndn.encoding.ndnlp_v2 import parse_lp_packet_v2
from ndn.security.signer.sha256_hmac_signer import HmacSha256Signer

from ndn_edge.devices.directory import Directory
from ndn_edge.devices.invoker import Backoff, CircuitBreaker, Requester, ResultCache, canonical_args
from ndn_edge.errors import DeadlineExceeded, InvalidArgument, NotFound, Unavailable
from ndn_edge.state.store import Store
from ndn_edge.wire import packets as wire
from ndn_edge.wire.framing import FramingError, has_name_prefix, name_tlv, unwrap
from tests.support import run_scenario, until


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class MemoryFace:
    """An in-memory face: records what is sent; the test delivers packets through on_packet."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.on_packet = None

    def send(self, data: bytes) -> None:
        self.sent.append(bytes(data))


def tl(t: int, value: bytes) -> bytes:
    def num(n: int) -> bytes:
        return bytes([n]) if n < 253 else b"\xfd" + n.to_bytes(2, "big")
    return num(t) + num(len(value)) + value


INTEREST = bytes(make_interest("/edge/x/y", InterestParam(nonce=1, lifetime=1000)))
DATA = bytes(make_data("/edge/x/y", MetaInfo(freshness_period=10), b"hi"))


# -- framing


@pytest.mark.parametrize("packet", [INTEREST, DATA])
def test_bare_packets_pass_and_lp_fragments_unwrap_like_python_ndn(packet):
    assert unwrap(packet) == packet
    lp = tl(0x64, tl(0x62, b"\x01\x02\x03\x04") + tl(0x50, packet))
    assert unwrap(lp) == packet == bytes(parse_lp_packet_v2(lp, with_tl=True).fragment)


def test_lp_header_rules():
    assert unwrap(b"\x64\x00") is None  # idle
    assert unwrap(tl(0x64, tl(0x53, b"\x01") + tl(0x50, DATA))) == DATA  # FragCount 1 is a whole packet
    ignorable = b"\xfd\x03\x20\x01\x00"  # type 800, low bits 00
    assert unwrap(tl(0x64, ignorable + tl(0x50, DATA))) == DATA
    for bad in (tl(0x64, tl(0x53, b"\x02") + tl(0x50, DATA)),  # fragmented
                tl(0x64, tl(0x77, b"") + tl(0x50, DATA)),  # unknown field
                tl(0x64, tl(0x50, tl(0x07, b""))),  # fragment is not an Interest or Data
                DATA + b"\x00",  # trailing bytes
                tl(0x07, b"")):  # not a packet type
        with pytest.raises(FramingError):
            unwrap(bad)


@pytest.mark.parametrize("packet", [INTEREST, DATA, tl(0x64, tl(0x62, b"\x09") + tl(0x50, DATA))])
def test_every_truncation_is_a_framing_error(packet):
    for n in range(len(packet)):
        with pytest.raises(FramingError):
            unwrap(packet[:n])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_arbitrary_bytes_never_raise_anything_but_framing_error(data):
    try:
        out = unwrap(data)
    except FramingError:
        return
    assert out is None or out[0] in (0x05, 0x06)


def test_name_peeks():
    assert name_tlv(DATA) == bytes(Name.encode(Name.from_str("/edge/x/y")))
    assert name_tlv(b"\x06\x02\x15\x00") is None
    prefix = b"".join(bytes(c) for c in Name.from_str("/edge/x"))
    assert has_name_prefix(INTEREST, prefix) and not has_name_prefix(DATA[:3], prefix)
    assert not has_name_prefix(INTEREST, b"".join(bytes(c) for c in Name.from_str("/edge/z")))


# -- cache


def test_cache_freshness_staleness_negative_and_bounds():
    clock = FakeClock()
    cache = ResultCache(max_entries=2, max_stale_s=10.0, negative_ttl_s=1.0, jitter=0.0, clock=clock)
    k1, k2, k3 = ("/d", "a", b""), ("/d", "b", b""), ("/d", "c", b"")
    cache.put_answer(k1, cbor2.dumps({"v": [1]}), 2000)
    clock.now += 1.5
    hit = cache.fresh(k1).answer(clock.now, stale=False)
    assert hit.value == {"v": [1]} and hit.cached and hit.age_ms == 1500
    hit.value["v"].append(2)  # a caller changing what it decoded does not touch the cache
    assert cache.fresh(k1).answer(clock.now, stale=False).value == {"v": [1]}
    clock.now += 1.0
    assert cache.fresh(k1) is None and cache.stale(k1) is not None  # expired but kept for stale serving
    clock.now += 8.0
    assert cache.stale(k1) is None
    cache.put_error(k2, NotFound("no service b"))
    with pytest.raises(NotFound, match="no service b"):
        cache.fresh(k2).answer(clock.now, stale=False)
    assert cache.stale(k2) is None  # negative answers are never served stale
    clock.now += 1.01
    assert cache.fresh(k2) is None
    for key, value in ((k1, 1), (k2, 2), (k3, 3)):
        cache.put_answer(key, cbor2.dumps(value), 1000)
    assert len(cache) == 2 and cache.fresh(k1) is None  # least recently used out
    cache.put_answer(k3, cbor2.dumps(4), None)  # a reply without freshness removes the entry
    assert cache.fresh(k3) is None and cache.stale(k3) is None


def test_cache_expiries_of_entries_filled_together_are_spread():
    """Issue 11 item 11 (cache avalanche): entries filled in the same instant expire over a tenth of their
    freshness, never later than the device allowed."""
    import random

    clock = FakeClock()
    rng = random.Random(7)
    cache = ResultCache(clock=clock, rng=rng.random)
    keys = [("/d", "t", cbor2.dumps({"n": n})) for n in range(200)]
    for key in keys:
        cache.put_answer(key, b"\x01", 2000)
    expiries = sorted(cache.fresh(k).fresh_until - clock.now for k in keys)
    assert expiries[0] >= 1.8 and expiries[-1] <= 2.0
    assert expiries[-1] - expiries[0] > 0.15  # spread over (nearly) the whole jitter window
    buckets = [sum(1 for e in expiries if lo <= e < lo + 0.02) for lo in [1.8 + 0.02 * i for i in range(10)]]
    assert max(buckets) <= 45  # no instant carries more than about a quarter of them


def test_canonical_args():
    assert canonical_args({"b": 1, "a": 2}) == canonical_args({"a": 2, "b": 1})
    assert canonical_args(None) == canonical_args({}) == cbor2.dumps({})
    for bad in (["x"], {1: 2}, {"f": object()}):
        with pytest.raises(InvalidArgument):
            canonical_args(bad)


# -- breaker and backoff


def test_breaker_opens_probes_once_and_backs_off():
    clock = FakeClock()
    b = CircuitBreaker(threshold=3, cooldown_s=2.0, max_cooldown_s=5.0, clock=clock)
    for _ in range(3):
        b.record_timeout(b.allow())
    assert b.state == "open" and b.allow() is None and b.retry_in_s() == 2.0
    clock.now += 2.0
    probe = b.allow()
    assert probe == b.PROBE and b.allow() is None  # one probe at a time
    b.record_timeout(probe)
    assert b.state == "open" and b.retry_in_s() == 4.0
    clock.now += 4.0
    b.record_timeout(b.allow())
    assert b.retry_in_s() == 5.0  # capped
    b.nudge()  # the device announced itself again
    probe = b.allow()
    assert probe == b.PROBE
    b.record_success(probe)
    assert b.state == "closed" and b.failures == 0 and b.cooldown_s == 2.0
    permit = b.allow()
    b.release(permit)
    assert b.state == "closed"


def test_backoff_doubles_with_jitter_and_caps():
    low = [d for _, d in zip(range(6), Backoff(0.1, 2.0, 1.0, 0.25, rng=lambda: 0.0).delays())]
    high = [d for _, d in zip(range(6), Backoff(0.1, 2.0, 1.0, 0.25, rng=lambda: 1.0).delays())]
    assert low == pytest.approx([0.075, 0.15, 0.3, 0.6, 0.75, 0.75])
    assert high == pytest.approx([0.125, 0.25, 0.5, 1.0, 1.25, 1.25])


# -- request window


def test_window_keeps_a_waiting_request_within_the_device_reply_cache():
    """While request 0 waits for its reply, fewer than `size` others may run after it, however many of them
    complete; its release lets the next ones in, oldest waiter first."""
    from ndn_edge.devices.invoker import _NoSlot, _Window

    async def scenario():
        loop = asyncio.get_running_loop()
        far = loop.time() + 5
        w = _Window(size=4, max_in_flight=2)
        stuck = await w.acquire(far, "d/s")
        admitted = []
        for _ in range(3):  # each completes at once, beside the stuck request
            ticket = await w.acquire(far, "d/s")
            admitted.append(ticket)
            w.release(ticket)
        with pytest.raises(_NoSlot, match="owes replies to 1 requests"):
            await w.acquire(loop.time() + 0.05, "d/s")  # a 5th signing could evict request 0's reply
        first = asyncio.create_task(w.acquire(far, "d/s"))
        second = asyncio.create_task(w.acquire(far, "d/s"))
        cancelled = asyncio.create_task(w.acquire(far, "d/s"))
        await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.sleep(0)
        assert not first.done() and not second.done()
        w.release(stuck)  # request 0 answered: a fresh window, two in flight at most
        assert await first == 4 and await second == 5
        third = asyncio.create_task(w.acquire(far, "d/s"))
        await asyncio.sleep(0)
        assert not third.done()  # max_in_flight
        w.release(4)
        assert await third == 6
        # a request admitted beside an older one has a smaller budget: the older one may still run after it
        w.release(5)
        w.release(6)
        a = await w.acquire(far, "d/s")
        b = await w.acquire(far, "d/s")
        w.release(a)
        for _ in range(2):
            w.release(await w.acquire(far, "d/s"))
        with pytest.raises(_NoSlot):
            await w.acquire(loop.time() + 0.05, "d/s")  # b's budget: 4 - 1 - (a, open then) = 2, both used
        w.release(b)
        return admitted, await w.acquire(far, "d/s")

    admitted, last = run_scenario(scenario)
    assert admitted == [1, 2, 3] and last == 11


# -- requester


def _metrics():
    return {"retries": 0, "bad_packets": 0, "unmatched_data": 0}


def test_requester_retransmits_same_bytes_skips_bad_replies_and_times_out():
    key = os.urandom(32)
    packet, final = wire.make_call("/edge/d/s", {"a": 1}, key, 7, signer_owner="/edge/d")
    good = bytes(make_data(final, MetaInfo(), cbor2.dumps(5), signer=HmacSha256Signer("/edge/d/KEY/x", key)))
    forged = bytes(make_data(final, MetaInfo(), cbor2.dumps(6),
                             signer=HmacSha256Signer("/edge/d/KEY/x", os.urandom(32))))

    async def scenario():
        face, metrics = MemoryFace(), _metrics()
        req = Requester(face, metrics, Backoff(0.01, 2.0, 0.05, 0.0))
        loop = asyncio.get_running_loop()

        async def deliver():
            await until(lambda: len(face.sent) >= 3, 5.0, "three transmissions")
            req.on_data(DATA)  # someone else's reply
            req.on_data(forged)
            req.on_data(good)
        feeder = asyncio.create_task(deliver())
        value = await req.request(packet, loop.time() + 2.0, lambda raw: wire.parse_reply(raw, key).value,
                                  what="/edge/d/s")
        await feeder
        sends = list(face.sent)
        face.sent.clear()
        with pytest.raises(DeadlineExceeded, match="transmissions"):
            await req.request(packet, loop.time() + 0.1, lambda raw: raw, what="/edge/d/s")
        req.close()
        with pytest.raises(Unavailable):
            await req.request(packet, loop.time() + 0.1, lambda raw: raw, what="/edge/d/s")
        return value, sends, metrics

    value, sends, metrics = run_scenario(scenario)
    assert value == 5
    assert len(sends) >= 3 and all(s == packet for s in sends)
    assert metrics["bad_packets"] == 1 and metrics["unmatched_data"] == 1 and metrics["retries"] >= 2


# -- directory


def _announcement(key: bytes, device: str, seq: int, **body) -> bytes:
    params = cbor2.dumps({"state": "up", "lease_ms": 60000, "rx_floor": 1, "desc": "00" * 8, "uptime_ms": 10,
                          **body})
    signer = wire.SeqSigner(wire.key_name(device, key), key, seq)
    return bytes(make_interest("/edge/_sd/ann", InterestParam(lifetime=1000), params, signer=signer))


def test_two_devices_announcing_one_name_are_reported_and_a_reboot_is_not(tmp_path, caplog):
    """Issue 15 item 4: two devices with one name and key (a second sim of a home, a cloned board) ran side by
    side unnoticed. Their uptimes alternate: back (like a reboot), then ahead again, which no reboot does."""
    import logging

    key = os.urandom(32)
    now = [1_000_000.0]
    with Store(tmp_path / "s.sqlite") as store:
        store.add_device("/edge/d", key, "edge")

        async def scenario():
            events: list[dict] = []
            d = Directory(store, MemoryFace(), "edge", on_event=events.append, clock=lambda: now[0])
            await d.start()
            try:
                async def announce(seq: int, uptime_ms: int, after_s: float) -> None:
                    now[0] += after_s
                    d.on_interest(_announcement(key, "/edge/d", seq, uptime_ms=uptime_ms))
                    await until(lambda: d.counters["announcements"] >= seq, 5.0, f"announcement {seq}")

                await announce(1, 500_000, 0)
                await announce(2, 510_000, 10)
                await announce(3, 1_000, 10)  # a reboot: uptime back to 1 s
                rebooted = [e for e in events if e["event"] == "join"]
                honest = d.counters["duplicates"], d.devices()[0][0].get("warning")
                await announce(4, 11_000, 10)  # and on from there: still one device
                await announce(5, 540_000, 10)  # the old uptime again: a second device with the name
                await announce(6, 31_000, 10)
                await announce(7, 560_000, 10)
                return events, rebooted, honest, d.counters["duplicates"], d.devices(), d.presence("d")
            finally:
                await d.stop()

        with caplog.at_level(logging.WARNING, logger="ndn_edge.directory"):
            events, rebooted, honest, duplicates, (page, _), presence = run_scenario(scenario)
    assert [e.get("rebooted", False) for e in rebooted] == [False, True]  # first join, then the reboot
    assert honest == (0, None)
    assert duplicates == 2
    joins = [e for e in events if e["event"] == "join"]
    assert len(joins) == 2  # the flip-flop is not reported as reboots
    assert "a call may run on either" in page[0]["warning"] and presence["warning"] == page[0]["warning"]
    warned = [r for r in caplog.records if r.getMessage() == "device_announced_twice"]
    assert len(warned) == 1  # once a minute per device, not per announcement


def test_directory_verifies_orders_and_expires_announcements(tmp_path):
    key = os.urandom(32)
    with Store(tmp_path / "s.sqlite") as store:
        store.add_device("/edge/d", key, "edge")

        async def scenario():
            events: list[dict] = []
            face = MemoryFace()
            d = Directory(store, face, "edge", on_event=events.append)
            fetched: list[str] = []

            async def fetch(name: str) -> None:
                fetched.append(name)
            d.fetcher = fetch
            await d.start()
            try:
                async def settle(n: int) -> None:
                    for _ in range(200):
                        if sum(d.counters[k] for k in ("announcements", "replayed", "bad_signature", "unknown_key",
                                                       "malformed", "digest")) >= n:
                            return
                        await asyncio.sleep(0.005)
                    raise AssertionError(f"directory did not process {n} announcements: {d.counters}")
                d.on_interest(_announcement(key, "/edge/d", 4, mtu=70_000))  # not a UDP datagram's size
                await settle(1)
                default_mtu = d.mtu("/edge/d")
                d.on_interest(_announcement(key, "/edge/d", 5, rx_floor=70, mtu=4096))
                d.on_interest(_announcement(key, "/edge/d", 5))  # same number: replay
                d.on_interest(_announcement(os.urandom(32), "/edge/d", 9))  # the name's key id differs
                d.on_interest(bytes(make_interest("/edge/other", InterestParam())))  # not an announcement
                await settle(4)
                online = d.is_online("d"), d.rx_floor("/edge/d"), default_mtu, d.mtu("d")
                d.on_interest(_announcement(key, "/edge/d", 6, state="sleep", sleep_ms=1000))
                d.on_interest(_announcement(key, "/edge/d", 7, state="up", lease_ms=50, desc="11" * 8))
                await settle(5)
                for _ in range(100):
                    if any(e["event"] == "offline" for e in events):
                        break
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0)  # let the description fetch task run
                await d.query()
            finally:
                await d.stop()
            return events, online, fetched, d.counters, face.sent

        events, online, fetched, counters, sent = run_scenario(scenario)
        assert [e["event"] for e in events] == ["join", "sleep", "join", "offline"]
        assert events[1]["sleep_until"] > events[1]["time"]
        assert online == (True, 70, 1500, 4096)  # the default until a device announces its mtu
        assert counters["replayed"] == 1 and counters["unknown_key"] == 1 and counters["announcements"] == 3
        assert counters["malformed"] == 1  # the mtu that is no datagram's size
        assert fetched == ["/edge/d", "/edge/d"]  # the hash differed from the stored (none) each time
        assert store.device("/edge/d").state == "offline"
        assert store.get_meta("ann_seq:" + wire.key_name("/edge/d", key)) == "7"
        assert sent and sent[-1][0] == 0x05 and b"_sd" in sent[-1]  # the query


# -- arguments against the service description (issue 15 item 10)


@pytest.mark.parametrize("args, message", [
    ({"celsius": "hot"}, "argument 'celsius' of sim/1/setpoint must be float, got str 'hot'"),
    ({"celsius": True}, "argument 'celsius' of sim/1/setpoint must be float, got bool True"),
    ({"wrong": 1}, "sim/1/setpoint takes no argument 'wrong'; it takes: celsius (float), mode (str)"),
    ({"mode": "eco"}, "sim/1/setpoint needs argument 'celsius' (float)"),
])
def test_arguments_are_checked_against_the_description(args, message):
    from ndn_edge.devices.descriptions import check_args

    svc = {"name": "setpoint", "args": {"celsius": {"type": "float", "required": True}, "mode": "str"}}
    with pytest.raises(InvalidArgument) as err:
        check_args(svc, args, "sim/1/setpoint")
    assert err.value.message == message


def test_arguments_that_fit_or_are_not_declared_pass():
    from ndn_edge.devices.descriptions import check_args

    check_args({"args": {"celsius": "float", "when": "timestamp"}}, {"celsius": 21, "when": "later"}, "t")
    check_args({"args": None}, {"anything": [1]}, "t")
    check_args(None, {"x": 1}, "t")
