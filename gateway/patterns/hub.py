"""The communication patterns beyond request/response, composed on one device side.

Owns the wiring: device reports (`ndn_edge.devices.reports`) to operations (`ndn_edge.patterns.operations`) and
pub/sub (`ndn_edge.patterns.pubsub`), directory events to both. The client verbs that use them are in the verb
table (`ndn_edge.clients.verbs`), with the access rules each needs.

    patterns = Patterns(store, device_side, site="edge")
    await patterns.start()        # after device_side.start(): hooks into its face and its directory events
    await patterns.operations.start_op("alice", "/edge/sim/1", "slow", {"seconds": 3}, timeout_s=5)
    await patterns.stop()
"""
from __future__ import annotations

from typing import Any

from ndn_edge.devices.reports import OPERATION, PUBLICATION, ReportIntake
from ndn_edge.devices.side import DeviceSide
from ndn_edge.limits import Limits
from ndn_edge.patterns.operations import Operations
from ndn_edge.patterns.pubsub import PubSub
from ndn_edge.state.store import Store


class Patterns:
    """Report intake, operations and pub/sub for one device side."""

    def __init__(self, store: Store, devices: DeviceSide, *, site: str, limits: Limits | None = None) -> None:
        self.site = site.strip("/")
        self.store = store
        self.devices = devices
        self.intake = ReportIntake(store, devices.face, self.site, send_to=devices.send_to)
        self.pubsub = PubSub(store, site=self.site, intake=self.intake, limits=limits)
        self.operations = Operations(store, devices, site=self.site, limits=limits)
        self.intake.handlers = {OPERATION: self.operations.on_report, PUBLICATION: self.pubsub.on_report}
        self._started = False

    async def start(self) -> None:
        """Hook into the device side (reports, events) and start the parts."""
        if self._started:
            return
        await self.intake.start()
        await self.pubsub.start()
        await self.operations.start()
        self.devices.on_report = self.intake.on_interest
        self.devices.listeners.append(self._event)
        self._started = True

    async def stop(self) -> None:
        """Unhook and stop the parts (idempotent)."""
        if not self._started:
            return
        self._started = False
        self.devices.on_report = None
        if self._event in self.devices.listeners:
            self.devices.listeners.remove(self._event)
        await self.operations.stop()
        await self.pubsub.stop()
        await self.intake.stop()

    def metrics(self) -> dict[str, int]:
        """Counters of the parts, prefixed `reports_`, `ops_`, `pubsub_`."""
        out = {f"reports_{k}": v for k, v in self.intake.counters.items()}
        out.update({f"ops_{k}": v for k, v in self.operations.counters.items()})
        out.update({f"pubsub_{k}": v for k, v in self.pubsub.counters.items()})
        out["pubsub_subscriptions"] = self.pubsub.subscriptions()
        return out

    def _event(self, event: dict[str, Any]) -> None:
        self.pubsub.on_event(event)
        self.operations.on_event(event)
