"""The signed device request of every non-idempotent call in flight, kept in the shared store for a few minutes,
so that a gateway taking a device over sends the *same* request again rather than a new one.

    journal = CallJournal(link, key)
    packet = await journal.recall(identity)        # None, or the Interest the previous server signed
    await journal.record(identity, packet)         # before the Interest first leaves

`identity` is the client's request signature (the same bytes wherever the request travels). The device answers a
request it executed from its reply cache (same number, same signature: docs/protocol.md "Replay protection"),
so a client's call retried through the failover of its device's gateway runs once.

Decisions:
- Only non-idempotent calls are journaled (an idempotent one may simply run again), and only client requests
  that carry a signature (HTTP calls have none to key on).
- The bucket's entries expire after `link.CALLS_TTL_S` (three minutes): longer than any request's lifetime.
- Bounded waits: a journal NATS cannot answer within `TIMEOUT_S` is skipped (the call goes on, as it would on a
  single gateway); a partitioned gateway journals nothing (no other gateway can take over meanwhile anyway
  without hearing of it).
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any

from ndn_edge.federation.keys import BadSeal, FederationKey
from ndn_edge.logs import Throttle

log = logging.getLogger("ndn_edge.federation")

TIMEOUT_S = 1.0


class CallJournal:
    """Recall and record the device requests of non-idempotent calls."""

    def __init__(self, link: Any, key: FederationKey) -> None:
        self._link = link
        self._key = key
        self._bucket = link.config.bucket("calls")
        self._throttle = Throttle(log)
        self.counters: dict[str, int] = {"recorded": 0, "recalled": 0, "skipped": 0, "bad_seal": 0}

    @staticmethod
    def _name(identity: bytes) -> str:
        return "c." + hashlib.sha256(identity).hexdigest()[:32]

    async def recall(self, identity: bytes) -> bytes | None:
        if not self._link.connected:
            return None
        name = self._name(identity)
        try:
            entry = await asyncio.wait_for(self._link.kv("calls").get(name), TIMEOUT_S)
        except Exception as err:
            if "notfound" not in type(err).__name__.lower():
                self.counters["skipped"] += 1
                self._throttle.event("recall", "federation_journal_unavailable", logging.DEBUG, error=repr(err))
            return None
        try:
            packet = self._key.open(f"{self._bucket}/{name}", entry.value)
        except BadSeal:
            self.counters["bad_seal"] += 1
            return None
        self.counters["recalled"] += 1
        return packet

    async def record(self, identity: bytes, packet: bytes) -> None:
        if not self._link.connected:
            self.counters["skipped"] += 1
            return
        name = self._name(identity)
        try:
            await asyncio.wait_for(self._link.kv("calls").put(name, self._key.seal(f"{self._bucket}/{name}", packet)),
                                   TIMEOUT_S)
            self.counters["recorded"] += 1
        except Exception as err:
            self.counters["skipped"] += 1
            self._throttle.event("record", "federation_journal_unavailable", logging.DEBUG, error=repr(err))
