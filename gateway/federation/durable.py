"""Durable subscriptions of a federation, on JetStream: they survive the loss of the gateway that holds them.

    subs = SharedSubs(link, key, pubsub, tag="1a2b")
    await subs.start()
    reply = await subs.subscribe("alice", "sim/*/tick", "dash")      # {"sub": "f:dash", "created", ...}
    page = await subs.poll("alice", "f:dash", ack=0, max_messages=100, wait_ms=20000)

A durable subscription of a federation is a record in bucket `ndne_<fed>_subs` (`s.<client>.<name>`, sealed:
pattern, `start`, the acknowledged position `acked`) over the publications stream `ndne_<fed>_pub`, which holds
every gateway's publications (`bridge.py`). A message's position (`pos`) is its sequence number in the stream.
Any gateway serves it: a client whose gateway died connects to another one, subscribes again with the same name
(or polls its id), and goes on from its last acknowledgement, nothing lost (at least once, in order per
publisher, as a durable subscription of a single gateway).

Decisions:
- The gateway serving a subscription reads the stream through an ephemeral pull consumer from the position after
  the last one read (`BY_START_SEQUENCE`, no acknowledgements: the record's `acked` is the only state), keeps at
  most `BUFFER` messages ahead of the acknowledged position, and writes each acknowledgement to the record
  (compare-and-set; a record advanced elsewhere wins if it is further) before answering the poll that carries
  it. A gateway that dies before writing an acknowledgement makes its messages come again (never lost).
- Retained values: a new subscription records `start`, the stream's next sequence number; its first messages are
  the last retained message of every topic it matches before `start` (one pull consumer `LAST_PER_SUBJECT`,
  read once), flagged `retained`, then every message from `start` on. A subscription resumed elsewhere before
  its client acknowledged past `start` gets that preamble again from its acknowledged position.
- The pattern becomes the consumer's subject filter up to its first `**`; the rest is matched here, and so are
  the client's rules (at delivery, as on one gateway: a message the client may not see is withheld and counted).
- Sub ids are `f:<name>`, so a poll for a subscription this gateway does not hold yet is recognised and the
  record read (lazily attached). A held subscription nobody polled for `IDLE_S` is let go (its record stays).
- Partitioned: a new durable subscription is refused (UNAVAILABLE: it would live nowhere the federation can
  see); one held already is served from what was read, and its acknowledgements are written when NATS returns.
Rejected: a JetStream durable consumer per subscription with explicit acknowledgements (messages a dead gateway
had fetched stay invisible to its successor until their `ack_wait` passes, and polls that re-read from the
acknowledged position would need redeliveries on demand); a home-made replication of the SQLite queues.
"""
from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from typing import Any

import cbor2

from ndn_edge import names as acl
from ndn_edge.errors import InvalidArgument, NotFound, ResourceExhausted, Unavailable
from ndn_edge.federation.config import kv_key, subject_token
from ndn_edge.federation.keys import BadSeal, FederationKey
from ndn_edge.federation.link import BucketPart
from ndn_edge.logs import event
from ndn_edge.patterns.pubsub import IDLE_S, REPLY_BUDGET, Wakeup, poll_messages

log = logging.getLogger("ndn_edge.federation")

PREFIX = "f:"
BUFFER = 10_000       # messages read ahead of the acknowledged position, per subscription
FETCH = 256
FETCH_WAIT_S = 1.0
SAVE_TIMEOUT_S = 1.0
INACTIVE_S = 30.0     # an ephemeral consumer left behind (a gateway died) is deleted by the server after this
_CAS_TRIES = 5
PREAMBLE_TRIES = 3    # reads of the retained values that fall short before what was read is taken as all


def filter_subject(fed: str, parts: tuple[str, ...]) -> str:
    """The stream subjects a pattern's messages are on, as one NATS filter (exact up to the first `**`)."""
    tokens = [f"ndne.{fed}.pub.*"]
    for part in parts:
        if part == acl.ANY:
            return ".".join([*tokens, ">"])
        tokens.append("*" if part == acl.ONE else subject_token(part))
    return ".".join(tokens)


class _Held:
    """A durable subscription this gateway serves now."""

    __slots__ = ("acked", "buffer", "client", "closed", "created", "cursor", "dirty", "epoch", "event", "last_poll",
                 "lost", "name", "parts", "preamble", "preamble_tries", "reader", "rev", "sent", "space", "start",
                 "waiting")

    def __init__(self, client: str, name: str, parts: tuple[str, ...], record: dict[str, Any], rev: int) -> None:
        self.client = client
        self.name = name
        self.parts = parts
        self.start = int(record["start"])
        self.acked = int(record.get("acked", 0))
        self.lost = int(record.get("lost", 0))
        self.created = float(record.get("created", time.time()))
        self.rev = rev
        self.cursor = max(self.acked, self.start - 1)  # the last stream position read
        self.preamble = self.acked < self.start - 1    # retained values before `start` still to read
        self.preamble_tries = 0
        self.buffer: collections.deque[tuple[int, dict[str, Any], int]] = collections.deque()  # pos, msg, size
        self.event = Wakeup()
        self.space = asyncio.Event()
        self.last_poll = time.monotonic()
        self.waiting = 0
        self.sent = 0
        self.epoch = 0
        self.dirty = False
        self.closed = False
        self.reader: asyncio.Task[None] | None = None

    @property
    def id(self) -> str:
        return PREFIX + self.name

    def record(self, tag: str) -> dict[str, Any]:
        return {"client": self.client, "name": self.name, "pattern": acl.format_pattern(self.parts),
                "start": self.start, "acked": self.acked, "lost": self.lost, "created": self.created, "gw": tag}


class SharedSubs(BucketPart):
    """The federation's durable subscriptions that clients of this gateway read."""

    def __init__(self, link: Any, key: FederationKey, pubsub: Any, *, tag: str) -> None:
        super().__init__(link, key, "subs", tag=tag, counters=(
            "created", "attached", "released", "read", "delivered", "withheld", "acks_saved", "ack_conflicts",
            "bad_seal", "dropped"))
        self._pubsub = pubsub
        self._held: dict[tuple[str, str], _Held] = {}
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep(), name="federation-subs-sweep")

    async def stop(self) -> None:
        tasks = [t for t in (self._sweeper, *(h.reader for h in self._held.values())) if t is not None]
        self._sweeper = None
        for held in self._held.values():
            held.closed = True
            held.event.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._held.clear()

    @staticmethod
    def owns(sub_id: Any) -> bool:
        return isinstance(sub_id, str) and sub_id.startswith(PREFIX)

    def held(self) -> int:
        return len(self._held)

    # -- the verbs

    async def subscribe(self, client: str, pattern: str, name: Any) -> dict[str, Any]:
        parts = self._pubsub.check_subscription(client, pattern, name)
        assert isinstance(name, str)
        held = self._held.get((client, name))
        if held is None:
            if not self._link.connected:
                raise Unavailable("this gateway is cut off from its federation (partitioned), where durable "
                                  "subscriptions live; retry in a moment, or through another gateway")
            held, created = await self._find_or_create(client, name, parts)
        else:
            created = False
        if held.parts != parts:
            raise InvalidArgument(f"durable subscription {name!r} of client '{client}' exists with pattern "
                                  f"{acl.format_pattern(held.parts)!r}; unsubscribe it first to change the pattern")
        held.last_poll = time.monotonic()
        return {"sub": held.id, "created": created, "pattern": acl.format_pattern(parts),
                "devices": self._pubsub.publishers(parts)}

    async def poll(self, client: str, sub_id: str, *, ack: int, max_messages: int, wait_ms: int,
                   after: int | None) -> dict[str, Any]:
        """As `PubSub.poll` (acknowledge, then the messages after it; `after` for pipelined polls)."""
        held = await self._attached(client, sub_id)
        held.last_poll = time.monotonic()
        await self._ack(held, ack)
        reply = await poll_messages(held, after=after, max_messages=max_messages, wait_ms=wait_ms,
                                    peek=self._peek, ended=lambda: held.closed)
        self.counters["delivered"] += len(reply["messages"])
        return reply

    async def unsubscribe(self, client: str, sub_id: str) -> dict[str, Any]:
        held = await self._attached(client, sub_id)
        if not self._link.connected:
            raise Unavailable("this gateway is cut off from its federation (partitioned); unsubscribe again when "
                              "it is back")
        await self._link.kv("subs").delete(self._name(client, held.name))
        self._release(held)
        return {"sub": sub_id, "removed": True}

    # -- records

    def _name(self, client: str, name: str) -> str:
        return f"s.{kv_key(client)}.{name}"

    async def _read_record(self, client: str, name: str) -> tuple[dict[str, Any], int] | None:
        from nats.js.errors import KeyNotFoundError

        key = self._name(client, name)
        try:
            entry = await self._link.kv("subs").get(key)
        except KeyNotFoundError:
            return None
        if entry.value is None:
            return None
        try:
            record = json.loads(self._key.open(f"{self._bucket}/{key}", entry.value))
            if not isinstance(record, dict) or record.get("client") != client or record.get("name") != name:
                raise ValueError("a record of another subscription")
            int(record["start"]), acl.parse_pattern(record["pattern"])
        except (BadSeal, ValueError, KeyError, TypeError) as err:
            self.counters["bad_seal"] += 1
            self._throttle.event("subs-seal", "federation_record_dropped", logging.WARNING, key=key, error=str(err))
            return None
        return record, int(entry.revision)

    async def _find_or_create(self, client: str, name: str, parts: tuple[str, ...]) -> tuple[_Held, bool]:
        from nats.js.errors import KeyWrongLastSequenceError

        for _ in range(_CAS_TRIES):
            found = await self._read_record(client, name)
            if found is not None:
                record, rev = found
                return self._hold(client, name, acl.parse_pattern(record["pattern"]), record, rev), False
            self._within_quota(client)
            info = await self._link.js.stream_info(self._link.config.stream)
            record = {"client": client, "name": name, "pattern": acl.format_pattern(parts),
                      "start": int(info.state.last_seq) + 1, "acked": 0, "lost": 0, "created": time.time(),
                      "gw": self.tag}
            key = self._name(client, name)
            try:
                rev = await self._link.kv("subs").create(key, self._seal(key, record))
            except KeyWrongLastSequenceError:
                continue  # made by another gateway meanwhile: attach to it
            self.counters["created"] += 1
            event(log, "federation_subscription_created", client=client, name=name, pattern=record["pattern"])
            return self._hold(client, name, parts, record, rev), True
        raise Unavailable(f"durable subscription {name!r} kept changing; retry")

    async def _attached(self, client: str, sub_id: Any) -> _Held:
        name = sub_id[len(PREFIX):]
        held = self._held.get((client, name))
        if held is not None:
            return held
        found = await self._read_record(client, name) if self._link.connected else None
        if found is None:
            raise NotFound(f"client '{client}' has no subscription {sub_id!r} in the federation; subscribe again")
        record, rev = found
        return self._hold(client, name, acl.parse_pattern(record["pattern"]), record, rev)

    def _within_quota(self, client: str) -> None:
        limit = self._pubsub.limits.subscriptions_per_client
        mine = sum(1 for owner, _ in self._held if owner == client)
        if mine >= limit:
            raise ResourceExhausted(f"client '{client}' has {mine} durable subscriptions on this gateway, its limit "
                                    "(subscriptions_per_client); close unused ones")

    def _hold(self, client: str, name: str, parts: tuple[str, ...], record: dict[str, Any], rev: int) -> _Held:
        held = self._held.get((client, name))
        if held is not None:
            return held
        held = self._held[(client, name)] = _Held(client, name, parts, record, rev)
        held.reader = asyncio.create_task(self._read(held), name=f"federation-sub {name}")
        self.counters["attached"] += 1
        return held

    def _release(self, held: _Held) -> None:
        held.closed = True
        held.event.set()
        if self._held.get((held.client, held.name)) is held:
            del self._held[(held.client, held.name)]
        if held.reader is not None:
            held.reader.cancel()
        self.counters["released"] += 1

    def _seal(self, key: str, record: dict[str, Any]) -> bytes:
        return self._key.seal(f"{self._bucket}/{key}", json.dumps(record, separators=(",", ":")).encode())

    # -- acknowledgements

    async def _ack(self, held: _Held, ack: int) -> None:
        if ack <= held.acked:
            return
        held.acked = min(ack, held.cursor)
        while held.buffer and held.buffer[0][0] <= held.acked:
            held.buffer.popleft()
        held.space.set()
        held.dirty = True
        if self._link.connected:
            try:
                await asyncio.wait_for(self._save(held), SAVE_TIMEOUT_S)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # written by the reader once NATS answers
                self._throttle.event("subs-save", "federation_ack_not_saved", logging.DEBUG, error=repr(err))

    async def _save(self, held: _Held) -> None:
        """Write the acknowledged position (compare-and-set; a record further along elsewhere wins)."""
        from nats.js.errors import KeyWrongLastSequenceError

        key = self._name(held.client, held.name)
        for _ in range(_CAS_TRIES):
            if not held.dirty:
                return
            try:
                held.dirty = False
                held.rev = await self._link.kv("subs").update(key, self._seal(key, held.record(self.tag)),
                                                              last=held.rev)
                self.counters["acks_saved"] += 1
                return
            except KeyWrongLastSequenceError:
                self.counters["ack_conflicts"] += 1
                found = await self._read_record(held.client, held.name)
                if found is None:  # unsubscribed through another gateway
                    self._release(held)
                    return
                record, held.rev = found
                theirs = int(record.get("acked", 0))
                held.dirty = theirs < held.acked or held.dirty
                if theirs > held.acked:
                    held.acked = theirs
                    while held.buffer and held.buffer[0][0] <= theirs:
                        held.buffer.popleft()
            except BaseException:
                held.dirty = True
                raise

    # -- reading the stream

    async def _read(self, held: _Held) -> None:
        while not held.closed:
            if not await self._link.wait_connected(3600.0) or not self._link.connected:
                await asyncio.sleep(0.2)
                continue
            psub = None
            try:
                if held.dirty:
                    await self._save(held)
                if held.preamble:
                    await self._read_preamble(held)
                psub = await self._consumer(held, held.cursor + 1)
                while self._link.connected and not held.closed:
                    if len(held.buffer) >= BUFFER:
                        held.space.clear()
                        try:
                            await asyncio.wait_for(held.space.wait(), FETCH_WAIT_S)
                        except asyncio.TimeoutError:
                            pass
                        continue
                    try:
                        msgs = await psub.fetch(FETCH, timeout=FETCH_WAIT_S)
                    except Exception as err:
                        if "timeout" not in type(err).__name__.lower():
                            raise
                        msgs = []
                    for msg in msgs:
                        self._take(held, msg)
                    if held.dirty:
                        await self._save(held)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # NATS went away mid-read: again from the cursor once it is back
                self._throttle.event("subs-read", "federation_subscription_read_failed", logging.INFO,
                                     error=repr(err))
                await asyncio.sleep(0.2)
            finally:
                if psub is not None:
                    await _unsubscribe(psub)

    async def _consumer(self, held: _Held, from_seq: int, *, last_per_subject: bool = False) -> Any:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        config = ConsumerConfig(ack_policy=AckPolicy.NONE, inactive_threshold=INACTIVE_S)
        if last_per_subject:
            config.deliver_policy = DeliverPolicy.LAST_PER_SUBJECT
        else:
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = max(1, from_seq)
        return await self._link.js.pull_subscribe(filter_subject(self._link.config.federation, held.parts),
                                                  stream=self._link.config.stream, config=config)

    async def _read_preamble(self, held: _Held) -> None:
        """The last retained message of every topic before `start`, after the acknowledged position."""
        psub = await self._consumer(held, 0, last_per_subject=True)
        try:
            pending = min(int((await psub.consumer_info()).num_pending), BUFFER)
            got: dict[str, tuple[int, dict[str, Any], int]] = {}
            fetched = 0
            while fetched < pending:
                try:
                    msgs = await psub.fetch(min(FETCH, pending - fetched), timeout=FETCH_WAIT_S)
                except Exception as err:
                    if "timeout" not in type(err).__name__.lower() or held.preamble_tries < PREAMBLE_TRIES:
                        held.preamble_tries += 1
                        raise  # read again (a consumer placed on a server that went away answers nothing)
                    break
                fetched += len(msgs)
                for msg in msgs:
                    found = self._open(held, msg)
                    if found is None:
                        continue
                    seq, message, retain = found
                    if retain and held.acked < seq < held.start and got.get(message["topic"], (0,))[0] < seq:
                        got[message["topic"]] = (seq, dict(message, pos=seq, retained=True), 0)
        finally:
            await _unsubscribe(psub)
        for seq, message, _ in sorted(got.values(), key=lambda item: item[0]):
            held.buffer.append((seq, message, len(cbor2.dumps(message))))
        held.preamble = False
        if got:
            held.event.set()

    def _open(self, held: _Held, msg: Any) -> tuple[int, dict[str, Any], bool] | None:
        """A stream message's position, content and retain flag, or None (dropped and counted)."""
        try:
            seq = int(msg.metadata.sequence.stream)
            data = cbor2.loads(self._key.open(msg.subject.split(".", 2)[2], msg.data))
            message, retain, at = data["m"], bool(data["r"]), float(data["at"])
            if not isinstance(message, dict) or not isinstance(message.get("topic"), str):
                raise ValueError("not a message")
        except (BadSeal, cbor2.CBORDecodeError, ValueError, KeyError, TypeError, AttributeError, IndexError) as err:
            self.counters["bad_seal"] += 1
            self._throttle.event("subs-msg", "federation_publication_dropped", logging.WARNING, error=str(err))
            return None
        parts = tuple(message["topic"].split("/"))
        if not acl.matches(held.parts, parts):
            return None
        if not self._pubsub.visible(held.client, parts):
            self.counters["withheld"] += 1
            return None
        self._lag(at)
        return seq, message, retain

    def _take(self, held: _Held, msg: Any) -> None:
        try:
            seq = int(msg.metadata.sequence.stream)
        except (AttributeError, TypeError, ValueError):
            self.counters["dropped"] += 1
            return
        if seq <= held.cursor:
            return  # read already (a consumer made again from an older position)
        held.cursor = seq
        self.counters["read"] += 1
        found = self._open(held, msg)
        if found is None:
            return
        _, message, _ = found
        message = dict(message, pos=seq)
        message.pop("retained", None)
        held.buffer.append((seq, message, len(cbor2.dumps(message))))
        held.event.set()

    def _peek(self, held: _Held, max_messages: int, start: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        withheld = False
        budget = REPLY_BUDGET
        for pos, message, size in held.buffer:
            if pos <= start:
                continue
            if len(out) >= max_messages:
                break
            if not self._pubsub.visible(held.client, tuple(message["topic"].split("/"))):
                withheld = True  # a rule revoked since it was read
                continue
            budget -= size + 8
            if budget < 0 and out:
                break
            out.append(message)
        if withheld:
            before = len(held.buffer)
            held.buffer = collections.deque(item for item in held.buffer
                                            if self._pubsub.visible(held.client, tuple(item[1]["topic"].split("/"))))
            self.counters["withheld"] += before - len(held.buffer)
        return out

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for held in list(self._held.values()):
                if not held.waiting and now - held.last_poll > IDLE_S:
                    if held.dirty and self._link.connected:
                        try:
                            await asyncio.wait_for(self._save(held), SAVE_TIMEOUT_S)
                        except Exception:  # its acknowledgement is lost: those messages come again
                            pass
                    self._release(held)


async def _unsubscribe(psub: Any) -> None:
    try:
        await psub.unsubscribe()
    except Exception:  # gone with the connection; the server deletes the consumer after INACTIVE_S
        pass
