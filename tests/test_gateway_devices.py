"""The gateway's device side (face, directory, invoker) against real MicroPython boards on loopback multicast.

Each test runs its DeviceSide in its own asyncio loop on its own multicast port; boards are real processes
(tests/apps/board.py on the MicroPython unix port), provisioned into a real SQLite store before they start.
Every wait is bounded; a test that leaves a task behind fails.
"""
from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import cbor2
import pytest
from ndn.encoding import InterestParam, MetaInfo, Name, make_data, make_interest, parse_interest
from ndn.security.signer.sha256_hmac_signer import HmacSha256Signer

from ndn_edge.devices.side import DeviceSide
from ndn_edge.errors import DeadlineExceeded, Internal, InvalidArgument, NotFound, PermissionDenied, Unavailable
from ndn_edge.wire import packets as wire
from tests.support import health, mp_features, online_with_services, start_board, until
from tests.support import run_scenario as run

SERVICES = ["add", "calls", "counter", "echo", "fail", "nap", "note", "notes", "refuse", "secret", "slow",
            "temperature",
            "ticks", "work"]


# -- harness


class Events:
    """Directory events collected through on_event, awaited with a deadline."""

    def __init__(self) -> None:
        self.seen: list[dict] = []
        self._changed: asyncio.Event | None = None

    def __call__(self, event: dict) -> None:
        self.seen.append(event)
        if self._changed is not None:
            self._changed.set()

    async def wait(self, kind: str, device: str, timeout_s: float = 5.0, after: int = 0) -> dict:
        """The first `kind` event for `device` at index >= `after`."""
        self._changed = self._changed or asyncio.Event()
        deadline = time.monotonic() + timeout_s
        while True:
            for ev in self.seen[after:]:
                if ev["event"] == kind and ev["device"] == device:
                    return ev
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {kind} event for {device} within {timeout_s}s; got {self.seen}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except asyncio.TimeoutError:
                pass


# -- discovery


def test_query_discovers_three_devices_and_their_services(make_board, peer, store, mcast_port):
    boards = [make_board(f"/edge/room{i}/th") for i in range(3)]
    # up before the gateway: found by the gateway's query, not by their boot announcements
    announced = [cbor2.loads(bytes(parse_interest(board.start(peer), with_tl=True)[2]))["desc"] for board in boards]

    async def scenario():
        events = Events()
        side = DeviceSide(store, port=mcast_port, on_event=events)
        started = time.monotonic()
        await side.start()
        try:
            for board in boards:
                await events.wait("join", board.name, timeout_s=6.0)
            await until(lambda: all(side.services(b.name) for b in boards), 5.0, "service descriptions")
            took = time.monotonic() - started
            first, token = side.devices(page_size=2)
            rest, end = side.devices(page_size=2, page_token=token)
            listed = first + rest
            services = side.services("room1/th")  # relative to the site
            metrics = side.metrics()
        finally:
            await side.stop()
        return took, listed, end, services, metrics

    took, listed, end, services, metrics = run(scenario)
    assert took < 6.0
    assert [d["name"] for d in listed] == [b.name for b in boards] and end is None
    assert all(d["state"] == "online" and d["services"] == len(SERVICES) for d in listed)
    assert all(d["lease_until"] > d["last_seen"] for d in listed)
    assert [s["name"] for s in services] == SERVICES
    by_name = {s["name"]: s for s in services}
    assert by_name["temperature"]["cache_ms"] == 2000 and by_name["secret"]["private"] is True
    assert by_name["counter"]["idempotent"] is False
    # what the device left out (its defaults) is filled in: every reader sees every key
    assert by_name["calls"] == {"name": "calls", "doc": None, "args": None, "result": None, "cache_ms": None,
                                "idempotent": True, "private": False, "long_running": False}
    assert metrics["directory_desc_fetches"] == 3 and metrics["directory_bad_signature"] == 0
    # the gateway hashed the _desc Content it fetched (sha256[:8]) and got what each device announced
    assert [store.device(b.name).desc_hash for b in boards] == announced
    with pytest.raises(NotFound):
        DeviceSide(store, port=mcast_port).services("/edge/nobody")


# -- calls and cache


def test_calls_return_values_errors_and_cache_hits(make_board, peer, store, mcast_port):
    board = make_board()

    async def scenario():
        side = DeviceSide(store, port=mcast_port)
        await side.start()
        try:
            await start_board(board, peer)
            await online_with_services(side, board)
            out: dict[str, Any] = {}
            first = await side.call(board.name, "temperature")
            out["add"] = (await side.call("lab/b1", "add", {"a": 2, "b": 40})).value
            out["echo"] = (await side.call(board.name, "echo", {"s": "x", "b": b"\x00", "l": [1.5, None]})).value
            try:
                out["secret"] = (await side.call(board.name, "secret", {"x": 7})).value  # private: sealed both ways
            except Unavailable as err:  # an interpreter without cryptolib (CI's 32-bit builds) says so
                assert not mp_features(board.interpreter)["cryptolib"] and "cryptolib" in str(err)
                out["secret"] = {"x": 7, "code": 1234}
            out["slow"] = (await side.call(board.name, "slow", {"ms": 30})).value
            errors = {}
            for service, args in [("fail", None), ("refuse", None), ("nope", None), ("add", {"c": 1})]:
                try:
                    await side.call(board.name, service, args)
                except Exception as err:
                    errors[service if service != "add" else "add_c"] = err
            requests = (await health(side, board))["requests"]
            hit = await side.call(board.name, "temperature")
            # the entry ages while it is served: call again until the millisecond clock moves (bounded)
            deadline = time.monotonic() + 1.0
            while True:
                later = await side.call(board.name, "temperature")
                if later.age_ms > hit.age_ms or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.005)
            try:
                await side.call(board.name, "add", {"c": 1})  # negative answer, cached for a second
            except InvalidArgument as err:
                errors["add_c_again"] = err
            after = (await health(side, board))["requests"]
            metrics = side.metrics()
        finally:
            await side.stop()
        return first, hit, later, out, errors, requests, after, metrics

    first, hit, later, out, errors, requests, after, metrics = run(scenario)
    assert (first.value, first.cached, first.stale) == (21.5, False, False)
    assert (hit.value, hit.cached, hit.stale) == (21.5, True, False)
    assert later.cached and later.age_ms > hit.age_ms
    assert after == requests + 1  # only the second _health reached the device: the hits did not
    assert out == {"add": 42, "echo": {"s": "x", "b": b"\x00", "l": [1.5, None]}, "secret": {"x": 7, "code": 1234},
                   "slow": 30}
    assert isinstance(errors["fail"], Internal) and "boom" in errors["fail"].message
    assert isinstance(errors["refuse"], PermissionDenied) and errors["refuse"].message == "not today"
    assert isinstance(errors["nope"], NotFound) and "temperature" in errors["nope"].message
    assert isinstance(errors["add_c"], InvalidArgument) and "'c'" in errors["add_c"].message
    assert isinstance(errors["add_c_again"], InvalidArgument)
    assert metrics["invoker_negative_hits"] >= 1 and metrics["invoker_cache_hits"] >= 2


def test_concurrent_identical_misses_make_one_device_request(make_board, peer, store, mcast_port):
    board = make_board()

    async def scenario():
        side = DeviceSide(store, port=mcast_port)
        await side.start()
        try:
            await start_board(board, peer)
            await online_with_services(side, board)
            before = (await health(side, board))["requests"]
            sent = side.metrics()["invoker_device_requests"]
            results = await asyncio.gather(*(side.call(board.name, "temperature") for _ in range(20)))
            sent_after = side.metrics()["invoker_device_requests"]
            after = (await health(side, board))["requests"]
            coalesced = side.metrics()["invoker_coalesced"]
        finally:
            await side.stop()
        return results, before, after, sent_after - sent, coalesced

    results, before, after, sent, coalesced = run(scenario)
    assert [r.value for r in results] == [21.5] * 20
    assert sent == 1 and coalesced == 19
    assert after - before == 2  # one temperature request and the second _health


# -- failure handling


def test_dead_device_fails_fast_serves_stale_and_is_probed_after_restart(make_board, peer, store, mcast_port):
    board = make_board()

    async def scenario():
        events = Events()
        side = DeviceSide(store, port=mcast_port, on_event=events)
        await side.start()
        try:
            await start_board(board, peer)
            await online_with_services(side, board)
            assert (await side.call(board.name, "temperature")).cached is False
            board.proc.kill()  # no leave announcement: the lease still says online
            await asyncio.to_thread(board.proc.wait, 10)
            for _ in range(3):
                with pytest.raises(DeadlineExceeded):
                    await side.call(board.name, "echo", {"n": 1}, timeout_s=0.3)
            breaker = side.invoker.breaker(board.name)
            assert breaker is not None and breaker.state == "open"
            began = time.monotonic()
            with pytest.raises(Unavailable, match="circuit open"):
                await side.call(board.name, "echo", {"n": 1}, timeout_s=2.0)
            fail_fast_s = time.monotonic() - began
            key = (board.name, "temperature", cbor2.dumps({}, canonical=True))
            await until(lambda: side.invoker.cache.fresh(key) is None, 3.0, "temperature to expire")
            began = time.monotonic()
            stale = await side.call(board.name, "temperature", timeout_s=2.0)
            stale_s = time.monotonic() - began
            mark = len(events.seen)
            board.stop()
            await start_board(board, peer)  # same key and flash: a reboot
            await events.wait("join", board.name, after=mark)
            probe = await side.call(board.name, "temperature", timeout_s=2.0)
            state = breaker.state
            counter = (await side.call(board.name, "counter")).value
        finally:
            await side.stop()
        return fail_fast_s, stale, stale_s, probe, state, counter, side.metrics()

    fail_fast_s, stale, stale_s, probe, state, counter, metrics = run(scenario)
    assert fail_fast_s < 0.1
    # served stale once the freshness (less its jitter) is over, at once
    assert stale.value == 21.5 and stale.stale and stale.cached and stale.age_ms >= 2000 * 0.9 and stale_s < 0.1
    assert (probe.value, probe.cached, probe.stale) == (21.5, False, False) and state == "closed"
    assert counter == 1  # the restarted device accepted a number above its announced floor
    assert metrics["invoker_timeouts"] == 3 and metrics["invoker_fail_fast"] >= 1
    assert metrics["invoker_stale_served"] == 1


def test_lease_lapse_marks_offline_and_leave_is_reported(make_board, peer, store, mcast_port):
    short = make_board("/edge/lab/short", lease_ms=600)
    polite = make_board("/edge/lab/polite")

    async def scenario():
        events = Events()
        side = DeviceSide(store, port=mcast_port, on_event=events)
        await side.start()
        try:
            await start_board(short, peer)
            await start_board(polite, peer)
            await events.wait("join", short.name)
            await events.wait("join", polite.name)
            short.proc.kill()
            killed = time.monotonic()
            offline = await events.wait("offline", short.name, timeout_s=3.0)
            lapse_s = time.monotonic() - killed
            began = time.monotonic()
            with pytest.raises(Unavailable, match="offline"):
                await side.call(short.name, "temperature", timeout_s=2.0)
            fail_fast_s = time.monotonic() - began
            await asyncio.to_thread(polite.stop)  # SIGINT: the device announces "leave"
            await events.wait("leave", polite.name)
            listed = {d["name"]: d["state"] for d in side.devices()[0]}
            online = side.is_online(short.name), side.is_online(polite.name)
        finally:
            await side.stop()
        return offline, lapse_s, fail_fast_s, listed, online

    offline, lapse_s, fail_fast_s, listed, online = run(scenario)
    assert lapse_s < 2.0 and offline["time"] > 0
    assert fail_fast_s < 0.1
    assert listed == {short.name: "offline", polite.name: "left"}
    assert online == (False, False)
    assert store.device(short.name).state == "offline" and store.device(polite.name).state == "left"


def test_retransmitted_non_idempotent_calls_run_exactly_once(make_board, peer, store, mcast_port):
    board = make_board()

    async def scenario():
        side = DeviceSide(store, port=mcast_port)
        await side.start()
        try:
            await start_board(board, peer)
            await online_with_services(side, board)
            counter = Name.from_str(f"{board.name}/counter")
            seen_out: set[bytes] = set()
            seen_in: set[bytes] = set()
            send, deliver = side.face.send, side.face.on_packet

            def is_counter(packet: bytes) -> bytes | None:
                name = (parse_interest if packet[0] == 0x05 else _data_name)(packet)[0]
                return bytes(Name.encode(name)) if name[:-1] == counter else None

            def lossy_send(packet: bytes) -> None:  # the first transmission of every counter request is lost
                key = is_counter(packet)
                if key is not None and key not in seen_out:
                    seen_out.add(key)
                    return
                send(packet)

            def lossy_deliver(packet: bytes) -> None:  # so is the first reply to each
                key = is_counter(packet) if packet[0] == 0x06 else None
                if key is not None and key not in seen_in:
                    seen_in.add(key)
                    return
                deliver(packet)

            side.face.send, side.face.on_packet = lossy_send, lossy_deliver
            results = await asyncio.gather(*(side.call(board.name, "counter", timeout_s=10.0) for _ in range(30)))
            side.face.send, side.face.on_packet = send, deliver
            count = (await side.call(board.name, "calls")).value
            metrics = side.metrics()
            drops = (await health(side, board))["drops"]
        finally:
            await side.stop()
        return results, count, metrics, len(seen_out), len(seen_in), drops

    results, count, metrics, lost_out, lost_in, drops = run(scenario)
    assert count == 30
    assert sorted(r.value for r in results) == list(range(1, 31))
    assert lost_out == 30 and lost_in == 30
    assert metrics["invoker_retries"] >= 60 and metrics["invoker_timeouts"] == 0
    assert drops["replay"] == 0  # every retransmission was answered from the device's reply cache


def test_a_request_larger_than_the_device_reads_is_refused_at_once(make_board, peer, store, mcast_port):
    """A call whose arguments made an Interest above the device's 1,500-byte receive buffer was dropped unread
    by the device: six transmissions, DEADLINE_EXCEEDED after the whole timeout, and a timeout counted against a
    healthy device's breaker. Now it is RESOURCE_EXHAUSTED before anything is sent."""
    from ndn_edge.errors import ResourceExhausted
    from ndn_edge.patterns.notify import notify

    board = make_board()

    async def scenario():
        side = DeviceSide(store, port=mcast_port)
        await side.start()
        try:
            await start_board(board, peer)
            await online_with_services(side, board)
            fits = await side.call(board.name, "echo", {"x": "y" * 1000})
            sent = side.metrics()["invoker_device_requests"]
            started = time.monotonic()
            with pytest.raises(ResourceExhausted, match=r"is 2,\d{3} bytes, but the device reads at most 1,500"):
                await side.call(board.name, "echo", {"x": "y" * 2000}, timeout_s=3.0)
            refused_in = time.monotonic() - started
            with pytest.raises(ResourceExhausted, match="its mtu"):
                await notify(side, board.name, "echo", {"x": "y" * 2000})
            after = await side.call(board.name, "echo", {"after": True})
            return fits.value, refused_in, side.metrics(), sent, after.value, side.invoker.breaker(board.name)
        finally:
            await side.stop()

    value, refused_in, metrics, sent, after, breaker = run(scenario)
    assert value == {"x": "y" * 1000} and after == {"after": True}
    assert refused_in < 0.5
    assert metrics["invoker_device_requests"] == sent + 1  # only the call after it went out
    assert metrics["invoker_timeouts"] == 0 and breaker is not None and breaker.state == breaker.CLOSED


def _data_name(packet: bytes):
    from ndn.encoding import parse_data
    return parse_data(packet, with_tl=True)


# -- hostile traffic


def test_malformed_datagrams_and_forged_packets_are_counted_and_harmless(make_board, peer, store, mcast_port):
    board = make_board()
    other = os.urandom(32)
    store.add_device("/edge/lab/quiet", os.urandom(32), "edge")  # provisioned, never announces

    def announcement(key: bytes, key_name: str, seq: int, state: str = "leave") -> bytes:
        params = cbor2.dumps({"state": state, "lease_ms": 60000, "rx_floor": 1, "desc": "00" * 8, "uptime_ms": 1})
        signer = wire.SeqSigner(key_name, key, seq)
        return bytes(make_interest("/edge/_sd/ann", InterestParam(lifetime=1000), params, signer=signer))

    async def scenario():
        side = DeviceSide(store, port=mcast_port)
        await side.start()
        try:
            boot = await start_board(board, peer)
            await online_with_services(side, board)
            await until(lambda: side.metrics()["directory_announcements"] >= 1, 2.0, "boot announcement")
            real_key_name = wire.key_name(board.name, board.key)
            garbage = [b"\x00", b"\x05\x10abc", b"\x06\xfd\x00", b"\x01\x02" + os.urandom(62),
                       b"\x07\x00", b"\x64\x04\x77\x02\x00\x00", bytes([0x05, 0x01, 0x00]) + b"trailing"]
            for datagram in garbage:
                peer.send(datagram)
            peer.send(b"\x64\x00")  # idle LpPacket: ignored, not malformed
            peer.send(announcement(other, "/edge/lab/ghost/KEY/00000000", 10))  # nobody's key
            peer.send(announcement(other, real_key_name, 1 << 40))  # the device's key name, a wrong key
            peer.send(boot)  # a replay of the device's real boot announcement
            tampered = bytearray(boot)
            tampered[boot.index(b"up")] = ord("U")  # "Up": the parameters digest no longer matches
            peer.send(bytes(tampered))
            await until(lambda: side.metrics()["face_malformed"] >= len(garbage), 3.0, "malformed count")
            await until(lambda: side.metrics()["directory_replayed"] >= 1 and
                        side.metrics()["directory_bad_signature"] >= 1 and
                        side.metrics()["directory_unknown_key"] >= 1 and
                        side.metrics()["directory_digest"] >= 1, 3.0, "forged announcements counted")

            # a forged reply (right name, wrong key) arrives before the real one
            send = side.face.send

            def forge_first(packet: bytes) -> None:
                if packet[0] == 0x05 and b"echo" in packet:
                    name = parse_interest(packet, with_tl=True)[0]
                    forged = make_data(name, MetaInfo(), cbor2.dumps("forged"),
                                       signer=HmacSha256Signer(real_key_name, other))
                    peer.send(bytes(forged))
                send(packet)

            side.face.send = forge_first
            echoed = await side.call(board.name, "echo", {"v": 1}, timeout_s=3.0)
            side.face.send = send
            value = (await side.call(board.name, "add", {"a": 1, "b": 1})).value
            online = side.is_online(board.name)
            quiet_online = side.is_online("/edge/lab/quiet")
            metrics = side.metrics()
        finally:
            await side.stop()
        return echoed, value, online, quiet_online, metrics

    echoed, value, online, quiet_online, metrics = run(scenario)
    assert echoed.value == {"v": 1} and value == 2
    assert online and not quiet_online  # the forged "leave" changed nothing
    assert metrics["face_malformed"] == 7 and metrics["face_idle"] >= 1
    assert metrics["directory_unknown_key"] == 1 and metrics["directory_bad_signature"] == 1
    assert metrics["directory_replayed"] == 1 and metrics["directory_digest"] == 1
    assert metrics["invoker_bad_packets"] == 1
    assert store.device(board.name).state == "online"


def test_unknown_device_and_bad_arguments_fail_without_traffic(store, mcast_port):
    store.add_device("/edge/lab/never", os.urandom(32), "edge")

    async def scenario():
        side = DeviceSide(store, port=mcast_port)
        await side.start()
        try:
            errors = []
            for device, service, args in [("/edge/lab/nobody", "temperature", None),
                                          ("/edge/lab/never", "temperature", None),
                                          ("/edge/lab/never", "a/b", None),
                                          ("/edge/lab/never", "echo", ["not", "a", "map"])]:
                try:
                    await side.call(device, service, args, timeout_s=1.0)
                except Exception as err:
                    errors.append(err)
            sent = side.metrics()["invoker_device_requests"]
        finally:
            await side.stop()
        return errors, sent

    errors, sent = run(scenario)
    assert [type(e) for e in errors] == [NotFound, Unavailable, InvalidArgument, InvalidArgument]
    assert "has not announced" in errors[1].message
    assert sent == 0


# -- where multicast does not get through


def test_a_device_that_cannot_hear_the_group_is_served_over_unicast(make_board, micropython, peer, store, mcast_port,
                                                                  tmp_path):
    # Board b is on another port: its multicast (group 224.0.23.170 on that port) never meets the gateway's, either
    # way, as on a Wi-Fi network that filters multicast. It is configured with the gateway's unicast address, so
    # its announcements, replies and reports reach the gateway; the gateway learns b's address from its verified
    # announcements and, once a request to the group went unanswered, reaches b by unicast: same signatures, replay
    # protection and exactly-once as over multicast.
    from ndn_edge.devices import paths
    from tests.support import Board, McastPeer, free_udp_port, send_unicast
    unicast_port, other_port = free_udp_port(), free_udp_port()
    a = make_board("/edge/lab/a")
    b = Board(micropython, other_port, tmp_path / "b", name="/edge/lab/b", gateway=f"127.0.0.1:{unicast_port}")
    store.add_device(b.name, b.key, "edge")
    b_group = McastPeer(other_port)  # only to see b boot: the gateway's group is on mcast_port

    async def scenario():
        side = DeviceSide(store, port=mcast_port, unicast_port=unicast_port)
        await side.start()
        try:
            await start_board(a, peer)
            await start_board(b, b_group)
            await online_with_services(side, a)
            await online_with_services(side, b)  # b's _desc came by unicast
            listed = {d["name"]: d for d in side.devices()[0]}
            # exactly once: the first reply to each counter call is lost, the retransmission gets the cached one
            seen: set[bytes] = set()
            deliver = side.unicast.on_packet

            def lossy(packet: bytes) -> None:
                name = bytes(packet[:60])
                if packet[0] == 0x06 and b"counter" in name and name not in seen:
                    seen.add(name)
                    return
                deliver(packet)
            side.unicast.on_packet = lossy
            counts = [(await side.call(b.name, "counter", timeout_s=5.0)).value for _ in range(5)]
            side.unicast.on_packet = deliver
            calls = (await side.call(b.name, "calls")).value
            # replay protection and signatures: an old number, and a wrong key, sent to b by unicast
            old, _ = wire.make_call(f"{b.name}/counter", None, b.key, 1, signer_owner=b.name)
            forged, _ = wire.make_call(f"{b.name}/counter", None, os.urandom(32), 10**6, signer_owner=b.name)
            send_unicast(old, other_port)
            send_unicast(forged, other_port)
            await until(lambda: health(side, b), 5.0, "b's health")
            drops = await until(_drops_seen(side, b), 5.0, "b to count the replay and the wrong key")
            after = (await side.call(b.name, "calls")).value
            # a configured path is kept to: a on unicast (its address is its own here), b on multicast (unreachable)
            paths.set_mode(store, a.name, "unicast")
            paths.set_mode(store, b.name, "multicast")
            await asyncio.sleep(paths.MODE_REFRESH_S)  # modes are read from the store at most once a second
            a_answer = (await side.call(a.name, "temperature")).value
            relisted = {d["name"]: d for d in side.devices()[0]}
            try:
                await side.call(b.name, "calls", timeout_s=1.0)
                b_unreachable = False
            except DeadlineExceeded:
                b_unreachable = True
            metrics = side.metrics()
        finally:
            await side.stop()
        return listed, counts, calls, drops, after, a_answer, relisted, b_unreachable, metrics, len(seen)

    try:
        listed, counts, calls, drops, after, a_answer, relisted, b_unreachable, metrics, lost = run(scenario, 60.0)
    finally:
        b.stop()
        b_group.close()
    assert listed[a.name]["path"] == "multicast" and listed[b.name]["path"] == "unicast"
    assert listed[b.name]["address"] == f"127.0.0.1:{other_port}" and listed[b.name]["path_mode"] == "auto"
    assert counts == [1, 2, 3, 4, 5] and calls == 5 and after == 5 and lost == 5
    assert drops["replay"] >= 1 and drops["key"] + drops["signature"] >= 1
    assert a_answer == 21.5 and relisted[a.name]["path"] == "unicast" and relisted[a.name]["path_mode"] == "unicast"
    assert relisted[b.name]["path"] == "multicast" and b_unreachable
    assert metrics["paths_switched_to_unicast"] >= 1 and metrics["unicast_received"] > 0


def _drops_seen(side, board):
    async def check():
        drops = (await health(side, board))["drops"]
        return drops if drops["replay"] >= 1 and drops["key"] + drops["signature"] >= 1 else None
    return check
