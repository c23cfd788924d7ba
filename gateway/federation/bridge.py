"""Publications across gateways: every message a gateway's pub/sub emits for the devices it serves is
published on the federation's stream; every other gateway delivers it to its own subscribers.

    bridge = Bridge(link, key, pubsub, placement, tag="1a2b", site="edge")
    await bridge.start()

Stream `ndne_<fed>_pub`, subjects `ndne.<fed>.pub.<origin tag>.<topic...>`, values sealed with the federation
key. Each gateway reads it through its own durable consumer (`gw_<tag>`), acknowledging each message once its
pub/sub has taken it (retained, queued for the matching subscriptions, in one store transaction): a gateway that
was stopped or partitioned gets what it missed when it is back (within the stream's limits, a day or 64 MiB).
A new gateway's consumer starts with the last message of every topic, so retained values reach it too.

Decisions:
- The serving gateway has ordered each publisher's messages and numbered their gaps already (`patterns/pubsub.py`);
  the stream keeps that order per origin, so other gateways deliver messages as they come.
- Only messages about devices this gateway serves leave it (a standby hears the same LAN and would publish them
  twice); membership events (`_members/...`) of devices a gateway hears itself are not taken from the stream
  (its own directory emits them).
- A device's report is acknowledged only once its publications are in the stream (`gate`, one of the report intake's
  `ack_gates`): each is published with a reply subject, so JetStream confirms it, and the intake holds the
  acknowledgements of a batch until every publication of the batch is confirmed (a millisecond or two). A gateway
  that dies before that leaves the reports unacknowledged: the device sends them again to the group, and the
  gateway that takes the device over publishes them. Each carries a `Nats-Msg-Id` made of its publisher, boot,
  number and topic, so the stream keeps one copy when both gateways got it there (its duplicate window is
  2 minutes). A publication not confirmed within `ACK_WAIT_S` is sent again (same id); one still not confirmed
  `EXPORT_WAIT_S` after its first try, or met while this gateway is partitioned, lets its batch's
  acknowledgements go as before (the device's outbox would fill, and its publications would stop here too):
  those may be lost to the other gateways, as docs/operations.md says.
  Rejected: acknowledging first and publishing after (the window this closes), and a plain publish (no
  confirmation to wait for).
The stream is also what the federation's durable subscriptions read (`durable.py`): they survive the loss of the
gateway that serves them.
"""
from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import time
from typing import Any

import cbor2

from ndn_edge import names
from ndn_edge.federation.keys import BadSeal, FederationKey
from ndn_edge.federation.link import ReplyInbox
from ndn_edge.logs import Throttle

log = logging.getLogger("ndn_edge.federation")

MAX_WAITING = 10_000
ACK_WAIT_S = 2.0       # a publication the stream has not confirmed within this is sent again (same id)
EXPORT_WAIT_S = 30.0   # ... until this long after its first try; then its batch's acknowledgements go
CHECK_S = 0.5          # how often unconfirmed publications are looked at
_NO_RESPONDERS = "503"  # the Status header NATS answers with when no stream takes the subject
MEMBERS = "_members"
GATEWAY_PUBLISHER = "_gw"


class _Group:
    """The publications exported by one batch of the report intake, and the future its acknowledgements wait for."""

    __slots__ = ("future", "left")

    def __init__(self, future: asyncio.Future[bool]) -> None:
        self.future = future
        self.left = 0


class _Export:
    """One publication on its way to the stream."""

    __slots__ = ("data", "first", "group", "headers", "sent", "subject")

    def __init__(self, subject: str, data: bytes, headers: dict[str, str] | None, group: _Group | None) -> None:
        self.subject = subject
        self.data = data
        self.headers = headers
        self.group = group
        self.first = time.monotonic()
        self.sent = 0.0


class Bridge:
    """Exports this gateway's publications to the stream and delivers the others'."""

    def __init__(self, link: Any, key: FederationKey, pubsub: Any, placement: Any, *, tag: str, site: str,
                 intake: Any = None) -> None:
        self._link = link
        self._key = key
        self._pubsub = pubsub
        self._placement = placement
        self._intake = intake
        self.tag = tag
        self.site = site
        self._out: list[_Export] = []
        self._waiting: dict[str, _Export] = {}  # reply token -> sent, not confirmed yet
        self._group: _Group | None = None  # the current intake batch's
        self._ids = itertools.count(1)
        self._acks = ReplyInbox(self._on_ack)  # the stream's confirmations
        self._ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._sub: Any = None
        self._throttle = Throttle(log)
        self.lag_s: list[float] = []
        self.counters: dict[str, int] = {"exported": 0, "imported": 0, "export_dropped": 0, "bad_seal": 0,
                                         "skipped": 0, "export_retries": 0, "export_unconfirmed": 0}

    async def start(self) -> None:
        self._pubsub.exporter = self._export
        if self._intake is not None:
            self._intake.ack_gates.append(self.gate)
        self._tasks = [asyncio.create_task(self._sender(), name="federation-pub-out"),
                       asyncio.create_task(self._confirming(), name="federation-pub-confirm"),
                       asyncio.create_task(self._receiver(), name="federation-pub-in")]

    async def stop(self) -> None:
        self._pubsub.exporter = None
        if self._intake is not None and self.gate in self._intake.ack_gates:
            self._intake.ack_gates.remove(self.gate)
        for out in [*self._out, *self._waiting.values()]:
            self._settle(out, False)
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:  # gone with the connection
                pass
            self._sub = None

    # -- out

    def _export(self, msg: dict[str, Any], retain: bool) -> None:
        device = self._device_of(msg)
        if device is None or device not in self._placement.served:
            return
        if len(self._out) + len(self._waiting) >= MAX_WAITING:
            self.counters["export_dropped"] += 1
            return
        subject = self._link.config.pub_subject(self.tag, msg["topic"])
        body = cbor2.dumps({"m": msg, "r": retain, "at": time.time()})
        group = None
        if self._link.connected:  # partitioned: nothing to wait for
            group = self._group
            if group is None:
                group = self._group = _Group(asyncio.get_running_loop().create_future())
            group.left += 1
        self._out.append(_Export(subject, self._key.seal(subject.split(".", 2)[2], body), _msg_id(msg), group))
        self._ready.set()

    def gate(self) -> asyncio.Future[bool] | None:
        """One of the report intake's `ack_gates`: None, or a future done once every publication exported since the last
        call is in the stream (or given up on)."""
        group, self._group = self._group, None
        return None if group is None else group.future

    def _settle(self, out: _Export, stored: bool) -> None:
        group, out.group = out.group, None
        if group is None:
            return
        group.left -= 1
        if group.left <= 0 and not group.future.done():
            group.future.set_result(stored)

    def _device_of(self, msg: dict[str, Any]) -> str | None:
        publisher = msg.get("publisher")
        if publisher == GATEWAY_PUBLISHER:
            value = msg.get("value")
            publisher = value.get("device") if isinstance(value, dict) else None
        if not isinstance(publisher, str):
            return None
        return names.full(self.site, tuple(publisher.split("/")))

    async def _sender(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            batch, self._out = self._out, []
            nc = self._link.nc
            try:
                inbox = await self._acks.on(nc) if self._link.connected else None
            except Exception:  # the connection went away meanwhile
                inbox = None
            for out in batch:
                if inbox is None:
                    self.counters["export_dropped"] += 1
                    self._settle(out, False)
                    continue
                token = str(next(self._ids))
                self._waiting[token] = out
                out.sent = time.monotonic()
                try:
                    await nc.publish(out.subject, out.data, reply=inbox + token, headers=out.headers)
                except Exception as err:
                    self._waiting.pop(token, None)
                    self.counters["export_dropped"] += 1
                    self._settle(out, False)
                    self._throttle.event("export", "federation_publication_lost", logging.WARNING, error=repr(err))

    async def _on_ack(self, msg: Any) -> None:
        token = self._acks.token(msg.subject)
        out = self._waiting.get(token)
        if out is None:
            return
        if _stored(msg):
            del self._waiting[token]
            self.counters["exported"] += 1
            self._settle(out, True)
        else:
            out.sent = 0.0  # refused (no stream, no quorum): sent again at the next look

    async def _confirming(self) -> None:
        """Send again what the stream has not confirmed within ACK_WAIT_S; give up after EXPORT_WAIT_S."""
        while True:
            await asyncio.sleep(CHECK_S)
            now = time.monotonic()
            again = False
            for token, out in list(self._waiting.items()):
                if now - out.sent < ACK_WAIT_S:
                    continue
                del self._waiting[token]
                if now - out.first > EXPORT_WAIT_S or not self._link.connected:
                    self.counters["export_unconfirmed"] += 1
                    self._throttle.event("unconfirmed", "federation_publication_unconfirmed", logging.WARNING,
                                         subject=out.subject, note="acknowledged to its device without the "
                                         "stream's confirmation: it may be lost to the other gateways")
                    self._settle(out, False)
                    continue
                self.counters["export_retries"] += 1
                self._out.append(out)
                again = True
            if again:
                self._ready.set()

    # -- in

    async def _receiver(self) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        while True:
            await self._link.wait_connected(3600.0)
            if self._sub is None:
                try:
                    self._sub = await self._link.js.subscribe(
                        self._link.config.pub_subjects, durable=f"gw_{self.tag}", stream=self._link.config.stream,
                        cb=self._on_msg, manual_ack=True,
                        config=ConsumerConfig(deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                                              ack_policy=AckPolicy.EXPLICIT, max_ack_pending=4096, ack_wait=30.0))
                except asyncio.CancelledError:
                    raise
                except Exception as err:  # JetStream not ready: again in a moment
                    self._throttle.event("subscribe", "federation_stream_not_ready", logging.WARNING, error=repr(err))
            await asyncio.sleep(1.0)

    async def _on_msg(self, msg: Any) -> None:
        parts = msg.subject.split(".")
        origin = parts[3] if len(parts) > 4 else None
        if origin == self.tag:
            await _ack(msg)
            return
        try:
            data = cbor2.loads(self._key.open(msg.subject.split(".", 2)[2], msg.data))
            message, retain, at = data["m"], bool(data["r"]), float(data["at"])
            if not isinstance(message, dict) or not isinstance(message.get("topic"), str):
                raise ValueError("not a message")
        except (BadSeal, cbor2.CBORDecodeError, ValueError, KeyError, TypeError) as err:
            self.counters["bad_seal"] += 1
            self._throttle.event("seal", "federation_publication_dropped", logging.WARNING, error=str(err))
            await _ack(msg)
            return
        device = self._device_of(message)
        if message["topic"].startswith(MEMBERS + "/") and device is not None and self._placement.hears(device):
            self.counters["skipped"] += 1
            await _ack(msg)
            return
        try:
            self._pubsub.deliver(message, retain)
        except Exception as err:  # a store error: not acknowledged, so the stream delivers it again
            self._throttle.event("deliver", "federation_publication_not_delivered", logging.WARNING, error=repr(err))
            return
        self.counters["imported"] += 1
        self.lag_s = [*self.lag_s[-255:], max(0.0, time.time() - at)]
        await _ack(msg)



def _msg_id(msg: dict[str, Any]) -> dict[str, str] | None:
    """The `Nats-Msg-Id` header of a device's publication (publisher, boot, number, topic): the same whichever
    gateway exports it, so the stream keeps one copy. None for a message without a number."""
    boot, seq = msg.get("boot"), msg.get("seq")
    if not isinstance(boot, str) or not isinstance(seq, int) or isinstance(seq, bool):
        return None
    ident = cbor2.dumps([msg.get("publisher"), boot, seq, msg.get("topic")])
    return {"Nats-Msg-Id": hashlib.sha256(ident).hexdigest()[:32]}


def _stored(msg: Any) -> bool:
    """True if a JetStream publish acknowledgement says the message is stored (or was already)."""
    headers = msg.headers
    if headers and headers.get("Status") == _NO_RESPONDERS:
        return False
    try:
        reply = json.loads(msg.data)
    except ValueError:
        return False
    return isinstance(reply, dict) and "error" not in reply and isinstance(reply.get("seq"), int)


async def _ack(msg: Any) -> None:
    try:
        await msg.ack()
    except Exception:  # the consumer redelivers it; the store's exactly-once is not affected
        pass
