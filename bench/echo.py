"""The floor anchor of the gateway benchmark: a bare asyncio UDP echo server process (`apps/py_udp_echo.py`)
and a client in the benchmark's process that sends datagrams of a request's size and awaits each echo.

Both ends do the least a Python datagram exchange can: no parsing, no signature, no cache. The gateway target is
a fraction of this rate, measured in the same run.
"""
from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

from bench.calls import AnchorServer


class EchoServer(AnchorServer):
    """`apps/py_udp_echo.py` in its own CPython process on 127.0.0.1:<free port>, on `loop` (asyncio or uvloop)."""

    what = "udp echo server"

    def __init__(self, loop: str, log_dir: Path) -> None:
        self.loop = loop
        super().__init__("py_udp_echo.py", [loop], log_dir)


class EchoClient(asyncio.DatagramProtocol):
    """Sends datagrams of `size` bytes (a number in the first 8) and completes each call when it comes back."""

    def __init__(self, size: int) -> None:
        self.size = max(size, 8)
        self.transport: asyncio.DatagramTransport | None = None
        self.waiting: dict[int, asyncio.Future[bytes]] = {}
        self._ids = itertools.count()

    @classmethod
    async def open(cls, port: int, size: int) -> EchoClient:
        loop = asyncio.get_running_loop()
        _, client = await loop.create_datagram_endpoint(lambda: cls(size), remote_addr=("127.0.0.1", port))
        return client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: object) -> None:
        fut = self.waiting.pop(int.from_bytes(data[:8], "big"), None)
        if fut is not None and not fut.done():
            fut.set_result(data)

    async def call(self, i: int) -> bool:
        assert self.transport is not None
        n = next(self._ids)
        payload = n.to_bytes(8, "big") + bytes(self.size - 8)
        fut = asyncio.get_running_loop().create_future()
        self.waiting[n] = fut
        self.transport.sendto(payload)
        return await fut == payload

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
