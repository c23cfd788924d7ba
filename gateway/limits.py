"""What one client may hold or ask of a gateway at once, and the caps every client shares (docs/operations.md
"Limits"). Over a limit, that client's request is answered RESOURCE_EXHAUSTED; other clients are unaffected.

    limits = Limits.parse(["subscriptions_per_client=20"])    # `ndn-edge gateway --limit NAME=VALUE`

Decisions:
- Per client, because every client is an identity the operator issued: a client that misbehaves (or whose key
  leaked) spends its own allowance, not everyone's. The shared caps stay as the last line.
- The request rate is a token bucket per client key (`requests_per_s` refilled, up to `request_burst`), checked
  after authentication: a flood of unauthenticated datagrams is dropped before it costs anything, and an
  authenticated client over its rate gets a signed RESOURCE_EXHAUSTED, its request not admitted (a retry after
  a pause is served).
- Defaults are generous for one application (about twice what one client process can send to a gateway on a
  Raspberry Pi) and small against the gateway's memory: 100 subscriptions of up to 10,000 queued messages.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ndn_edge.errors import ConfigError


@dataclass(frozen=True)
class Limits:
    """Per-client quotas and shared caps of one gateway."""

    subscriptions_per_client: int = 100     # in-memory and durable together
    operations_per_client: int = 64         # long-running operations starting or running
    queued_calls_per_client: int = 1000     # calls queued for devices that sleep or are away
    requests_per_s: float = 20_000.0        # per client key, sustained
    request_burst: int = 40_000             # per client key, at once
    subscriptions: int = 10_000             # every client's together

    @classmethod
    def parse(cls, items: list[str] | None) -> Limits:
        """Limits with `NAME=VALUE` overrides; ConfigError naming the known limits for a bad one."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, float | int] = {}
        for item in items or ():
            name, sep, text = item.partition("=")
            field = fields.get(name.strip())
            if not sep or field is None:
                raise ConfigError(f"limit {item!r} is not NAME=VALUE with NAME one of {', '.join(fields)}")
            try:
                value = float(text) if field.type in (float, "float") else int(text)
            except ValueError:
                raise ConfigError(f"limit {name} must be a number, got {text!r}") from None
            if value <= 0:
                raise ConfigError(f"limit {name} must be positive, got {text!r}")
            values[field.name] = value
        return cls(**values)  # type: ignore[arg-type]
