"""Publish/subscribe: device publications to subscribers, with order per publisher, gaps, retained values and
durable subscriptions; plus membership events as a topic.

Owns what happens to a publication once the report intake (`ndn_edge.devices.reports`) has verified it: putting each
publisher's messages back in order, detecting the ones lost, keeping the last value of each topic (`retained`),
and queueing messages for subscriptions, in memory or durably in the store. Clients read a subscription by
long-polling (`poll`), acknowledging what they have processed (docs/gateway-protocol.md, docs/models.md).

    pubsub = PubSub(store, site="edge", intake=intake)
    intake.handlers[PUBLICATION] = pubsub.on_report
    sub = pubsub.subscribe("alice", "sim/**", durable="dash")    # {"sub", "created", "pattern"}
    page = await pubsub.poll("alice", sub["sub"], ack=0, max_messages=100, wait_ms=20000)

A message is a map: `topic` (`<device...>/<topic>` relative to the site, e.g. `sim/1/tick`), `publisher`
(`sim/1`), `value`, `seq` and `boot` (the publisher's numbering, docs/protocol.md "Publications"), `time` (when
the gateway received it, seconds since the epoch), `pos` (its position in the subscription, for acknowledgements)
and, when they apply, `retained: true` (a retained value delivered at subscription), `gap: n` (n messages of
this publisher are missing right before this one) and `late: true` (it arrived after its successors had been
delivered).

Decisions:
- Order per publisher: messages are delivered in `seq` order within a `boot`. One that arrives ahead of a missing
  predecessor is held back -- in the store (`pub_held`), so a gateway crash loses nothing -- and acknowledged at
  once, so the device's outbox (16 reports) does not fill up behind a lost one. It is released when the
  predecessor arrives (the device keeps retransmitting it), when the publisher restarts (a new `boot`), or after
  `HOLD_S`: then the predecessor is taken as lost (the device gives up after 12 sends, about 44 s, or drops its
  oldest report when its outbox is full) and the next message delivered carries `gap`. `HOLD_S` (30 s) covers
  ten sends of the missing report: at 30 % loss, one hole in 170,000 outlasts it.
- Exactly once: the intake never passes a retransmission twice, so a number at or below the last delivered is a
  late arrival (after its hold timed out, or at first contact): delivered at once, flagged `late`.
- First contact with a publisher (nothing in the store about it) starts its stream at the first number seen,
  without a gap (earlier messages were for whoever listened before), unless that number is small
  (`FIRST_CONTACT_SEQ`, the size of the device's outbox): then the publisher has just started, and its first
  messages, if missing, are being retransmitted and are waited for. A publisher's new `boot` starts the same
  way, except that skipping its first messages is a `gap` (those subscribers knew the publisher); messages
  before it that still arrive are `late`. A report of an earlier boot (a retransmission still on its way when
  the publisher restarted) takes that boot's stream up where it was (the last `PAST_BOOTS` boots, in memory).
- In a federation, a message another gateway delivered (`deliver`) moves its publisher's position here too: a
  standby that takes the device over follows on from it instead of holding what comes next for `HOLD_S`, waiting
  for numbers it never hears, and a report resent to it that the other gateway had delivered is acknowledged
  without being delivered again (`delivered_elsewhere`).
- Retained values: the last message of each topic published with `retain`, in the store; a new subscription gets
  those its pattern and its client's rules match first, flagged `retained`.
- Durable subscriptions (`durable=NAME`, per client) live in the store with their queue and acknowledged
  position and survive client and gateway restarts: at least once, in order, until acknowledged. Others live in
  memory (`MEMORY_QUEUE` messages at most) and end `IDLE_S` seconds after their last poll. A full queue drops its
  oldest messages and counts them in `lost`.
- Access rules apply at delivery: a subscription sees a topic only if its client's rules allow the topic name
  (`sim/1/tick` needs a rule matching `sim/1/tick`); `_members/<device...>` is visible to a client that may reach
  the device (as in device listings). They are checked when a message is queued and again when it is handed
  out, so what was queued before a rule was revoked is withheld (and dropped), never delivered. Rules are
  re-read at most once a second, so a revoke applies within one.
- Membership events (`join`, `leave`, `offline`, `sleep`, from the directory) are messages on topic
  `_members/<device...>` published by `_gw` (value: `{"event", "device", "time", ...}`), retained, so a new
  subscriber to `_members/**` first gets the last event of every device: the current membership.
Rejected: leaving held messages unacknowledged until delivered (the device retransmits them with a growing
backoff while they wait, and its outbox, paced at a few reports in flight, stalls behind every loss: 5 messages/s
at 30 % loss, against about 40 acknowledged at once), and one store row per message shared by all queues
(deleting acknowledged rows would need reference counts; queues are short when subscribers keep up).
"""
from __future__ import annotations

import asyncio
import binascii
import collections
import functools
import itertools
import logging
import math
import os
import re
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import cbor2

from ndn_edge import names as acl
from ndn_edge.devices.reports import ACK, DROP, Report
from ndn_edge.errors import InvalidArgument, NotFound, PermissionDenied, ResourceExhausted, StoreError, UnknownClient
from ndn_edge.limits import Limits
from ndn_edge.logs import Throttle, event

log = logging.getLogger("ndn_edge.pubsub")
_THROTTLE = Throttle(log)

MEMBERS = "_members"
GATEWAY_PUBLISHER = "_gw"
HOLD_S = 30.0             # how long a message waits for a missing predecessor
FIRST_CONTACT_SEQ = 16    # a publisher first met at or below this number is taken to have started at 1
PAST_BOOTS = 4            # earlier boots per publisher whose position is kept, for their late reports
MEMORY_QUEUE = 10_000     # messages per in-memory subscription
DURABLE_QUEUE = 100_000   # messages per durable subscription
IDLE_S = 60.0             # an in-memory subscription ends this long after its last poll
RULES_TTL_S = 1.0
SWEEP_S = 1.0
REPLY_BUDGET = 48_000     # bytes of messages in one poll reply (replies are at most 60,000)
PUSH_STREAMS = 4          # polls of one subscription that take pushes at a time (a client keeps one or two)
ROUTES = 10_000           # topics whose subscriptions (and visibility per client) are remembered
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")

# This module's own tables (Store.ensure_schema): MIGRATIONS[i] takes them from version i to i+1.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # retained values, per-publisher positions, durable subscriptions and their queues
        """CREATE TABLE retained (
            topic TEXT PRIMARY KEY,
            message BLOB NOT NULL
        )""",
        """CREATE TABLE publishers (
            device TEXT PRIMARY KEY,
            boot TEXT NOT NULL,
            seq INTEGER NOT NULL
        )""",
        """CREATE TABLE pub_held (
            device TEXT NOT NULL,
            seq INTEGER NOT NULL,
            message BLOB NOT NULL,
            PRIMARY KEY (device, seq)
        ) WITHOUT ROWID""",
        """CREATE TABLE subscriptions (
            id INTEGER PRIMARY KEY,
            client TEXT NOT NULL,
            name TEXT NOT NULL,
            pattern TEXT NOT NULL,
            acked INTEGER NOT NULL DEFAULT 0,
            lost INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            UNIQUE (client, name)
        )""",
        """CREATE TABLE sub_queue (
            sub INTEGER NOT NULL REFERENCES subscriptions(id) ON DELETE CASCADE,
            pos INTEGER NOT NULL,
            message BLOB NOT NULL,
            PRIMARY KEY (sub, pos)
        ) WITHOUT ROWID""",
    ),
    (  # a client's subscriptions and their queues go with the client (`ndn-edge client remove`)
        """CREATE TABLE subscriptions_v2 (
            id INTEGER PRIMARY KEY,
            client TEXT NOT NULL REFERENCES clients(name) ON DELETE CASCADE,
            name TEXT NOT NULL,
            pattern TEXT NOT NULL,
            acked INTEGER NOT NULL DEFAULT 0,
            lost INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            UNIQUE (client, name)
        )""",
        "INSERT INTO subscriptions_v2 SELECT id, client, name, pattern, acked, lost, created_at FROM subscriptions "
        "WHERE client IN (SELECT name FROM clients)",
        """CREATE TABLE sub_queue_v2 (
            sub INTEGER NOT NULL REFERENCES subscriptions_v2(id) ON DELETE CASCADE,
            pos INTEGER NOT NULL,
            message BLOB NOT NULL,
            PRIMARY KEY (sub, pos)
        ) WITHOUT ROWID""",
        "INSERT INTO sub_queue_v2 SELECT sub, pos, message FROM sub_queue "
        "WHERE sub IN (SELECT id FROM subscriptions_v2)",
        "DROP TABLE sub_queue",
        "DROP TABLE subscriptions",
        "ALTER TABLE subscriptions_v2 RENAME TO subscriptions",
        "ALTER TABLE sub_queue_v2 RENAME TO sub_queue",
    ),
)

_Queued = tuple[int, dict[str, Any], tuple[str, ...], int]  # position, message, its topic's parts, encoded size


class _Stream:
    """One publisher's numbering as the gateway follows it."""

    __slots__ = ("boot", "followed", "held", "in_store", "last", "past", "pending_gap", "since")

    def __init__(self, boot: str, last: int) -> None:
        self.boot = boot
        self.last = last  # the last number delivered
        self.held: dict[int, dict[str, Any]] = {}  # seq -> message (also in the store's pub_held)
        self.in_store = False  # pub_held has rows of this publisher
        self.since = 0.0  # monotonic time the oldest held message arrived
        self.pending_gap = 0  # messages known lost, to report on the next one delivered
        self.past: dict[str, int] = {}  # boot -> last delivered, of the boots before this one (in memory)
        self.followed = 0  # the last number of this boot another gateway of a federation delivered (`_follow`)

    def leave_boot(self) -> None:
        """Remember where the current boot was (its late reports take it up there), before another one starts."""
        self.past[self.boot] = self.last
        while len(self.past) > PAST_BOOTS:
            del self.past[next(iter(self.past))]


class _Sub:
    """One subscription: in memory, or durable (its queue in the store, `db_id` its row)."""

    __slots__ = (
        "acked",
        "client",
        "db_id",
        "epoch",
        "event",
        "id",
        "last_poll",
        "lost",
        "name",
        "next_pos",
        "pattern",
        "queue",
        "sent",
        "size",
        "streams",
        "waiting",
    )

    def __init__(self, sub_id: str, client: str, pattern: tuple[str, ...], *, name: str | None = None,
                 db_id: int | None = None, next_pos: int = 1, acked: int = 0, size: int = 0, lost: int = 0) -> None:
        self.id = sub_id
        self.client = client
        self.pattern = pattern
        self.name = name
        self.db_id = db_id
        self.queue: collections.deque[_Queued] = collections.deque()  # in-memory subscriptions
        self.next_pos = next_pos
        self.acked = acked
        self.size = size
        self.lost = lost
        self.event = Wakeup()
        self.last_poll = time.monotonic()
        self.waiting = 0
        self.sent = 0  # the last position a pipelined poll was answered with (PubSub.poll)
        self.epoch = 0  # polls without `after` so far: pipelined polls of an earlier epoch get nothing
        self.streams: collections.deque[_Push] = collections.deque()  # answered polls that take pushes, oldest first

    @property
    def durable(self) -> bool:
        return self.db_id is not None

    def wake(self) -> None:
        self.event.set()

    def push(self, msg: dict[str, Any], parts: tuple[str, ...], size: int) -> None:
        """Queue a message (in-memory subscriptions): its topic's parts and encoded size go with it. The pollers
        are woken by `wake`, once for all a batch queued."""
        self.queue.append((self.next_pos, msg, parts, size))
        self.next_pos += 1
        if len(self.queue) > MEMORY_QUEUE:
            self.queue.popleft()
            self.lost += 1


class _Push:
    """An answered poll that asked for more answers (`push`): the gateway sends it up to `left` more, each as soon as
    messages are committed, until `until` (its wait's end)."""

    __slots__ = ("epoch", "left", "max", "more", "until")

    def __init__(self, more: Callable[[Any], bool], left: int, max_messages: int, until: float, epoch: int) -> None:
        self.more = more
        self.left = left
        self.max = max_messages
        self.until = until
        self.epoch = epoch


class _Batch:
    """What one transaction's publications change: written once at its end (`PubSub._write`: each publisher's
    position, each topic's last retained message, the rows of durable queues) and handed out after its commit
    (`PubSub._deliver`: in-memory queues, waking pollers)."""

    __slots__ = ("durable", "exported", "memory", "positions", "retained", "stored")

    def __init__(self) -> None:
        self.positions: dict[str, tuple[str, int]] = {}  # device -> (boot, last delivered)
        self.stored: set[str] = set()  # devices whose held messages up to that position leave the store
        self.retained: dict[str, bytes] = {}  # topic -> its last retained message
        self.durable: dict[_Sub, list[bytes]] = {}
        self.memory: list[tuple[list[_Sub], dict[str, Any], tuple[str, ...], int]] = []
        self.exported: list[tuple[dict[str, Any], bool]] = []  # for a federation's exporter (PubSub.exporter)


class Wakeup:
    """What a subscription's polls wait on: `asyncio.Event`'s `set` and `clear`, and `wait(timeout)`, which wakes
    its waiter in the loop's next pass. `asyncio.wait_for(event.wait(), timeout)` runs the wait in a task of its
    own (Python 3.11): the poller ran two passes after the commit that woke it, behind the intake's next batch
    (`python -m bench pubsub`: 1.2-1.8 ms at the median between a commit and the polls' replies)."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[bool]] = []

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(True)

    def clear(self) -> None:
        self._set = False

    async def wait(self, timeout: float) -> bool:
        """True once set, False after `timeout` seconds."""
        if self._set:
            return True
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        self._waiters.append(fut)
        timer = loop.call_later(timeout, _expire, fut)
        try:
            return await fut
        finally:
            timer.cancel()
            if self._waiters:  # (timed out or cancelled: still listed; set() empties the list)
                try:
                    self._waiters.remove(fut)
                except ValueError:
                    pass


def _expire(fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        fut.set_result(False)


async def poll_messages(sub: Any, *, after: int | None, max_messages: int, wait_ms: int,
                        peek: Callable[[Any, int, int], list[dict[str, Any]]],
                        ended: Callable[[], bool]) -> dict[str, Any]:
    """A poll's reply, once its acknowledgement is applied (`PubSub.poll`, and a federation's durable
    subscriptions, `ndn_edge.federation.durable`): the messages after the acknowledged position (or after
    `after`, for pipelined polls), waiting up to `wait_ms` for some. `sub` holds the subscription's `acked`,
    `sent`, `lost`, `epoch`, `waiting`, `last_poll` and the `event` set when messages arrive; `peek(sub, max,
    start)` reads the messages after position `start`; `ended()` says the subscription went away meanwhile."""
    if after is None:
        sub.epoch += 1
    epoch = sub.epoch
    deadline = time.monotonic() + wait_ms / 1000
    while True:
        sub.event.clear()
        start = sub.acked if after is None else max(after, sub.acked, sub.sent)
        messages = [] if epoch != sub.epoch else peek(sub, max_messages, start)
        left = deadline - time.monotonic()
        if messages or left <= 0 or epoch != sub.epoch or ended():
            break  # (woken with nothing new, as when another poll took the messages: wait on)
        sub.waiting += 1
        try:
            await sub.event.wait(left)
        finally:
            sub.waiting -= 1
            sub.last_poll = time.monotonic()
    if after is None:  # pipelined polls go on from what this one returns
        sub.sent = messages[-1]["pos"] if messages else sub.acked
        return {"messages": messages, "lost": sub.lost}
    if messages:
        sub.sent = max(sub.sent, messages[-1]["pos"])
    return {"messages": messages, "lost": sub.lost, "from": start}


class PubSub:
    """Publications in, ordered and retained; subscriptions out, by long-polling."""

    def __init__(self, store: Any, *, site: str, intake: Any = None, limits: Limits | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.site = site.strip("/")
        self.limits = limits or Limits()
        self._store = store
        self._intake = intake
        self._clock = clock
        self._streams: dict[str, _Stream] = {}
        self._subs: dict[tuple[str, str], _Sub] = {}
        self._rules: dict[str, tuple[tuple[tuple[str, ...], ...], float, dict[tuple[str, ...], bool]]] = {}
        # topic -> (subscriptions whose pattern matches it and whose client may see it, until when: PubSub._route)
        self._routes: dict[tuple[str, ...], tuple[list[_Sub], float]] = {}
        self._batch: _Batch | None = None  # of the intake's current transaction
        self._stopped = False
        self._batch_token = -1
        self._gw_boot = binascii.hexlify(os.urandom(4)).decode()
        self._gw_seq = 0
        self._task: asyncio.Task[None] | None = None
        # A federation's (ndn_edge.federation.bridge): every message emitted here, after its transaction.
        self.exporter: Callable[[dict[str, Any], bool], None] | None = None
        self.counters: dict[str, int] = {"published": 0, "delivered": 0, "held": 0, "gaps": 0, "late": 0,
                                         "delivered_elsewhere": 0, "malformed": 0, "membership": 0, "withheld": 0,
                                         "over_quota": 0, "pushed": 0}

    # -- lifecycle

    async def start(self) -> None:
        """Load the durable subscriptions; start the sweeper (held messages, idle subscriptions)."""
        if self._task is not None:
            return
        self._stopped = False
        self._store.ensure_schema("pubsub", MIGRATIONS, adopt="subscriptions")
        for db_id, client, name, pattern, acked, lost in self._store.query(
                "SELECT id, client, name, pattern, acked, lost FROM subscriptions"):
            top, size = self._store.query("SELECT MAX(pos), COUNT(*) FROM sub_queue WHERE sub = ?", (db_id,))[0]
            sub = _Sub(_durable_id(name), client, acl.parse_pattern(pattern), name=name, db_id=db_id,
                       next_pos=max(acked, top or 0) + 1, acked=acked, size=size, lost=lost)
            self._subs[(client, sub.id)] = sub
        self._routes.clear()
        for (device,) in self._store.query("SELECT DISTINCT device FROM pub_held"):
            with self._store.transaction() as db:  # so that the sweeper releases them in time
                self._load_stream(db, device, 0, "")
        self._task = asyncio.create_task(self._sweep(), name="pubsub-sweep")

    async def stop(self) -> None:
        """Stop the sweeper; wake pollers (they answer with what they have)."""
        self._stopped = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for sub in self._subs.values():
            sub.streams.clear()
            sub.wake()

    # -- publications (called by the intake, inside its transaction)

    def on_report(self, db: Any, report: Report) -> str:
        """Order, retain and queue one publication; the intake's verdict (ACK, LATER or DROP)."""
        p = report.params
        topic, boot, seq = p.get("topic"), p.get("boot"), p.get("seq")
        if (not isinstance(topic, str) or not topic or "" in topic.split("/") or not isinstance(boot, str)
                or isinstance(seq, bool) or not isinstance(seq, int) or seq < 1):
            self.counters["malformed"] += 1
            event(log, "publication_dropped", logging.DEBUG, device=report.device.name, topic=repr(topic),
                  boot=repr(boot), seq=repr(seq))
            return DROP
        self.counters["published"] += 1
        publisher = self._relative(report.device.name)
        msg = {"topic": f"{publisher}/{topic}", "publisher": publisher, "value": p.get("value"), "seq": seq,
               "boot": boot, "time": report.received}
        retain = p.get("retain", True) is not False
        batch = self._intake_batch()
        verdict = self._order(db, report.device.name, msg, boot, seq, retain, batch)
        if self._intake is None:  # (no transaction of the intake's to join: written and handed out now)
            self._write(db, batch)
            self._deliver(batch)
        return verdict

    def _order(self, db: Any, device: str, msg: dict[str, Any], boot: str, seq: int, retain: bool,
               batch: _Batch) -> str:
        """Deliver, hold back or release one publication of `device` by its number; the intake's verdict."""
        stream = self._stream(db, device, boot, seq, batch)
        if seq <= stream.followed:  # (this gateway took the device over) another one delivered it already
            self.counters["delivered_elsewhere"] += 1
            return ACK
        if seq <= stream.last:
            self.counters["late"] += 1
            msg["late"] = True
            self._emit(msg, retain, batch)
            return ACK
        if seq in stream.held:
            return ACK  # cannot happen (the intake passes a report once), but would be harmless
        if not stream.held:
            stream.since = time.monotonic()
        held = dict(msg, _retain=retain)
        stream.held[seq] = held
        if seq > stream.last + 1:
            self.counters["held"] += 1
            db.execute("INSERT OR REPLACE INTO pub_held (device, seq, message) VALUES (?, ?, ?)",
                       (device, seq, cbor2.dumps(held)))
            stream.in_store = True
            return ACK
        self._release(db, device, stream, stream.last, batch)
        return ACK

    def _intake_batch(self) -> _Batch:
        """The batch of the intake's current transaction: written before its commit, handed out after."""
        intake = self._intake
        if intake is None:
            return _Batch()
        if self._batch is None or self._batch_token != intake.batch:
            batch = self._batch = _Batch()
            self._batch_token = intake.batch
            intake.before_commit(lambda db: self._write(db, batch))
            intake.after_commit(lambda: self._deliver(batch))
        return self._batch

    def _stream(self, db: Any, device: str, boot: str, seq: int, batch: _Batch) -> _Stream:
        stream = self._streams.get(device) or self._load_stream(
            db, device, 0 if seq <= FIRST_CONTACT_SEQ else seq - 1, boot)
        if stream.boot != boot:  # the publisher restarted: what is held of the old boot will not be completed
            self._release(db, device, stream, math.inf, batch)
            stream.leave_boot()
            if boot in stream.past:  # back to a boot met before (a late report of it): where it was
                stream.boot, stream.last, stream.pending_gap = boot, stream.past.pop(boot), 0
            else:
                # A new boot's first message met may not be its first: a low number waits for those before it
                # (reordered on the way), a higher one starts the stream there, its predecessors a gap.
                missed = 0 if seq <= FIRST_CONTACT_SEQ else seq - 1
                stream.boot, stream.last, stream.pending_gap = boot, missed, missed
            stream.followed = 0
        return stream

    def _load_stream(self, db: Any, device: str, last: int, boot: str) -> _Stream:
        """The publisher's position from the store (with what it holds), or a new one at `last` (first contact)."""
        row = db.execute("SELECT boot, seq FROM publishers WHERE device = ?", (device,)).fetchone()
        stream = _Stream(row[0], row[1]) if row is not None else _Stream(boot, last)
        for seq, blob in db.execute("SELECT seq, message FROM pub_held WHERE device = ?", (device,)).fetchall():
            stream.held[seq] = cbor2.loads(blob)
        stream.in_store = bool(stream.held)
        stream.since = time.monotonic() if stream.held else 0.0
        self._streams[device] = stream
        return stream

    def _release(self, db: Any, device: str, stream: _Stream, horizon: float, batch: _Batch) -> None:
        """Deliver held messages in order: each one that follows the last delivered, and any at or below
        `horizon` (what is missing at or below it is gone)."""
        while stream.held:
            s = min(stream.held)
            if s > stream.last + 1 and s > horizon:
                if horizon <= stream.last:
                    break
                stream.pending_gap += int(horizon) - stream.last  # gone, and none of them held
                stream.last = int(horizon)
                continue
            msg = stream.held.pop(s)
            gap = s - stream.last - 1 + stream.pending_gap
            stream.pending_gap = 0
            if gap > 0:
                msg["gap"] = gap
                self.counters["gaps"] += 1
            self._emit(msg, msg.pop("_retain"), batch)
            stream.last = s
        if stream.in_store:
            db.execute("DELETE FROM pub_held WHERE device = ? AND seq <= ?", (device, stream.last))
            stream.in_store = bool(stream.held)
        stream.since = time.monotonic() if stream.held else 0.0
        batch.positions[device] = (stream.boot, stream.last)

    def _emit(self, msg: dict[str, Any], retain: bool, batch: _Batch, *, export: bool = True) -> None:
        """Retain and queue one message for every subscription that matches and may see it (in `batch`); with
        `export`, hand it to a federation's exporter too (after the commit)."""
        if export and self.exporter is not None:
            batch.exported.append((msg, retain))
        topic = msg["topic"]
        parts = tuple(topic.split("/"))
        blob = cbor2.dumps(msg)
        if retain:
            batch.retained[topic] = blob
        memory = []
        subs = self._route(parts)
        self.counters["delivered"] += len(subs)
        for sub in subs:
            if sub.db_id is not None:  # (durable, without a property's call per subscription and message)
                batch.durable.setdefault(sub, []).append(blob)
            else:
                memory.append(sub)
        if memory:
            batch.memory.append((memory, msg, parts, len(blob)))

    def _route(self, parts: tuple[str, ...]) -> list[_Sub]:
        """The subscriptions whose pattern matches the topic and whose client may see it: decided once per topic
        until the subscriptions change or the oldest rules it was decided with are due to be read again."""
        now = time.monotonic()
        cached = self._routes.get(parts)
        if cached is not None and now < cached[1]:
            return cached[0]
        if cached is None and len(self._routes) >= ROUTES:
            self._routes.clear()
        subs = []
        expires = now + RULES_TTL_S
        for sub in self._subs.values():
            if acl.matches(sub.pattern, parts):
                if self._visible(sub.client, parts):
                    subs.append(sub)
                expires = min(expires, self._rules[sub.client][1] + RULES_TTL_S)
        self._routes[parts] = (subs, expires)
        return subs

    def _write(self, db: Any, batch: _Batch) -> None:
        """Write what `batch` changed, inside its transaction."""
        if batch.positions:
            db.executemany("INSERT INTO publishers (device, boot, seq) VALUES (?, ?, ?) ON CONFLICT (device) DO "
                           "UPDATE SET boot = excluded.boot, seq = excluded.seq",
                           [(device, boot, seq) for device, (boot, seq) in batch.positions.items()])
        if batch.retained:
            db.executemany("INSERT INTO retained (topic, message) VALUES (?, ?) ON CONFLICT (topic) DO UPDATE SET "
                           "message = excluded.message", list(batch.retained.items()))
        for sub, blobs in batch.durable.items():
            self._enqueue_durable(db, sub, blobs)

    def _deliver(self, batch: _Batch) -> None:
        """After the commit: queue in memory, wake the pollers of durable subscriptions, export."""
        woken: set[_Sub] = set(batch.durable)
        for subs, msg, parts, size in batch.memory:
            for sub in subs:
                sub.push(msg, parts, size)
            woken.update(subs)
        for sub in woken:
            if sub.streams:
                self._push(sub)
            sub.wake()
        if self.exporter is not None:
            for msg, retain in batch.exported:
                self.exporter(msg, retain)

    def _push(self, sub: _Sub) -> None:
        """Send what `sub` holds after its last answer to its polls that take pushes (at once, after the commit:
        no task woken, no poll awaited)."""
        now = time.monotonic()
        streams = sub.streams
        while streams:
            stream = streams[0]
            if stream.until <= now or stream.epoch != sub.epoch:
                streams.popleft()
                continue
            start = max(sub.acked, sub.sent)
            messages = self._peek(sub, stream.max, start)
            if not messages:
                return
            if not stream.more({"messages": messages, "lost": sub.lost, "from": start}):
                streams.popleft()
                continue
            self.counters["pushed"] += 1
            sub.sent = messages[-1]["pos"]
            sub.last_poll = now
            stream.left -= 1
            if stream.left <= 0:
                streams.popleft()

    def _enqueue_durable(self, db: Any, sub: _Sub, blobs: list[bytes]) -> None:
        # Only while the subscription is in the store: `client remove` (another process) deletes a client's
        # subscriptions, and the sweeper then forgets them here (_forget_removed).
        if db.execute("SELECT 1 FROM subscriptions WHERE id = ?", (sub.db_id,)).fetchone() is None:
            return
        first = sub.next_pos
        db.executemany("INSERT INTO sub_queue (sub, pos, message) VALUES (?, ?, ?)",
                       [(sub.db_id, first + k, blob) for k, blob in enumerate(blobs)])
        sub.next_pos += len(blobs)
        sub.size += len(blobs)
        if sub.size > DURABLE_QUEUE:
            cur = db.execute("DELETE FROM sub_queue WHERE sub = ? AND pos IN (SELECT pos FROM sub_queue WHERE "
                             "sub = ? ORDER BY pos LIMIT ?)", (sub.db_id, sub.db_id, sub.size - DURABLE_QUEUE))
            sub.size -= cur.rowcount
            sub.lost += cur.rowcount
            db.execute("UPDATE subscriptions SET lost = ? WHERE id = ?", (sub.lost, sub.db_id))

    # -- membership (directory events)

    def on_event(self, change: dict[str, Any]) -> None:
        """A directory event (join, leave, offline, sleep) as a retained message on `_members/<device...>`."""
        device = change.get("device")
        if not isinstance(device, str):
            return
        rel = self._relative(device)
        self._gw_seq += 1
        value = {k: v for k, v in change.items() if k != "device"}
        value["device"] = rel
        msg = {"topic": f"{MEMBERS}/{rel}", "publisher": GATEWAY_PUBLISHER, "value": value, "seq": self._gw_seq,
               "boot": self._gw_boot, "time": change.get("time", self._clock())}
        batch = _Batch()
        try:
            with self._store.transaction() as db:
                self._emit(msg, True, batch)
                self._write(db, batch)
        except (StoreError, sqlite3.Error) as err:
            event(log, "membership_not_recorded", logging.WARNING, error=str(err))
            return
        self.counters["membership"] += 1
        _run([functools.partial(self._deliver, batch)])

    def deliver(self, msg: dict[str, Any], retain: bool) -> None:
        """A message another gateway of a federation emitted: retained and queued here (not exported again)."""
        batch = _Batch()
        with self._store.transaction() as db:
            self._follow(db, msg, batch)
            self._emit(msg, retain, batch, export=False)
            self._write(db, batch)
        _run([functools.partial(self._deliver, batch)])

    def _follow(self, db: Any, msg: dict[str, Any], batch: _Batch) -> None:
        """Move a publisher's position to a message another gateway delivered, so that if this gateway takes the
        device over (a standby on the same LAN), the reports it gets next follow on from there. Otherwise its first
        contact would wait `HOLD_S` for the messages before them, which it never hears: the other gateway had them
        acknowledged. A position already further, or held messages of another boot, are left as they are."""
        publisher, boot, seq = msg.get("publisher"), msg.get("boot"), msg.get("seq")
        if (publisher == GATEWAY_PUBLISHER or not isinstance(publisher, str) or not isinstance(boot, str)
                or isinstance(seq, bool) or not isinstance(seq, int) or seq < 1):
            return
        device = acl.full(self.site, publisher.split("/"))
        stream = self._streams.get(device) or self._load_stream(db, device, seq, boot)
        if stream.boot != boot:
            if stream.held:
                return
            stream.leave_boot()
            stream.boot, stream.last, stream.pending_gap, stream.followed = boot, seq, 0, 0
        elif seq > stream.last:
            stream.last = seq
            for s in [s for s in stream.held if s <= seq]:  # delivered by the other gateway already
                del stream.held[s]
            if stream.in_store:
                db.execute("DELETE FROM pub_held WHERE device = ? AND seq <= ?", (device, seq))
                stream.in_store = bool(stream.held)
            stream.since = time.monotonic() if stream.held else 0.0
            if stream.held:  # those that now follow on (this gateway serves the device too: a split)
                self._release(db, device, stream, stream.last, batch)
        elif stream.last != seq:
            stream.followed = max(stream.followed, seq)
            return
        stream.followed = max(stream.followed, seq)
        batch.positions[device] = (stream.boot, stream.last)

    # -- subscriptions (client verbs)

    def check_subscription(self, client: str, pattern: str, durable: Any = None) -> tuple[str, ...]:
        """The parsed pattern of a subscription `client` may make; InvalidArgument or PermissionDenied."""
        try:
            parts = acl.parse_pattern(pattern)
        except ValueError as err:
            raise InvalidArgument(f"subscription pattern: {err}") from err
        if not self._could_see(client, parts):
            raise PermissionDenied(f"client '{client}' may not see any topic matching {pattern!r}: no rule of "
                                   "its allows one (ndn-edge acl list)")
        if durable is not None and (not isinstance(durable, str) or not _NAME.fullmatch(durable)):
            raise InvalidArgument(f"durable subscription name must be 1 to 64 letters, digits, '_', '.' or "
                                  f"'-', got {durable!r}")
        return parts

    def visible(self, client: str, topic: tuple[str, ...]) -> bool:
        """Whether `client` may see a message on `topic` now (its rules, re-read at most once a second)."""
        return self._visible(client, topic)

    def publishers(self, pattern: tuple[str, ...]) -> int:
        """How many provisioned devices could publish on a topic `pattern` matches."""
        return self._publishers(pattern)

    def subscribe(self, client: str, pattern: str, durable: str | None = None) -> dict[str, Any]:
        """Create a subscription (or attach to the durable one of that name); its id and whether it is new."""
        parts = self.check_subscription(client, pattern, durable)
        if durable is not None:
            existing = self._subs.get((client, _durable_id(durable)))
            if existing is not None and not self._stored(existing):
                self._forget(existing)  # removed with its client (`client remove`) since the sweeper last looked
                existing = None
            if existing is not None:
                if existing.pattern != parts:
                    raise InvalidArgument(f"durable subscription {durable!r} of client '{client}' exists with "
                                          f"pattern {acl.format_pattern(existing.pattern)!r}; unsubscribe it "
                                          "first to change the pattern")
                existing.last_poll = time.monotonic()
                return {"sub": existing.id, "created": False, "pattern": acl.format_pattern(parts),
                        "devices": self._publishers(parts)}
        mine = sum(1 for owner, _ in self._subs if owner == client)
        if mine >= self.limits.subscriptions_per_client:
            self.counters["over_quota"] += 1
            raise ResourceExhausted(f"client '{client}' has {mine} subscriptions, its limit "
                                    "(subscriptions_per_client); close unused ones")
        if len(self._subs) >= self.limits.subscriptions:
            raise ResourceExhausted(f"the gateway holds {len(self._subs)} subscriptions, its limit (subscriptions); "
                                    "close unused ones")
        retained = [cbor2.loads(row[0]) for row in self._store.query("SELECT message FROM retained ORDER BY topic")]
        retained = [dict(m, retained=True) for m in retained
                    if acl.matches(parts, tuple(m["topic"].split("/")))
                    and self._visible(client, tuple(m["topic"].split("/")))]
        if durable is None:
            sub = _Sub("m:" + binascii.hexlify(os.urandom(8)).decode(), client, parts)
            for m in retained:
                sub.push(m, tuple(m["topic"].split("/")), len(cbor2.dumps(m)))
            sub.wake()
        else:
            with self._store.transaction() as db:
                cur = db.execute("INSERT INTO subscriptions (client, name, pattern, created_at) VALUES "
                                 "(?, ?, ?, ?)", (client, durable, acl.format_pattern(parts), self._clock()))
                sub = _Sub(_durable_id(durable), client, parts, name=durable, db_id=cur.lastrowid)
                if retained:
                    self._enqueue_durable(db, sub, [cbor2.dumps(m) for m in retained])
        self._subs[(client, sub.id)] = sub
        self._routes.clear()
        return {"sub": sub.id, "created": True, "pattern": acl.format_pattern(parts),
                "devices": self._publishers(parts)}

    async def poll(self, client: str, sub_id: str, *, ack: int = 0, max_messages: int = 100, wait_ms: int = 0,
                   after: int | None = None, push: int = 0,
                   more: Callable[[Any], bool] | None = None) -> dict[str, Any]:
        """Acknowledge up to `ack`, then the messages after it (up to `max_messages`), waiting up to `wait_ms`.

        With `after` (pipelined polls: the client has received up to there), the messages after it that no other
        poll of this subscription was answered with, and `from`: the position they follow (a client that gets
        replies out of order holds one whose `from` it has not reached). A poll without `after` starts the
        pipeline again from the acknowledged position: polls with `after` that were waiting then (a closed
        client's, or those around a failed one) are answered empty when they wake, never with messages.

        With `push` and `more` (the client face's way to send more answers to this poll), a reply with messages
        says `push`: up to that many more answers follow it, each sent by `more` the moment messages are
        committed (`_deliver`), until the wait's end: the client need not ask again after every reply."""
        sub = self._sub(client, sub_id)
        now = sub.last_poll = time.monotonic()
        self._ack(sub, ack)
        if after is None:
            sub.streams.clear()  # a new start: what earlier polls were to be pushed would skip ahead of it
        reply = await poll_messages(sub, after=after, max_messages=max_messages, wait_ms=wait_ms, peek=self._peek,
                                    ended=lambda: self._stopped or self._subs.get((client, sub_id)) is not sub)
        if push and more is not None and reply["messages"] and not self._stopped:
            if len(sub.streams) >= PUSH_STREAMS:
                sub.streams.popleft()
            sub.streams.append(_Push(more, push, max_messages, now + wait_ms / 1000, sub.epoch))
            reply["push"] = push
        return reply

    def unsubscribe(self, client: str, sub_id: str) -> dict[str, Any]:
        """End a subscription; a durable one is deleted with its queue."""
        sub = self._sub(client, sub_id)
        if sub.durable:
            with self._store.transaction() as db:
                db.execute("DELETE FROM sub_queue WHERE sub = ?", (sub.db_id,))
                db.execute("DELETE FROM subscriptions WHERE id = ?", (sub.db_id,))
        del self._subs[(client, sub_id)]
        self._routes.clear()
        sub.wake()
        return {"sub": sub_id, "removed": True}

    def subscriptions(self) -> int:
        """How many subscriptions exist."""
        return len(self._subs)

    # -- helpers

    def _sub(self, client: str, sub_id: Any) -> _Sub:
        sub = self._subs.get((client, sub_id)) if isinstance(sub_id, str) else None
        if sub is None:
            raise NotFound(f"client '{client}' has no subscription {sub_id!r} (an in-memory subscription ends "
                           f"{IDLE_S:.0f} s after its last poll, and at a gateway restart); subscribe again")
        return sub

    def _ack(self, sub: _Sub, ack: int) -> None:
        if ack <= sub.acked:
            return
        ack = min(ack, sub.next_pos - 1)
        if sub.durable:
            with self._store.transaction() as db:
                cur = db.execute("DELETE FROM sub_queue WHERE sub = ? AND pos <= ?", (sub.db_id, ack))
                db.execute("UPDATE subscriptions SET acked = ? WHERE id = ?", (ack, sub.db_id))
            sub.size -= cur.rowcount
        else:
            while sub.queue and sub.queue[0][0] <= ack:
                sub.queue.popleft()
        sub.acked = ack

    def _peek(self, sub: _Sub, max_messages: int, start: int) -> list[dict[str, Any]]:
        """The messages of `sub` after position `start`, checked against its client's rules as they are now: a
        message queued before a rule was revoked is withheld (and dropped from the queue), never delivered."""
        out: list[dict[str, Any]] = []
        withheld: list[int] = []
        budget = REPLY_BUDGET
        if sub.durable:
            rows = self._store.query("SELECT pos, message FROM sub_queue WHERE sub = ? AND pos > ? ORDER BY pos "
                                     "LIMIT ?", (sub.db_id, start, max_messages))
            for pos, blob in rows:
                msg = cbor2.loads(blob)
                if not self._visible(sub.client, tuple(str(msg.get("topic")).split("/"))):
                    withheld.append(pos)
                    continue
                budget -= len(blob) + 8
                if budget < 0 and out:
                    break
                out.append(dict(msg, pos=pos))
        else:
            seen = self._rules_entry(sub.client)[2]  # what the rules as read now decided, per topic (_visible)
            queue = sub.queue
            # From the first message after `start`: positions rise along the queue, one apart unless messages
            # were withheld from it, so that message is at most `start + 1 - first` in
            k = min(max(0, start + 1 - queue[0][0]), len(queue)) if queue else 0
            while k > 0 and queue[k - 1][0] > start:
                k -= 1
            for pos, msg, parts, size in itertools.islice(queue, k, None):
                if pos <= start:
                    continue
                if len(out) >= max_messages:
                    break
                visible = seen.get(parts)
                if visible is None:
                    visible = self._visible(sub.client, parts)
                if not visible:
                    withheld.append(pos)
                    continue
                budget -= size + 8
                if budget < 0 and out:
                    break
                out.append(dict(msg, pos=pos))
        if withheld:
            self._withhold(sub, withheld)
        return out

    def _withhold(self, sub: _Sub, positions: list[int]) -> None:
        self.counters["withheld"] += len(positions)
        if sub.durable:
            with self._store.transaction() as db:
                db.executemany("DELETE FROM sub_queue WHERE sub = ? AND pos = ?",
                               [(sub.db_id, pos) for pos in positions])
            sub.size -= len(positions)
        else:
            gone = set(positions)
            sub.queue = collections.deque(item for item in sub.queue if item[0] not in gone)

    def _stored(self, sub: _Sub) -> bool:
        return bool(self._store.query("SELECT 1 FROM subscriptions WHERE id = ?", (sub.db_id,)))

    def _forget(self, sub: _Sub) -> None:
        self._subs.pop((sub.client, sub.id), None)
        self._routes.clear()
        sub.wake()

    def _forget_removed(self) -> None:
        """Drop the durable subscriptions whose rows are gone (their client was removed)."""
        durable = [sub for sub in self._subs.values() if sub.durable]
        if not durable:
            return
        stored = {row[0] for row in self._store.query("SELECT id FROM subscriptions")}
        for sub in durable:
            if sub.db_id not in stored:
                self._forget(sub)

    def _visible(self, client: str, topic: tuple[str, ...]) -> bool:
        """Whether the client's rules (as read at most RULES_TTL_S ago) let it see `topic`; decided once per topic
        while those rules are kept."""
        rules, _, seen = self._rules_entry(client)
        visible = seen.get(topic)
        if visible is None:
            visible = acl.allowed(rules, topic) or (
                topic[:1] == (MEMBERS,) and any(_reaches(rule, topic[1:]) for rule in rules))
            if len(seen) >= ROUTES:
                seen.clear()
            seen[topic] = visible
        return visible

    def _could_see(self, client: str, pattern: tuple[str, ...]) -> bool:
        """True if some topic `pattern` matches is one the client's rules let it see (a publication's topic, or
        the membership of a device it may reach)."""
        rules = self._rules_of(client, fresh=True)
        if any(acl.overlap(pattern, rule) for rule in rules):
            return True
        return bool(rules) and acl.overlap(pattern, (MEMBERS, acl.ANY))

    def _publishers(self, pattern: tuple[str, ...]) -> int:
        """How many provisioned devices could publish on a topic `pattern` matches (their own topics, or their
        membership): 0 tells a subscriber it waits for devices that do not exist yet."""
        count, token = 0, None
        while True:
            records, token = self._store.list_devices(1000, token)
            for record in records:
                device = tuple(self._relative(record.name).split("/"))
                if acl.overlap(pattern, (*device, acl.ONE)) or acl.overlap(pattern, (MEMBERS, *device)):
                    count += 1
            if token is None:
                return count

    def _rules_of(self, client: str, *, fresh: bool = False) -> tuple[tuple[str, ...], ...]:
        return self._rules_entry(client, fresh=fresh)[0]

    def _rules_entry(self, client: str, *, fresh: bool = False) -> tuple[tuple[tuple[str, ...], ...], float,
                                                                         dict[tuple[str, ...], bool]]:
        """The client's rules, when they were read, and the visibility of the topics met since."""
        now = time.monotonic()
        cached = self._rules.get(client)
        if cached is not None and now - cached[1] < RULES_TTL_S and not fresh:
            return cached
        try:
            rules = tuple(rule.parts for rule in self._store.rules(client))
        except UnknownClient:
            rules = ()
        entry = self._rules[client] = (rules, now, {})
        return entry

    def _relative(self, name: str) -> str:
        parts = [p for p in name.split("/") if p]
        return "/".join(parts[1:] if parts[:1] == [self.site] else parts)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            now = time.monotonic()
            for key, sub in list(self._subs.items()):
                if not sub.durable and not sub.waiting and now - sub.last_poll > IDLE_S:
                    del self._subs[key]
                    self._routes.clear()
            try:
                self._forget_removed()
            except (StoreError, sqlite3.Error) as err:
                event(log, "subscriptions_not_checked", logging.WARNING, error=str(err))
            due = [(device, s) for device, s in self._streams.items() if s.held and now - s.since > HOLD_S]
            if due:
                self._release_held(due)

    def _release_held(self, due: list[tuple[str, _Stream]]) -> None:
        """Deliver what these publishers hold, their missing messages taken as lost (the hold lasted HOLD_S)."""
        batch = _Batch()
        try:
            with self._store.transaction() as db:
                for device, stream in due:
                    self._release(db, device, stream, max(stream.held), batch)
                self._write(db, batch)
        except (StoreError, sqlite3.Error) as err:
            event(log, "held_messages_not_released", logging.WARNING, error=str(err))
            return
        _run([functools.partial(self._deliver, batch)])


def _durable_id(name: str) -> str:
    return "d:" + name


def _reaches(pattern: tuple[str, ...], prefix: tuple[str, ...]) -> bool:
    """True if `pattern` could match a name below `prefix` (as the server's device listing decides)."""
    for k in range(len(pattern) + 1):
        head = pattern[:k]
        if (k < len(pattern) or (k and head[-1] == acl.ANY)) and acl.matches(head, prefix):
            return True
    return False


def _run(fns: list[Callable[[], None]]) -> None:
    for fn in fns:
        try:
            fn()
        except Exception as err:  # one waiter's failure must not stop the others
            _THROTTLE.fault("pubsub-after-commit", err)
