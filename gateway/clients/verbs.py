"""The verbs a client may use through the gateway, in one table: each verb's handler, what its request name
carries after the verb, and the access rule it needs (docs/gateway-protocol.md, docs/models.md).

    verbs = Verbs(device_side, patterns, site="edge", counters=gateway.metrics)
    result = verbs.run(Caller("alice", rules), "call", ("kitchen", "th1", "temperature"), {"args": None})
    # the reply content at once (a cache hit: no task, no timer), or an awaitable of it

The client face (`clients.face`) authenticates a request and checks it for replays; everything after that is
here: the shape of the target, the parameters, the rules, then the work on the device side and the patterns.

Decisions:
- A verb declares what follows it in the name (`SERVICE`: DEVICE/SERVICE, or `NOTHING`) and the rule it needs
  (`RULE_SERVICE`: one matching DEVICE/SERVICE; `RULE_METRICS`: one matching `_gw/metrics`; `RULE_PER_ITEM`:
  the handler filters what it lists or checks what it touches). The table enforces both before any handler
  runs, so no verb can forget its check.
- A handler returns the reply content, or an awaitable of it when it must wait. `call` answers a cache hit at
  once, with the device's CBOR spliced into the reply (`Encoded`): no task, no timer, no re-encoding.
- Denials name the rule that would allow the call only for a device that exists; for a name nobody has, the
  message says so instead of suggesting a rule for it.
- The communication patterns (`patterns.hub.Patterns`) are optional: a gateway built on a test double of the
  device side has only call, devices, services and metrics.
Rejected: two dispatchers (one per module, each repeating argument, timeout and access checks), which is what
this replaces.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import cbor2

from ndn_edge import names
from ndn_edge.answers import Answer
from ndn_edge.errors import CallError, DeadlineExceeded, InvalidArgument, NotFound, PermissionDenied, UnknownDevice
from ndn_edge.interfaces import REPLY_MORE, DeviceAccess, Router
from ndn_edge.logs import event
from ndn_edge.observability.stats import OK, CallStats
from ndn_edge.observability.trace import TIMELINE, TRACEPARENT, CallTrace, Tracer
from ndn_edge.wire import client_protocol as cp

log = logging.getLogger("ndn_edge.calls")

SERVICE = "DEVICE/SERVICE"
NOTHING = "nothing"
RULE_SERVICE = "service"
RULE_METRICS = "metrics"
RULE_PER_ITEM = "per item"
DEFAULT_POLL_MAX = 100
MAX_POLL_MAX = 1000
MAX_PUSH = 64  # answers a poll may ask the gateway to push after its reply (docs/gateway-protocol.md)
DEADLINE_SLACK_S = 0.05  # the device side's own deadline ends first; this only bounds a bug
MAX_TTL_MS = 7 * 86400 * 1000


class Encoded(bytes):
    """Reply content that is already CBOR (sent as it is)."""


Result = Any  # the reply content, or an awaitable of it


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the client's name and its access rules (parsed patterns)."""

    name: str
    rules: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Request:
    """One authenticated request, as a verb's handler gets it."""

    caller: Caller
    verb: str
    target: tuple[str, ...]  # the name components after the verb
    params: dict[str, Any]

    def int_param(self, key: str, default: int, low: int, high: int) -> int:
        return cp.int_param(self.params, key, default, low, high)

    def args(self) -> dict[str, Any] | None:
        """The `args` parameter: a map of arguments, or None."""
        args = self.params.get("args")
        if args is not None and not isinstance(args, dict):
            raise InvalidArgument(f"args must be a map, got {type(args).__name__}")
        return args

    def timeout_s(self) -> float:
        return self.int_param("timeout_ms", cp.DEFAULT_TIMEOUT_MS, 1, cp.MAX_TIMEOUT_MS) / 1000


Handler = Callable[["Verbs", Request], Result]


@dataclass(frozen=True)
class Verb:
    """One row of the table."""

    handler: Handler
    takes: str      # SERVICE or NOTHING
    rule: str       # RULE_SERVICE, RULE_METRICS or RULE_PER_ITEM
    pattern: bool = False  # needs the communication patterns
    logs: bool = False  # needs the device logs (ndn_edge.observability)


class Verbs:
    """Runs the verbs of authenticated requests against the device side and the communication patterns."""

    def __init__(self, devices: DeviceAccess, patterns: Any = None, *, site: str,
                 counters: Callable[[], dict[str, Any]] | None = None, obs: Any = None) -> None:
        self.devices = devices
        self.patterns = patterns  # patterns.hub.Patterns, or None
        self.site = site.strip("/")
        self._counters = counters
        # ndn_edge.observability's Observability, or None: calls are then counted here only, and not traced
        self.calls: CallStats = obs.calls if obs is not None else CallStats()
        self.tracer: Tracer = obs.tracer if obs is not None else Tracer()
        self.logs: Any = obs.logs if obs is not None else None
        self.router: Router | None = None  # a federation's (ndn_edge.federation): what is not served here

    def _offers(self, row: Verb) -> bool:
        return (not row.pattern or self.patterns is not None) and (not row.logs or self.logs is not None)

    def run(self, caller: Caller, verb: str, target: tuple[str, ...], params: dict[str, Any]) -> Result:
        """The reply content of `verb`, or an awaitable of it; CallError for a request that cannot be served."""
        row = TABLE.get(verb)
        if row is None or not self._offers(row):
            available = ", ".join(v for v, r in TABLE.items() if self._offers(r))
            raise NotFound(f"no gateway verb {verb!r}; the verbs are {available}")
        if row.takes == SERVICE and len(target) < 2:
            raise InvalidArgument(f"{verb} needs DEVICE/SERVICE, got {'/'.join(target) or 'nothing'}")
        if row.takes == NOTHING and target:
            raise InvalidArgument(f"{verb} takes no name components after it, got {'/'.join(target)}")
        if row.rule == RULE_SERVICE:
            self.check(caller, target, verb)
        elif row.rule == RULE_METRICS and not names.allowed(caller.rules, cp.METRICS_TARGET):
            raise PermissionDenied(f"client '{caller.name}' may not read metrics; the operator can allow it with: "
                                   f"ndn-edge acl grant {caller.name} {'/'.join(cp.METRICS_TARGET)}")
        if self.router is not None:
            routed = self.router.route(caller, verb, target, params)
            if routed is not None:
                return routed
        return row.handler(self, Request(caller, verb, target, params))

    # -- helpers for handlers

    def check(self, caller: Caller, target: tuple[str, ...], what: str) -> None:
        """PermissionDenied unless the caller's rules allow `target` (DEVICE.../SERVICE under the site)."""
        if names.allowed(caller.rules, target):
            return
        shown = "/".join(target)
        if self.devices.known(names.full(self.site, target[:-1])):
            raise PermissionDenied(f"client '{caller.name}' may not {what} {shown}; the operator can allow it "
                                   f"with: ndn-edge acl grant {caller.name} {shown}")
        raise PermissionDenied(f"client '{caller.name}' may not {what} {shown} (and no device "
                               f"{'/'.join(target[:-1])} is provisioned)")

    def device_of(self, target: tuple[str, ...]) -> tuple[str, str]:
        """(full device name, service) of a DEVICE/SERVICE target."""
        return names.full(self.site, target[:-1]), target[-1]

    def relative(self, full_name: str) -> tuple[str, ...]:
        return names.relative(full_name, self.site)

    def counters(self) -> dict[str, Any]:
        return self._counters() if self._counters is not None else {"devices": self.devices.metrics()}


# -- request/response


def _call(verbs: Verbs, req: Request) -> Result:
    device, service = verbs.device_of(req.target)
    args = req.args()
    timeout_s = req.timeout_s()
    params = req.params
    started = time.monotonic()
    timeline = params.get(TIMELINE) is True
    try:
        found = verbs.devices.prepare(device, service, args)
    except CallError as err:
        verbs.calls.record(device, service, err.code, time.monotonic() - started)
        if timeline or verbs.tracer.on:
            trace = _trace(verbs, req, device, service, timeline)
            trace.end(err.code, err.message)
            if timeline:
                err.trace = trace.timeline()
        raise
    if isinstance(found, Answer):
        verbs.calls.record(device, service, OK, time.monotonic() - started)
        if timeline or verbs.tracer.on:  # traced hits only then: a hit otherwise costs no trace
            trace = _trace(verbs, req, device, service, timeline)
            trace.cache("hit")
            trace.end(OK, cached=True)
            if timeline:
                return _with_timeline(found, trace)
        return Encoded(cp.encode_call_result(found))
    found.trace = trace = _trace(verbs, req, device, service, timeline)
    trace.cache("miss")
    return _complete(verbs, found, timeout_s, started, timeline)


def _trace(verbs: Verbs, req: Request, device: str, service: str, timeline: bool) -> CallTrace:
    return verbs.tracer.start(req.params.get(TRACEPARENT), req.verb, device, service, timeline=timeline,
                              client=req.caller.name)


async def _complete(verbs: Verbs, ticket: Any, timeout_s: float, started: float, timeline: bool) -> Any:
    trace: CallTrace = ticket.trace
    try:
        try:
            answer = await _within(verbs.devices.complete(ticket, timeout_s=timeout_s),
                                   timeout_s + DEADLINE_SLACK_S)
        except TimeoutError as err:
            raise DeadlineExceeded(f"{ticket.device}/{ticket.service} did not answer within "
                                   f"{timeout_s * 1000:.0f} ms") from err
    except CallError as err:
        elapsed = time.monotonic() - started
        verbs.calls.record(ticket.device, ticket.service, err.code, elapsed)
        trace.end(err.code, err.message)
        event(log, "call_failed", logging.DEBUG, device=ticket.device, service=ticket.service, code=err.code,
              ms=round(elapsed * 1000, 1), **trace.log_fields())
        if timeline:
            err.trace = trace.timeline()
        raise
    verbs.calls.record(ticket.device, ticket.service, OK, time.monotonic() - started)
    trace.end(OK, cached=bool(answer.cached), stale=bool(answer.stale) or None)
    if timeline:
        return _with_timeline(answer, trace)
    return Encoded(cp.encode_call_result(answer))


def _with_timeline(answer: Answer, trace: CallTrace) -> dict[str, Any]:
    """A call's reply content with the gateway's timeline of it (a client asked: `ndn-edge call --trace`)."""
    return {"value": cbor2.loads(answer.cbor), "cached": bool(answer.cached), "age_ms": int(answer.age_ms),
            "stale": bool(answer.stale), "trace": trace.timeline()}


def _devices(verbs: Verbs, req: Request) -> dict[str, Any]:
    page_size = req.int_param("page_size", cp.DEFAULT_PAGE_SIZE, 1, cp.MAX_PAGE_SIZE)
    token = req.params.get("page_token")
    if token is not None and not isinstance(token, str):
        raise InvalidArgument(f"page_token must be text, got {type(token).__name__}")
    try:
        items, next_token = verbs.devices.devices(page_size=page_size, page_token=token)
    except ValueError as err:  # the device side's word for a bad page token
        raise InvalidArgument(str(err)) from err
    visible = [item for item in items if names.may_reach(req.caller.rules, verbs.relative(item.get("name", "")))]
    return {"items": visible, "next_page_token": next_token}


def _services(verbs: Verbs, req: Request) -> dict[str, Any]:
    try:
        device = cp.split_target(req.params.get("device"), verbs.site)  # type: ignore[arg-type]
    except ValueError as err:
        raise InvalidArgument(f"services needs a device name: {err}") from err
    if not names.may_reach(req.caller.rules, device):
        raise PermissionDenied(f"client '{req.caller.name}' may not call anything on {'/'.join(device)}")
    full = names.full(verbs.site, device)
    try:
        services = verbs.devices.services(full)
    except UnknownDevice as err:
        raise NotFound(str(err)) from err
    visible = [svc for svc in services
               if isinstance(svc, dict) and names.allowed(req.caller.rules, (*device, str(svc.get("name", ""))))]
    return {"device": full, "items": visible}


def _metrics(verbs: Verbs, req: Request) -> dict[str, Any]:
    return verbs.counters()


# -- the communication patterns (patterns/)


def _notify(verbs: Verbs, req: Request) -> Result:
    from ndn_edge.patterns.notify import notify

    device, service = verbs.device_of(req.target)
    return notify(verbs.patterns.devices, device, service, req.args())


def _start(verbs: Verbs, req: Request) -> Result:
    device, service = verbs.device_of(req.target)
    trace = verbs.tracer.start(req.params.get(TRACEPARENT), req.verb, device, service, client=req.caller.name)
    return _ending(verbs.patterns.operations.start_op(req.caller.name, device, service, req.args(),
                                                      timeout_s=req.timeout_s(), trace=trace), trace)


async def _ending(work: Awaitable[Any], trace: CallTrace) -> Any:
    """`work`'s result, ending `trace` with its outcome."""
    try:
        result = await work
    except CallError as err:
        trace.end(err.code, err.message)
        raise
    except BaseException as err:
        trace.end("INTERNAL", type(err).__name__)
        raise
    trace.end(OK)
    return result


def _enqueue(verbs: Verbs, req: Request) -> Result:
    from ndn_edge.patterns.operations import DEFAULT_TTL_S

    device, service = verbs.device_of(req.target)
    ttl_ms = req.int_param("ttl_ms", int(DEFAULT_TTL_S * 1000), 1, MAX_TTL_MS)
    ops = verbs.patterns.operations
    info = ops.enqueue(req.caller.name, device, service, req.args(), ttl_s=ttl_ms / 1000)
    if ops.mirror is None:
        return info
    return _mirrored(ops.mirror, info)


async def _mirrored(mirror: Callable[[str], Awaitable[None]], info: dict[str, Any]) -> dict[str, Any]:
    """A queued call's info once it is in the federation's mirror (as a started operation's): a gateway that dies
    right after answering leaves it to the one that takes its devices over."""
    await mirror(info["op"])
    return info


def _operation_target(verbs: Verbs, req: Request) -> str:
    """The operation a request names, once the caller is allowed to call its service."""
    op_id = req.params.get("op")
    device, service = verbs.patterns.operations.target(op_id)
    verbs.check(req.caller, (*verbs.relative(device), service), f"see operation {op_id} of")
    return op_id  # type: ignore[return-value]


def _op_get(verbs: Verbs, req: Request) -> Result:
    op_id = _operation_target(verbs, req)
    return verbs.patterns.operations.get(op_id, wait_ms=req.int_param("wait_ms", 0, 0, cp.MAX_TIMEOUT_MS))


def _op_cancel(verbs: Verbs, req: Request) -> Result:
    op_id = _operation_target(verbs, req)
    return verbs.patterns.operations.cancel(op_id, timeout_s=req.timeout_s())


def _ops(verbs: Verbs, req: Request) -> dict[str, Any]:
    page_size = req.int_param("page_size", cp.DEFAULT_PAGE_SIZE, 1, cp.MAX_PAGE_SIZE)
    rules = req.caller.rules
    items, token = verbs.patterns.operations.page(
        page_size, req.params.get("page_token"),
        lambda device, service: names.allowed(rules, (*verbs.relative(device), service)))
    return {"items": items, "next_page_token": token}


async def _gather(verbs: Verbs, req: Request) -> dict[str, Any]:
    from ndn_edge.patterns.gather import gather, split_pattern

    pattern, service = split_pattern(req.params.get("pattern"))  # type: ignore[arg-type]
    rules = req.caller.rules
    traceparent = req.params.get(TRACEPARENT)
    trace = None
    if traceparent is not None or verbs.tracer.on:
        trace = verbs.tracer.start(traceparent, req.verb, names.format_pattern(pattern), service,
                                   client=req.caller.name)
    work = gather(verbs.patterns.devices, site=verbs.site, pattern=pattern, service=service, args=req.args(),
                  timeout_s=req.timeout_s(), allowed=lambda name: names.allowed(rules, name), tracer=verbs.tracer,
                  trace=trace)
    results = await (work if trace is None else _ending(work, trace))
    return {"results": results}


def _subscribe(verbs: Verbs, req: Request) -> dict[str, Any]:
    pattern = req.params.get("pattern")
    if not isinstance(pattern, str):
        raise InvalidArgument(f"subscribe needs a pattern (text), got {pattern!r}")
    return verbs.patterns.pubsub.subscribe(req.caller.name, pattern, req.params.get("durable"))


def _poll(verbs: Verbs, req: Request) -> Result:
    after = req.int_param("after", -1, -1, 1 << 62)
    push = req.int_param("push", 0, 0, MAX_PUSH)
    more = REPLY_MORE.get() if push else None
    return verbs.patterns.pubsub.poll(req.caller.name, req.params.get("sub"), ack=req.int_param("ack", 0, 0, 1 << 62),
                                      max_messages=req.int_param("max", DEFAULT_POLL_MAX, 1, MAX_POLL_MAX),
                                      wait_ms=req.int_param("wait_ms", 0, 0, cp.MAX_TIMEOUT_MS),
                                      after=None if after < 0 else after, push=push if more else 0, more=more)


def _unsubscribe(verbs: Verbs, req: Request) -> dict[str, Any]:
    return verbs.patterns.pubsub.unsubscribe(req.caller.name, req.params.get("sub"))


# -- device logs (observability/devlogs.py)

MAX_LOGS = 500


def _logs(verbs: Verbs, req: Request) -> Result:
    params = req.params
    pattern = params.get("pattern")
    parts = None
    if pattern is not None:
        if not isinstance(pattern, str):
            raise InvalidArgument(f"pattern must be text such as 'sim/*', got {type(pattern).__name__}")
        try:
            parts = names.parse_pattern(pattern)
        except ValueError as err:
            raise InvalidArgument(f"logs pattern: {err}") from err
    since = params.get("since")
    if since is not None and (isinstance(since, bool) or not isinstance(since, (int, float))):
        raise InvalidArgument(f"since must be seconds since the epoch, got {since!r}")
    trace_id = params.get("trace")
    if trace_id is not None and (not isinstance(trace_id, str) or len(trace_id) != 32
                                 or trace_id.strip("0123456789abcdef")):
        raise InvalidArgument(f"trace must be a trace id (32 lowercase hex digits), got {trace_id!r}")
    tail = params.get("tail", False)
    if not isinstance(tail, bool):
        raise InvalidArgument(f"tail must be true or false, got {tail!r}")
    rules = req.caller.rules
    query: dict[str, Any] = {
        "visible": lambda rel: names.may_reach(rules, rel), "pattern": parts,
        "after": req.int_param("after", 0, 0, 1 << 62), "since": since, "level": req.int_param("level", 0, 0, 100),
        "trace_id": trace_id, "limit": req.int_param("max", DEFAULT_POLL_MAX, 1, MAX_LOGS), "tail": tail}
    wait_ms = req.int_param("wait_ms", 0, 0, cp.MAX_TIMEOUT_MS)
    entries, cursor = verbs.logs.query(**query)
    if entries or not wait_ms:
        return {"entries": entries, "next": cursor}
    return _follow_logs(verbs, query, cursor, wait_ms / 1000)


async def _follow_logs(verbs: Verbs, query: dict[str, Any], cursor: int, wait_s: float) -> dict[str, Any]:
    """The entries after `cursor` as soon as there are some, or none after `wait_s`."""
    loop_time = time.monotonic
    until = loop_time() + wait_s
    entries: list[dict[str, Any]] = []
    while not entries and loop_time() < until:
        await verbs.logs.wait(until - loop_time())
        entries, cursor = verbs.logs.query(**dict(query, after=cursor, tail=False))
    return {"entries": entries, "next": cursor}


TABLE: dict[str, Verb] = {
    cp.VERB_CALL: Verb(_call, SERVICE, RULE_SERVICE),
    cp.VERB_DEVICES: Verb(_devices, NOTHING, RULE_PER_ITEM),
    cp.VERB_SERVICES: Verb(_services, NOTHING, RULE_PER_ITEM),
    cp.VERB_METRICS: Verb(_metrics, NOTHING, RULE_METRICS),
    cp.VERB_NOTIFY: Verb(_notify, SERVICE, RULE_SERVICE, pattern=True),
    cp.VERB_START: Verb(_start, SERVICE, RULE_SERVICE, pattern=True),
    cp.VERB_ENQUEUE: Verb(_enqueue, SERVICE, RULE_SERVICE, pattern=True),
    cp.VERB_OP_GET: Verb(_op_get, NOTHING, RULE_PER_ITEM, pattern=True),
    cp.VERB_OP_CANCEL: Verb(_op_cancel, NOTHING, RULE_PER_ITEM, pattern=True),
    cp.VERB_OPS: Verb(_ops, NOTHING, RULE_PER_ITEM, pattern=True),
    cp.VERB_GATHER: Verb(_gather, NOTHING, RULE_PER_ITEM, pattern=True),
    cp.VERB_SUBSCRIBE: Verb(_subscribe, NOTHING, RULE_PER_ITEM, pattern=True),
    cp.VERB_POLL: Verb(_poll, NOTHING, RULE_PER_ITEM, pattern=True),
    cp.VERB_UNSUBSCRIBE: Verb(_unsubscribe, NOTHING, RULE_PER_ITEM, pattern=True),
    cp.VERB_LOGS: Verb(_logs, NOTHING, RULE_PER_ITEM, logs=True),
}


async def _within(aw: Awaitable[Any], timeout_s: float) -> Any:
    """`aw`'s result or TimeoutError: `asyncio.timeout` where it exists (3.11+), which, unlike `wait_for`
    there, costs no extra task per call."""
    import asyncio

    if hasattr(asyncio, "timeout"):
        async with asyncio.timeout(timeout_s):
            return await aw
    try:
        return await asyncio.wait_for(aw, timeout_s)
    except asyncio.TimeoutError as err:  # not TimeoutError's subclass before 3.11
        raise TimeoutError(str(err)) from err
