"""The invocation pipeline towards devices: cache, coalescing, circuit breaker, signing, retries, verification.

Owns everything between "call service S of device D with arguments A within T seconds" and a verified answer,
as SPEC.md "Gateway behaviour" lists it (authentication and authorization of clients happen before, in the
client-facing server). Layered like aiocoap, each piece a small class with one job:

    Invoker.call -> ResultCache (fresh hit?) -> presence check (Directory) -> coalescing (one task per key)
                 -> CircuitBreaker (per device) -> _Window (per-device admission) -> signing (SeqCounter)
                 -> Requester (send, retransmit with Backoff, match the reply by name, verify) -> ResultCache

Decisions:
- Cache key: (device, service, canonical CBOR of the arguments). Freshness is the Data's FreshnessPeriod, which
  the device sets from the service's `cache_ms`; a reply without one supersedes and removes an older entry.
  Only cacheable values are kept past their freshness and served flagged `stale=True`, for up to
  `max_stale_s`, when the device is offline, times out, or its circuit is open: a value the device never said
  could be reused (a `counter`) is never replayed. NOT_FOUND and INVALID_ARGUMENT answers are cached for one
  second (negative caching), never served stale.
- Coalescing only for idempotent services (per the device's description; `_desc` and `_health` are): identical
  concurrent misses share one task that the invoker owns, so one caller's cancellation does not cancel the
  request under the others. A non-idempotent call always runs on its own.
- A retransmission re-sends the same bytes (same SignatureSeqNum and signature): the device answers it from its
  reply cache without running the handler again, so a non-idempotent call runs at most once. Only for an
  idempotent call, when the device announced a receive floor above the request's number (it rebooted), is the
  request signed again with a new number.
- Requests to one device are admitted through a window (`_Window`): at most `max_in_flight` (default 4) on the
  air at once, and while a request waits for its reply, fewer than `reply_cache` (default 8, the reply cache the
  protocol promises) others may run at the device after it. Otherwise, with datagrams lost, the replies of
  later requests could evict its reply from the device's cache before its retransmission arrives, and the
  retransmission would be dropped as a replay: an at-most-once call turned into a lost one. A limit on requests
  in flight alone does not prevent that: the other slots keep completing calls meanwhile.
- Replies are matched on the raw Name TLV (the final name, digest included) before any parsing, so traffic for
  other consumers costs a dictionary lookup; a matching Data is verified in the waiting task, and one that fails
  verification is counted in `bad_packets` and does not end the wait.
- The circuit breaker counts calls that ended in a timeout, not transmissions: 3 in a row open it; while open,
  calls fail fast (Unavailable, or a stale value); after a cool-down (2 s, doubling up to 30 s) one probe goes
  through. Any reply, even an error, closes it. A device that announces itself again (a `join`) gets its probe
  at once (`device_joined`).
- Device records (key, descriptions) are read from the store at most once a second per device
  (`RECORD_REFRESH_S`), as the client side does for client keys: re-provisioning applies within a second, and a
  call costs no SQLite read and JSON parse. A fetched description replaces the record at once.
Rejected: per-transmission timeouts counted by the breaker (a slow service would trip it), and caching under the
client's identity (access control happens before the cache, so one entry serves every authorized client).
"""
from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import math
import random
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Generic, TypeVar

import cbor2

from ndn_edge import names
from ndn_edge.answers import Answer
from ndn_edge.devices.descriptions import check_args, find_service, valid_description, with_defaults
from ndn_edge.devices.paths import Paths
from ndn_edge.errors import (
    CallError,
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    StoreError,
    Unavailable,
)
from ndn_edge.interfaces import REQUEST_ID, CallJournal, SeqSource
from ndn_edge.logs import event
from ndn_edge.observability.stats import RTT_BUCKETS_S, Histograms
from ndn_edge.state.store import DeviceRecord, SeqCounter
from ndn_edge.wire import packets as wire
from ndn_edge.wire import tlv
from ndn_edge.wire.framing import name_tlv

log = logging.getLogger("ndn_edge.invoker")

T = TypeVar("T")
CacheKey = tuple[str, str, bytes]

NEGATIVE_CODES = frozenset({NotFound.code, InvalidArgument.code})
FRAMEWORK_SERVICES = frozenset({"_desc", "_health", "_op_get", "_op_cancel"})
DEFAULT_TIMEOUT_S = 5.0
SEQ_BLOCK = 64
REPLY_CACHE = 8  # replies a device keeps for retransmissions (docs/protocol.md, "Replay protection")
SEQ_READY_WAIT_S = 2.0  # at most this long a request waits for its counter's first shared lease (federation)
RECORD_REFRESH_S = 1.0  # device records (key, descriptions) are read from the store at most this often
MAX_RECORDS = 20_000
EARLY_REFRESH = 0.2  # the last share of an entry's freshness in which a hit refreshes it in the background
_EMPTY_MAP = b"\xa0"  # the canonical CBOR of no arguments


class Ticket:
    """A call that the cache could not answer: what `Invoker.complete` needs to ask the device."""

    __slots__ = ("args", "device", "key", "params", "service", "trace")

    def __init__(self, device: str, service: str, args: dict[str, Any] | None, params: bytes) -> None:
        self.device = device      # the full name
        self.service = service
        self.args = args          # checked against the service's description before anything is sent
        self.params = params      # the canonical CBOR of the arguments: the cache key and what is sent
        self.key: CacheKey = (device, service, params)
        self.trace: Any = None    # the call's CallTrace (ndn_edge.observability.trace), set by the caller


def canonical_args(args: dict[str, Any] | None) -> bytes:
    """The canonical CBOR of a call's arguments (the cache key part); InvalidArgument if not a text-keyed map."""
    if not args and (args is None or isinstance(args, dict)):
        return _EMPTY_MAP
    if not isinstance(args, dict):
        raise InvalidArgument(f"arguments must be a map of names to values, got {type(args).__name__}")
    for k in args:
        if not isinstance(k, str):
            raise InvalidArgument(f"argument names must be text, got {k!r}")
    try:
        return cbor2.dumps(args, canonical=True)
    except (cbor2.CBOREncodeError, TypeError, ValueError) as err:
        raise InvalidArgument(f"arguments cannot be encoded as CBOR: {err}") from err


# -- cache


class CacheEntry:
    """One cached answer: the device's CBOR of a value, or a negative error."""

    __slots__ = ("cbor", "error", "fresh_until", "refresh_from", "stored_at")

    def __init__(self, cbor: bytes, error: CallError | None, stored_at: float, fresh_until: float) -> None:
        self.cbor = cbor
        self.error = error
        self.stored_at = stored_at
        self.fresh_until = fresh_until
        # From here on a hit may refresh the entry in the background (see ResultCache)
        self.refresh_from = fresh_until - (fresh_until - stored_at) * EARLY_REFRESH

    def answer(self, now: float, *, stale: bool) -> Answer:
        """The cached answer, or the cached error raised again."""
        if self.error is not None:
            raise type(self.error)(self.error.message)
        return Answer(self.cbor, True, max(0, int((now - self.stored_at) * 1000)), stale,
                      0 if stale else max(0, int((self.fresh_until - now) * 1000)))


class ResultCache:
    """Answers by (device, service, canonical arguments), bounded, least recently used first out.

    Against a cache avalanche (entries filled together, after a restart, a gather or a dashboard opening, all
    expiring in the same instant and each expiry a device request): every entry's freshness is cut by a random
    share of up to `jitter` (never lengthened past what the device allowed), so entries filled together expire
    spread over that share; and a hit in the last `EARLY_REFRESH` of an entry's freshness marks it due for a
    background refresh (`Invoker` runs at most one per device at a time), so a hot entry is renewed before it
    expires while callers keep getting the fresh value.
    """

    def __init__(self, *, max_entries: int = 10_000, max_stale_s: float = 300.0, negative_ttl_s: float = 1.0,
                 jitter: float = 0.1, clock: Callable[[], float] = time.monotonic,
                 rng: Callable[[], float] = random.random) -> None:
        self.max_entries = max_entries
        self.max_stale_s = max_stale_s
        self.negative_ttl_s = negative_ttl_s
        self.jitter = jitter
        self._clock = clock
        self._rng = rng
        self._entries: collections.OrderedDict[CacheKey, CacheEntry] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def fresh(self, key: CacheKey) -> CacheEntry | None:
        """The entry if still fresh; expired entries past any use are dropped."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        now = self._clock()
        if now < entry.fresh_until:
            self._entries.move_to_end(key)
            return entry
        if entry.error is not None or now - entry.stored_at > self.max_stale_s:
            del self._entries[key]
        return None

    def stale(self, key: CacheKey) -> CacheEntry | None:
        """A value entry no older than `max_stale_s`, fresh or not (never a negative entry)."""
        entry = self._entries.get(key)
        if entry is None or entry.error is not None or self._clock() - entry.stored_at > self.max_stale_s:
            return None
        return entry

    def put_answer(self, key: CacheKey, cbor: bytes, freshness_ms: int | None, *, age_ms: int = 0) -> int:
        """Keep a value (its CBOR) the device marked fresh for `freshness_ms` from now, `age_ms` old already (a
        value another gateway cached); without freshness, forget the key. Returns the milliseconds it is kept
        fresh (the jitter's cut taken off), 0 when not kept."""
        if not freshness_ms or freshness_ms <= 0:
            self._entries.pop(key, None)
            return 0
        now = self._clock()
        fresh_s = freshness_ms / 1000 * (1 - self.jitter * self._rng())
        self._put(key, CacheEntry(cbor, None, now - max(0, age_ms) / 1000, now + fresh_s))
        return int(fresh_s * 1000)

    def put_error(self, key: CacheKey, error: CallError) -> None:
        """Keep a negative answer for `negative_ttl_s`."""
        now = self._clock()
        self._put(key, CacheEntry(b"", error, now, now + self.negative_ttl_s))

    def _put(self, key: CacheKey, entry: CacheEntry) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


# -- circuit breaker


class CircuitBreaker:
    """Per-device breaker: opens after `threshold` timed-out calls in a row, probes after a growing cool-down."""

    CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
    PROBE = "probe"

    def __init__(self, *, threshold: int = 3, cooldown_s: float = 2.0, max_cooldown_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.base_cooldown_s = cooldown_s
        self.max_cooldown_s = max_cooldown_s
        self.failures = 0  # consecutive timed-out calls
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._open_until: float | None = None
        self._probing = False

    @property
    def state(self) -> str:
        """closed, open (failing fast) or half_open (a probe may go)."""
        if self._open_until is None:
            return self.CLOSED
        return self.OPEN if self._clock() < self._open_until else self.HALF_OPEN

    def retry_in_s(self) -> float:
        """Seconds until a probe may go (0 when closed or half-open)."""
        return max(0.0, self._open_until - self._clock()) if self._open_until is not None else 0.0

    def allow(self) -> str | None:
        """A permit for one request (CLOSED or PROBE), or None to fail fast."""
        state = self.state
        if state == self.CLOSED:
            return self.CLOSED
        if state == self.OPEN or self._probing:
            return None
        self._probing = True
        return self.PROBE

    def record_success(self, permit: str) -> None:
        """The device answered: close."""
        self.failures = 0
        self.cooldown_s = self.base_cooldown_s
        self._open_until = None
        if permit == self.PROBE or self._probing:
            self._probing = False

    def record_timeout(self, permit: str) -> None:
        """A call got no answer before its deadline."""
        self.failures += 1
        if permit == self.PROBE:
            self._probing = False
            self.cooldown_s = min(self.cooldown_s * 2, self.max_cooldown_s)
            self._open_until = self._clock() + self.cooldown_s
        elif self._open_until is None and self.failures >= self.threshold:
            self._open_until = self._clock() + self.cooldown_s

    def release(self, permit: str) -> None:
        """The request ended without a verdict (cancelled, or a local error)."""
        if permit == self.PROBE:
            self._probing = False

    def nudge(self) -> None:
        """The device says it is back: let a probe through now."""
        if self._open_until is not None:
            self._open_until = self._clock()


# -- retransmission


class Backoff:
    """Retransmission intervals: `initial_s`, times `factor` each time up to `max_s`, each with ±`jitter`."""

    def __init__(self, initial_s: float = 0.1, factor: float = 2.0, max_s: float = 2.0, jitter: float = 0.25,
                 rng: Callable[[], float] = random.random) -> None:
        self.initial_s = initial_s
        self.factor = factor
        self.max_s = max_s
        self.jitter = jitter
        self._rng = rng

    def delays(self) -> Iterator[float]:
        """An endless sequence of waits before each retransmission."""
        base = self.initial_s
        while True:
            yield base * (1 + self.jitter * (2 * self._rng() - 1))
            base = min(base * self.factor, self.max_s)


class _Pending:
    """One request waiting for its reply: arrived Data (unverified) and the waiter to wake."""

    __slots__ = ("arrivals", "waiter")

    def __init__(self) -> None:
        self.arrivals: list[bytes] = []
        self.waiter: asyncio.Future[None] | None = None

    def wake(self, exc: BaseException | None = None) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)


_NOTHING = object()


class Requester:
    """Sends signed Interests on the face, retransmits until the deadline, returns the first verified reply."""

    def __init__(self, face: Any, metrics: dict[str, int], backoff: Backoff | None = None) -> None:
        self._face = face
        self._metrics = metrics
        self._backoff = backoff or Backoff()
        self._pending: dict[bytes, _Pending] = {}
        self._closed = False

    def on_data(self, packet: bytes) -> None:
        """Face callback for a Data: hand it to the request waiting for that exact name, if any."""
        pending = self._pending.get(name_tlv(packet) or b"")
        if pending is None:
            self._metrics["unmatched_data"] += 1
            return
        pending.arrivals.append(packet)
        pending.wake()

    def open(self) -> None:
        """Accept requests again after `close()`."""
        self._closed = False

    def close(self) -> None:
        """Fail every waiting request with Unavailable; later requests fail the same way until `open()`."""
        self._closed = True
        for pending in list(self._pending.values()):
            pending.wake(Unavailable("the gateway is stopping"))

    async def request(self, packet: bytes, deadline: float, accept: Callable[[bytes], T], *, what: str,
                      resign: Callable[[], bytes | None] | None = None,
                      send: Callable[[bytes, int], None] | None = None,
                      answered: Callable[[int], None] | None = None, trace: Any = None) -> T:
        """Send `packet` until `accept(reply)` returns or `deadline` (loop time) passes: DeadlineExceeded.

        `accept` raises wire.BadPacket for a reply that does not verify; waiting goes on. `resign`, asked before
        each retransmission, may return a newly signed packet to send instead. `send(packet, attempt)` sends
        instead of the face (the device's path, `paths.Paths`); `answered(transmissions)` hears of the reply.
        """
        if self._closed:
            raise Unavailable("the gateway is stopping")
        loop = asyncio.get_running_loop()
        key = name_tlv(packet)
        if key is None:
            raise Internal(f"request for {what} has no Name")
        pending = _Pending()
        self._pending[key] = pending
        sends = 0
        try:
            for delay in self._backoff.delays():
                if send is None:
                    self._face.send(packet)
                else:
                    send(packet, sends)
                sends += 1
                if trace is not None:
                    trace.sent(sends)
                result = await self._wait(loop, pending, min(deadline, loop.time() + delay), accept)
                if result is not _NOTHING:
                    if trace is not None:
                        trace.replied()
                    if answered is not None:
                        answered(sends)
                    return result  # type: ignore[return-value]
                if loop.time() >= deadline:
                    break
                self._metrics["retries"] += 1
                fresh = resign() if resign is not None else None
                if fresh is not None:
                    new_key = name_tlv(fresh)
                    if new_key is not None:
                        self._pending.pop(key, None)
                        packet, key = fresh, new_key
                        self._pending[key] = pending
        finally:
            if self._pending.get(key) is pending:
                del self._pending[key]
        if trace is not None:
            trace.replied("timeout")
        raise DeadlineExceeded(f"no reply from {what} within the deadline ({sends} transmissions)")

    async def _wait(self, loop: asyncio.AbstractEventLoop, pending: _Pending, until: float,
                    accept: Callable[[bytes], T]) -> T | object:
        while True:
            while pending.arrivals:
                try:
                    return accept(pending.arrivals.pop(0))
                except wire.BadPacket as err:
                    self._metrics["bad_packets"] += 1
                    event(log, "reply_dropped", logging.DEBUG, error=str(err))
            if loop.time() >= until:
                return _NOTHING
            pending.waiter = loop.create_future()
            timer = loop.call_at(until, pending.wake)
            try:
                await pending.waiter
            finally:
                timer.cancel()
                pending.waiter = None


class _NoSlot(DeadlineExceeded):
    """The deadline passed while waiting for a request slot (the device was busy, not silent)."""


class _Window:
    """Per device: which requests may be signed now, so that every request in flight stays answerable.

    The device answers a retransmission only from the cache of its last `size` replies (and refuses numbers far
    below the highest it accepted). A request whose reply was lost therefore stays answerable only while fewer
    than `size` other requests run at the device after it. Those can only be the requests still open when it
    was admitted (sent before it, they may still run after it) and the requests admitted after it; requests
    answered before it was sent ran before it. So each open request keeps a budget, `size - 1` minus the
    requests open at its admission, and a new request is admitted only while it fits the budget of every open
    request (and fewer than `max_in_flight` are open). With the defaults (8 and 4) a steady stream of calls
    is never held back; one request stuck behind lost datagrams holds later ones back (head-of-line blocking)
    instead of being lost. Waiting is bounded by the caller's deadline and safe under cancellation.
    """

    def __init__(self, size: int, max_in_flight: int) -> None:
        self.size = size
        self.max_in_flight = max_in_flight
        self.admitted = 0  # requests admitted so far: the next ticket
        self._open: dict[int, list[int]] = {}  # ticket -> [requests admitted since, budget], while open
        self._waiters: collections.deque[asyncio.Future[int]] = collections.deque()

    def _room(self) -> bool:
        return len(self._open) < self.max_in_flight and all(since < budget for since, budget in self._open.values())

    def _admit(self) -> int:
        for entry in self._open.values():
            entry[0] += 1
        ticket = self.admitted
        self._open[ticket] = [0, self.size - 1 - len(self._open)]
        self.admitted += 1
        return ticket

    async def acquire(self, deadline: float, what: str) -> int:
        """A ticket (the request's index) once the request may be signed; _NoSlot at `deadline`."""
        if not self._waiters and self._room():
            return self._admit()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        self._waiters.append(fut)
        timer = loop.call_at(deadline, lambda: fut.done() or fut.set_exception(
            _NoSlot(f"{what}: the device still owes replies to {len(self._open)} requests at the deadline")))
        try:
            return await fut
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.release(fut.result())  # admitted just as we gave up
            elif fut in self._waiters:
                self._waiters.remove(fut)
            raise
        finally:
            timer.cancel()

    def release(self, ticket: int) -> None:
        """The request got its answer or gave up: admit waiters that now fit, oldest first."""
        self._open.pop(ticket, None)
        while self._waiters and self._room():
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(self._admit())


class _Link:
    """What the invoker keeps per device: sequence counter, breaker, request window, and what its Interests
    carry that does not change from call to call (the signer, the encoded names)."""

    __slots__ = ("_names", "breaker", "counter", "key_name", "signer", "window")

    def __init__(self, record: DeviceRecord, counter: SeqSource, breaker: CircuitBreaker, window: _Window) -> None:
        self.breaker = breaker
        self.window = window
        self.rekey(record, counter)

    def rekey(self, record: DeviceRecord, counter: SeqSource) -> None:
        """A new key (the device was provisioned again): its own name and sequence space."""
        self.key_name = record.key_name
        self.signer = wire.InterestSigner(record.key, wire.encoded_name(record.key_name))
        self.counter = counter
        self._names: dict[str, bytes] = {}

    def name(self, device: str, service: str) -> bytes:
        """The encoded components of `<device>/<service>`, joined."""
        comps = self._names.get(service)
        if comps is None:
            comps = self._names[service] = b"".join(wire.name_components(f"{device}/{service}"))
        return comps


# -- the pipeline


class Invoker:
    """Calls device services through cache, coalescing, circuit breaker, signing and retries."""

    def __init__(self, store: Any, face: Any, directory: Any, *, site: str, cache: ResultCache | None = None,
                 backoff: Backoff | None = None, max_in_flight: int = 4, reply_cache: int = REPLY_CACHE,
                 breaker_factory: Callable[[], CircuitBreaker] = CircuitBreaker, paths: Paths | None = None) -> None:
        self.site = site.strip("/")
        self._paths = paths  # the way to each device (multicast or unicast); None: the face's group only
        self._store = store
        self._directory = directory
        self.cache = cache or ResultCache()
        self.metrics: dict[str, int] = {
            "calls": 0, "cache_hits": 0, "negative_hits": 0, "coalesced": 0, "stale_served": 0, "fail_fast": 0,
            "device_requests": 0, "retries": 0, "resigned": 0, "timeouts": 0, "bad_packets": 0,
            "unmatched_data": 0, "errors": 0, "early_refreshes": 0,
        }
        self.round_trips = Histograms(RTT_BUCKETS_S)  # by device: first transmission to verified reply
        self._requester = Requester(face, self.metrics, backoff)
        self._max_in_flight = max_in_flight
        self._reply_cache = reply_cache
        self._breaker_factory = breaker_factory
        self._links: dict[str, _Link] = {}
        self._records: dict[str, tuple[float, Any]] = {}  # name -> (read at, DeviceRecord)
        self._inflight: dict[CacheKey, _Shared[Answer]] = {}
        self._refreshing: set[str] = set()  # devices with a background refresh in flight
        self._refresh_due: dict[str, collections.OrderedDict[CacheKey, Ticket]] = {}  # per device, oldest first
        self._desc_inflight: dict[str, _Shared[dict[str, Any]]] = {}
        # Hooks for ndn_edge.federation: sequence numbers from shared leases, and the journal that lets a gateway
        # taking a device over send a non-idempotent call's signed request again instead of a new one.
        self.counters: Callable[[str], SeqSource] | None = None
        self.journal: CallJournal | None = None

    # -- face and directory hooks

    def on_data(self, packet: bytes) -> None:
        """Face callback for a Data packet."""
        self._requester.on_data(packet)

    def device_joined(self, device: str) -> None:
        """The device announced itself again: let its breaker probe at once."""
        name = self._directory.resolve(device)
        if self._paths is not None:
            self._paths.joined(name)
        link = self._links.get(name)
        if link is not None:
            link.breaker.nudge()

    def check_fits(self, device: str, packet: bytes, what: str) -> None:
        """ResourceExhausted when `packet` is larger than the device reads (its mtu): it would be dropped unread,
        and the call would end in a timeout that says nothing (and counts against a healthy device's breaker)."""
        limit = self._directory.mtu(device)
        if len(packet) > limit:
            raise ResourceExhausted(f"the request to {what} is {len(packet):,} bytes, but the device reads at most "
                                    f"{limit:,} (its mtu): send smaller arguments")

    def next_seq(self, record: Any, floor: int) -> int:
        """The next SignatureSeqNum of the device's key, at or above `floor`, for an Interest sent outside a call
        (a notification): one counter per key, shared with calls, or the device would see replays."""
        return self._link(record).counter.next(floor)

    def breakers(self) -> dict[str, CircuitBreaker]:
        """The circuit breaker of every device called so far, by full name."""
        return {name: link.breaker for name, link in list(self._links.items())}

    def breaker(self, device: str) -> CircuitBreaker | None:
        """The device's circuit breaker, once it has been called."""
        link = self._links.get(self._directory.resolve(device))
        return link.breaker if link is not None else None

    def start(self) -> None:
        """Accept calls (again, after `close()`)."""
        self._requester.open()

    async def close(self) -> None:
        """Fail waiting requests and cancel the shared request tasks."""
        self._requester.close()
        self._refresh_due.clear()
        tasks = [s.task for s in list(self._inflight.values()) + list(self._desc_inflight.values())]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- calls

    async def call(self, device: str, service: str, args: dict[str, Any] | None = None, *,
                   timeout_s: float = DEFAULT_TIMEOUT_S, trace: Any = None) -> Answer:
        """Call `service` of `device` with `args`; the answer, or the CallError the call ended in. `trace` is
        the call's CallTrace (ndn_edge.observability.trace), if any."""
        found = self.prepare(device, service, args)
        if isinstance(found, Answer):
            if trace is not None:
                trace.cache("hit")
            return found
        if trace is not None:
            trace.cache("miss")
            found.trace = trace
        return await self.complete(found, timeout_s=timeout_s)

    def prepare(self, device: str, service: str, args: dict[str, Any] | None = None) -> Answer | Ticket:
        """A fresh cached answer at once (a cached error is raised), or the ticket `complete` takes to ask the
        device: one lookup, one encoding of the arguments, and no task or timer for a hit."""
        if not isinstance(service, str) or not service or "/" in service:
            raise InvalidArgument(f"service must be one name component such as 'temperature', got {service!r}")
        ticket = Ticket(self._directory.resolve(device), service, args, canonical_args(args))
        self.metrics["calls"] += 1
        entry = self.cache.fresh(ticket.key)
        if entry is None:
            return ticket
        self.metrics["negative_hits" if entry.error is not None else "cache_hits"] += 1
        now = time.monotonic()
        answer = entry.answer(now, stale=False)
        if now >= entry.refresh_from:
            self._refresh_early(ticket, entry)
        return answer

    async def complete(self, ticket: Ticket, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> Answer:
        """Ask the device for what `prepare` did not find cached; a stale answer when the device is down."""
        if not isinstance(timeout_s, (int, float)) or not timeout_s > 0 or math.isinf(timeout_s):
            raise InvalidArgument(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
        deadline = asyncio.get_running_loop().time() + timeout_s
        try:
            return await self._uncached(ticket, deadline)
        except (Unavailable, DeadlineExceeded) as err:
            entry = self.cache.stale(ticket.key)
            if entry is None:
                raise
            self.metrics["stale_served"] += 1
            answer = entry.answer(time.monotonic(), stale=True)
            trace = ticket.trace
            if trace is not None:
                trace.cache("stale")
            event(log, "stale_served", device=ticket.device, service=ticket.service, age_ms=answer.age_ms,
                  reason=err.code, **(trace.log_fields() if trace is not None else {}))
            return answer

    def _refresh_early(self, ticket: Ticket, entry: CacheEntry) -> None:
        """Renew a hot entry before it expires, in the background: entries due for it wait in a queue per
        device, and one request at a time per device renews them (the next starts when one ends), never for an
        entry already being fetched."""
        if entry.error is not None:
            return
        entry.refresh_from = entry.fresh_until  # queued once per entry
        due = self._refresh_due.setdefault(ticket.device, collections.OrderedDict())
        due[ticket.key] = ticket
        if ticket.device not in self._refreshing:
            self._refresh_next(ticket.device)

    def _refresh_next(self, device: str) -> None:
        self._refreshing.discard(device)
        due = self._refresh_due.get(device)
        while due:
            _, ticket = due.popitem(last=False)
            if ticket.key in self._inflight or self.cache.fresh(ticket.key) is None:
                continue  # being fetched already, or expired meanwhile (a caller's miss fetches it)
            if not self._directory.is_online(device):
                due.clear()
                break
            self._refreshing.add(device)
            self.metrics["early_refreshes"] += 1
            deadline = asyncio.get_running_loop().time() + DEFAULT_TIMEOUT_S
            shared = _share(self._inflight, ticket.key, self._uncached(ticket, deadline, shared=False), deadline,
                            f"refresh {device}/{ticket.service}")
            shared.task.add_done_callback(lambda _t: self._refresh_next(device))
            return
        self._refresh_due.pop(device, None)

    async def _uncached(self, ticket: Ticket, deadline: float, *, shared: bool = True) -> Answer:
        name, service = ticket.device, ticket.service
        record = self._record(name)
        if record is None:
            raise NotFound(f"no device {name}; `ndn-edge devices` lists the known ones")
        if not self._directory.is_online(name):
            self.metrics["fail_fast"] += 1
            raise Unavailable(self._why_down(name))
        desc = record.desc
        if desc is None and service not in FRAMEWORK_SERVICES:
            desc = await self._description(name, deadline)
        svc = find_service(desc, service)
        if svc is None and service not in FRAMEWORK_SERVICES and desc is not None:
            offered = ", ".join(s.get("name", "?") for s in desc.get("services", []))
            err = NotFound(f"device {name} has no service {service!r} (it offers: {offered or 'nothing'})")
            self.cache.put_error(ticket.key, err)
            raise err
        try:
            check_args(svc, ticket.args, "/".join((*names.relative(name, self.site), service)))
        except InvalidArgument as err:
            self.cache.put_error(ticket.key, err)
            raise
        private = bool(svc and svc.get("private"))
        idempotent = service in FRAMEWORK_SERVICES or bool(svc and svc.get("idempotent"))
        if not idempotent:
            return await self._miss(record, ticket, private, False, deadline)
        if not shared:
            return await self._miss(record, ticket, private, True, deadline)
        running = self._inflight.get(ticket.key)
        if running is None:
            running = _share(self._inflight, ticket.key, self._miss(record, ticket, private, True, deadline),
                             deadline, f"call {name}/{service}")
        else:
            self.metrics["coalesced"] += 1
            if ticket.trace is not None:
                ticket.trace.cache("coalesced")
        return await _await_shared(running, deadline, f"{name}/{service}")

    async def _miss(self, record: DeviceRecord, ticket: Ticket, private: bool, idempotent: bool,
                    deadline: float) -> Answer:
        link = self._link(record)
        permit = link.breaker.allow()
        if permit is None:
            self.metrics["fail_fast"] += 1
            raise Unavailable(f"device {record.name} is not answering: circuit open after {link.breaker.failures} "
                              f"timed-out calls in a row; next probe in {link.breaker.retry_in_s():.1f}s")
        try:
            reply = await self._exchange(record, link, ticket.service, ticket.params, private, idempotent, deadline,
                                         lambda raw: wire.parse_reply(raw, record.key, private=private),
                                         ticket.trace)
        except _NoSlot:
            link.breaker.release(permit)
            raise
        except DeadlineExceeded:
            self.metrics["timeouts"] += 1
            was = link.breaker.state
            link.breaker.record_timeout(permit)
            if link.breaker.state == CircuitBreaker.OPEN and was != CircuitBreaker.OPEN:
                event(log, "circuit_open", logging.WARNING, device=record.name, timeouts=link.breaker.failures,
                      probe_in_s=round(link.breaker.retry_in_s(), 1),
                      **(ticket.trace.log_fields() if ticket.trace is not None else {}))
            raise
        except BaseException:
            link.breaker.release(permit)
            raise
        link.breaker.record_success(permit)
        if reply.ok:
            fresh_ms = self.cache.put_answer(ticket.key, reply.content, reply.freshness_ms)
            return Answer(reply.content, fresh_ms=fresh_ms)
        self.metrics["errors"] += 1
        err = CallError.from_wire(reply.code, reply.message)
        if err.code in NEGATIVE_CODES:
            self.cache.put_error(ticket.key, err)
        raise err

    async def _exchange(self, record: DeviceRecord, link: _Link, service: str, params: bytes, private: bool,
                        idempotent: bool, deadline: float, accept: Callable[[bytes], T], trace: Any = None) -> T:
        what = f"{record.name}/{service}"
        ticket = await link.window.acquire(deadline, what)
        try:
            seq = [0]
            head = b""  # the trace context, for a device that reads one (docs/protocol.md "Trace context")
            if trace is not None:
                trace.request_start()
                if isinstance(record.desc, dict) and record.desc.get("trace") is True:
                    head = trace.device_prefix()

            def sign() -> bytes:
                floor = max(record.rx_floor, self._directory.rx_floor(record.name))
                try:
                    seq[0] = link.counter.next(floor)
                except StoreError as err:
                    raise Internal(f"cannot lease sequence numbers for {record.key_name}: {err}") from err
                remaining_ms = (deadline - asyncio.get_running_loop().time()) * 1000
                return wire.call_interest(link.signer, link.name(record.name, service), params, seq[0],
                                          private=private, lifetime_ms=max(1, min(int(remaining_ms), 60_000)),
                                          trace=head)

            def resign() -> bytes | None:
                if idempotent and self._directory.rx_floor(record.name) > seq[0]:
                    self.metrics["resigned"] += 1
                    return sign()
                return None

            identity = REQUEST_ID.get() if self.journal is not None and not idempotent else None
            recalled = None
            if identity is not None:
                assert self.journal is not None
                recalled = await self.journal.recall(identity)  # signed already by the device's previous gateway?
            if recalled is None:
                # A counter with no shared block yet (this gateway never signed for the device, or only from a
                # local lease) leases one first: a local block may lie below the numbers the device's previous
                # gateway used, and the device would drop the request as a replay.
                lease = link.counter.ready()
                if lease is not None:
                    wait_s = min(SEQ_READY_WAIT_S, deadline - asyncio.get_running_loop().time())
                    if wait_s > 0:
                        await asyncio.wait({lease}, timeout=wait_s)
            packet = recalled if recalled is not None else sign()
            self.check_fits(record.name, packet, what)
            self.metrics["device_requests"] += 1
            if identity is not None and recalled is None:
                assert self.journal is not None
                await self.journal.record(identity, packet)
            paths = self._paths
            loop = asyncio.get_running_loop()
            started = loop.time()
            if paths is None:
                reply = await self._requester.request(packet, deadline, accept, what=what, resign=resign,
                                                      trace=trace)
            else:
                reply = await self._requester.request(
                    packet, deadline, accept, what=what, resign=resign,
                    send=lambda packet, attempt: paths.send(record.name, packet, attempt),
                    answered=lambda sends: paths.answered(record.name, sends), trace=trace)
            self.round_trips.observe(record.name, loop.time() - started)
            return reply
        finally:
            link.window.release(ticket)

    # -- descriptions

    async def fetch_description(self, device: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
        """Fetch the device's `_desc`, store it with its hash; the description."""
        name = self._directory.resolve(device)
        return await self._description(name, asyncio.get_running_loop().time() + timeout_s)

    async def _description(self, name: str, deadline: float) -> dict[str, Any]:
        shared = self._desc_inflight.get(name)
        if shared is None:
            shared = _share(self._desc_inflight, name, self._fetch_description(name, deadline), deadline,
                            f"desc {name}")
        return await _await_shared(shared, deadline, f"{name}/_desc")

    async def _fetch_description(self, name: str, deadline: float) -> dict[str, Any]:
        record = self._store.device(name)
        if record is None:
            raise NotFound(f"no device {name}; `ndn-edge devices` lists the known ones")
        link = self._link(record)
        _, meta, content = await self._exchange(record, link, "_desc", _EMPTY_MAP, False, True, deadline,
                                                lambda raw: wire.verify_data(raw, record.key))
        try:
            if meta is not None and meta.content_type == tlv.CONTENT_NACK:
                err = cbor2.loads(content)
                raise CallError.from_wire(err.get("code"), err.get("message"))
            desc = cbor2.loads(content)
        except (cbor2.CBORDecodeError, AttributeError) as err:
            raise Internal(f"device {name} sent a _desc reply that is not CBOR: {err}") from err
        if not valid_description(desc):
            raise Internal(f"device {name} sent service descriptions without a list of named services")
        desc = with_defaults(desc)
        desc_hash = hashlib.sha256(content).digest()[:8].hex()
        try:
            self._store.set_description(name, desc_hash, desc)
            self._records.pop(name, None)
        except (TypeError, ValueError) as err:
            raise Internal(f"service descriptions of {name} cannot be stored as JSON: {err}") from err
        self._directory.description_stored(name, desc_hash)
        event(log, "desc_stored", device=name, desc=desc_hash, services=len(desc["services"]))
        return desc

    # -- helpers

    def _link(self, record: Any) -> _Link:
        link = self._links.get(record.name)
        if link is None:
            link = _Link(record, self._counter(record.key_name), self._breaker_factory(),
                         _Window(self._reply_cache, self._max_in_flight))
            self._links[record.name] = link
        elif link.key_name != record.key_name:  # re-provisioned: a new key has its own sequence space
            link.rekey(record, self._counter(record.key_name))
        return link

    def _record(self, name: str) -> Any:
        """The device's store record, read again at most every RECORD_REFRESH_S: a device re-provisioned with
        another key is called with it within that time, without a store read (and a JSON parse of its
        descriptions) on every call."""
        now = time.monotonic()
        cached = self._records.get(name)
        if cached is not None and now - cached[0] < RECORD_REFRESH_S:
            return cached[1]
        record = self._store.device(name)
        if record is None:
            self._records.pop(name, None)
        else:
            if len(self._records) >= MAX_RECORDS:
                self._records.clear()
            self._records[name] = (now, record)
        return record

    def _counter(self, key_name: str) -> SeqSource:
        if self.counters is not None:
            return self.counters(key_name)
        return SeqCounter(self._store, key=key_name, block=SEQ_BLOCK)

    def _why_down(self, name: str) -> str:
        p = self._directory.presence(name)
        if p is None or p["state"] == "unknown":
            return f"device {name} has not announced itself since it was provisioned; is it powered and on this LAN?"
        seen = f"last seen {time.time() - p['last_seen']:.0f}s ago" if p["last_seen"] else "never seen"
        if p["state"] == "asleep" and p["sleep_until"]:
            return f"device {name} is asleep until {time.strftime('%H:%M:%S', time.localtime(p['sleep_until']))}"
        return f"device {name} is {p['state']} ({seen}); retry when it announces itself again"


class _Shared(Generic[T]):
    """A request task several callers wait on, with the deadline it runs to."""

    __slots__ = ("deadline", "task")

    def __init__(self, task: asyncio.Task[T], deadline: float) -> None:
        self.task = task
        self.deadline = deadline


def _share(table: dict[Any, _Shared[Any]], key: Any, coro: Coroutine[Any, Any, T], deadline: float,
           what: str) -> _Shared[T]:
    """Start `coro` as a task owned by the invoker, listed in `table` under `key` until it ends."""
    shared = _Shared(asyncio.create_task(coro, name=what), deadline)
    table[key] = shared

    def done(task: asyncio.Task[Any]) -> None:
        if table.get(key) is shared:
            del table[key]
        if not task.cancelled():
            task.exception()  # retrieved even when every caller has gone
    shared.task.add_done_callback(done)
    return shared


async def _await_shared(shared: _Shared[T], deadline: float, what: str) -> T:
    """The shared task's result; a caller whose deadline comes first stops waiting then (DeadlineExceeded)."""
    try:
        if deadline >= shared.deadline:
            # The task ends by its own deadline; waiting for it keeps its outcome (and the breaker's count)
            # ahead of this caller's next move.
            return await asyncio.shield(shared.task)
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise DeadlineExceeded(f"no reply from {what} within the deadline")
        try:
            return await asyncio.wait_for(asyncio.shield(shared.task), remaining)
        except asyncio.TimeoutError as err:
            raise DeadlineExceeded(f"no reply from {what} within the deadline") from err
    except asyncio.CancelledError:
        if shared.task.cancelled():  # the shared request was cancelled by close(), not this caller
            raise Unavailable(f"request to {what} abandoned: the gateway is stopping") from None
        raise
