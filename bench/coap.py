"""The CoAP anchor: an aiocoap server process (`apps/coap_server.py`) and aiocoap NON GET requests against it.

Both ends use aiocoap's `udp6` transport on 127.0.0.1. Requests are non-confirmable (NON; no CoAP
retransmission, no ACK), unauthenticated and unencrypted: the cheapest exchange CoAP has, which is the point of
the anchor.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.calls import StartFailed, free_port
from bench.mpy import APPS

READY_S = 15.0


class CoapServer:
    """`apps/coap_server.py` in its own CPython process on 127.0.0.1:<free port>."""

    def __init__(self, payload_bytes: int, log_dir: Path) -> None:
        self.port = free_port()
        self.payload_bytes = payload_bytes
        self.uri = f"coap://127.0.0.1:{self.port}/temperature"
        self._log = open(log_dir / "coap-server.log", "wb")
        self.proc = subprocess.Popen([sys.executable, str(APPS / "coap_server.py"), str(self.port),
                                      str(payload_bytes)], stdout=subprocess.PIPE, stderr=self._log,
                                     stdin=subprocess.DEVNULL)

    def wait_ready(self) -> None:
        """Until the server prints "ready"; StartFailed if it exits or stays silent."""
        import selectors

        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(READY_S):
                raise StartFailed(f"aiocoap server not ready after {READY_S:g} s")
        line = self.proc.stdout.readline().decode(errors="replace").strip()
        if line != "ready":
            self.proc.wait(5)
            raise StartFailed(f"aiocoap server did not start (exit {self.proc.returncode}); see "
                              f"{self._log.name}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.proc.stdout.close()
        self._log.close()


class CoapClient:
    """An aiocoap client context sending NON GETs to one URI; `call` checks the payload size."""

    def __init__(self, uri: str, payload_bytes: int) -> None:
        self.uri = uri
        self.payload_bytes = payload_bytes
        self.ctx = None
        self.response_types: set[str] = set()

    async def __aenter__(self) -> CoapClient:
        import aiocoap

        self.ctx = await aiocoap.Context.create_client_context(transports=["udp6"])
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ctx.shutdown()

    def message(self):
        """A NON GET: `transport_tuning=Unreliable` where aiocoap has it, else the older `mtype=NON`."""
        import aiocoap

        if hasattr(aiocoap, "Unreliable"):
            return aiocoap.Message(code=aiocoap.GET, uri=self.uri, transport_tuning=aiocoap.Unreliable())
        return aiocoap.Message(code=aiocoap.GET, uri=self.uri, mtype=aiocoap.NON)

    async def call(self, i: int) -> bool:
        response = await self.ctx.request(self.message()).response
        if len(self.response_types) < 2:
            self.response_types.add(str(response.mtype))
        return response.code.is_successful() and len(response.payload) == self.payload_bytes
