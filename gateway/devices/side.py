"""The gateway's device-facing half in one object: multicast and unicast faces, directory, paths and invoker,
wired together.

Owns the composition and the routing of inbound packets: Interests go to the directory (announcements), Data to
the invoker (replies), from either face. This is the API the client-facing server uses; it knows nothing about
clients, access rules or HTTP.

    side = DeviceSide(store, site="edge", iface="127.0.0.1", port=56363, on_event=print)
    await side.start()                       # open the face, start discovery, query the devices
    result = await side.call("/edge/kitchen/th1", "temperature", None, timeout_s=2.0)
    page, token = side.devices(page_size=50)
    await side.stop()

Decisions:
- The directory never signs anything: it asks the invoker to fetch `_desc` (`directory.fetcher`), so every
  Interest to a device goes through one signer, one sequence counter per key and one retry policy.
- Directory events are forwarded to the invoker before the owner's `on_event` sees them: a device that joins
  again gets its circuit-breaker probe at once.
- Device names may be given in full (`/edge/kitchen/th1`) or relative to the site (`kitchen/th1`).
- The unicast face (`unicast_port`, by default the group's port, on the same interface) is where devices
  configured with the gateway's address send, and where the gateway sends to a device whose multicast does not get
  through (`paths.Paths`). A gateway that cannot bind it still serves multicast (logged): on a host where devices
  run too, the port may be theirs.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ndn_edge.answers import Answer
from ndn_edge.devices.directory import Directory, Event
from ndn_edge.devices.face import MulticastFace, UnicastFace
from ndn_edge.devices.invoker import DEFAULT_TIMEOUT_S, Invoker, Ticket
from ndn_edge.devices.paths import Paths
from ndn_edge.errors import ConfigError
from ndn_edge.logs import event
from ndn_edge.state.store import Store
from ndn_edge.wire.protocol import DEFAULT_GROUP, DEFAULT_IFACE, DEFAULT_PORT, DEFAULT_SITE
from ndn_edge.wire.tlv import T

log = logging.getLogger("ndn_edge.devices")



class DeviceSide:
    """Face + directory + invoker for one site: discovery, presence, descriptions and calls to devices."""

    def __init__(self, store: Store, *, site: str = DEFAULT_SITE, iface: str = DEFAULT_IFACE,
                 group: str = DEFAULT_GROUP, port: int = DEFAULT_PORT, unicast_port: int | None = None,
                 on_event: Callable[[Event], None] | None = None) -> None:
        self.store = store
        self.site = site.strip("/")
        self.on_event = on_event
        self.face = MulticastFace(iface, group, port)
        self.unicast = UnicastFace(iface, port if unicast_port is None else unicast_port)
        self.paths = Paths(store, self.face, self.unicast)
        self.directory = Directory(store, self.face, self.site, on_event=self._event)
        self.invoker = Invoker(store, self.face, self.directory, site=self.site, paths=self.paths)
        self.directory.fetcher = self.invoker.fetch_description
        self.directory.on_address = self.paths.learn
        # Hooks for ndn_edge.patterns.hub: device reports (/<site>/_op, /<site>/_pub) and more event listeners.
        self.on_report: Callable[[bytes, Any], None] | None = None  # (packet, sender's address)
        self.listeners: list[Callable[[Event], None]] = []
        self._started = False

    async def start(self) -> None:
        """Open the face, start the directory and send a discovery query."""
        if self._started:
            return
        self.face.on_packet = lambda packet: self._dispatch(packet, self.face.last_addr)
        self.unicast.on_packet = lambda packet: self._dispatch(packet, self.unicast.last_addr)
        await self.face.open()
        try:
            await self.unicast.open()
        except ConfigError as err:
            event(log, "unicast_unavailable", logging.WARNING, error=str(err),
                  note="devices are reached by multicast only")
        self.invoker.start()
        try:
            await self.directory.start()
            await self.directory.query()
        except BaseException:
            await self.directory.stop()
            self.face.close()
            self.unicast.close()
            raise
        self._started = True

    async def stop(self) -> None:
        """Stop discovery, fail pending calls with Unavailable and close the face (idempotent)."""
        if not self._started:
            return
        self._started = False
        await self.invoker.close()
        await self.directory.stop()
        self.face.close()
        self.unicast.close()

    async def __aenter__(self) -> DeviceSide:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def call(self, device: str, service: str, args: dict[str, Any] | None = None, *,
                   timeout_s: float = DEFAULT_TIMEOUT_S, trace: Any = None) -> Answer:
        """Call a device service; see Invoker.call."""
        return await self.invoker.call(device, service, args, timeout_s=timeout_s, trace=trace)

    def prepare(self, device: str, service: str, args: dict[str, Any] | None = None) -> Answer | Ticket:
        """A fresh cached answer at once, or a ticket for `complete`; see Invoker.prepare."""
        return self.invoker.prepare(device, service, args)

    async def complete(self, ticket: Ticket, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> Answer:
        """Ask the device what `prepare` did not find; see Invoker.complete."""
        return await self.invoker.complete(ticket, timeout_s=timeout_s)

    def resolve(self, device: str) -> str:
        """The full device name: `/edge/lab/b1` as is, `lab/b1` under this site."""
        return self.directory.resolve(device)

    def known(self, device: str) -> bool:
        """True if the device is provisioned (in the store)."""
        return self.store.device(self.resolve(device)) is not None

    def presence(self, device: str) -> dict[str, Any] | None:
        """What the directory believes about the device's presence; see Directory.presence."""
        return self.directory.presence(device)

    async def query(self) -> None:
        """Ask every device on the group to announce itself."""
        await self.directory.query()

    def devices(self, page_size: int = 50, page_token: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """One page of devices and the next page's token; see Directory.devices. Each also says how the gateway
        reaches it (`path`: multicast or unicast, `path_mode`: auto, multicast or unicast) and the `address` its
        announcements come from."""
        items, token = self.directory.devices(page_size, page_token)
        for item in items:
            name = item["name"]
            item.update(path=self.paths.path(name), path_mode=self.paths.mode(name), address=self.paths.address(name))
        return items, token

    def send_to(self, device: str, packet: bytes) -> None:
        """Send one packet to a device by its path (notifications, report acknowledgements)."""
        self.paths.send(self.resolve(device), packet)

    def services(self, device: str) -> list[dict[str, Any]]:
        """The device's service descriptions; NotFound for an unknown device."""
        return self.directory.services(device)

    def is_online(self, device: str) -> bool:
        """True if the device's lease holds."""
        return self.directory.is_online(device)

    def metrics(self) -> dict[str, int]:
        """Every counter of the device side, prefixed by its layer (`face_`, `directory_`, `invoker_`)."""
        out = {f"face_{k}": v for k, v in self.face.counters().items()}
        out.update({f"unicast_{k}": v for k, v in self.unicast.counters().items()})
        out.update({f"paths_{k}": v for k, v in self.paths.counters.items()})
        out.update({f"directory_{k}": v for k, v in self.directory.counters.items()})
        out.update({f"invoker_{k}": v for k, v in self.invoker.metrics.items()})
        out["cache_entries"] = len(self.invoker.cache)
        return out

    def _dispatch(self, packet: bytes, addr: Any = None) -> None:
        if packet[0] == T.DATA:
            self.invoker.on_data(packet)
        elif packet[0] == T.INTEREST:
            self.directory.on_interest(packet, addr)
            if self.on_report is not None:
                self.on_report(packet, addr)

    def _event(self, event: Event) -> None:
        if event["event"] == "join":
            self.invoker.device_joined(event["device"])
        for listener in list(self.listeners):
            listener(event)
        if self.on_event is not None:
            self.on_event(event)
