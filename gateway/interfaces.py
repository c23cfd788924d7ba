"""The seams between the gateway's parts, as typed Protocols (in the manner of aiocoap's `interfaces.py`).

    Face          one datagram endpoint: the devices' multicast group (`devices.face.MulticastFace`)
    DeviceAccess  what the client verbs use of the device side (`devices.side.DeviceSide` implements it; the
                  client-face tests use a double that implements it too)
    Forwarder, Router, CallJournal, SeqSource
                  where a federation (`ndn_edge.federation`) plugs in: the client face relays a request for a
                  device another gateway serves (`Forwarder`), the verbs route what they cannot serve here
                  (`Router`), the invoker journals non-idempotent calls (`CallJournal`, keyed by `REQUEST_ID`)
                  and takes sequence numbers from shared leases (`SeqSource`). A single gateway sets none of
                  them and pays one `is None` test where each would apply.

Each Protocol says exactly what its users call, so mypy checks both the real part and every test double against
it, and no part probes another with `getattr` or `hasattr`. The store is a concrete class
(`state.store.Store`, SQLite in a file or in memory), and so are its records: a double of a database would test
the double.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, Protocol

from ndn_edge.answers import Answer


class Face(Protocol):
    """A datagram endpoint: open it, send packets, get every packet received through `on_packet`."""

    on_packet: Callable[[bytes], None] | None

    async def open(self) -> None: ...

    def send(self, data: bytes) -> None: ...

    def close(self) -> None: ...

    def counters(self) -> dict[str, int]: ...


class Ticket(Protocol):
    """A call the cache could not answer (`DeviceAccess.prepare`), to be completed by asking the device."""

    device: str
    service: str
    trace: Any  # the call's CallTrace (ndn_edge.observability.trace), set by the caller


class DeviceAccess(Protocol):
    """The device side as the client verbs use it: calls (through the cache), listings and counters."""

    site: str

    def resolve(self, device: str) -> str:
        """The full device name: `/edge/lab/b1` as is, `lab/b1` under the site."""
        ...

    def prepare(self, device: str, service: str, args: dict[str, Any] | None) -> Answer | Ticket:
        """A fresh cached answer at once, or a ticket for `complete`; a cached error is raised."""
        ...

    async def complete(self, ticket: Any, *, timeout_s: float) -> Answer:
        """Ask the device for the call `prepare` could not answer."""
        ...

    async def call(self, device: str, service: str, args: dict[str, Any] | None = None, *,
                   timeout_s: float = ..., trace: Any = None) -> Answer:
        """`prepare`, then `complete` when needed."""
        ...

    def devices(self, page_size: int = 50, page_token: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """One page of devices and the next page's token (ValueError for a bad token)."""
        ...

    def services(self, device: str) -> list[dict[str, Any]]:
        """The service descriptions of a device; NotFound for an unknown one."""
        ...

    def known(self, device: str) -> bool:
        """True if the device (full name) is provisioned."""
        ...

    def metrics(self) -> dict[str, int]:
        """The device side's counters."""
        ...


# The client request being served (its signature value: the same bytes on every gateway it passes), set by the
# client face around the task that serves it when a federation is plugged in; None otherwise.
REQUEST_ID: ContextVar[bytes | None] = ContextVar("ndn_edge_request_id", default=None)

# More answers to the client request being served: `more(content)` sends one more signed answer (a Data of the
# request's name) to where the request came from, True if it went. Set by the client face around the task that
# serves a request from a UDP address (a poll with `push`, docs/gateway-protocol.md); None otherwise.
REPLY_MORE: ContextVar[Callable[[Any], bool] | None] = ContextVar("ndn_edge_reply_more", default=None)


class SeqSource(Protocol):
    """Sequence numbers of one device key (`state.store.SeqCounter`, or a federation's shared leases)."""

    def next(self, floor: int = 0) -> int: ...

    def ready(self) -> asyncio.Future[None] | None:
        """What to await before the first signature (a lease above other gateways' numbers); None: sign now."""
        ...


class CallJournal(Protocol):
    """The signed device request of each non-idempotent client request, shared by the gateways of a federation."""

    async def recall(self, identity: bytes) -> bytes | None: ...

    async def record(self, identity: bytes, packet: bytes) -> None: ...


class Forwarder(Protocol):
    """Relays a client's signed request to the gateway that serves its target (federation)."""

    def forward(self, prefix: bytes, params: bytes, datagram: bytes,
                lifetime_ms: int) -> asyncio.Future[bytes | None] | None:
        """None: serve it here. Else a future of the serving gateway's reply datagram, passed to the client
        unchanged; or of None when, meanwhile, this gateway became the one to serve it (a CallError when it
        fails). Cancelling it gives the request up."""
        ...

    def keep(self, prefix: bytes, params: bytes, content: bytes) -> None:
        """The content of a successful reply `forward` brought (a call's value may be kept for the next call)."""
        ...


class Router(Protocol):
    """Routes a verb this gateway cannot serve alone (a device served elsewhere, a gather over the federation)."""

    def route(self, caller: Any, verb: str, target: tuple[str, ...], params: dict[str, Any]) -> Any:
        """None: run it here. Else the reply content, or an awaitable of it."""
        ...
