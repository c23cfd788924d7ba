"""Call results other gateways of the federation answered, kept where the client called (`RelayedResults`).

A call to a device served by another gateway travels there and back over NATS (`forward.py`). When the serving
gateway holds the value fresh (its cache, filled from the device's FreshnessPeriod: the service's `cache_ms`), its
reply says for how much longer (`fresh_ms`, docs/gateway-protocol.md); this gateway keeps the value that long, and
answers the same call (device, service, arguments) from it, as NDN forwarders answer from their content stores.

Decisions:
- Only what the serving gateway said it holds fresh is kept, never past that: a client gets no older value here
  than the serving gateway would have given it. Errors, stale answers and uncached results are not kept.
- A call answered here is checked as every call is, here: signature, time and replay (the client face), then the
  client's rules (`Verbs.run`, from the federation's shared rules): a rule revoked anywhere stops it here within
  the second it takes to reach every gateway, as it stops a relayed call at the serving gateway.
- A call that asks for its timeline goes to the serving gateway, whose steps the timeline shows.
- The value's CBOR is kept as the reply carried it (the device's bytes, spliced), not decoded and encoded again.
"""
from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import Any

import cbor2

from ndn_edge.answers import Answer
from ndn_edge.devices.invoker import ResultCache, canonical_args
from ndn_edge.errors import InvalidArgument
from ndn_edge.wire.client_protocol import CALL_RESULT_HEADS

MAX_KEEP_MS = 3_600_000  # a reply claiming longer is kept this long
_HEAD_LEN = len(CALL_RESULT_HEADS[0])  # both heads are as long (a one-byte map head, then "value")
_BAD_CBOR = (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError, OverflowError, EOFError)


class RelayedResults:
    """Call results relayed from the gateways serving their devices, each kept as long as that gateway said."""

    def __init__(self, *, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self._cache = ResultCache(max_entries=max_entries, jitter=0.0, clock=clock)
        self._clock = clock
        self._max = max_entries
        self._until: dict[tuple[str, str], float] = {}  # (device, service) -> when the last value kept for it ends
        self.counters: dict[str, int] = {"kept": 0, "hits": 0}

    def __len__(self) -> int:
        return len(self._cache)

    def keep(self, device: str, service: str, args: Any, content: bytes) -> None:
        """Keep the value of a call's reply `content` (CBOR, as `encode_call_result` writes it) if it says how much
        longer it is fresh; anything else is ignored."""
        if not content.startswith(CALL_RESULT_HEADS):
            return
        try:
            fp = io.BytesIO(content)
            fp.seek(_HEAD_LEN)
            cbor2.CBORDecoder(fp).decode()  # the value: its bytes are kept as they came
            value_end = fp.tell()
            result = cbor2.loads(content)
            key = (device, service, canonical_args(args))
        except (*_BAD_CBOR, InvalidArgument):
            return
        fresh_ms, age_ms = result.get("fresh_ms"), result.get("age_ms") or 0
        if (not isinstance(fresh_ms, int) or isinstance(fresh_ms, bool) or fresh_ms <= 0 or result.get("stale")
                or not isinstance(age_ms, int) or age_ms < 0):
            return
        kept_ms = self._cache.put_answer(key, content[_HEAD_LEN:value_end], min(fresh_ms, MAX_KEEP_MS),
                                         age_ms=age_ms)
        if kept_ms:
            self.counters["kept"] += 1
            if len(self._until) >= self._max:
                self._until.clear()
            until = self._clock() + kept_ms / 1000
            if until > self._until.get((device, service), 0.0):
                self._until[(device, service)] = until

    def may_hold(self, device: str, service: str) -> bool:
        """False when nothing fresh can be kept for `service` of `device` (one dictionary lookup): the relayed
        path's test before it decodes a request's arguments."""
        until = self._until.get((device, service))
        return until is not None and self._clock() < until

    def answer(self, device: str, service: str, args: Any, *, count: bool = True) -> Answer | None:
        """The kept answer of this call while fresh, or None (`count`: a hit served, not a look)."""
        if not self.may_hold(device, service):
            return None
        try:
            key = (device, service, canonical_args(args))
        except InvalidArgument:
            return None
        entry = self._cache.fresh(key)
        if entry is None:
            return None
        if count:
            self.counters["hits"] += 1
        return entry.answer(self._clock(), stale=False)
