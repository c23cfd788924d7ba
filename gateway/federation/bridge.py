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
- Publishing does not wait for the stream's acknowledgement (a plain NATS publish that the stream captures):
  messages leave in the order they were emitted, at the pace of the connection.
The stream is also what the federation's durable subscriptions read (`durable.py`): they survive the loss of the
gateway that serves them.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import cbor2

from ndn_edge import names
from ndn_edge.federation.keys import BadSeal, FederationKey
from ndn_edge.logs import Throttle

log = logging.getLogger("ndn_edge.federation")

MAX_WAITING = 10_000
MEMBERS = "_members"
GATEWAY_PUBLISHER = "_gw"


class Bridge:
    """Exports this gateway's publications to the stream and delivers the others'."""

    def __init__(self, link: Any, key: FederationKey, pubsub: Any, placement: Any, *, tag: str, site: str) -> None:
        self._link = link
        self._key = key
        self._pubsub = pubsub
        self._placement = placement
        self.tag = tag
        self.site = site
        self._out: list[tuple[str, bytes]] = []
        self._ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._sub: Any = None
        self._throttle = Throttle(log)
        self.lag_s: list[float] = []
        self.counters: dict[str, int] = {"exported": 0, "imported": 0, "export_dropped": 0, "bad_seal": 0,
                                         "skipped": 0}

    async def start(self) -> None:
        self._pubsub.exporter = self._export
        self._tasks = [asyncio.create_task(self._sender(), name="federation-pub-out"),
                       asyncio.create_task(self._receiver(), name="federation-pub-in")]

    async def stop(self) -> None:
        self._pubsub.exporter = None
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
        if len(self._out) >= MAX_WAITING:
            self.counters["export_dropped"] += 1
            return
        subject = self._link.config.pub_subject(self.tag, msg["topic"])
        body = cbor2.dumps({"m": msg, "r": retain, "at": time.time()})
        self._out.append((subject, self._key.seal(subject.split(".", 2)[2], body)))
        self._ready.set()

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
            for subject, data in batch:
                if not self._link.connected:
                    self.counters["export_dropped"] += 1
                    continue
                try:
                    await self._link.nc.publish(subject, data)
                    self.counters["exported"] += 1
                except Exception as err:
                    self.counters["export_dropped"] += 1
                    self._throttle.event("export", "federation_publication_lost", logging.WARNING, error=repr(err))

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



async def _ack(msg: Any) -> None:
    try:
        await msg.ack()
    except Exception:  # the consumer redelivers it; the store's exactly-once is not affected
        pass
