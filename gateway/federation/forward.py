"""Calls across gateways, over NATS request/reply.

Two kinds of request travel between gateways:

- **Relayed** (`Relay.forward`, the client face's `Forwarder`): the client's own signed request, byte for byte, to
  the subject of its target (`ndne.<fed>.d.<site>.<device...>`, answered by the one gateway serving the device:
  a queue group, so even two gateways claiming one device would not both run a call) or of the gateway that
  keeps the operation it names (`ndne.<fed>.g.<tag>`). The serving gateway checks it exactly as if the client
  were its own (signature, time, replay, rules: `ClientFace.receive_forwarded`), and its signed reply is passed
  back to the client unchanged: the client verifies its HMAC as ever, so neither NATS nor this gateway could
  alter it unnoticed.
- **Vouched** (`Vouch`, the verbs' `Router`): a request this gateway makes for a client it authenticated itself
  (an HTTP bearer token, one device of a gather), `V1 | HMAC | CBOR {client, verb, target, params, time, nonce}`
  with an HMAC under the federation key; the serving gateway checks the HMAC, the time (60 s) and the nonce
  (replays are dropped), then the client's rules *in its own store*, and answers `R1 | HMAC | CBOR {nonce,
  ok | err}`.

Decisions:
- A request for a device nobody else serves (or when this gateway is partitioned) is served here, as on a
  single gateway: the answer is whatever this gateway knows (UNAVAILABLE for a device it does not hear).
- "No responders" (the serving gateway died or gave the device up) is retried every `RETRY_S` until the
  request's lifetime ends, routing again each time: when this gateway took the device over meanwhile it serves
  the request itself (`None`), and the invoker's journal makes a non-idempotent call's retry safe.
- What arrives on a subject is checked before anything is believed: an unknown first byte, a vouched request
  whose HMAC, time or nonce fails, a reply that is not a Data, are dropped and counted (`dropped`), never
  answered. Callbacks only record; the work runs in tasks (at most `MAX_IN_FLIGHT` vouched requests at once).
- Replies to relayed requests leave through one pump task (the face answers from a plain callback).
- A relayed request costs no task and no NATS subscription of its own (the relay's CPU is what bounds a
  cross-gateway call's rate, as the federation bench measures it): `Remote.forward` returns a future that the
  client face answers from in a done callback; one publisher task sends what is queued; one subscription
  (`<inbox>.*`) takes every reply, matched by its token; one timer per request ends it at its lifetime; one
  task looks for takeovers while requests wait. Rejected: nats-py's `request` (a task, two timers and a future
  per call, and a retry loop per request).
- Requests queued for one subject at the same time travel in one NATS message (`B1`, `pack`: each with its
  reply token, at most BATCH_ITEMS), and the replies ready together go back in one (`b1`): at 64 calls in flight
  to one device this carries about ten per message, which cuts what nats-py and the NATS servers spend per call.
  A request alone is sent as it is. A batch is sent to the device's subject like a single request, so the
  queue group still hands it to exactly one gateway; each request in it is checked on its own.
"""
from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, TypeVar

import cbor2
from ndn.encoding import Component

from ndn_edge import names
from ndn_edge.clients.verbs import Caller, Encoded
from ndn_edge.errors import (
    CallError,
    DeadlineExceeded,
    GatewayError,
    Internal,
    NotFound,
    PermissionDenied,
    Unavailable,
    UnknownClient,
    UnknownDevice,
)
from ndn_edge.federation.keys import FederationKey
from ndn_edge.federation.link import ReplyInbox
from ndn_edge.federation.results import RelayedResults
from ndn_edge.interfaces import REQUEST_ID
from ndn_edge.logs import Throttle
from ndn_edge.observability.stats import RTT_BUCKETS_S, Histograms
from ndn_edge.observability.trace import TIMELINE
from ndn_edge.wire import client_protocol as cp
from ndn_edge.wire.packets import split_components
from ndn_edge.wire.tlv import T

log = logging.getLogger("ndn_edge.federation")
_T = TypeVar("_T")

DEVICE_VERBS = frozenset({cp.VERB_CALL, cp.VERB_NOTIFY, cp.VERB_START, cp.VERB_ENQUEUE})
OP_VERBS = frozenset({cp.VERB_OP_GET, cp.VERB_OP_CANCEL})
RETRY_S = 0.2
TAKEOVER_CHECK_S = 0.25  # a relayed request looks this often whether this gateway took its device over
VOUCH_WINDOW_MS = 60_000
MAX_IN_FLIGHT = 1024
RELAY, VOUCH = "relay", "vouch"
OK, TAKEN_OVER = "OK", "taken_over"  # results besides wire error codes (taken over: served here after all)
_NONCES = 16_384
_MAC = 32
_VOUCH, _ANSWER = b"V1", b"R1"
_BATCH, _BATCH_REPLY = b"B1", b"b1"  # several relayed requests (replies) in one NATS message: see `pack`
BATCH_ITEMS = 64             # at most this many requests (replies) in one message ...
BATCH_BYTES = 256 << 10      # ... and this many bytes (NATS' default max_payload is 1 MiB)
_SUBJECTS = 65_536  # device subjects kept
_NO_RESPONDERS = "503"  # the Status header NATS answers a request with when nobody subscribes to its subject
_PARTITIONED = ("this gateway is cut off from its federation (partitioned); the device is served by another "
                "gateway")
_PACKET_TYPES = (T.INTEREST, 0x64)
_DATA_TYPES = (T.DATA, 0x64)


@functools.lru_cache(maxsize=4096)
def verb_and_target(prefix: bytes) -> tuple[str, tuple[str, ...]] | None:
    """The verb and target of a request name's value (before its digest), or None."""
    comps = split_components(prefix)
    if comps is None or len(comps) < 3 or any(Component.get_type(c) != T.GENERIC_COMPONENT for c in comps):
        return None
    text = tuple(Component.to_str(c) for c in comps[2:])
    return text[0], text[1:]


def op_owner(op_id: Any) -> str | None:
    """The tag ending an operation id made in a federation (20 hex characters), or None."""
    if isinstance(op_id, str) and len(op_id) == 20:
        return op_id[-4:]
    return None


class _Relay:
    """One relayed request in flight: where it goes, the future the client face waits on, its deadline timer and
    its current reply token (a new one at each retry, so a late reply to an earlier try is not taken for it)."""

    __slots__ = ("datagram", "device", "future", "lifetime_ms", "started", "subject", "timer", "token")

    def __init__(self, subject: str, device: str | None, datagram: bytes, future: asyncio.Future[bytes | None],
                 started: float, lifetime_ms: int) -> None:
        self.subject = subject
        self.device = device
        self.datagram = datagram
        self.future = future
        self.started = started  # time.monotonic()
        self.lifetime_ms = lifetime_ms
        self.timer: asyncio.TimerHandle | None = None
        self.token = ""


class Remote:
    """Requests to other gateways: relayed client requests and vouched requests (see the module's decisions)."""

    def __init__(self, link: Any, key: FederationKey, placement: Any, *, site: str, tag: str) -> None:
        self._link = link
        self._key = key
        self._placement = placement
        self.site = site
        self.tag = tag
        self._throttle = Throttle(log)
        self.latency_s: deque[float] = deque(maxlen=256)  # recent round trips of relayed requests
        self.results: dict[tuple[str, str], int] = {}  # (RELAY or VOUCH, wire code, OK or TAKEN_OVER) -> count
        self.latency = Histograms(RTT_BUCKETS_S, max_series=4)  # round trips by kind
        self.keeper: Callable[[Any], str | None] = _first_keeper(tag, placement)  # the gateway keeping an op
        self.counters: dict[str, int] = {"relayed": 0, "relay_retries": 0, "relay_timeouts": 0, "vouched": 0,
                                         "vouch_errors": 0, "vouch_gone": 0, "taken_over": 0,
                                         "relay_messages": 0}
        self._subjects: dict[str, str] = {}  # device -> its subject
        self._pending: dict[str, _Relay] = {}  # reply token -> relayed request waiting for its reply
        self._out: list[_Relay] = []  # to publish
        self._ready = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._replies = ReplyInbox(self._on_reply)  # every reply to a relayed request
        self._batches: dict[str, list[_Relay]] = {}  # reply key of a batch -> its requests (for "no responders")
        self.kept = RelayedResults()  # call results the serving gateways said they hold fresh (results.py)

    # -- the client face's Forwarder

    def forward(self, prefix: bytes, params: bytes, datagram: bytes,
                lifetime_ms: int) -> asyncio.Future[bytes | None] | None:
        if not self._link.connected:
            return None
        found = verb_and_target(prefix)
        if found is None:
            return None
        verb, target = found
        if verb in DEVICE_VERBS and len(target) >= 2:
            device = names.full(self.site, target[:-1])
            if self._placement.route(device) is None:
                return None
            if verb == cp.VERB_CALL and self.kept.may_hold(device, target[-1]) and self._kept(device, target[-1],
                                                                                                 params):
                return None  # answered here, from a value a relayed reply left (the router's `kept`)
            return self._relay(self._device_subject(device), device, datagram, lifetime_ms)
        if verb in OP_VERBS:
            owner = self.keeper(_param(params, "op"))
            if owner is None:
                return None
            return self._relay(self._link.config.gateway_subject(owner), None, datagram, lifetime_ms)
        return None

    def _kept(self, device: str, service: str, params: bytes) -> bool:
        try:
            value = cbor2.loads(params) if params else {}
        except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError, OverflowError):
            return False  # relayed: the serving gateway answers what is wrong with it
        if not isinstance(value, dict) or value.get(TIMELINE) is True:
            return False
        return self.kept.answer(device, service, value.get("args"), count=False) is not None

    def keep(self, prefix: bytes, params: bytes, content: bytes) -> None:
        """A relayed request's successful reply content: a call's value is kept as long as it says (results.py)."""
        found = verb_and_target(prefix)
        if found is None or found[0] != cp.VERB_CALL or len(found[1]) < 2:
            return
        target = found[1]
        self.kept.keep(names.full(self.site, target[:-1]), target[-1], _param(params, "args"), content)

    def _device_subject(self, device: str) -> str:
        subject = self._subjects.get(device)
        if subject is None:
            if len(self._subjects) >= _SUBJECTS:
                self._subjects.clear()
            subject = self._subjects[device] = self._link.config.device_subject(device)
        return subject

    def _relay(self, subject: str, device: str | None, datagram: bytes,
               lifetime_ms: int) -> asyncio.Future[bytes | None]:
        loop = asyncio.get_running_loop()
        relay = _Relay(subject, device, datagram, loop.create_future(), time.monotonic(), lifetime_ms)
        relay.timer = loop.call_later(lifetime_ms / 1000, self._expire, relay)
        self.counters["relayed"] += 1
        self._send(relay)
        return relay.future

    def _send(self, relay: _Relay) -> None:
        """Queue `relay` for the publisher, under a new reply token."""
        relay.token = str(next(self._ids))
        self._pending[relay.token] = relay
        self._out.append(relay)
        self._ready.set()
        if self._pump is None:
            self._pump = asyncio.create_task(self._publisher(), name="federation-relay")
        if self._watch is None:
            self._watch = asyncio.create_task(self._watching(), name="federation-relay-takeover")

    async def _publisher(self) -> None:
        """Publish what `_send` queued, in the order it was queued."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            batch, self._out = self._out, []
            try:
                await self._publish(batch)
            except Exception as err:  # a bug must not stop every relay: these fail, the next ones go on
                self._throttle.fault("relay-publish", err)
                for relay in batch:
                    self._fail(relay, Internal(f"gateway error: {type(err).__name__}: {err}"))

    async def _watching(self) -> None:
        """While relayed requests wait, look every TAKEOVER_CHECK_S whether this gateway took over a device one of
        them waits for (it reached a gateway that died before answering: no reply will ever come, and waiting for
        the deadline would fail a call this gateway can now make itself)."""
        try:
            while self._pending:
                await asyncio.sleep(TAKEOVER_CHECK_S)
                self._check_pending()
                for key, relays in list(self._batches.items()):
                    if all(r.future.done() for r in relays):
                        del self._batches[key]
            self._batches.clear()  # nothing waits for a reply
        finally:
            self._watch = None

    async def _publish(self, batch: list[_Relay]) -> None:
        nc = self._link.nc
        if not self._link.connected:
            for relay in batch:
                self._fail(relay, Unavailable(_PARTITIONED))
            return
        try:
            inbox = await self._replies.on(nc)
        except Exception as err:  # the connection went away meanwhile
            for relay in batch:
                self._fail(relay, Unavailable(f"the federation could not relay the request: {err!r}"))
            return
        groups: dict[str, list[_Relay]] = {}
        for relay in batch:
            if not relay.future.done():
                groups.setdefault(relay.subject, []).append(relay)
        for subject, relays in groups.items():
            for chunk in _chunks(relays, lambda r: len(r.datagram)):
                if len(chunk) == 1:
                    body, reply = chunk[0].datagram, inbox + chunk[0].token
                else:
                    key = "b" + chunk[0].token
                    self._batches[key] = chunk
                    body, reply = pack(_BATCH, ((r.token.encode(), r.datagram) for r in chunk)), inbox + key
                try:
                    self.counters["relay_messages"] += 1
                    await nc.publish(subject, body, reply=reply)
                except Exception as err:
                    for relay in chunk:
                        self._fail(relay, Unavailable(f"the federation could not relay the request: {err!r}"))

    async def _on_reply(self, msg: Any) -> None:
        key = self._replies.token(msg.subject)
        headers = msg.headers
        if headers and headers.get("Status") == _NO_RESPONDERS:
            # Nobody serves the subject now (the serving gateway died or gave the device up): again in RETRY_S,
            # routed again, unless this gateway took the device over meanwhile.
            relays = self._batches.pop(key, ()) if key[:1] == "b" else [self._pending.get(key)]
            loop = asyncio.get_running_loop()
            for relay in relays:
                if relay is not None and self._pending.pop(relay.token, None) is relay:
                    self.counters["relay_retries"] += 1
                    loop.call_later(RETRY_S, self._retry, relay)
            return
        data = msg.data
        if data[:2] == _BATCH_REPLY:
            items = unpack(data)
            if items is None:
                self.counters["vouch_errors"] += 1
                return
            for token, item in items:
                self._reply(self._pending.get(token.decode("ascii", "replace")), item)
            return
        self._reply(self._pending.get(key), data)

    def _reply(self, relay: _Relay | None, data: bytes) -> None:
        if relay is None:
            return  # answered, expired or retried already
        if not data or data[0] not in _DATA_TYPES:
            self.counters["vouch_errors"] += 1
            return  # not a reply: dropped, the wait goes on
        self._done(relay, bytes(data))

    def _retry(self, relay: _Relay) -> None:
        if relay.future.done():
            return
        if relay.device is not None and self._placement.route(relay.device) is None:
            self.counters["taken_over"] += 1
            self._done(relay, None)  # this gateway serves it now
        elif not self._link.connected:
            self._fail(relay, Unavailable(_PARTITIONED))
        else:
            self._send(relay)

    def _check_pending(self) -> None:
        for relay in list(self._pending.values()):
            if relay.device is not None and self._placement.route(relay.device) is None:
                self.counters["taken_over"] += 1
                self._done(relay, None)

    def _expire(self, relay: _Relay) -> None:
        if not relay.future.done():
            self.counters["relay_timeouts"] += 1
            self._fail(relay, DeadlineExceeded(f"no answer through the federation within {relay.lifetime_ms} ms"))

    def _done(self, relay: _Relay, data: bytes | None) -> None:
        """`relay` answered (`data`), or to be served here (None)."""
        self._end(relay, data, None)

    def _fail(self, relay: _Relay, err: CallError) -> None:
        self._end(relay, None, err)

    def _end(self, relay: _Relay, data: bytes | None, err: CallError | None) -> None:
        self._pending.pop(relay.token, None)
        if relay.timer is not None:
            relay.timer.cancel()
        if relay.future.done():
            return
        took = time.monotonic() - relay.started
        if err is not None:
            relay.future.set_exception(err)
            self._count(RELAY, err.code, took)
            return
        relay.future.set_result(data)
        if data is not None:
            self.latency_s.append(took)
        self._count(RELAY, TAKEN_OVER if data is None else OK, took)

    def close(self) -> None:
        """Fail the relayed requests in flight (the gateway is stopping)."""
        for relay in list(self._pending.values()) + self._out:
            self._fail(relay, Unavailable("the gateway is shutting down; retry when it is back"))
        self._out = []
        for task in (self._pump, self._watch):
            if task is not None:
                task.cancel()
        self._pump = self._watch = None

    def _count(self, kind: str, result: str, took_s: float) -> None:
        """One forwarded request's result and round trip (ndn_edge_federation_forwarded_* metrics)."""
        key = (kind, result)
        self.results[key] = self.results.get(key, 0) + 1
        self.latency.observe(kind, took_s)

    # -- vouched requests

    async def vouch(self, subject: str, caller: Caller, verb: str, target: tuple[str, ...], params: dict[str, Any],
                    timeout_s: float, *, nonce: bytes | None = None,
                    gone: Callable[[], bool] | None = None) -> bytes:
        """The content (CBOR) another gateway answered for a request made for `caller`; CallError as it said.
        `Gone` when nobody answers on `subject` (no responders) or, while it waits, when `gone()` says the gateway
        it went to has left the directory: the caller routes it again rather than wait for its deadline. A
        request sent again carries the same `nonce` (the serving gateway journals a non-idempotent call under
        it, so a takeover's retry runs it once)."""
        started = time.monotonic()
        try:
            content = await self._vouching(subject, caller, verb, target, params, timeout_s,
                                           nonce or os.urandom(12), gone)
        except CallError as err:
            self._count(VOUCH, err.code, time.monotonic() - started)
            raise
        self._count(VOUCH, OK, time.monotonic() - started)
        return content

    async def _vouching(self, subject: str, caller: Caller, verb: str, target: tuple[str, ...],
                        params: dict[str, Any], timeout_s: float, nonce: bytes,
                        gone: Callable[[], bool] | None) -> bytes:
        if not self._link.connected:
            raise Unavailable("this gateway is cut off from its federation (partitioned)")
        body = cbor2.dumps({"c": caller.name, "v": verb, "t": list(target), "p": params,
                            "ts": int(time.time() * 1000), "n": nonce, "g": self.tag})
        from nats.errors import NoRespondersError

        self.counters["vouched"] += 1
        try:
            msg = await _unless_gone(
                self._link.nc.request(subject, _VOUCH + self._key.vouch(body) + body, timeout=timeout_s), gone)
        except NoRespondersError as err:
            raise Gone(f"no gateway of the federation answers for {subject.split('.', 3)[-1]} now; retry "
                       "in a few seconds") from err
        except Exception as err:
            if "timeout" in type(err).__name__.lower():
                raise DeadlineExceeded(f"no answer through the federation within {timeout_s * 1000:.0f} ms") from err
            raise Unavailable(f"the federation could not carry the request: {err!r}") from err
        if msg is None:
            self.counters["vouch_gone"] += 1
            raise Gone(f"the gateway serving {subject.split('.', 3)[-1]} left the federation's directory while "
                       "it had the request; retry in a few seconds")
        data = bytes(msg.data)
        mac, answer = data[2:2 + _MAC], data[2 + _MAC:]
        if data[:2] != _ANSWER or not self._key.vouched(nonce + answer, mac):
            self.counters["vouch_errors"] += 1
            raise Internal("a gateway of the federation answered with something that does not verify")
        reply = cbor2.loads(answer)
        if "err" in reply:
            wire_err = reply["err"]
            raise CallError.from_wire(wire_err.get("code"), wire_err.get("message"))
        return bytes(reply["ok"])


class Gone(Unavailable):
    """A vouched request's gateway is gone: nobody answers its subject, or it left the directory while it had the
    request (`Remote.vouch`)."""


def vouch_identity(nonce: bytes) -> bytes:
    """The `REQUEST_ID` of a vouched request (the invoker's journal key), the same on every gateway it reaches."""
    return _VOUCH + nonce


async def _unless_gone(request: Awaitable[Any], gone: Callable[[], bool] | None) -> Any:
    """`request`'s result; None if `gone()` turns true first (looked at every TAKEOVER_CHECK_S)."""
    if gone is None:
        return await request
    pending = asyncio.ensure_future(request)
    try:
        while True:
            done, _ = await asyncio.wait({pending}, timeout=TAKEOVER_CHECK_S)
            if done:
                return pending.result()
            if gone():
                return None
    finally:
        if not pending.done():
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)


class Serve:
    """This gateway's side: what arrives on the subjects of the devices it serves and on its own subject."""

    def __init__(self, link: Any, key: FederationKey, *, tag: str) -> None:
        self._link = link
        self._key = key
        self.tag = tag
        self.face: Any = None   # the client face (receive_forwarded), once built
        self.verbs: Any = None  # a verb table without a router: requests here are served here
        self.store: Any = None
        self._subs: dict[str, Any] = {}
        self._own: Any = None
        self._out: list[tuple[str, bytes | None, bytes]] = []
        self._ready = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._nonces: OrderedDict[bytes, float] = OrderedDict()
        self._throttle = Throttle(log)
        self.counters: dict[str, int] = {"relayed_in": 0, "vouched_in": 0, "dropped": 0, "replies": 0,
                                         "over_capacity": 0}

    async def start(self) -> None:
        self._pump = asyncio.create_task(self._replies(), name="federation-replies")

    async def stop(self) -> None:
        for sub in [*self._subs.values(), self._own]:
            if sub is not None:
                try:
                    await sub.unsubscribe()
                except Exception:  # the connection is gone with it
                    pass
        self._subs.clear()
        self._own = None
        tasks = [t for t in (self._pump, *self._tasks) if t is not None]
        self._pump = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def listen_own(self) -> None:
        """Answer on this gateway's own subject (the operations it keeps); again after a reconnect."""
        if self._own is None and self._link.connected:
            self._own = await self._link.nc.subscribe(self._link.config.gateway_subject(self.tag), cb=self._on_msg)

    async def serve(self, device: str, on: bool) -> None:
        """Start (or stop) answering on the subject of `device`."""
        subject = self._link.config.device_subject(device)
        sub = self._subs.pop(subject, None)
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception:  # gone with the connection
                pass
        if on and self._link.connected:
            self._subs[subject] = await self._link.nc.subscribe(subject, queue="serve", cb=self._on_msg)
            try:  # the server has the subscription before anyone is told this gateway serves the device
                await self._link.nc.flush(timeout=2)
            except Exception:  # (slow or gone: the subscription stands, and a requester retries)
                pass

    async def _on_msg(self, msg: Any) -> None:
        data, reply = msg.data, msg.reply
        if not reply or not data:
            self.counters["dropped"] += 1
            return
        if data[0] in _PACKET_TYPES and self.face is not None:
            self.counters["relayed_in"] += 1
            self.face.receive_forwarded(bytes(data), functools.partial(self._send, reply, None))
        elif data[:2] == _BATCH and self.face is not None:
            items = unpack(data)
            if items is None:
                self.counters["dropped"] += 1
                return
            for token, datagram in items:
                if not datagram or datagram[0] not in _PACKET_TYPES:
                    self.counters["dropped"] += 1
                    continue
                self.counters["relayed_in"] += 1
                self.face.receive_forwarded(datagram, functools.partial(self._send, reply, token))
        elif data[:2] == _VOUCH and self.verbs is not None:
            if len(self._tasks) >= MAX_IN_FLIGHT:
                self.counters["over_capacity"] += 1
                return
            task = asyncio.create_task(self._vouched(bytes(data), reply))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self.counters["dropped"] += 1

    def _send(self, subject: str, token: bytes | None, data: bytes) -> None:
        """A reply to send to `subject`: alone (`token` None), or with the others of its batch ready by then."""
        self._out.append((subject, token, data))
        self._ready.set()

    async def _replies(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            batch, self._out = self._out, []
            batches: dict[str, list[tuple[bytes, bytes]]] = {}
            for subject, token, data in batch:
                if token is None:
                    await self._reply(subject, data)
                else:
                    batches.setdefault(subject, []).append((token, data))
            for subject, items in batches.items():
                for chunk in _chunks(items, lambda item: len(item[1])):
                    await self._reply(subject, pack(_BATCH_REPLY, chunk))

    async def _reply(self, subject: str, body: bytes) -> None:
        try:
            await self._link.nc.publish(subject, body)
            self.counters["replies"] += 1
        except Exception as err:  # the requester gave up, or NATS went away: it retries or times out
            self._throttle.event("reply", "federation_reply_lost", logging.DEBUG, error=repr(err))

    async def _vouched(self, data: bytes, reply: str) -> None:
        mac, body = data[2:2 + _MAC], data[2 + _MAC:]
        if not self._key.vouched(body, mac):
            return self._drop("vouch_forged")
        try:
            req = cbor2.loads(body)
            client, verb, target, params, ts, nonce = (req["c"], req["v"], tuple(req["t"]), req["p"], req["ts"],
                                                       bytes(req["n"]))
            if not isinstance(client, str) or not isinstance(verb, str) or not isinstance(params, dict) or \
                    not all(isinstance(t, str) for t in target):
                raise ValueError("wrong types")
        except (cbor2.CBORDecodeError, KeyError, TypeError, ValueError):
            return self._drop("vouch_malformed")
        now = time.time()
        if abs(now * 1000 - int(ts)) > VOUCH_WINDOW_MS:
            return self._drop("vouch_stale")
        if nonce in self._nonces:
            return self._drop("vouch_replay")
        self._nonces[nonce] = now
        while len(self._nonces) > _NONCES or (self._nonces and next(iter(self._nonces.values())) < now - 120):
            self._nonces.popitem(last=False)
        self.counters["vouched_in"] += 1
        REQUEST_ID.set(vouch_identity(nonce))  # this task's: the invoker journals a non-idempotent call under it
        try:
            rules = tuple(rule.parts for rule in self.store.rules(client))
            result = self.verbs.run(Caller(client, rules), verb, target, params)
            if asyncio.iscoroutine(result) or isinstance(result, Awaitable):
                result = await result
            content = bytes(result) if isinstance(result, Encoded) else cbor2.dumps(result)
            answer = cbor2.dumps({"n": nonce, "ok": content})
        except UnknownClient:
            answer = cbor2.dumps({"n": nonce, "err": PermissionDenied(
                f"client '{client}' is not known on every gateway yet; retry in a second").to_wire()})
        except CallError as err:
            answer = cbor2.dumps({"n": nonce, "err": err.to_wire()})
        except UnknownDevice as err:
            answer = cbor2.dumps({"n": nonce, "err": NotFound(str(err)).to_wire()})
        except GatewayError as err:
            answer = cbor2.dumps({"n": nonce, "err": Internal(str(err)).to_wire()})
        except (cbor2.CBOREncodeError, TypeError, ValueError) as err:
            answer = cbor2.dumps({"n": nonce, "err": Internal(f"result cannot be encoded: {err}").to_wire()})
        self._send(reply, None, _ANSWER + self._key.vouch(nonce + answer) + answer)

    def _drop(self, why: str) -> None:
        self.counters["dropped"] += 1
        self._throttle.event(why, "federation_request_dropped", logging.WARNING, reason=why)


def pack(head: bytes, items: Iterable[tuple[bytes, bytes]]) -> bytes:
    """`head` then, per item, `token length (1 byte) | token | data length (2 bytes, big-endian) | data`: the body
    of a batch of relayed requests (`B1`, each token a reply token of the requester) or of their replies (`b1`)."""
    out = bytearray(head)
    for token, data in items:
        out += len(token).to_bytes(1, "big")
        out += token
        out += len(data).to_bytes(2, "big")
        out += data
    return bytes(out)


def unpack(body: bytes) -> list[tuple[bytes, bytes]] | None:
    """The (token, data) items of a `pack`ed body (its 2-byte head skipped); None when it does not parse (a
    length past the end, an empty token, nothing inside)."""
    view = memoryview(body)
    items, at, end = [], 2, len(body)
    while at < end:
        size = view[at]
        at += 1
        if size == 0 or at + size + 2 > end:
            return None
        token = bytes(view[at:at + size])
        at += size
        length = int.from_bytes(view[at:at + 2], "big")
        at += 2
        if at + length > end:
            return None
        items.append((token, bytes(view[at:at + length])))
        at += length
    return items or None


def _chunks(items: list[_T], size: Callable[[_T], int]) -> Iterator[list[_T]]:
    """`items` in runs of at most BATCH_ITEMS and about BATCH_BYTES."""
    chunk: list[_T] = []
    total = 0
    for item in items:
        n = size(item)
        if chunk and (len(chunk) >= BATCH_ITEMS or total + n > BATCH_BYTES):
            yield chunk
            chunk, total = [], 0
        chunk.append(item)
        total += n
    if chunk:
        yield chunk


def _first_keeper(tag: str, placement: Any) -> Callable[[Any], str | None]:
    """Operations routed by the tag ending their id (before `opsync.OpsSync.keeper` is plugged in)."""
    def keeper(op_id: Any) -> str | None:
        owner = op_owner(op_id)
        return owner if owner is not None and owner != tag and placement.alive(owner) else None
    return keeper


def _param(params: bytes, key: str) -> Any:
    try:
        value = cbor2.loads(params) if params else {}
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError, OverflowError):
        return None
    return value.get(key) if isinstance(value, dict) else None

