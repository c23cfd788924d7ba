"""The Python client library: call device services through the gateway, asyncio or blocking.

    async with Client.connect(home=HOME, client="alice") as c:
        devices = await c.devices()                      # a list, with .next_page_token
        t = await c.call("kitchen/th1/temperature")      # the value
        r = await c.call_ex("kitchen/th1/temperature")   # CallResult(value, cached, age_ms, stale)

    with Client.connect_sync(home=HOME, client="alice") as c:   # scripts: the same methods, blocking
        print(c.call("kitchen/th1/echo", {"x": 1}))

The communication models beyond request/response (`notify`, `start`, `call(..., persist=True)`, `gather`,
`subscribe`, `ops`) are methods here too; their handles are in `ndn_edge.client.handles`, the guarantees in
docs/models.md.

Decisions:
- One UDP socket per client, connected to the gateway (`gateway.json` of the home, or an explicit "host:port"),
  so only the gateway's datagrams reach it and an ICMP "port unreachable" surfaces at once as `Unavailable`
  instead of a timeout.
- Every request is signed once and the *same* Interest is resent on silence (0.25 s, doubling to 1 s) until the
  deadline: the gateway recognises the retransmission and answers from its reply cache, so a retried
  non-idempotent call runs once. The gateway gets a slightly smaller budget than the caller (`timeout_ms`), so
  its DEADLINE_EXCEEDED (or a slow device's answer) normally arrives before the caller gives up.
- Replies are routed by their ParametersSha256Digest component (unique per request) and then verified (HMAC with
  the client key, full name); a reply that does not verify is ignored and the wait goes on.
- Errors are the classes of `ndn_edge.errors`: a NACK becomes `CallError.from_wire(code, message)`; silence until
  the deadline is `DeadlineExceeded`, chained from the timeout; local mistakes are `InvalidArgument` before
  anything is sent; a missing home, credentials or gateway record is a `ConfigError` saying what to run.
- The blocking client runs a private event loop in a daemon thread and forwards each call to it, so it also works
  inside programs (notebooks) that already run a loop in the calling thread.
- Which client: the `client` argument, else $NDN_EDGE_CLIENT, else the client named in `HOME/default-client`
  (`ndn-edge up` names its `demo` client there), else the only credentials file in the home.
- Every call (and notify, start, enqueue, gather) carries a W3C `traceparent` (docs/gateway-protocol.md): the
  one given, else the application's current OpenTelemetry span when it traces with OpenTelemetry (only looked
  up when `opentelemetry.trace` is already imported), else a new trace. The device's log entries for the call
  carry its trace id (`ndn-edge logs`, `Client.logs(trace_id=...)`); `trace_call` also returns the gateway's
  timeline of the call.
"""
from __future__ import annotations

import asyncio
import functools
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, NamedTuple, TypeVar

import cbor2

from ndn_edge.client.handles import Operation, Outcome, Subscription
from ndn_edge.errors import CallError, ConfigError, DeadlineExceeded, Internal, InvalidArgument, Unavailable
from ndn_edge.state.home import ClientCredentials, Home, validate_client_name
from ndn_edge.wire import client_protocol as cw
from ndn_edge.wire import framing, tlv
from ndn_edge.wire import packets as wire
from ndn_edge.wire.tlv import T

ENV_CLIENT = "NDN_EDGE_CLIENT"
DEFAULT_CLIENT_FILE = "default-client"  # in the home: the name of the client to sign as when none is chosen
DEFAULT_TIMEOUT_S = 5.0
_RETRY_FIRST_S = 0.25
_RETRY_MAX_S = 1.0
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
R = TypeVar("R")


class CallResult(NamedTuple):
    """A call's value and where it came from: the gateway's cache (`cached`, `age_ms`), possibly `stale`."""

    value: Any
    cached: bool = False
    age_ms: int = 0
    stale: bool = False


class TracedCall(NamedTuple):
    """A call made with `Client.trace_call`: its result or error, its trace id, and the timelines: the client's
    (milliseconds since the first send, what, detail) and the gateway's (milliseconds since it started the
    call)."""

    result: CallResult | None
    error: CallError | None
    trace_id: str
    client: list[tuple[float, str, str]]
    gateway: list[tuple[float, str, str]]


class LogPage(list):
    """Device log entries, and `next`: the entry id to read on after (`Client.logs(after=page.next)`)."""

    def __init__(self, items: list, next_id: int) -> None:
        super().__init__(items)
        self.next = next_id


class Page(list):
    """One page of a list: the items, plus `next_page_token` (None on the last page)."""

    def __init__(self, items: list, next_page_token: str | None = None) -> None:
        super().__init__(items)
        self.next_page_token = next_page_token


class _Face(asyncio.DatagramProtocol):
    """The client's UDP socket: routes replies to waiting requests by digest component."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.waiting: dict[bytes, asyncio.Future] = {}
        self.more: dict[bytes, Callable[[bytes], None]] = {}  # requests answered more than once (a poll's pushes)
        self.error: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        digest = cw.reply_digest(data) or _reply_digest(data)
        if digest is None:
            return
        fut = self.waiting.get(digest)
        if fut is not None and not fut.done():
            fut.set_result(data)
            return
        more = self.more.get(digest)
        if more is not None:
            more(data)

    def error_received(self, exc: Exception) -> None:
        for fut in self.waiting.values():
            if not fut.done():
                fut.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        for fut in self.waiting.values():
            if not fut.done():
                fut.set_exception(exc or ConnectionResetError("client socket closed"))


class _Connecting:
    """What `Client.connect()` returns: use `async with`, or `await` it and `close()` yourself."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def __await__(self):
        return self._open().__await__()

    async def _open(self) -> Client:
        await self._client.open()
        return self._client

    async def __aenter__(self) -> Client:
        return await self._open()

    async def __aexit__(self, *exc: object) -> None:
        await self._client.close()


class Client:
    """An asyncio client of one gateway, signing as one client identity."""

    def __init__(self, credentials: ClientCredentials, address: tuple[str, int], *,
                 timeout: float = DEFAULT_TIMEOUT_S, hint: str = "ndn-edge gateway") -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be positive seconds, got {timeout!r}")
        self.credentials = credentials
        self.address = address
        self.timeout = float(timeout)
        self.site = credentials.site
        self.name = credentials.name
        self._key = credentials.key
        key_name = cw.client_key_name(self.site, self.name, self._key)
        self._signer = wire.InterestSigner(self._key, cw.encoded_name(key_name))
        self._replies = cw.ReplySigner(key_name, self._key)  # what the gateway's replies to this client carry
        self._face: _Face | None = None
        self._start_hint = hint

    def __repr__(self) -> str:
        return f"Client({self.name!r}, gateway={self.address[0]}:{self.address[1]}, site={self.site!r})"

    @classmethod
    def connect(cls, home: str | os.PathLike[str] | Home | None = None, client: str | None = None,
                timeout: float = DEFAULT_TIMEOUT_S, gateway: str | None = None) -> _Connecting:
        """A client of the home's gateway (or of `gateway` "host:port"), signing as `client`."""
        return _Connecting(cls.from_home(home, client=client, timeout=timeout, gateway=gateway))

    @classmethod
    def connect_sync(cls, home: str | os.PathLike[str] | Home | None = None, client: str | None = None,
                     timeout: float = DEFAULT_TIMEOUT_S, gateway: str | None = None) -> BlockingClient:
        """The blocking form of `connect`, for scripts."""
        return BlockingClient(home, client=client, timeout=timeout, gateway=gateway)

    @classmethod
    def from_home(cls, home: str | os.PathLike[str] | Home | None = None, *, client: str | None = None,
                  timeout: float = DEFAULT_TIMEOUT_S, gateway: str | None = None) -> Client:
        """A client (not yet open) from the home's credentials and gateway record."""
        h = home if isinstance(home, Home) else Home.resolve(home)
        creds = h.read_client(resolve_client_name(h, client))
        start_hint = h.hint("ndn-edge gateway")
        if gateway is not None:
            address = parse_address(gateway)
        else:
            record = h.read_gateway_record()
            if record.host in _LOCAL_HOSTS and not record.pid_alive():
                raise ConfigError(f"the gateway record {h.gateway_file} names pid {record.pid}, which is not "
                                  f"running; start the gateway with: {start_hint}")
            if record.site != creds.site:
                raise ConfigError(f"client '{creds.name}' is for site '{creds.site}' ({creds.path}) but the home's "
                                  f"gateway serves site '{record.site}'; fix \"site\" in the credentials file, or "
                                  f"remove and add the client again")
            address = (record.host, record.port)
        return cls(creds, address, timeout=timeout, hint=start_hint)

    # -- life cycle

    async def open(self) -> None:
        """Open the socket (idempotent)."""
        if self._face is not None:
            return
        loop = asyncio.get_running_loop()
        try:
            _, face = await loop.create_datagram_endpoint(_Face, remote_addr=self.address)
        except OSError as err:
            raise Unavailable(f"cannot reach the gateway at {_fmt(self.address)}: {err.strerror or err}") from err
        self._face = face

    async def close(self) -> None:
        """Close the socket; requests still waiting fail."""
        face, self._face = self._face, None
        if face is not None and face.transport is not None:
            face.transport.close()

    async def __aenter__(self) -> Client:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- requests

    async def call(self, name: str, args: dict[str, Any] | None = None, *, timeout: float | None = None,
                   persist: bool = False, ttl: float | None = None) -> Any:
        """Call service `name` ("DEVICE/SERVICE" under the site) with `args`; returns its value.

        With `persist=True` the gateway queues the call durably and delivers it when the device is online
        (a sleeping device: when it wakes); returns an `Operation` at once, which fails DEADLINE_EXCEEDED if
        the call is not delivered within `ttl` seconds (default 300).
        """
        if persist:
            return await self._operation_verb(cw.VERB_ENQUEUE, name, args, timeout,
                                              {"ttl_ms": None if ttl is None else _ttl_ms(ttl)})
        return (await self.call_ex(name, args, timeout=timeout)).value

    async def call_ex(self, name: str, args: dict[str, Any] | None = None, *,
                      timeout: float | None = None, traceparent: str | None = None) -> CallResult:
        """Like `call`, returning the value with where it came from (`CallResult`)."""
        target = self._service_target(name, args)
        timeout_s = self._timeout(timeout)
        params = {"args": args, "timeout_ms": _budget_ms(timeout_s), "traceparent": traceparent or new_traceparent()}
        return _call_result(name, await self.request(cw.VERB_CALL, target, params, timeout_s))

    async def trace_call(self, name: str, args: dict[str, Any] | None = None, *, timeout: float | None = None,
                         traceparent: str | None = None) -> TracedCall:
        """Call `name` asking the gateway for its timeline (what `ndn-edge call --trace` prints); a failed call
        is returned, not raised, with what the timelines saw."""
        target = self._service_target(name, args)
        timeout_s = self._timeout(timeout)
        traceparent = traceparent or new_traceparent()
        params = {"args": args, "timeout_ms": _budget_ms(timeout_s), "traceparent": traceparent, "timeline": True}
        events: list[tuple[float, str, str]] = []
        result, error, gateway = None, None, None
        try:
            content = await self.request(cw.VERB_CALL, target, params, timeout_s, events=events)
            result = _call_result(name, content)
            gateway = content.get("trace")
        except CallError as err:
            error, gateway = err, err.trace
        steps = gateway.get("events") if isinstance(gateway, dict) else None
        return TracedCall(result, error, traceparent[3:35], events,
                          [tuple(e) for e in steps if isinstance(e, list) and len(e) == 3] if isinstance(steps, list)
                          else [])

    async def devices(self, page_size: int = cw.DEFAULT_PAGE_SIZE, page_token: str | None = None, *,
                      timeout: float | None = None) -> Page:
        """One page of the devices this client may call (dicts: name, state, last_seen, lease_until, ...)."""
        params = {"page_size": page_size, "page_token": page_token}
        content = await self.request(cw.VERB_DEVICES, (), params, self._timeout(timeout))
        return _page(content)

    async def iter_devices(self, page_size: int = cw.DEFAULT_PAGE_SIZE, *,
                           timeout: float | None = None) -> AsyncIterator[dict[str, Any]]:
        """Every device this client may call, page after page."""
        token = None
        while True:
            page = await self.devices(page_size, token, timeout=timeout)
            for item in page:
                yield item
            token = page.next_page_token
            if not token:
                return

    async def services(self, device: str, *, timeout: float | None = None) -> list[dict[str, Any]]:
        """Descriptions of the services of `device` this client may call."""
        try:
            cw.split_target(device, self.site)
        except ValueError as err:
            raise InvalidArgument(str(err)) from None
        content = await self.request(cw.VERB_SERVICES, (), {"device": device}, self._timeout(timeout))
        return list(content.get("items") or []) if isinstance(content, dict) else []

    async def metrics(self, *, timeout: float | None = None) -> dict[str, Any]:
        """The gateway's counters (needs a rule granting `_gw/metrics`)."""
        content = await self.request(cw.VERB_METRICS, (), {}, self._timeout(timeout))
        return content if isinstance(content, dict) else {}

    # -- the communication models (docs/models.md; handles in gateway/client/handles.py)

    async def notify(self, name: str, args: dict[str, Any] | None = None, *, timeout: float | None = None) -> None:
        """Invoke `name` ("DEVICE/SERVICE") once, without a reply: at most once; returns once the gateway sent it."""
        target = self._service_target(name, args)
        await self.request(cw.VERB_NOTIFY, target, {"args": args, "traceparent": new_traceparent()},
                           self._timeout(timeout))

    async def start(self, name: str, args: dict[str, Any] | None = None, *,
                    timeout: float | None = None) -> Operation:
        """Start a long-running service; an `Operation` (`await op.result(timeout=...)`, `op.cancel()`)."""
        return await self._operation_verb(cw.VERB_START, name, args, timeout, {})

    async def operation(self, op_id: str, *, timeout: float | None = None) -> Operation:
        """The `Operation` with this id, read from the gateway (after a disconnect, from another process...)."""
        info = await self.request(cw.VERB_OP_GET, (), {"op": op_id}, self._timeout(timeout))
        return Operation(self, info)

    async def ops(self, page_size: int = cw.DEFAULT_PAGE_SIZE, page_token: str | None = None, *,
                  timeout: float | None = None) -> Page:
        """One page of the operations this client may see, newest first (dicts: op, kind, target, state, ...)."""
        content = await self.request(cw.VERB_OPS, (), {"page_size": page_size, "page_token": page_token},
                                      self._timeout(timeout))
        return _page(content)

    async def gather(self, pattern: str, args: dict[str, Any] | None = None, *,
                     deadline: float = DEFAULT_TIMEOUT_S) -> dict[str, Outcome]:
        """Call a service on every matching device at once (`"sim/*/temperature"`): each device's `Outcome`
        (value or error) by `deadline` seconds, in device order; devices that did not answer in time have
        DEADLINE_EXCEEDED."""
        if args is not None and not isinstance(args, dict):
            raise InvalidArgument(f"args must be a dict of argument names to values, got {type(args).__name__}")
        timeout_s = self._timeout(deadline)
        content = await self.request(cw.VERB_GATHER, (), {"pattern": pattern, "args": args,
                                                            "timeout_ms": _budget_ms(timeout_s),
                                                            "traceparent": new_traceparent()}, timeout_s)
        items = content.get("results") if isinstance(content, dict) else None
        if not isinstance(items, list):
            raise Internal(f"the gateway's gather reply has no results: {content!r}")
        return {o.device: o for o in (Outcome.from_wire(i) for i in items if isinstance(i, dict))}

    def subscribe(self, pattern: str, *, durable: str | None = None, batch: int = 100,
                  wait: float = 20.0) -> Subscription:
        """Messages on topics matching `pattern` (access-rule syntax: `sim/*/tick`, `_members/**`), retained
        values first: `async for msg in c.subscribe(...)`. `durable="NAME"` keeps the subscription and its
        messages on the gateway across disconnects and restarts (at least once, acknowledged)."""
        return Subscription(self, pattern, durable=durable, batch=batch, wait=wait)

    async def _operation_verb(self, verb: str, name: str, args: dict[str, Any] | None, timeout: float | None,
                              extra: dict[str, Any]) -> Operation:
        target = self._service_target(name, args)
        timeout_s = self._timeout(timeout)
        params = {"args": args, "timeout_ms": _budget_ms(timeout_s), "traceparent": new_traceparent(),
                  **{k: v for k, v in extra.items() if v}}
        return Operation(self, await self.request(verb, target, params, timeout_s))

    async def logs(self, pattern: str | None = None, *, after: int = 0, since: float | None = None,
                   level: int | None = None, trace_id: str | None = None, limit: int = 100, wait: float = 0.0,
                   tail: bool = False, timeout: float | None = None) -> LogPage:
        """Device log entries (dicts: id, device, time, level, message, trace_id, ...) of the devices matching
        `pattern` (`sim/*`; None: all this client may reach), oldest first, after the entry `after`; the page's
        `next` is the `after` of the next call. `tail` (with no `after`): the newest `limit`. `wait`:
        seconds to wait for one when there is none (following)."""
        params: dict[str, Any] = {"pattern": pattern, "after": after, "max": limit, "tail": tail,
                                  "wait_ms": int(wait * 1000)}
        for key, value in (("since", since), ("level", level), ("trace", trace_id)):
            if value is not None:
                params[key] = value
        timeout_s = self._timeout(timeout) + wait
        content = await self.request(cw.VERB_LOGS, (), params, timeout_s)
        if not isinstance(content, dict) or not isinstance(content.get("entries"), list):
            raise Internal(f"the gateway's logs reply has no entries: {content!r}")
        cursor = content.get("next")
        return LogPage(content["entries"], cursor if isinstance(cursor, int) else after)

    def _service_target(self, name: str, args: Any) -> tuple[str, ...]:
        try:
            target = cw.split_target(name, self.site)
        except ValueError as err:
            raise InvalidArgument(str(err)) from None
        if len(target) < 2:
            raise InvalidArgument(f"name {name!r} is not like DEVICE/SERVICE (e.g. kitchen/th1/temperature)")
        if args is not None and not isinstance(args, dict):
            raise InvalidArgument(f"args must be a dict of argument names to values, got {type(args).__name__}")
        return target

    def _timeout(self, timeout: float | None) -> float:
        value = self.timeout if timeout is None else float(timeout)
        if not value > 0:
            raise InvalidArgument(f"timeout must be positive seconds, got {timeout!r}")
        return value

    async def request(self, verb: str, target: tuple[str, ...], params: dict[str, Any], timeout_s: float, *,
                      events: list[tuple[float, str, str]] | None = None,
                      more: Callable[[Any], None] | None = None) -> Any:
        """One signed request to the gateway (a verb of docs/gateway-protocol.md with its parameters), sent
        again on silence until a verified reply or the deadline: what every method above is built on. `events`
        collects (ms since the first send, what, detail) of each transmission and the reply. `more` gets the
        content of every further verified answer to the request that comes until its deadline (a poll's pushes;
        a retransmitted first answer too), or the error one raises."""
        if self._face is None:
            await self.open()
        face = self._face
        assert face is not None and face.transport is not None
        try:
            name = cw.request_name(self.site, verb, target)
        except ValueError as err:
            raise InvalidArgument(str(err)) from None
        if not cw.is_plain(params):
            raise InvalidArgument("arguments may hold only None, bool, int, float, str, bytes, lists and dicts "
                                  f"with text keys, nested at most {cw.MAX_CBOR_DEPTH} deep")
        try:
            body = cbor2.dumps(params)
        except (cbor2.CBOREncodeError, ValueError, TypeError, OverflowError) as err:
            raise InvalidArgument(f"arguments cannot be encoded: {err}") from err
        nonces = os.urandom(12)
        packet, name_tlv = self._signer.sign(b"".join(name), body, cw.SEQ.next(), time_ms=int(time.time() * 1000),
                                             signature_nonce=nonces[:8], nonce=nonces[8:],
                                             lifetime_ms=max(1, int(timeout_s * 1000)))
        if len(packet) > cw.MAX_PACKET_BYTES:
            raise InvalidArgument(f"the request is {len(packet)} bytes, more than {cw.MAX_PACKET_BYTES}; "
                                  "send smaller arguments")
        digest = name_tlv[-2 - tlv.DIGEST_BYTES:]
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + timeout_s
        if more is not None:
            face.more[digest] = functools.partial(self._more, name_tlv, more)
            loop.call_later(timeout_s, face.more.pop, digest, None)
        interval = _RETRY_FIRST_S
        attempts = 0
        try:
            while True:
                # One future per send: the reply completes it, or the timer with None (then send again). A
                # timer, not wait_for: on a cached call that machinery was a tenth of the client's time.
                fut: asyncio.Future = loop.create_future()
                face.waiting[digest] = fut
                face.transport.sendto(packet)
                attempts += 1
                if events is not None:
                    events.append((round((loop.time() - started) * 1000, 3), "sent", f"attempt {attempts}"))
                timer = loop.call_later(max(min(interval, deadline - loop.time()), 0), _silence, fut)
                while True:
                    try:
                        data = await fut
                    except (ConnectionRefusedError, ConnectionResetError) as err:
                        raise Unavailable(f"the gateway at {_fmt(self.address)} is not running "
                                          f"({err.strerror or err}); start it with: {self._start_hint}") from err
                    except OSError as err:
                        raise Unavailable(f"cannot reach the gateway at {_fmt(self.address)}: "
                                          f"{err.strerror or err}") from err
                    finally:
                        if fut.done():
                            timer.cancel()
                    if data is None:
                        break
                    if events is not None:
                        events.append((round((loop.time() - started) * 1000, 3), "reply", ""))
                    reply = self._reply(data, name_tlv)
                    if reply is not _IGNORED:
                        return reply
                    # a reply that does not verify is ignored; keep waiting for the rest of this interval
                    fut = loop.create_future()
                    face.waiting[digest] = fut
                    timer = loop.call_later(max(min(interval, deadline - loop.time()), 0), _silence, fut)
                if loop.time() >= deadline:
                    raise DeadlineExceeded(
                        f"no reply from the gateway at {_fmt(self.address)} within {timeout_s:g} s "
                        f"({attempts} attempts); it ignores requests it cannot authenticate: check that it "
                        f"runs ({self._start_hint}) and knows client '{self.name}'")
                interval = min(interval * 2, _RETRY_MAX_S)
        finally:
            face.waiting.pop(digest, None)

    def _more(self, name_tlv: bytes, more: Callable[[Any], None], data: bytes) -> None:
        try:
            content = self._reply(data, name_tlv)
        except CallError as err:
            content = err
        if content is not _IGNORED:
            more(content)

    def _reply(self, data: bytes, name_tlv: bytes) -> Any:
        """The decoded content of a verified reply to the request named `name_tlv`, raising its error;
        `_IGNORED` if it does not verify."""
        fast = cw.read_reply(data, name_tlv, self._replies)
        if fast is not None:
            nack, content = fast
        else:
            try:
                inner = framing.unwrap(data)
                if inner is None:
                    return _IGNORED
                name, content_type, _, content = wire.verify_reply(inner, self._key)
            except (wire.BadPacket, framing.FramingError):
                return _IGNORED
            if tlv.tlv(T.NAME, b"".join(bytes(c) for c in name)) != name_tlv:
                return _IGNORED
            nack = content_type == tlv.CONTENT_NACK
        try:
            obj = cbor2.loads(content) if content else None
        except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError) as err:
            raise Internal(f"the gateway's reply is not valid CBOR: {err}") from err
        if nack:
            if not isinstance(obj, dict):
                raise Internal(f"the gateway's error reply is not a map: {obj!r}")
            error = CallError.from_wire(obj.get("code"), obj.get("message", ""))
            if isinstance(obj.get("trace"), dict):
                error.trace = obj["trace"]
            raise error
        return obj


_IGNORED = object()  # a datagram that is not a verified reply


def new_traceparent() -> str:
    """The trace context for a request: the application's current OpenTelemetry span, when it traces with
    OpenTelemetry and one is current, else a new sampled trace."""
    otel = sys.modules.get("opentelemetry.trace")
    if otel is not None:
        ctx = otel.get_current_span().get_span_context()
        if ctx.is_valid:
            return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
    ids = os.urandom(24).hex()
    return f"00-{ids[:32]}-{ids[32:]}-01"


def _call_result(name: str, content: Any) -> CallResult:
    if not isinstance(content, dict) or "value" not in content:
        raise Internal(f"the gateway's reply to {name} has no value: {content!r}")
    return CallResult(content["value"], bool(content.get("cached")), int(content.get("age_ms") or 0),
                      bool(content.get("stale")))


def _silence(fut: asyncio.Future) -> None:
    """The end of one wait for a reply: the request is sent again, or fails at its deadline."""
    if not fut.done():
        fut.set_result(None)


class BlockingClient:
    """The blocking form of `Client`: the same methods, run on a private event loop thread."""

    def __init__(self, home: str | os.PathLike[str] | Home | None = None, *, client: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S, gateway: str | None = None) -> None:
        self._client = Client.from_home(home, client=client, timeout=timeout, gateway=gateway)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ndn-edge-client", daemon=True)
        self._thread.start()
        try:
            self._run(self._client.open())
        except BaseException:
            self._shutdown()
            raise

    @property
    def client(self) -> Client:
        return self._client

    def _run(self, coro: Coroutine[Any, Any, R]) -> R:
        if self._loop.is_closed():
            coro.close()
            raise RuntimeError("the client is closed")
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result()
        except KeyboardInterrupt:
            fut.cancel()
            raise

    def call(self, name: str, args: dict[str, Any] | None = None, *, timeout: float | None = None,
             persist: bool = False, ttl: float | None = None) -> Any:
        """See `Client.call` (with `persist=True` a `BlockingOperation`)."""
        value = self._run(self._client.call(name, args, timeout=timeout, persist=persist, ttl=ttl))
        return BlockingOperation(self, value) if persist else value

    def notify(self, name: str, args: dict[str, Any] | None = None, *, timeout: float | None = None) -> None:
        """See `Client.notify`."""
        self._run(self._client.notify(name, args, timeout=timeout))

    def start(self, name: str, args: dict[str, Any] | None = None, *,
              timeout: float | None = None) -> BlockingOperation:
        """See `Client.start`."""
        return BlockingOperation(self, self._run(self._client.start(name, args, timeout=timeout)))

    def operation(self, op_id: str, *, timeout: float | None = None) -> BlockingOperation:
        """See `Client.operation`."""
        return BlockingOperation(self, self._run(self._client.operation(op_id, timeout=timeout)))

    def ops(self, page_size: int = cw.DEFAULT_PAGE_SIZE, page_token: str | None = None, *,
            timeout: float | None = None) -> Page:
        """See `Client.ops`."""
        return self._run(self._client.ops(page_size, page_token, timeout=timeout))

    def gather(self, pattern: str, args: dict[str, Any] | None = None, *,
               deadline: float = DEFAULT_TIMEOUT_S) -> dict[str, Outcome]:
        """See `Client.gather`."""
        return self._run(self._client.gather(pattern, args, deadline=deadline))

    def subscribe(self, pattern: str, *, durable: str | None = None, batch: int = 100,
                  wait: float = 20.0) -> BlockingSubscription:
        """See `Client.subscribe`: `for msg in c.subscribe(...)`; `with` closes it."""
        return BlockingSubscription(self, self._client.subscribe(pattern, durable=durable, batch=batch, wait=wait))

    def call_ex(self, name: str, args: dict[str, Any] | None = None, *, timeout: float | None = None,
                traceparent: str | None = None) -> CallResult:
        """See `Client.call_ex`."""
        return self._run(self._client.call_ex(name, args, timeout=timeout, traceparent=traceparent))

    def trace_call(self, name: str, args: dict[str, Any] | None = None, *,
                   timeout: float | None = None) -> TracedCall:
        """See `Client.trace_call`."""
        return self._run(self._client.trace_call(name, args, timeout=timeout))

    def logs(self, pattern: str | None = None, **options: Any) -> LogPage:
        """See `Client.logs`."""
        return self._run(self._client.logs(pattern, **options))

    def devices(self, page_size: int = cw.DEFAULT_PAGE_SIZE, page_token: str | None = None, *,
                timeout: float | None = None) -> Page:
        """See `Client.devices`."""
        return self._run(self._client.devices(page_size, page_token, timeout=timeout))

    def services(self, device: str, *, timeout: float | None = None) -> list[dict[str, Any]]:
        """See `Client.services`."""
        return self._run(self._client.services(device, timeout=timeout))

    def metrics(self, *, timeout: float | None = None) -> dict[str, Any]:
        """See `Client.metrics`."""
        return self._run(self._client.metrics(timeout=timeout))

    def close(self) -> None:
        """Close the socket and stop the loop thread (idempotent)."""
        if self._loop.is_closed():
            return
        try:
            self._run(self._client.close())
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BlockingOperation:
    """The blocking form of `Operation` (gateway/client/handles.py)."""

    def __init__(self, owner: BlockingClient, op: Operation) -> None:
        self._owner = owner
        self.operation = op

    def __repr__(self) -> str:
        return repr(self.operation)

    def __getattr__(self, attr: str) -> Any:  # id, kind, target, state, done, progress, error, info
        return getattr(self.operation, attr)

    def refresh(self, *, wait: float = 0.0) -> BlockingOperation:
        self._owner._run(self.operation.refresh(wait=wait))
        return self

    def wait(self, timeout: float | None = None) -> BlockingOperation:
        self._owner._run(self.operation.wait(timeout))
        return self

    def result(self, timeout: float | None = None) -> Any:
        return self._owner._run(self.operation.result(timeout))

    def cancel(self) -> BlockingOperation:
        self._owner._run(self.operation.cancel())
        return self


class BlockingSubscription:
    """The blocking form of `Subscription`: `for msg in sub`, `sub.next(timeout)`, `with sub: ...`."""

    def __init__(self, owner: BlockingClient, sub: Subscription) -> None:
        self._owner = owner
        self.subscription = sub

    def __getattr__(self, attr: str) -> Any:  # id, pattern, durable, created, lost
        return getattr(self.subscription, attr)

    def __iter__(self) -> BlockingSubscription:
        return self

    def __next__(self) -> Any:
        return self._owner._run(self.subscription.__anext__())

    def open(self) -> BlockingSubscription:
        self._owner._run(self.subscription.open())
        return self

    def next(self, timeout: float | None = None) -> Any:
        return self._owner._run(self.subscription.next(timeout))

    def ack(self) -> None:
        self._owner._run(self.subscription.ack())

    def close(self) -> None:
        self._owner._run(self.subscription.close())

    def unsubscribe(self) -> None:
        self._owner._run(self.subscription.unsubscribe())

    def __enter__(self) -> BlockingSubscription:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


def resolve_client_name(home: Home, client: str | None) -> str:
    """`client`, else $NDN_EDGE_CLIENT, else the home's default client (`HOME/default-client`, when its
    credentials exist), else the home's only client; ConfigError saying how to choose."""
    if client:
        return client
    env = os.environ.get(ENV_CLIENT)
    if env:
        try:
            return validate_client_name(env)
        except ValueError as err:
            raise ConfigError(f"${ENV_CLIENT}: {err}") from None
    marker = home.path / DEFAULT_CLIENT_FILE
    try:
        default = marker.read_text().strip()
    except (OSError, UnicodeDecodeError):
        default = ""
    if default:
        try:
            if home.client_file(default).exists():
                return default
        except ValueError:  # not a client name: the marker is ignored, as a missing one is
            pass
    try:
        names = sorted(p.stem for p in home.clients_dir.glob("*.json") if not p.name.startswith("."))
    except OSError:
        names = []
    if len(names) == 1:
        return names[0]
    if not names:
        raise ConfigError(f"no client credentials in {home.clients_dir}; create a client with: "
                          f"{home.hint('ndn-edge client add NAME')}")
    raise ConfigError(f"several clients in {home.clients_dir} ({', '.join(names)}); choose one with --as NAME, "
                      f"with ${ENV_CLIENT}, or by writing its name to {marker}")


def parse_address(text: str) -> tuple[str, int]:
    """"host:port" (IPv6 as "[addr]:port") as a tuple; ConfigError when it is not one."""
    host, sep, port = str(text).rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not sep or not host or not 0 < number < 65536:
        raise ConfigError(f"gateway address {text!r} is not HOST:PORT (e.g. 127.0.0.1:6363)")
    return host, number


def _ttl_ms(ttl: float) -> int:
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl > 0:
        raise InvalidArgument(f"ttl must be a positive number of seconds, got {ttl!r}")
    return max(1, int(ttl * 1000))


def _budget_ms(timeout_s: float) -> int:
    """The gateway's share of the caller's timeout: a little less, so its answer arrives in time."""
    margin_s = min(0.25, timeout_s / 10)
    return max(1, min(cw.MAX_TIMEOUT_MS, int((timeout_s - margin_s) * 1000)))


def _page(content: Any) -> Page:
    if not isinstance(content, dict):
        raise Internal(f"the gateway's list reply is not a map: {content!r}")
    items = content.get("items") or []
    token = content.get("next_page_token")
    return Page(list(items), token if isinstance(token, str) and token else None)


def _reply_digest(data: bytes) -> bytes | None:
    """The last name component (TLV included) of a Data, found without a full parse; None if not a Data."""
    try:
        packet = framing.unwrap(data)
        if packet is None or packet[:1] != bytes([T.DATA]):
            return None
        name = framing.name_tlv(packet)
        if name is None:
            return None
        _, pos, end = framing.read_tl(name, 0)
        begin = None
        while pos < end:
            begin = pos
            pos = framing.read_tl(name, pos, end)[2]
        return bytes(name[begin:end]) if begin is not None else None
    except framing.FramingError:
        return None


def _fmt(address: tuple[str, int]) -> str:
    return f"{address[0]}:{address[1]}"
