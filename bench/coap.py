"""The CoAP anchor: an aiocoap server process (`apps/coap_server.py`) and aiocoap NON GET requests against it.

Both ends use aiocoap's `udp6` transport on 127.0.0.1. Requests are non-confirmable (NON; no CoAP
retransmission, no ACK), unauthenticated and unencrypted: the cheapest exchange CoAP has, which is the point of
the anchor.
"""
from __future__ import annotations

from pathlib import Path

from bench.calls import AnchorServer


class CoapServer(AnchorServer):
    """`apps/coap_server.py` in its own CPython process on 127.0.0.1:<free port>."""

    what = "aiocoap server"

    def __init__(self, payload_bytes: int, log_dir: Path) -> None:
        self.payload_bytes = payload_bytes
        super().__init__("coap_server.py", [str(payload_bytes)], log_dir)
        self.uri = f"coap://127.0.0.1:{self.port}/temperature"


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
