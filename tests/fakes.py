"""Test doubles of the gateway's seams (`ndn_edge.interfaces`), in one place; mypy checks them against the
Protocols they stand in for."""
from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from ndn_edge.answers import Answer
from ndn_edge.errors import NotFound


class FakeDevices:
    """Test double of the device side (`ndn_edge.interfaces.DeviceAccess`): three devices, scripted services,
    calls recorded."""

    site = "edge"

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.count = 0
        self.release = asyncio.Event()
        self.names = ["/edge/sim/1", "/edge/sim/2", "/edge/lab/x"]

    def resolve(self, device: str) -> str:
        return device if device.startswith("/") else f"/edge/{device}"

    def known(self, device: str) -> bool:
        return self.resolve(device) in self.names

    def prepare(self, device: str, service: str, args: Any) -> Any:
        return SimpleNamespace(device=self.resolve(device), service=service, args=args)

    async def complete(self, ticket: Any, *, timeout_s: float = 5.0) -> Answer:
        return await self.call(ticket.device, ticket.service, ticket.args, timeout_s=timeout_s)

    async def call(self, device: str, service: str, args: Any = None, *, timeout_s: float = 5.0,
                   trace: Any = None) -> Answer:
        self.calls.append((device, service, args))
        if device not in self.names:
            raise NotFound(f"no device {device}")
        if service == "echo":
            return Answer.of(args)
        if service == "counter":
            self.count += 1
            return Answer.of(self.count)
        if service == "temperature":
            return Answer.of(21.5, cached=True, age_ms=120, stale=True)
        if service == "held":
            await self.release.wait()
            return Answer.of("released")
        if service == "big":
            return Answer.of(b"x" * 70000)
        raise NotFound(f"{device} has no service {service}")

    def devices(self, page_size: int = 50, page_token: str | None = None) -> tuple[list[dict], str | None]:
        start = int(page_token) if page_token else 0
        page = self.names[start:start + page_size]
        items = [{"name": n, "state": "online", "last_seen": time.time(), "lease_until": None, "sleep_until": None,
                  "services": 3} for n in page]
        more = start + page_size < len(self.names)
        return items, (str(start + page_size) if more else None)

    def services(self, device: str) -> list[dict]:
        if device not in self.names:
            raise NotFound(f"no device {device}")
        return [{"name": n, "doc": None, "args": None, "result": None, "cache_ms": None, "idempotent": True,
                 "private": False} for n in ("counter", "echo", "temperature")]

    def metrics(self) -> dict[str, int]:
        return {"fake_calls": len(self.calls)}
