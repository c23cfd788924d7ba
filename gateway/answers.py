"""What a call to a device service comes back as, inside the gateway: `Answer`.

The value stays the CBOR the device signed (`cbor`), so that a cached answer is spliced into a client's reply
without being decoded and encoded again (`ndn_edge.wire.client_protocol.encode_call_result`); `value` decodes a
fresh copy for the parts that look inside (gather, operations), which may then change it freely.
"""
from __future__ import annotations

from typing import Any

import cbor2


class Answer:
    """A call's value (as CBOR) and where it came from: the cache (`cached`, `age_ms`), possibly `stale`; and how
    much longer the gateway holds it fresh (`fresh_ms`, 0 when it does not cache it)."""

    __slots__ = ("age_ms", "cached", "cbor", "fresh_ms", "stale")

    def __init__(self, cbor: bytes, cached: bool = False, age_ms: int = 0, stale: bool = False,
                 fresh_ms: int = 0) -> None:
        self.cbor = cbor
        self.cached = cached
        self.age_ms = age_ms
        self.stale = stale
        self.fresh_ms = fresh_ms

    @property
    def value(self) -> Any:
        """The value, decoded (a new object on every access)."""
        return cbor2.loads(self.cbor)

    @classmethod
    def of(cls, value: Any, **provenance: Any) -> Answer:
        """An answer holding `value` (encoded here): for test doubles and values made by the gateway."""
        return cls(cbor2.dumps(value), **provenance)

    def __repr__(self) -> str:
        return f"Answer({self.value!r}, cached={self.cached}, age_ms={self.age_ms}, stale={self.stale})"
