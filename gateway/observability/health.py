"""Each device's own account of itself: its `_health`, polled every `interval_s`, and the reboots the directory saw.

    poller = HealthPoller(device_side, interval_s=60.0)
    await poller.start()          # polls the devices online, a few at a time, spread over the interval
    poller.latest["/edge/sim/1"]  # (when, the _health map): free heap, uptime, requests, errors, drops, ...
    await poller.stop()

Decisions:
- Polled through the device side like any call (`_health` is a framework service: signed, retried, coalesced with
  a client's own `_health` call), at most `CONCURRENT` at once, each device once per interval, so a fleet of a
  thousand devices costs the group a few datagrams a second. `interval_s` 0 turns polling off: announcements
  still carry each device's free heap and uptime (docs/protocol.md "Discovery").
- Only devices online are polled; what a device said last is kept until it is deleted from the store, and its
  age is part of the metrics (`ndn_edge_board_health_age_seconds`).
- Reboots are the directory's `join` events with `rebooted` (a device announced an uptime behind what it said
  before): counted per device since the gateway started.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ndn_edge.errors import GatewayError
from ndn_edge.logs import Throttle, event

log = logging.getLogger("ndn_edge.health")
_THROTTLE = Throttle(log)

CONCURRENT = 4
TIMEOUT_S = 5.0
MIN_INTERVAL_S = 1.0
MAX_DEVICES = 100_000


class HealthPoller:
    """Polls the devices' `_health` and counts their reboots."""

    def __init__(self, devices: Any, *, interval_s: float = 60.0) -> None:
        self.devices = devices
        self.interval_s = interval_s
        self.latest: dict[str, tuple[float, dict[str, Any]]] = {}  # device -> (time.time(), _health)
        self.reboots: dict[str, int] = {}
        self.counters: dict[str, int] = {"polls": 0, "failures": 0}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Listen for reboots; start polling (unless the interval is 0)."""
        self.devices.listeners.append(self._event)
        if self.interval_s > 0 and self._task is None:
            self._task = asyncio.create_task(self._run(), name="health-poller")

    async def stop(self) -> None:
        if self._event in self.devices.listeners:
            self.devices.listeners.remove(self._event)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _event(self, change: dict[str, Any]) -> None:
        if change.get("event") == "join" and change.get("rebooted"):
            device = change.get("device")
            if isinstance(device, str) and (device in self.reboots or len(self.reboots) < MAX_DEVICES):
                self.reboots[device] = self.reboots.get(device, 0) + 1

    async def _run(self) -> None:
        interval = max(MIN_INTERVAL_S, self.interval_s)
        slots = asyncio.Semaphore(CONCURRENT)
        while True:
            started = time.monotonic()
            online = [name for name, state, *_ in self.devices.directory.snapshot() if state == "online"]
            if online:
                spacing = interval / len(online) if len(online) > CONCURRENT else 0.0
                tasks = []
                for i, name in enumerate(online):
                    await slots.acquire()
                    tasks.append(asyncio.create_task(self._poll(name, slots)))
                    if spacing and i + 1 < len(online):
                        await asyncio.sleep(max(0.0, started + spacing * (i + 1) - time.monotonic()))
                await asyncio.gather(*tasks)
            self._forget_removed()
            await asyncio.sleep(max(0.0, started + interval - time.monotonic()))

    async def _poll(self, name: str, slots: asyncio.Semaphore) -> None:
        try:
            answer = await self.devices.call(name, "_health", timeout_s=TIMEOUT_S)
            self.counters["polls"] += 1
            if isinstance(answer.value, dict):
                self.latest[name] = (time.time(), answer.value)
        except GatewayError as err:
            self.counters["failures"] += 1
            event(log, "health_not_polled", logging.DEBUG, device=name, error=str(err))
        except Exception as err:  # a bug: logged (once per interval), and polling goes on
            self.counters["failures"] += 1
            _THROTTLE.fault("health-poll", err, device=name)
        finally:
            slots.release()

    def _forget_removed(self) -> None:
        known = {name for name, *_ in self.devices.directory.snapshot()}
        for name in [n for n in self.latest if n not in known]:
            del self.latest[name]
