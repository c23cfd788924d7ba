"""Harness for the gateway's client face in-process: a `ClientFace` over a real store and real UDP on 127.0.0.1
(`serving`), a bare UDP peer (`RawPeer`), hand-signed requests (`request`) and reply checks (`decode_reply`)."""
from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cbor2
from ndn.encoding import InterestParam, make_interest

from ndn_edge.clients.face import ClientFace
from ndn_edge.limits import Limits
from ndn_edge.state.home import Home
from ndn_edge.state.store import Store
from ndn_edge.wire import client_protocol as cw
from ndn_edge.wire import packets as wire
from ndn_edge.wire import tlv
from tests.fakes import FakeDevices


class Served(SimpleNamespace):
    """What `serving()` yields: the server, its store, the home and the fake device side."""


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, *, rules: dict[str, list[str]] | None = None,
                  store: Store | None = None, devices: FakeDevices | None = None,
                  limits: Limits | None = None) -> AsyncIterator[Served]:
    """A ClientFace on 127.0.0.1 over a real store; clients get credentials files in tmp_path/home."""
    home = Home(tmp_path / "home").ensure()
    own_store = store is None
    store = store or Store(home.db_path)
    for name, patterns in (rules or {}).items():
        if store.client(name) is None:
            key = secrets.token_bytes(32)
            store.add_client(name, key)
            home.write_client(name, key, "edge", replace=True)
        for pattern in patterns:
            store.grant(name, pattern)
    fake = devices or FakeDevices()
    server = ClientFace.build(store, fake, site="edge", limits=limits)
    host, port = await server.start()
    try:
        yield Served(server=server, store=store, home=home, devices=fake, address=f"{host}:{port}",
                     addr=(host, port))
    finally:
        await server.stop()
        if own_store:
            store.close()


class RawPeer(asyncio.DatagramProtocol):
    """A bare UDP socket towards the gateway: send anything, collect what comes back."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    @classmethod
    async def open(cls, addr: tuple[str, int]) -> RawPeer:
        _, peer = await asyncio.get_running_loop().create_datagram_endpoint(cls, remote_addr=addr)
        return peer

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.inbox.put_nowait(data)

    def error_received(self, exc: Exception) -> None:
        pass

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data)

    async def recv(self, timeout_s: float = 1.0) -> bytes | None:
        try:
            return await asyncio.wait_for(self.inbox.get(), timeout_s)
        except asyncio.TimeoutError:
            return None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class TimedSigner(wire.SeqSigner):
    """SeqSigner with a chosen SignatureTime and nonce."""

    def __init__(self, key_locator: str, key: bytes, seq: int, time_ms: int, nonce: int) -> None:
        super().__init__(key_locator, key, seq)
        self.time_ms = time_ms
        self.nonce = nonce

    def write_signature_info(self, signature_info: Any) -> None:
        super().write_signature_info(signature_info)
        signature_info.signature_time = self.time_ms
        signature_info.signature_nonce = self.nonce


def request(key: bytes, verb: str, target: tuple[str, ...] = (), params: Any = None, *, client: str = "alice",
            seq: int | None = None, time_ms: int | None = None, nonce: int | None = None,
            raw_params: bytes | None = None, sign_key: bytes | None = None) -> tuple[bytes, list]:
    """A signed client request as the protocol describes it (KeyLocator from `key`, HMAC with `sign_key` or
    `key`); returns (wire, final name)."""
    name = cw.request_name("edge", verb, target)
    signer = TimedSigner(cw.client_key_name("edge", client, key), sign_key or key,
                          seq if seq is not None else cw.SEQ.next(),
                          time_ms if time_ms is not None else int(time.time() * 1000),
                          nonce if nonce is not None else secrets.randbits(63))
    body = raw_params if raw_params is not None else cbor2.dumps(params if params is not None else {})
    packet, final = make_interest(name, InterestParam(lifetime=4000), body, signer=signer, need_final_name=True)
    return bytes(packet), final


def decode_reply(data: bytes, key: bytes) -> tuple[bool, Any]:
    """(ok, content) of a reply Data verified with `key`."""
    _, meta, content = wire.verify_data(data, key)
    return meta.content_type != tlv.CONTENT_NACK, cbor2.loads(content)


def creds(served: Served, name: str) -> bytes:
    return served.home.read_client(name).key
