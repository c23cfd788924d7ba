"""Relayed requests between two gateways over a real nats-server on 127.0.0.1, in one process: the requesting
side (`forward.Remote`) and the serving side (`forward.Serve`) with a stand-in client face, so batching, replies,
"no responders", takeovers, deadlines and hostile bodies are checked without starting gateways
(docs/operations.md "More than one gateway")."""
from __future__ import annotations

import asyncio
import os
import subprocess
import time

import pytest

from ndn_edge.errors import DeadlineExceeded
from ndn_edge.federation import forward
from ndn_edge.federation.keys import FederationKey
from tests.federation import nats_server
from tests.support import free_tcp_port, run_scenario, stop_process, until

DEVICE = "/edge/c/1"
SUBJECT = "ndne.t.d.edge.c.1"


class Config:
    def device_subject(self, device: str) -> str:
        return "ndne.t.d." + ".".join(device.strip("/").split("/"))

    def gateway_subject(self, tag: str) -> str:
        return f"ndne.t.g.{tag}"


class Link:
    def __init__(self, nc) -> None:
        self.nc = nc
        self.config = Config()

    @property
    def connected(self) -> bool:
        return self.nc.is_connected


class Placement:
    """Device DEVICE is served by gateway "c" until `served_here` is set."""

    def __init__(self) -> None:
        self.served_here = False

    def route(self, device: str) -> str | None:
        return None if self.served_here or device != DEVICE else "c"

    def alive(self, tag: str | None) -> bool:
        return tag == "c"


class Face:
    """The serving gateway's client face: answers each request at once with a stand-in Data (0x06 and the
    request's bytes after its type), or never when `silent`."""

    def __init__(self) -> None:
        self.silent = False
        self.received: list[bytes] = []

    def receive_forwarded(self, data: bytes, deliver) -> None:
        self.received.append(data)
        if not self.silent:
            deliver(b"\x06" + data[1:])


def request(i: int) -> bytes:
    return b"\x05" + i.to_bytes(4, "big") + os.urandom(40)


@pytest.fixture
def nats_url():
    port = free_tcp_port()
    proc = subprocess.Popen([nats_server(), "-a", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        yield f"nats://127.0.0.1:{port}"
    finally:
        stop_process(proc)


def pair(nats_url: str, scenario) -> None:
    """Run `scenario(remote, serve, face, placement, c)` with gateway A's Remote and gateway C's Serve, each on
    its own NATS connection; C's connection `c` answers on the device's subject (a queue group)."""
    import nats

    async def main() -> None:
        a = c = None
        deadline = time.monotonic() + 10
        while a is None:
            try:
                a = await nats.connect(nats_url, connect_timeout=1, max_reconnect_attempts=0)
            except Exception:
                assert time.monotonic() < deadline, "nats-server did not start"
                await asyncio.sleep(0.05)
        c = await nats.connect(nats_url)
        key = FederationKey(os.urandom(32))
        placement = Placement()
        remote = forward.Remote(Link(a), key, placement, site="edge", tag="a")
        serve = forward.Serve(Link(c), key, tag="c")
        face = Face()
        serve.face = face
        await serve.start()
        try:
            await scenario(remote, serve, face, placement, c)
        finally:
            remote.close()
            await serve.stop()
            await a.close()
            await c.close()
    run_scenario(main, timeout_s=30)


def forwarded(remote, i: int, lifetime_ms: int = 4000):
    """A relayed call to DEVICE (the request's name read as `forward` reads it)."""
    return remote._relay(SUBJECT, DEVICE, request(i), lifetime_ms)


def test_requests_in_flight_together_travel_in_one_message_and_each_gets_its_own_reply(nats_url):
    async def scenario(remote, serve, face, placement, c) -> None:
        await serve.serve(DEVICE, True)
        requests = [request(i) for i in range(40)]
        futures = [remote._relay(SUBJECT, DEVICE, r, 4000) for r in requests]
        replies = await asyncio.gather(*futures)
        assert replies == [b"\x06" + r[1:] for r in requests]
        assert remote.counters["relay_messages"] < 40  # several requests in one message
        assert serve.counters["replies"] < 40 and serve.counters["relayed_in"] == 40
        messages = remote.counters["relay_messages"]
        alone = request(99)
        assert await remote._relay(SUBJECT, DEVICE, alone, 4000) == b"\x06" + alone[1:]
        assert remote.counters["relay_messages"] == messages + 1
        assert remote.results[(forward.RELAY, forward.OK)] == 41
    pair(nats_url, scenario)


def test_a_request_nobody_serves_is_retried_and_served_here_after_a_takeover(nats_url):
    async def scenario(remote, serve, face, placement, c) -> None:
        started = time.monotonic()
        futures = [forwarded(remote, i) for i in range(3)]
        await until(lambda: remote.counters["relay_retries"] >= 3, 5, "no responders, retried")
        placement.served_here = True  # this gateway took the device over
        assert await asyncio.gather(*futures) == [None, None, None]
        assert time.monotonic() - started < 2.0  # not the request's 4 s lifetime
        assert remote.counters["taken_over"] == 3
    pair(nats_url, scenario)


def test_a_request_the_serving_gateway_never_answers_ends_at_its_deadline(nats_url):
    async def scenario(remote, serve, face, placement, c) -> None:
        await serve.serve(DEVICE, True)
        face.silent = True
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await forwarded(remote, 1, lifetime_ms=300)
        assert 0.25 < time.monotonic() - started < 2.0
        assert remote.counters["relay_timeouts"] == 1 and not remote._pending
    pair(nats_url, scenario)


def test_hostile_bodies_on_both_sides_are_dropped_and_relaying_goes_on(nats_url):
    async def scenario(remote, serve, face, placement, c) -> None:
        import nats

        await serve.serve(DEVICE, True)
        good = request(1)
        packed = forward.pack(b"B1", [(b"1", good), (b"2", good)])
        hostile = [b"B1", b"B1\x00", b"B1\x05abc", packed[:-1], packed[:9], b"B1\x01x\xff\xff" + good,
                   forward.pack(b"B1", [(b"1", b"\x00garbage")])]
        for body in hostile:
            with pytest.raises(nats.errors.TimeoutError):
                await c.request(SUBJECT, body, timeout=0.2)
        assert not face.received and serve.counters["dropped"] == len(hostile)
        # Garbage sent to the requester's reply subjects: ignored, the real replies still arrive.
        assert await forwarded(remote, 2) is not None
        face.silent = True
        waiting = forwarded(remote, 3)
        await until(lambda: len(face.received) == 2, 5, "the request at the serving gateway")
        token = next(iter(remote._pending))
        for body in (b"b1", b"b1\x01", forward.pack(b"b1", [(token.encode(), b"\x00not a Data")]),
                     forward.pack(b"b1", [(b"12345", b"\x06x")]), b"\x00", b""):
            await c.publish(remote._replies.prefix + token, body)
            await c.publish(remote._replies.prefix + "b" + token, body)
        await c.flush()
        assert not waiting.done()
        face.silent = False
        await c.publish(remote._replies.prefix + token, b"\x06" + face.received[-1][1:])
        assert await waiting == b"\x06" + face.received[-1][1:]
    pair(nats_url, scenario)


class Store:
    def rules(self, client: str) -> list:
        return []


class Verbs:
    """The serving gateway's verbs: answer with the request's REQUEST_ID (the journal's key), or never."""

    def __init__(self) -> None:
        self.silent = False
        self.asked: list[bytes | None] = []

    def run(self, caller, verb: str, target, params):
        from ndn_edge.interfaces import REQUEST_ID

        self.asked.append(REQUEST_ID.get())
        if self.silent:
            return asyncio.get_running_loop().create_future()  # never answered
        return {"id": REQUEST_ID.get()}


def test_a_vouched_request_ends_at_once_when_its_gateway_goes(nats_url):
    """Nobody answering the subject, or the directory dropping the gateway while it holds the request, ends the
    wait with Gone (the router then routes the request again) long before its deadline; the same nonce gives
    the same journal identity wherever the request is served."""
    async def scenario(remote, serve, face, placement, c) -> None:
        import cbor2

        from ndn_edge.clients.verbs import Caller

        alice = Caller("alice", ())
        serve.store, serve.verbs = Store(), Verbs()
        started = time.monotonic()
        with pytest.raises(forward.Gone):  # nobody subscribes to the subject
            await remote.vouch(SUBJECT, alice, "call", ("c", "1", "counter"), {}, 20.0)
        assert time.monotonic() - started < 5.0  # not the 20 s deadline (NATS says "no responders" at once; 5 s
        #                                          leaves room for a machine busy with the suite's NATS clusters)
        await serve.serve(DEVICE, True)
        nonce = os.urandom(12)
        answer = await remote.vouch(SUBJECT, alice, "call", ("c", "1", "counter"), {}, 5.0, nonce=nonce)
        assert cbor2.loads(answer) == {"id": forward.vouch_identity(nonce)}
        serve.verbs.silent = True
        left = asyncio.Event()
        asyncio.get_running_loop().call_later(0.3, left.set)  # the gateway leaves the directory in 0.3 s
        started = time.monotonic()
        with pytest.raises(forward.Gone):
            await remote.vouch(SUBJECT, alice, "call", ("c", "1", "counter"), {}, 20.0, gone=left.is_set)
        assert 0.25 < time.monotonic() - started < 5.0  # not the 20 s deadline
        assert remote.counters["vouch_gone"] == 1
        for task in list(serve._tasks):
            task.cancel()
    pair(nats_url, scenario)


def test_packed_bodies_cut_anywhere_never_raise():
    items = [(b"7", b"\x05abc"), (b"123", bytes(300)), (b"9" * 20, b"")]
    body = forward.pack(b"B1", items)
    assert forward.unpack(body) == items
    for end in range(len(body)):
        result = forward.unpack(body[:end])
        assert result is None or result == items[:len(result)]  # cut between two items: the ones before it
    for i in range(2, len(body)):
        flipped = body[:i] + bytes([body[i] ^ 0xFF]) + body[i + 1:]
        result = forward.unpack(flipped)
        assert result is None or isinstance(result, list)
