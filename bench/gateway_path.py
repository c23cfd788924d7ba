"""Part `path` of the gateway benchmark: the gateway's own CPU per call, in this process, on the loop the gateway
runs on, with no other process involved.

The real `ClientFace` and `DeviceSide` (directory, invoker, request windows, requester, the multicast face's real
socket and its echoes) serve pre-signed client requests handed to the face's datagram callback, 64 at a time;
replies are collected from the face instead of being sent. For the uncached path a responder in this process
answers each device Interest the face sends, as a device would (a Data signed with the device key), and its own
CPU time is measured and subtracted. Only the client's sending socket and the device are missing, so the
figure is what the gateway spends per call, free of what the machine's other processes do to a closed-loop
rate (cache and scheduler effects still count).
"""
from __future__ import annotations

import asyncio
import os
import secrets
import time
from pathlib import Path
from typing import Any

import cbor2

from bench.calls import free_port

BATCH = 64
DEVICE = "/edge/sim/1"
CACHED_SERVICE, UNCACHED_SERVICE = "cached", "uncached"


async def _measure(scratch: Path, calls: int) -> dict[str, Any]:
    from ndn.encoding import InterestParam, MetaInfo, Name, make_data, make_interest
    from ndn.security import HmacSha256Signer

    from ndn_edge.clients.face import ClientFace
    from ndn_edge.devices.side import DeviceSide
    from ndn_edge.state.store import Store
    from ndn_edge.wire import client_protocol as cw
    from ndn_edge.wire import framing
    from ndn_edge.wire import packets as wire

    store = Store(scratch / "path.db")
    client_key, device_key = secrets.token_bytes(32), secrets.token_bytes(32)
    store.add_client("bench", client_key)
    store.grant("bench", "**")
    store.add_device(DEVICE, device_key, "edge")
    store.set_description(DEVICE, "00" * 8, {"services": [
        {"name": CACHED_SERVICE, "idempotent": True, "cache_ms": 600_000},
        {"name": UNCACHED_SERVICE, "idempotent": False, "cache_ms": 0}]})
    port = free_port()
    side = DeviceSide(store, port=port, unicast_port=free_port())
    await side.start()
    face = ClientFace.build(store, side, site="edge")
    await face.start()
    replies: list[bytes] = []
    face._send = lambda packet, addr: replies.append(packet)  # type: ignore[method-assign]
    value = cbor2.dumps(21.5)
    device_key_name = wire.key_name(DEVICE, device_key)
    cached_component = bytes(Name.from_str(CACHED_SERVICE)[0])
    loop = asyncio.get_running_loop()
    responder_s = [0.0]
    send_to_group = side.face.send

    def send(packet: bytes) -> None:  # the real send (socket, echo), then the device's answer
        send_to_group(packet)
        t = time.process_time()
        name = framing.name_tlv(packet)
        if packet[0] == 0x05 and name is not None and b"_sd" not in name:
            # as a device answers: a FreshnessPeriod of the service's cache_ms, so the cached service is cached
            fresh = 600_000 if cached_component in bytes(name) else None
            reply = bytes(make_data(Name.from_bytes(bytes(name)), MetaInfo(freshness_period=fresh), value,
                                    signer=HmacSha256Signer(device_key_name, device_key)))
            loop.call_soon(side._dispatch, reply, ("127.0.0.1", port))
        responder_s[0] += time.process_time() - t

    side.face.send = send  # type: ignore[method-assign]
    try:
        params = cbor2.dumps({"state": "up", "lease_ms": 3_600_000, "rx_floor": 1, "desc": "00" * 8,
                              "uptime_ms": 10})
        side.directory.on_interest(bytes(make_interest(
            "/edge/_sd/ann", InterestParam(lifetime=1000), params,
            signer=wire.SeqSigner(wire.key_name(DEVICE, device_key), device_key, 5))))
        deadline = loop.time() + 5
        while not side.directory.is_online(DEVICE):
            if loop.time() > deadline:
                raise RuntimeError("the simulated device did not come online")
            await asyncio.sleep(0.01)
        signer = wire.InterestSigner(client_key, cw.encoded_name(cw.client_key_name("edge", "bench", client_key)))
        body = cbor2.dumps({"args": None, "timeout_ms": 4750})

        def request(service: str) -> bytes:
            nonces = os.urandom(12)
            name = b"".join(cw.request_name("edge", cw.VERB_CALL, ("sim", "1", service)))
            return signer.sign(name, body, cw.SEQ.next(), time_ms=int(time.time() * 1000),
                               signature_nonce=nonces[:8], nonce=nonces[8:], lifetime_ms=5000)[0]

        async def run(service: str, n: int) -> float:
            """CPU seconds of this process for `n` calls (minus the responder's)."""
            cpu = 0.0
            responder_s[0] = 0.0
            for _ in range(0, n, BATCH):
                batch = [request(service) for _ in range(BATCH)]
                target = len(replies) + BATCH
                t = time.process_time()
                for packet in batch:
                    face._receive(packet, ("127.0.0.1", 1))
                until = loop.time() + 10
                while len(replies) < target:
                    if loop.time() > until:
                        raise RuntimeError(f"{service}: {target - len(replies)} replies missing")
                    await asyncio.sleep(0)
                cpu += time.process_time() - t
            return cpu - responder_s[0]

        out: dict[str, Any] = {"calls": calls, "batch": BATCH}
        for service in (CACHED_SERVICE, UNCACHED_SERVICE):
            await run(service, BATCH * 10)  # warm up (and fill the cache)
            out[f"{service}_us_per_call"] = round(await run(service, calls) / calls * 1e6, 1)
        out["errors"] = face.stats["errors"]
        return out
    finally:
        await face.stop()
        await side.stop()
        store.close()


def measure_path(calls: int, scratch: Path, loop_name: str) -> dict[str, Any]:
    """The gateway's CPU per cached and per uncached call, on `loop_name` (uvloop or asyncio)."""
    calls = max(BATCH, calls // BATCH * BATCH)
    if loop_name == "uvloop":
        import uvloop

        result = uvloop.run(_measure(scratch, calls))
    else:
        result = asyncio.run(_measure(scratch, calls))
    result["loop"] = loop_name
    return result
