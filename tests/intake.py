"""Harness for the report intake and pub/sub in-process, over a real store: device publications made as a
device makes them (`publication`), a face that keeps what is sent (`SentFace`), the parts wired as the gateway
wires them (`intake_and_pubsub`, and `alice_and_pubsub` over a store of its own)."""
from __future__ import annotations

import asyncio
import contextlib
import os
import socket


class SentFace:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sent.append(data)


def publication(key: bytes, seq: int, n: int, *, device: str = "/edge/sim/1", boot: str = "b00710ad",
                 sign_key: bytes | None = None) -> bytes:
    """A publication report as the device sends it: /edge/_pub/<digest>, signed with the device key and its
    send counter `seq`, publishing `n` on topic `t` (its publication number `n` too)."""
    import cbor2
    from ndn.encoding import InterestParam, make_interest

    from ndn_edge.wire import packets as wire

    params = cbor2.dumps({"topic": "t", "boot": boot, "seq": n, "value": n, "retain": True})
    signer = wire.SeqSigner(wire.key_name(device, key), sign_key or key, seq)  # the key's name, maybe not its key
    return bytes(make_interest("/edge/_pub", InterestParam(lifetime=1000), params, signer=signer))


async def intake_and_pubsub(store, face=None):
    """A report intake and pub/sub over `store` (as the gateway wires them), started; face keeps what they send."""
    from ndn_edge.devices import reports
    from ndn_edge.patterns.pubsub import PubSub

    intake = reports.ReportIntake(store, face or SentFace(), "edge")
    pubsub = PubSub(store, site="edge", intake=intake)
    intake.handlers[reports.PUBLICATION] = pubsub.on_report
    await intake.start()
    await pubsub.start()
    return intake, pubsub


def store_with_alice(path, key: bytes):
    """A store with device /edge/sim/1 (key) and client alice allowed sim/**."""
    from ndn_edge.state.store import Store

    store = Store(path)
    store.add_device("/edge/sim/1", key, "edge")
    store.add_client("alice", os.urandom(32))
    store.grant("alice", "sim/**")
    return store


@contextlib.asynccontextmanager
async def alice_and_pubsub(path, key: bytes, face=None):
    """(intake, pubsub) started over a fresh store_with_alice(path, key); stopped and the store closed after."""
    store = store_with_alice(path, key)
    try:
        intake, pubsub = await intake_and_pubsub(store, face)
        try:
            yield intake, pubsub
        finally:
            await pubsub.stop()
            await intake.stop()
    finally:
        store.close()


async def drain(intake) -> None:
    """Let the intake task process what is queued (bounded)."""
    for _ in range(1000):
        if intake._queue.empty():
            break
        await asyncio.sleep(0)
    for _ in range(3):
        await asyncio.sleep(0)


class GroupFace(SentFace):
    """A multicast face stand-in with an interface and a group port (the intake opens its unicast socket on the
    interface); `last_addr` is the sender the next `on_interest` is taken to come from."""

    def __init__(self, port: int = 1) -> None:
        super().__init__()
        self.iface, self.port, self.last_addr = "127.0.0.1", port, None


@contextlib.asynccontextmanager
async def reporting_device(path, key: bytes, face: GroupFace):
    """A store with alice and /edge/sim/1 at `path`, the intake and pub/sub on `face`, and a device's report socket
    on 127.0.0.1 (non-blocking): yields (store, intake, pubsub, socket); closes them after."""
    store = store_with_alice(path, key)
    intake, pubsub = await intake_and_pubsub(store, face)
    device = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    device.bind(("127.0.0.1", 0))
    device.setblocking(False)
    try:
        yield store, intake, pubsub, device
    finally:
        device.close()
        await pubsub.stop()
        await intake.stop()
        store.close()
