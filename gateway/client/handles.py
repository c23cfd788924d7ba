"""Client-side handles of the communication models (docs/models.md): what `ndn_edge.client.api.Client` returns.

    op = await c.start("sim/1/slow", {"seconds": 3})     # Operation: a long-running device operation
    print(op.id, op.state, op.progress)
    value = await op.result(timeout=10)                   # waits (long-polling the gateway); raises its error
    op = await c.call("sim/2/echo", {"x": 1}, persist=True, ttl=300)   # Operation: a queued call

    async with c.subscribe("sim/*/tick", durable="dash") as sub:     # Subscription
        async for msg in sub:                                       # Message(topic, publisher, value, seq, ...)
            print(msg.topic, msg.value, msg.gap)

    results = await c.gather("sim/*/temperature", deadline=2)       # {"sim/1": Outcome(...), ...}

Decisions:
- An `Operation` is only an id and the last state read: the gateway keeps the operation, so a handle can be
  rebuilt from the id (`c.operation(op_id)`) by another process, after a disconnect or a gateway restart.
- `result()` long-polls (`op_get` with `wait_ms`, at most `WAIT_S` per request) instead of polling on a timer:
  one request per change, answered the moment the device reports.
- A subscription acknowledges a message when the application asks for the next one (the acknowledgement rides
  on the next poll), so a message is acknowledged only after the code that received it has run: at least once.
  `close()` (or leaving `async with`) acknowledges the last message, and ends an in-memory subscription; a
  durable one stays on the gateway, collecting messages, until `unsubscribe()`.
- Messages are de-duplicated by their position in the subscription: a poll repeated after a lost reply returns
  the same messages, which the iterator skips.
- Two polls are kept in flight (`PIPELINE`) while the application waits for messages, each saying how far the
  client has received (`after`): the gateway answers each with messages no other poll was answered with, so one
  poll always waits there and a message goes out the moment it is queued, instead of after the round trip that
  follows each reply. The first poll after opening, or after a failed one, goes alone and without `after`: the
  gateway then starts again from the acknowledged position.
- An answered poll also asks for pushes (`PUSH` more answers, docs/gateway-protocol.md): the gateway sends each
  commit's messages to it at once, a Data of the poll's name, signed and verified as its first answer, until the
  poll's wait ends. `python -m bench pubsub` (10 publishers x 200 messages, 10 subscribers): without pushes each
  subscriber sent a poll after every answer, about 90 a round, and a commit's messages waited for the woken poll
  (end to end p50 10-12 ms); with them, 17 polls a round and p50 5-8 ms. A subscription counts
  an answered poll with more than half its pushes to come as one in flight (`_pushing`), and keeps one real poll
  waiting besides, of at most `LIVE_S`: pushes that stop (a gateway that died) are noticed only by a request
  that fails. An answer lost on the way leaves a hole (`from` beyond what came): after `GAP_S` the subscription
  starts again from the acknowledged position.
  Rejected: datagrams pushed without a request (a second kind of packet for clients to accept and verify, and
  traffic sent to an address nobody asked from): a pushed answer is accepted only for a poll this client sent,
  until that poll's deadline, from the address it was sent to.
"""
from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import time
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

from ndn_edge.errors import CallError, DeadlineExceeded, Internal, InvalidArgument
from ndn_edge.wire import client_protocol as cw


class Client(Protocol):
    """What a handle needs of the client that made it (`ndn_edge.client.api.Client`): its default timeout and
    one signed request to the gateway."""

    timeout: float

    async def request(self, verb: str, target: tuple[str, ...], params: dict[str, Any], timeout_s: float, *,
                      more: Callable[[Any], None] | None = None) -> Any:
        ...

FINAL = ("done", "failed", "cancelled")
WAIT_S = 20.0           # longest single long-poll
PIPELINE = 2            # a subscription's polls open: in flight, or taking pushes with more than half to come
PUSH = 8                # answers each poll asks the gateway to push after its reply
GAP_S = 1.0             # a hole in what came (an answer lost on the way) this old: the polls start again
LIVE_S = 5.0            # longest wait of a poll that takes pushes (see Subscription._poll)
REQUEST_MARGIN_S = 5.0  # a long-poll request's deadline beyond its wait


class OperationCancelled(CallError):
    """The operation was cancelled before it finished."""

    code = "CANCELLED"
    exit_code = 1


class Operation:
    """A handle on an operation the gateway keeps: a long-running device operation, or a queued call."""

    def __init__(self, client: Client, info: dict[str, Any]) -> None:
        self._client = client
        self.info: dict[str, Any] = {}
        self._update(info)

    def __repr__(self) -> str:
        return f"Operation({self.id!r}, {self.target}, state={self.state!r}, progress={self.progress!r})"

    @property
    def id(self) -> str:
        """The gateway's id for the operation."""
        return str(self.info.get("op"))

    @property
    def kind(self) -> str:
        """"op" (a long-running device operation) or "call" (a queued call)."""
        return str(self.info.get("kind"))

    @property
    def target(self) -> str:
        """DEVICE/SERVICE under the site."""
        return str(self.info.get("target"))

    @property
    def state(self) -> str:
        """queued, starting, running, done, failed or cancelled (as last read)."""
        return str(self.info.get("state"))

    @property
    def done(self) -> bool:
        """True once it finished: done, failed or cancelled (as last read)."""
        return self.state in FINAL

    @property
    def progress(self) -> float | None:
        """The last progress the device reported (0..1), or None."""
        value = self.info.get("progress")
        return float(value) if isinstance(value, (int, float)) else None

    @property
    def error(self) -> CallError | None:
        """The error it failed with, once failed."""
        err = self.info.get("error")
        if self.state == "cancelled":
            return OperationCancelled(f"operation {self.id} ({self.target}) was cancelled")
        if isinstance(err, dict):
            return CallError.from_wire(err.get("code"), err.get("message", ""))
        return None

    async def refresh(self, *, wait: float = 0.0) -> Operation:
        """Read its state again; with `wait` seconds, after its next change (progress or end)."""
        wait_ms = max(0, int(wait * 1000))
        info = await self._client.request(cw.VERB_OP_GET, (), {"op": self.id, "wait_ms": wait_ms},
                                           wait_ms / 1000 + REQUEST_MARGIN_S if wait_ms else self._client.timeout)
        self._update(info)
        return self

    async def wait(self, timeout: float | None = None) -> Operation:
        """Wait until it finished (DeadlineExceeded after `timeout` seconds; None waits as long as it takes)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done:
            left = WAIT_S if deadline is None else min(WAIT_S, deadline - time.monotonic())
            if left <= 0:
                raise DeadlineExceeded(f"operation {self.id} ({self.target}) is still {self.state} after "
                                       f"{timeout:g} s")
            await self.refresh(wait=left)
        return self

    async def result(self, timeout: float | None = None) -> Any:
        """Its result once done; its error raised if it failed (OperationCancelled if cancelled)."""
        await self.wait(timeout)
        if self.state == "done":
            return self.info.get("result")
        err = self.error
        raise err if err is not None else Internal(f"operation {self.id} ended {self.state} without an error")

    async def cancel(self) -> Operation:
        """Ask for it to be cancelled (a queued call at once; a running operation when the device reports)."""
        info = await self._client.request(cw.VERB_OP_CANCEL, (), {"op": self.id}, self._client.timeout)
        self._update(info)
        return self

    def _update(self, info: Any) -> None:
        if not isinstance(info, dict) or "op" not in info:
            raise Internal(f"the gateway's operation reply is not an operation: {info!r}")
        self.info = info


_new_tuple = tuple.__new__


class Message(NamedTuple):
    """One pub/sub message as a subscriber gets it (see gateway/patterns/pubsub.py)."""

    topic: str                 # <device...>/<topic> under the site, e.g. "sim/1/tick"
    publisher: str             # the device under the site ("sim/1"), or "_gw" for membership events
    value: Any
    seq: int                   # the publisher's number, from 1 at each boot
    boot: str                  # the publisher's boot id
    time: float                # when the gateway received it (seconds since the epoch)
    pos: int                   # its position in the subscription
    retained: bool = False     # a retained value, delivered at subscription
    gap: int = 0               # messages of this publisher missing right before this one
    late: bool = False         # it arrived after its successors had been delivered

    @classmethod
    def from_wire(cls, m: dict[str, Any]) -> Message:
        # (tuple.__new__ directly: the named tuple's own __new__ is one more Python call per message)
        get = m.get
        return _new_tuple(cls, (str(get("topic")), str(get("publisher")), get("value"), int(get("seq") or 0),
                                str(get("boot")), float(get("time") or 0.0), int(get("pos") or 0),
                                bool(get("retained")), int(get("gap") or 0), bool(get("late"))))

    def as_dict(self) -> dict[str, Any]:
        return self._asdict()


class Subscription:
    """An async iterator of messages on a pattern, read from the gateway by long-polling."""

    def __init__(self, client: Client, pattern: str, *, durable: str | None = None, batch: int = 100,
                 wait: float = WAIT_S) -> None:
        if not isinstance(pattern, str) or not pattern:
            raise InvalidArgument(f"pattern must be text such as 'sim/*/tick', got {pattern!r}")
        if not 1 <= batch <= 1000:
            raise InvalidArgument(f"batch must be 1 to 1000 messages, got {batch!r}")
        self._client = client
        self.pattern = pattern
        self.durable = durable
        self.id: str | None = None
        self.created: bool | None = None
        self.devices: int | None = None  # known devices that could publish on the pattern, when it was opened
        self.lost = 0             # messages the gateway dropped from this subscription's full queue
        self._batch = batch
        self._wait = max(0.0, min(float(wait), WAIT_S * 5))
        self._buffer: collections.deque[Message] = collections.deque()
        self._last = 0            # position of the last message handed to the application
        self._acked = 0           # position acknowledged to the gateway
        self._polls: set[asyncio.Task[None]] = set()  # in flight, while the application reads (`_pumping`)
        self._pumping = False
        self._synced = False      # a poll succeeded since opening or the last failure: the next may say `after`
        self._error: Exception | None = None  # of a poll in flight, raised by the next `_fill`
        self._held: list[tuple[int, list[Message]]] = []  # replies ahead of one still on its way: (from, messages)
        self._missing: tuple[int, float] | None = None  # (a position not received yet that was sent, since when)
        self._streams: dict[int, list[float]] = {}  # poll -> [answers the gateway may still push, until when]
        self._numbers = itertools.count()  # of polls
        self._epoch = 0           # starts so far: pushes to the polls of an earlier one are ignored
        self._arrival: asyncio.Future[None] | None = None  # the reader's, set by a push
        self._retried = False     # the last poll went unanswered and was tried again, not raised (`_poll`)

    def __repr__(self) -> str:
        return f"Subscription({self.pattern!r}, durable={self.durable!r}, id={self.id!r})"

    async def open(self) -> Subscription:
        """Create the subscription on the gateway (or attach to the durable one); idempotent."""
        if self.id is None:
            params: dict[str, Any] = {"pattern": self.pattern}
            if self.durable is not None:
                params["durable"] = self.durable
            reply = await self._client.request(cw.VERB_SUBSCRIBE, (), params, self._client.timeout)
            if not isinstance(reply, dict) or not isinstance(reply.get("sub"), str):
                raise Internal(f"the gateway's subscribe reply has no subscription id: {reply!r}")
            self.id, self.created = reply["sub"], bool(reply.get("created"))
            devices = reply.get("devices")
            self.devices = devices if isinstance(devices, int) and not isinstance(devices, bool) else None
        return self

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Message:
        while not self._buffer:
            await self._fill(self._wait)
        return self._hand_out()

    async def next(self, timeout: float | None = None) -> Message | None:
        """The next message, or None if none came within `timeout` seconds (None: wait as long as it takes)."""
        if self._buffer:  # one that came with the last reply: at once (a reply brings up to `batch` of them)
            return self._hand_out()
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._buffer:
            left = self._wait if deadline is None else min(self._wait, deadline - time.monotonic())
            if left <= 0:
                return None
            await self._fill(left)
        return await self.__anext__()

    def _hand_out(self) -> Message:
        """The first buffered message, now handed to the application (the next poll acknowledges it)."""
        msg = self._buffer.popleft()
        self._last = msg.pos
        return msg

    async def _fill(self, wait: float) -> None:
        """Start the polls, and return when one of them is back (its messages in the buffer, or none) or failed (its
        error raised), or after `wait` seconds: a poll started earlier may wait longer at the gateway, and stays in
        flight."""
        await self.open()
        self._pumping = True
        self._error = None  # of a poll that failed while nobody waited: the polls started now try again
        self._top_up(max(0.0, wait))
        arrival = self._arrival = asyncio.get_running_loop().create_future()
        if self._missing is not None:
            wait = min(wait, GAP_S)
        await asyncio.wait({*self._polls, arrival}, timeout=max(0.0, wait), return_when=asyncio.FIRST_COMPLETED)
        self._arrival = None
        if self._missing is not None and self._top() < self._missing[0] \
                and time.monotonic() - self._missing[1] >= GAP_S:
            self._restart()
            for task in self._polls:  # (waiting at the gateway for what comes after the hole: the next _fill's
                task.cancel()         # poll starts again from the acknowledged position)
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def _top_up(self, wait: float) -> None:
        """Keep polls in flight while the application reads and the buffer has room: PIPELINE of them once a poll
        succeeded (counting answered polls the gateway still pushes to, `_pushing`), one alone before; and always
        one at least: pushes that stop coming (a gateway that died) are noticed only by a request in flight,
        which is sent again on silence and reaches the gateway that takes over. Each poll that comes back starts
        the next (`_poll`)."""
        while (self._pumping and self.id is not None and len(self._buffer) < self._batch
               and (not self._polls or len(self._polls) + self._pushing() < (PIPELINE if self._synced else 1))):
            task = asyncio.ensure_future(self._poll(wait, pipelined=self._synced, background=True))
            task.add_done_callback(self._polls.discard)
            self._polls.add(task)

    def _pushing(self) -> int:
        """Answered polls with more than half their pushes still to come (forgetting those whose wait ended)."""
        now = time.monotonic()
        count = 0
        for number, (left, until) in list(self._streams.items()):
            if until <= now:
                del self._streams[number]
            elif left > PUSH // 2:
                count += 1
        return count

    def _restart(self) -> None:
        """Start again from the acknowledged position: what was received after it may have a hole."""
        self._synced = False
        self._held.clear()  # (the poll that starts again returns these too)
        self._missing = None
        self._streams.clear()
        self._epoch += 1

    async def _stop_polls(self) -> None:
        self._pumping = False
        self._restart()  # pushes to the polls stopped now are ignored; the next poll starts from `ack`
        polls, self._polls = self._polls, set()
        for task in polls:
            task.cancel()
        await asyncio.gather(*polls, return_exceptions=True)
        self._error = None

    async def ack(self) -> None:
        """Acknowledge every message handed out so far (also done by the next poll)."""
        if self._last > self._acked:
            await self._poll(0.0)

    async def close(self) -> None:
        """Acknowledge what was handed out; end an in-memory subscription (a durable one stays)."""
        if self.id is None:
            return
        await self._stop_polls()
        await self.ack()
        if self.durable is None:
            await self._client.request(cw.VERB_UNSUBSCRIBE, (), {"sub": self.id}, self._client.timeout)
            self.id = None

    async def unsubscribe(self) -> None:
        """End the subscription on the gateway; a durable one is deleted with the messages it holds."""
        await self._stop_polls()
        await self.open()
        await self._client.request(cw.VERB_UNSUBSCRIBE, (), {"sub": self.id}, self._client.timeout)
        self.id = None
        self._buffer.clear()

    async def __aenter__(self) -> Subscription:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _poll(self, wait: float, pipelined: bool = False, background: bool = False) -> None:
        """One poll; `background` (a poll in flight): its error is kept for `_fill`, and its end starts the next."""
        await self.open()
        if background and PUSH:
            # A gateway that restarted drops this poll's retransmissions as replays (its sequence number is below
            # the restarted gateway's lease), and no push comes from the one that died: the poll fails at its
            # deadline, and the subscription starts again. Pushes bring the messages, so its wait can be short.
            wait = min(wait, LIVE_S)
        wait_ms = max(0, int(wait * 1000))
        ack = self._last
        params = {"sub": self.id, "ack": ack, "max": self._batch, "wait_ms": wait_ms}
        if pipelined:
            params["after"] = self._top()
        number, epoch, until = next(self._numbers), self._epoch, time.monotonic() + wait_ms / 1000
        try:
            if background and wait_ms and PUSH:
                params["push"] = PUSH
                reply = await self._client.request(cw.VERB_POLL, (), params, wait_ms / 1000 + REQUEST_MARGIN_S,
                                                   more=functools.partial(self._pushed, number, epoch, until))
            else:
                reply = await self._client.request(cw.VERB_POLL, (), params, wait_ms / 1000 + REQUEST_MARGIN_S)
        except Exception as err:
            if background and epoch != self._epoch:
                return  # sent before the subscription started again: its failure is the one already handled
            self._restart()  # what that poll was answered with may be lost: start again from `ack`
            if not background:
                raise
            if isinstance(err, DeadlineExceeded) and not self._retried:
                self._retried = True  # (one that a restarted gateway dropped: the next poll is a new request)
                return
            self._error = err
            return
        self._retried = False
        self._synced = True
        self._acked = max(self._acked, ack)
        if not isinstance(reply, dict):
            raise Internal(f"the gateway's poll reply is not a map: {reply!r}")
        push = reply.get("push")
        if isinstance(push, int) and push > 0 and epoch == self._epoch:  # (a gateway without pushes sends none)
            self._streams.setdefault(number, [min(push, PUSH), until])  # (unless its pushes came first)
        messages = self._accept(reply, pipelined and epoch == self._epoch)
        if background and messages:
            self._polls.discard(asyncio.current_task())
            self._top_up(self._wait)
        elif not messages and wait_ms:
            await asyncio.sleep(0)  # a poll that ended empty: the gateway's wait ran out

    def _pushed(self, number: int, epoch: int, until: float, content: Any) -> None:
        """One more answer to poll `number`, pushed by the gateway (`Client.request`'s `more`)."""
        if epoch != self._epoch or not isinstance(content, dict):
            return  # (to a poll of an earlier start, or an error: the polls in flight say what is wrong)
        stream = self._streams.setdefault(number, [PUSH, until])
        stream[0] -= 1
        if stream[0] <= 0:
            del self._streams[number]
        if self._accept(content, True):
            if self._arrival is not None and not self._arrival.done():
                self._arrival.set_result(None)
            self._top_up(self._wait)

    def _accept(self, reply: dict[str, Any], pipelined: bool) -> list[Message]:
        """Buffer an answer's messages in order (held while one with earlier messages is still on its way);
        `pipelined`: an answer to a poll with `after` since the last start, or a push."""
        self.lost = int(reply.get("lost") or 0)
        messages = [Message.from_wire(m) for m in reply.get("messages") or ()]
        start = reply.get("from")
        if pipelined and isinstance(start, int) and start > self._top():
            # the answer with what comes before is still on its way, or was lost (GAP_S)
            if self._missing is None:
                self._missing = (start, time.monotonic())
            if messages:
                self._held.append((start, messages))
            return messages
        self._take(messages)
        while self._held:  # what it was waiting for may have come with this one
            ready = [h for h in self._held if h[0] <= self._top()]
            if not ready:
                break
            for h in ready:
                self._held.remove(h)
                self._take(h[1])
        if self._missing is not None and self._top() >= self._missing[0]:
            self._missing = None
            if self._held:
                self._missing = (min(h[0] for h in self._held), time.monotonic())
        return messages

    def _top(self) -> int:
        """The position of the last message received (buffered, or handed out)."""
        return self._buffer[-1].pos if self._buffer else self._last

    def _take(self, messages: list[Message]) -> None:
        top = self._top()
        for msg in messages:
            if msg.pos > top:
                self._buffer.append(msg)
                top = msg.pos


class Outcome(NamedTuple):
    """One device's answer in a gather: its `value` (with where it came from), or its `error`."""

    device: str
    value: Any = None
    error: CallError | None = None
    cached: bool = False
    age_ms: int = 0
    stale: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def from_wire(cls, item: dict[str, Any]) -> Outcome:
        err = item.get("error")
        if isinstance(err, dict):
            return cls(str(item.get("device")), error=CallError.from_wire(err.get("code"), err.get("message", "")))
        return cls(str(item.get("device")), item.get("value"), None, bool(item.get("cached")),
                   int(item.get("age_ms") or 0), bool(item.get("stale")))
