"""Scatter/gather: one service called on every matching device at once, each device's answer by a deadline.

    results = await gather(device_side, site="edge", pattern=("sim", "*", "temperature"), args=None,
                           timeout_s=2.0, allowed=lambda name: True)
    # [{"device": "sim/1", "value": 21.5, "cached": False, "age_ms": 0, "stale": False},
    #  {"device": "sim/2", "error": {"code": "DEADLINE_EXCEEDED", "message": "..."}}, ...]

Decisions:
- The pattern has the access-rule syntax and names the service last: `sim/*/temperature`, `**/temperature`.
  The service must be one literal component (a pattern over services would call services nobody meant to call).
- Devices are those of the store whose relative name matches the rest of the pattern, that the caller's rules
  allow to call the service, and whose description (when known) offers it; devices whose description lacks the
  service are left out, not reported.
- Devices online are called at once, each with the whole deadline (the invoker's retries, circuit breaker and
  cache apply as for a single call). Devices not online get UNAVAILABLE at once, saying why (asleep until T,
  offline since ...). At the deadline every call still waiting is reported DEADLINE_EXCEEDED: partial results,
  never a late answer.
- One reply holds every device's answer; a gather over thousands of devices can exceed the 60,000-byte reply
  limit (RESOURCE_EXHAUSTED): narrow the pattern.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from ndn_edge import names as acl
from ndn_edge.errors import CallError, DeadlineExceeded, Internal, InvalidArgument, Unavailable

_SLACK_S = 0.05


def split_pattern(text: str) -> tuple[tuple[str, ...], str]:
    """(device pattern, service) of a gather pattern; InvalidArgument when it does not name one service."""
    try:
        parts = acl.parse_pattern(text)
    except ValueError as err:
        raise InvalidArgument(f"gather pattern: {err}") from err
    if len(parts) < 2 or parts[-1] in (acl.ONE, acl.ANY) or parts[-1].startswith("_"):
        raise InvalidArgument(f"gather pattern {text!r} must end with a service name, e.g. 'sim/*/temperature'")
    return parts[:-1], parts[-1]


async def gather(devices: Any, *, site: str, pattern: tuple[str, ...], service: str, args: dict[str, Any] | None,
                 timeout_s: float, allowed: Callable[[tuple[str, ...]], bool], tracer: Any = None,
                 trace: Any = None) -> list[dict[str, Any]]:
    """Call `service` on every matching device; each device's answer or error, by `timeout_s`. With `trace`
    (the gather's CallTrace), each device's call is traced under it by `tracer`."""
    targets = list(_targets(devices.store, site, pattern, service, allowed))
    results: dict[str, dict[str, Any]] = {}
    tasks: dict[asyncio.Task[Any], str] = {}
    for name, rel in targets:
        if devices.is_online(name):
            child = tracer.start(None, "call", name, service, parent=trace) if trace is not None else None
            tasks[asyncio.create_task(_traced(devices.call(name, service, args, timeout_s=timeout_s, trace=child),
                                              child))] = rel
        else:
            results[rel] = {"device": rel, "error": Unavailable(why_down(devices.directory, name)).to_wire()}
    if tasks:
        _done, pending = await asyncio.wait(tasks, timeout=timeout_s + _SLACK_S)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task, rel in tasks.items():
            if task in pending:
                err: CallError = DeadlineExceeded(f"no answer within {timeout_s * 1000:.0f} ms")
            elif task.exception() is not None:
                exc = task.exception()
                err = exc if isinstance(exc, CallError) else Internal(f"gateway error: {type(exc).__name__}: {exc}")
            else:
                r = task.result()
                results[rel] = {"device": rel, "value": r.value, "cached": bool(r.cached), "age_ms": int(r.age_ms),
                                "stale": bool(r.stale)}
                continue
            results[rel] = {"device": rel, "error": err.to_wire()}
    return [results[rel] for rel in sorted(results)]


async def _traced(call: Any, trace: Any) -> Any:
    """`call`'s answer, ending `trace` (a device's call in a traced gather) with its outcome."""
    if trace is None:
        return await call
    try:
        answer = await call
    except CallError as err:
        trace.end(err.code, err.message)
        raise
    except BaseException:
        trace.end(DeadlineExceeded.code, "no answer by the deadline")
        raise
    trace.end("OK", cached=bool(answer.cached))
    return answer


def _targets(store: Any, site: str, pattern: tuple[str, ...], service: str,
             allowed: Callable[[tuple[str, ...]], bool]):
    token = None
    while True:
        records, token = store.list_devices(1000, token)
        for record in records:
            parts = tuple(p for p in record.name.split("/") if p)
            rel = parts[1:] if parts[:1] == (site,) else parts
            if not acl.matches(pattern, rel) or not allowed((*rel, service)):
                continue
            services = record.desc.get("services") if isinstance(record.desc, dict) else None
            if isinstance(services, list) and not any(isinstance(s, dict) and s.get("name") == service
                                                      for s in services):
                continue
            yield record.name, "/".join(rel)
        if token is None:
            return


def why_down(directory: Any, name: str) -> str:
    """Why a device is not online, as a person reads it."""
    p = directory.presence(name)
    if p is None or p["state"] == "unknown":
        return f"device {name} has not announced itself since it was provisioned"
    if p["state"] == "asleep" and p.get("sleep_until"):
        return f"device {name} is asleep until {time.strftime('%H:%M:%S', time.localtime(p['sleep_until']))}"
    seen = f"last seen {time.time() - p['last_seen']:.0f} s ago" if p.get("last_seen") else "never seen"
    return f"device {name} is {p['state']} ({seen})"
