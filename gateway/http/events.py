"""Subscriptions as Server-Sent Events: `GET /api/v1/events?topic=PATTERN[&topic=...][&members=false]
[&durable=NAME][&logs=DEVICES]`, over the pub/sub verbs (`subscribe`, `poll`, `unsubscribe`), so delivery, order,
retained values and access rules are pub/sub's own (docs/models.md); with `logs`, the log entries of the devices
matching that pattern (`**`: all it may reach) as they arrive, over the `logs` verb.

    event: message                 a publication: {"topic", "publisher", "value", "seq", "boot", "time", "pos", ...}
    id: 17                         (durable streams only: the message's position)
    data: {...}

    event: member                  a membership event: the `_members/<device>` message, value {"event", "device", ...}
    data: {...}

    event: log                     a device log entry: {"id", "device", "level", "message", "trace_id", ...}
    data: {...}

Decisions:
- One subscription per topic pattern, plus one to `_members/**` unless `members=false`; one long-poll task per
  subscription writes to the stream under a lock. Publications on `_members/...` that a topic pattern also
  matches are sent once, as `member` events.
- A message is acknowledged to pub/sub by the next poll after it was written to the connection (its write
  drained). A durable stream (`durable=NAME`, one topic) gives each publication an `id:` (its position); a
  reconnect with `Last-Event-ID: N` acknowledges up to N and resumes after it, so what arrived while the client
  was away is delivered. Membership events carry no id, so they never move the client's Last-Event-ID.
- A comment line every `HEARTBEAT_S` (the poll's wait) keeps proxies from closing an idle stream and notices a
  client that went away. In-memory subscriptions end with the stream; durable ones stay (unsubscribe with the
  Python client or the CLI).
Rejected: an EventSource-friendly token in the query string (it would reach access logs); the dashboard reads
the stream with `fetch`, which sends the Authorization header.
"""
from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ndn_edge.clients.verbs import Caller
from ndn_edge.errors import CallError, InvalidArgument
from ndn_edge.http.values import jsonable
from ndn_edge.patterns.pubsub import MEMBERS
from ndn_edge.wire import client_protocol as cp

if TYPE_CHECKING:
    from ndn_edge.http.api import Api

HEARTBEAT_S = 15.0
MAX_TOPICS = 8
POLL_MAX = 100
RETRY_MS = 2000
MEMBERS_PATTERN = f"{MEMBERS}/**"


async def stream(api: Api, request: web.Request) -> web.StreamResponse:
    """The SSE response: subscribe first (errors are problem responses), then stream until the client leaves."""
    caller: Caller = request["caller"]
    topics = request.query.getall("topic", [])
    members = _flag(request.query.get("members"), "members", True)
    durable = request.query.get("durable")
    logs = request.query.get("logs")
    if len(topics) > MAX_TOPICS:
        raise InvalidArgument(f"at most {MAX_TOPICS} topic patterns per stream, got {len(topics)}")
    if not topics and not members and logs is None:
        raise InvalidArgument("nothing to stream: give topic=PATTERN (e.g. sim/*/tick), members=true or "
                              "logs=PATTERN")
    after = 0
    if logs is not None:  # checked (pattern, rules) before the stream starts; from the newest entry on
        after = (await api.run(caller, cp.VERB_LOGS, (), {"pattern": logs, "tail": True, "max": 1}))["next"]
    if durable is not None and len(topics) != 1:
        raise InvalidArgument("a durable stream follows exactly one topic pattern")
    resume = _last_event_id(request.headers.get("Last-Event-ID")) if durable is not None else 0
    subs: list[tuple[str, str, bool]] = []  # (subscription id, event name, durable)
    try:
        for topic in topics:
            params: dict[str, Any] = {"pattern": topic}
            if durable is not None:
                params["durable"] = durable
            sub = await api.run(caller, cp.VERB_SUBSCRIBE, (), params)
            subs.append((sub["sub"], "message", durable is not None))
        if members:
            sub = await api.run(caller, cp.VERB_SUBSCRIBE, (), {"pattern": MEMBERS_PATTERN})
            subs.append((sub["sub"], "member", False))
    except BaseException:
        await _unsubscribe(api, caller, subs)
        raise
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
    task = asyncio.current_task()
    if task is not None:
        api.streams.add(task)
    api.stats["streams"] += 1
    lock = asyncio.Lock()
    pollers: list[asyncio.Task[None]] = []
    try:
        await response.prepare(request)
        await response.write(f"retry: {RETRY_MS}\n: subscribed\n\n".encode())
        for sub_id, name, is_durable in subs:
            skip_members = name == "message" and members
            pollers.append(asyncio.create_task(_follow(api, caller, response, lock, sub_id, name, is_durable,
                                                       resume if is_durable else 0, skip_members)))
        if logs is not None:
            pollers.append(asyncio.create_task(_follow_logs(api, caller, response, lock, logs, after)))
        done, _ = await asyncio.wait(pollers, return_when=asyncio.FIRST_COMPLETED)
        for finished in done:
            if not finished.cancelled() and finished.exception() is not None:
                err = finished.exception()
                if isinstance(err, CallError):  # the subscription ended (e.g. its client was removed)
                    await _write(response, lock, f"event: error\ndata: {json.dumps(err.to_wire())}\n\n")
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        for poller in pollers:
            poller.cancel()
        await asyncio.gather(*pollers, return_exceptions=True)
        await _unsubscribe(api, caller, [s for s in subs if not s[2]])
        if task is not None:
            api.streams.discard(task)
    return response


async def _follow(api: Api, caller: Caller, response: web.StreamResponse, lock: asyncio.Lock, sub_id: str,
                  name: str, durable: bool, ack: int, skip_members: bool) -> None:
    """Long-poll one subscription and write what comes; ends with a write error or the subscription's end."""
    while True:
        page = await api.run(caller, cp.VERB_POLL, (), {"sub": sub_id, "ack": ack, "max": POLL_MAX,
                                                        "wait_ms": int(HEARTBEAT_S * 1000)})
        messages = page.get("messages") or []
        if not messages:
            await _write(response, lock, ": keep-alive\n\n")
            continue
        chunks = []
        for msg in messages:
            ack = max(ack, int(msg.get("pos", 0)))
            if skip_members and str(msg.get("topic", "")).startswith(MEMBERS + "/"):
                continue
            head = f"event: {name}\n" + (f"id: {msg['pos']}\n" if durable else "")
            chunks.append(head + "data: " + json.dumps(jsonable(msg), separators=(",", ":")) + "\n\n")
        if chunks:
            await _write(response, lock, "".join(chunks))


async def _follow_logs(api: Api, caller: Caller, response: web.StreamResponse, lock: asyncio.Lock, pattern: str,
                       after: int) -> None:
    """Long-poll the device logs and write each entry as an `event: log`."""
    while True:
        page = await api.run(caller, cp.VERB_LOGS, (), {"pattern": pattern, "after": after, "max": POLL_MAX,
                                                        "wait_ms": int(HEARTBEAT_S * 1000)})
        after = page["next"]
        entries = page.get("entries") or []
        if not entries:
            await _write(response, lock, ": keep-alive\n\n")
            continue
        await _write(response, lock, "".join("event: log\ndata: " + json.dumps(jsonable(e), separators=(",", ":"))
                                             + "\n\n" for e in entries))


async def _write(response: web.StreamResponse, lock: asyncio.Lock, text: str) -> None:
    async with lock:
        await response.write(text.encode())


async def _unsubscribe(api: Api, caller: Caller, subs: list[tuple[str, str, bool]]) -> None:
    for sub_id, _, is_durable in subs:
        if is_durable:
            continue
        try:
            await api.run(caller, cp.VERB_UNSUBSCRIBE, (), {"sub": sub_id})
        except CallError:
            pass  # already gone (idle, or its client removed)


def _flag(text: str | None, key: str, default: bool) -> bool:
    if text is None:
        return default
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise InvalidArgument(f"{key} must be true or false, got {text[:40]!r}")


def _last_event_id(text: str | None) -> int:
    if text is None or text.strip() == "":
        return 0
    try:
        value = int(text.strip(), 10)
    except ValueError:
        raise InvalidArgument(f"Last-Event-ID must be an event id this stream sent (an integer), got "
                              f"{text[:40]!r}") from None
    if value < 0 or value > 1 << 62:
        raise InvalidArgument(f"Last-Event-ID {value} is out of range")
    return value
