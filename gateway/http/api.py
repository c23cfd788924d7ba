"""The routes of the HTTP API (`/api/v1`): each one a client verb run through the verb table
(`ndn_edge.clients.verbs.Verbs`), so the access rules, argument checks and quotas are those of the NDN face.

    api = Api(verbs, tokens, site="edge", limits=Limits())
    app = api.application()          # aiohttp: the routes, the middlewares, the dashboard's static files

| route | verb |
|---|---|
| `GET /devices`, `GET /devices/{device}/services` | `devices`, `services` |
| `GET /devices/{device}/health` | `call` of `<device>/_health` |
| `POST /call/{device...}/{service}` (JSON object of arguments); `GET` with typed query arguments | `call` |
| `POST /notify/{name}` (202); `POST /start/{name}`, `/enqueue/{name}` (202, Location) | `notify`, `start`, `enqueue` |
| `GET /operations`, `GET /operations/{op}?wait=S`, `DELETE /operations/{op}` | `ops`, `op_get`, `op_cancel` |
| `POST /gather` `{"pattern", "args", "deadline_s"}` | `gather` |
| `GET /events?topic=P` (Server-Sent Events, `ndn_edge.http.events`) | `subscribe`, `poll`, `unsubscribe` |
| `GET /logs?device=P&after=&since=&level=&trace=&limit=&wait=` (device logs) | `logs` |
| `GET /openapi.json` (`ndn_edge.http.openapi`) | `devices`, `services` |
| `GET /metrics` (outside /api/v1: Prometheus; a token whose client may read metrics) | `metrics`' rule |

Decisions:
- Authentication is a middleware: every `/api/v1` request carries `Authorization: Bearer <token>`
  (`ndn_edge.http.tokens`); missing, malformed, wrong or revoked is 401, and nothing else is said. Then the
  client's request rate: the same token bucket and `Limits` as the NDN face, one bucket per client, over it
  429 with `Retry-After`.
- A `GET` call is allowed only for a service its description marks idempotent (405 otherwise, `Allow: POST`):
  a crawler or a prefetching browser must not run a counter. The caller's rule for the target is checked
  before the description is read, so a denied caller learns nothing about the service.
- Verbs that answer at once (a cache hit) are answered without a task; others are awaited in the request's own
  task, at most `MAX_IN_FLIGHT` at a time (then 429), as the NDN face does.
- Every error is a problem+json response (`ndn_edge.http.problems`): aiohttp's own (unknown route, wrong method,
  body too large) are converted, and an unexpected exception is logged and answered INTERNAL without its
  traceback.
- Responses say `Server: ndn-edge`, with no versions: aiohttp's default names the Python and aiohttp versions,
  which tells a scanner which published flaws to try. The application's responses (event streams and files
  too) get it in `on_response_prepare`, aiohttp's hook for it. A request the parser refuses (a header line over
  8 KiB, garbage) is answered by aiohttp before any application code runs, with its module default; aiohttp has
  no setting for that one, so `neutral_server_header()` replaces the default when the face starts (a test pins
  both paths, so an aiohttp upgrade that moves the default fails loudly).
- Trace context: a call (`call`, `notify`, `start`, `enqueue`, `gather`, `health`) runs under the request's
  `traceparent` header when it has a valid one, else under a new trace; the response's `traceresponse` header
  names it, so a caller without tracing of its own can still find the device's log lines of its call.
Rejected: a second implementation of listing, calling and access checks for HTTP (two places to get a rule
wrong); sessions or cookies for the dashboard (a bearer token in JavaScript memory needs no CSRF defence).
"""
from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import cbor2
from aiohttp import web, web_response

from ndn_edge import __version__, names
from ndn_edge.clients.verbs import Caller, Encoded, Verbs
from ndn_edge.devices.descriptions import find_service
from ndn_edge.errors import (
    CallError,
    GatewayError,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    UnknownDevice,
)
from ndn_edge.http import openapi, problems, values
from ndn_edge.http.tokens import Tokens
from ndn_edge.limits import Limits
from ndn_edge.logs import Throttle
from ndn_edge.observability import trace as tracing
from ndn_edge.wire import client_protocol as cp

log = logging.getLogger("ndn_edge.http")

API = openapi.API_BASE
MAX_BODY_BYTES = 64 * 1024       # a call's arguments must fit one NDN packet (8,800 bytes) anyway
MAX_IN_FLIGHT = 1024
DESC_TTL_S = 1.0                 # service descriptions are re-read from the store at most this often
MAX_WAIT_S = cp.MAX_TIMEOUT_MS / 1000
STATIC = Path(__file__).resolve().parent / "static"
JSON = "application/json"
SERVER = "ndn-edge"              # the Server header: the product, no versions

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Bucket:
    """One client's request-rate bucket (`Limits.requests_per_s`, up to `request_burst`)."""

    __slots__ = ("at", "tokens")

    def __init__(self, limits: Limits, now: float) -> None:
        self.tokens = float(limits.request_burst)
        self.at = now

    def take(self, limits: Limits, now: float) -> float:
        """0 when a request may go now (one token used), else the seconds until one may."""
        self.tokens = min(float(limits.request_burst), self.tokens + (now - self.at) * limits.requests_per_s)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / limits.requests_per_s


class Api:
    """The `/api/v1` routes over one verb table, and the dashboard's files."""

    def __init__(self, verbs: Verbs, tokens: Tokens, *, site: str, limits: Limits | None = None,
                 metrics: Any = None) -> None:
        self.verbs = verbs
        self.metrics_view = metrics  # ndn_edge.observability.metrics.MetricsView, for GET /metrics
        self.tokens = tokens
        self.site = site.strip("/")
        self.limits = limits or Limits()
        self._buckets: dict[str, _Bucket] = {}
        self._descs: dict[str, tuple[list[dict[str, Any]], float]] = {}
        self._in_flight = 0
        self._throttle = Throttle(log)
        self.streams: set[asyncio.Task[Any]] = set()  # SSE handlers, cancelled at stop
        self.stats: dict[str, int] = {"requests": 0, "unauthenticated": 0, "over_rate": 0, "errors": 0,
                                      "internal": 0, "streams": 0}

    # -- the application

    def application(self) -> web.Application:
        """The aiohttp application: API routes, the dashboard, the middlewares."""
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self._errors, self._auth],
                              handler_args={"max_field_size": 8190, "max_line_size": 8190})
        app.on_response_prepare.append(_server_header)
        r = app.router
        r.add_get(f"{API}/devices", self.devices)
        r.add_get(API + "/devices/{device:.+}/services", self.services)
        r.add_get(API + "/devices/{device:.+}/health", self.health)
        r.add_route("*", API + "/call/{name:.+}", self.call)
        r.add_post(API + "/notify/{name:.+}", self.notify)
        r.add_post(API + "/start/{name:.+}", self.start)
        r.add_post(API + "/enqueue/{name:.+}", self.enqueue)
        r.add_get(f"{API}/operations", self.operations)
        r.add_get(API + "/operations/{op}", self.operation)
        r.add_delete(API + "/operations/{op}", self.cancel)
        r.add_post(f"{API}/gather", self.gather)
        r.add_get(f"{API}/events", self.events)
        r.add_get(f"{API}/logs", self.logs)
        r.add_get(f"{API}/openapi.json", self.openapi)
        r.add_get("/metrics", self.prometheus)
        r.add_get("/", self.index)
        r.add_get("/static/{name}", self.static)
        return app

    # -- middlewares

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await self._answer(request, handler)
        traceparent = request.get(tracing.TRACEPARENT)
        if traceparent is not None and not response.prepared:
            response.headers["traceresponse"] = traceparent
        return response

    async def _answer(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except CallError as err:
            self.stats["errors"] += 1
            return problems.of_error(err)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return self._http_problem(exc)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # a bug: to the log with its traceback, never to the client
            self.stats["internal"] += 1
            self._throttle.fault("http-request", err, method=request.method, path=request.path)
            return problems.problem(500, "INTERNAL", f"gateway error: {type(err).__name__}")

    def _http_problem(self, exc: web.HTTPException) -> web.Response:
        status = exc.status
        headers = {k: v for k, v in exc.headers.items() if k in ("Allow",)}
        if status == 413:
            detail = f"the request body is larger than {MAX_BODY_BYTES} bytes; send smaller arguments"
        elif status == 404:
            detail = f"no such route; the API is under {API} (see {API}/openapi.json)"
        elif status == 415:
            detail = exc.text or "send the request body as application/json"
        elif status == 405:
            detail = f"method not allowed here; allowed: {headers.get('Allow', '-')}"
        else:
            detail = exc.text or exc.reason
        return problems.problem(status, problems.CODE_OF_STATUS.get(status, "INVALID_ARGUMENT"), detail,
                                headers or None)

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(API + "/"):
            return await handler(request)
        self.stats["requests"] += 1
        found = self.tokens.caller(request.headers.get("Authorization"))
        if found is None:
            self.stats["unauthenticated"] += 1
            return problems.unauthenticated("this API needs `Authorization: Bearer <token>` with a current token; "
                                            "issue one with: ndn-edge client token NAME")
        caller, _ = found
        now = time.monotonic()
        bucket = self._buckets.get(caller.name)
        if bucket is None:
            bucket = self._buckets[caller.name] = _Bucket(self.limits, now)
        wait_s = bucket.take(self.limits, now)
        if wait_s:
            self.stats["over_rate"] += 1
            return problems.of_error(ResourceExhausted(
                f"client '{caller.name}' is over its request rate ({self.limits.requests_per_s:g} per second, "
                f"bursts of {self.limits.request_burst}); slow down and retry"), wait_s)
        request["caller"] = caller
        return await handler(request)

    # -- running verbs

    async def run(self, caller: Caller, verb: str, target: tuple[str, ...], params: dict[str, Any]) -> Any:
        """The verb's reply content (CBOR replies decoded); CallError for what it refuses."""
        try:
            result = self.verbs.run(caller, verb, target, params)
            if inspect.isawaitable(result):
                if self._in_flight >= MAX_IN_FLIGHT:
                    _discard(result)
                    raise ResourceExhausted(f"the gateway has {self._in_flight} HTTP requests in flight; retry "
                                            "later")
                self._in_flight += 1
                try:
                    result = await result
                finally:
                    self._in_flight -= 1
        except UnknownDevice as err:
            raise NotFound(str(err)) from err
        except CallError:
            raise
        except GatewayError as err:
            raise Internal(str(err)) from err
        return cbor2.loads(result) if isinstance(result, Encoded) else result

    def target(self, request: web.Request, key: str = "name") -> tuple[str, ...]:
        """The name components of a path parameter (relative to the site)."""
        try:
            return cp.split_target(request.match_info[key], self.site)
        except ValueError as err:
            raise InvalidArgument(str(err)) from None

    def service(self, target: tuple[str, ...]) -> dict[str, Any] | None:
        """The description of DEVICE/SERVICE `target`, from the store at most every DESC_TTL_S; None if unknown."""
        device = names.full(self.site, target[:-1])
        now = time.monotonic()
        cached = self._descs.get(device)
        if cached is None or now - cached[1] > DESC_TTL_S:
            try:
                services = self.verbs.devices.services(device)
            except (NotFound, UnknownDevice):
                services = []
            if len(self._descs) > 10_000:
                self._descs.clear()
            cached = self._descs[device] = (services, now)
        return find_service({"services": cached[0]}, target[-1])

    def traced(self, request: web.Request, params: dict[str, Any]) -> dict[str, Any]:
        """`params` with the request's trace context: its `traceparent` header when valid, else a new trace."""
        traceparent = request.get(tracing.TRACEPARENT)
        if traceparent is None:
            ctx = tracing.parse(request.headers.get(tracing.TRACEPARENT)) or tracing.new()
            traceparent = request[tracing.TRACEPARENT] = ctx.header()
        params[tracing.TRACEPARENT] = traceparent
        return params

    # -- routes

    async def devices(self, request: web.Request) -> web.Response:
        params = _page(request)
        return _json(await self.run(request["caller"], cp.VERB_DEVICES, (), params))

    async def services(self, request: web.Request) -> web.Response:
        device = request.match_info["device"]
        return _json(await self.run(request["caller"], cp.VERB_SERVICES, (), {"device": device}))

    async def health(self, request: web.Request) -> web.Response:
        target = (*self.target(request, "device"), "_health")
        params = {"args": None, "timeout_ms": _int(request, "timeout_ms", cp.DEFAULT_TIMEOUT_MS, 1,
                                                   cp.MAX_TIMEOUT_MS)}
        return _json(await self.run(request["caller"], cp.VERB_CALL, target, self.traced(request, params)))

    async def call(self, request: web.Request) -> web.Response:
        caller: Caller = request["caller"]
        target = self.target(request)
        timeout_ms = _int(request, "timeout_ms", cp.DEFAULT_TIMEOUT_MS, 1, cp.MAX_TIMEOUT_MS)
        shown = "/".join(target)
        if request.method == "GET":
            if len(target) < 2:
                raise InvalidArgument(f"call needs DEVICE/SERVICE, got {shown}")
            self.verbs.check(caller, target, "call")
            svc = self.service(target)
            if svc is not None and svc.get("idempotent") is False:
                raise web.HTTPMethodNotAllowed("GET", ["POST"], text=f"{shown} is not idempotent: call it with POST")
            args = values.query_args(request.query, svc, shown)
        elif request.method == "POST":
            args = (await _body(request)) or None
            if args:
                args = values.decode_bytes_args(args, self.service(target) if len(target) >= 2 else None)
        else:
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "POST"])
        return _json(await self.run(caller, cp.VERB_CALL, target,
                                    self.traced(request, {"args": args, "timeout_ms": timeout_ms})))

    async def notify(self, request: web.Request) -> web.Response:
        target = self.target(request)
        args = (await _body(request)) or None
        return _json(await self.run(request["caller"], cp.VERB_NOTIFY, target, self.traced(request, {"args": args})),
                     status=202)

    async def start(self, request: web.Request) -> web.Response:
        target = self.target(request)
        args = (await _body(request)) or None
        params = {"args": args, "timeout_ms": _int(request, "timeout_ms", cp.DEFAULT_TIMEOUT_MS, 1,
                                                   cp.MAX_TIMEOUT_MS)}
        op = await self.run(request["caller"], cp.VERB_START, target, self.traced(request, params))
        return _json(op, status=202, headers={"Location": f"{API}/operations/{op['op']}"})

    async def enqueue(self, request: web.Request) -> web.Response:
        target = self.target(request)
        args = (await _body(request)) or None
        ttl_s = _number(request, "ttl_s", 300.0, 0.001, 7 * 86400.0)
        op = await self.run(request["caller"], cp.VERB_ENQUEUE, target,
                            self.traced(request, {"args": args, "ttl_ms": max(1, int(ttl_s * 1000))}))
        return _json(op, status=202, headers={"Location": f"{API}/operations/{op['op']}"})

    async def operations(self, request: web.Request) -> web.Response:
        return _json(await self.run(request["caller"], cp.VERB_OPS, (), _page(request)))

    async def operation(self, request: web.Request) -> web.Response:
        wait_s = _number(request, "wait", 0.0, 0.0, MAX_WAIT_S)
        params = {"op": request.match_info["op"], "wait_ms": int(wait_s * 1000)}
        return _json(await self.run(request["caller"], cp.VERB_OP_GET, (), params))

    async def cancel(self, request: web.Request) -> web.Response:
        params = {"op": request.match_info["op"],
                  "timeout_ms": _int(request, "timeout_ms", cp.DEFAULT_TIMEOUT_MS, 1, cp.MAX_TIMEOUT_MS)}
        return _json(await self.run(request["caller"], cp.VERB_OP_CANCEL, (), params))

    async def gather(self, request: web.Request) -> web.Response:
        body = await _body(request, "the gather request")
        unknown = set(body) - {"pattern", "args", "deadline_s"}
        if unknown:
            raise InvalidArgument(f"gather takes pattern, args and deadline_s, not {', '.join(sorted(unknown))}")
        pattern, args, deadline_s = body.get("pattern"), body.get("args"), body.get("deadline_s", 2.0)
        if not isinstance(pattern, str):
            raise InvalidArgument(f"gather needs a pattern (text, e.g. sim/*/temperature), got {pattern!r}")
        if args is not None and not isinstance(args, dict):
            raise InvalidArgument(f"gather's args must be an object or null, got {type(args).__name__}")
        if isinstance(deadline_s, bool) or not isinstance(deadline_s, (int, float)) \
                or not 0 < deadline_s <= MAX_WAIT_S:
            raise InvalidArgument(f"deadline_s must be a number of seconds above 0, at most {MAX_WAIT_S:g}, got "
                                  f"{deadline_s!r}")
        params = {"pattern": pattern, "args": args, "timeout_ms": max(1, int(deadline_s * 1000))}
        return _json(await self.run(request["caller"], cp.VERB_GATHER, (), self.traced(request, params)))

    async def events(self, request: web.Request) -> web.StreamResponse:
        from ndn_edge.http import events

        return await events.stream(self, request)

    async def logs(self, request: web.Request) -> web.Response:
        """Device log entries: `{"entries", "next"}` (pass `next` as `after` to read on)."""
        params: dict[str, Any] = {"pattern": request.query.get("device"),
                                  "after": _int(request, "after", 0, 0, 1 << 62),
                                  "max": _int(request, "limit", 100, 1, 500),
                                  "wait_ms": int(_number(request, "wait", 0.0, 0.0, MAX_WAIT_S) * 1000),
                                  "tail": request.query.get("tail", "false").lower() in ("1", "true", "yes")}
        since = request.query.get("since")
        if since is not None:
            params["since"] = _number(request, "since", 0.0, 0.0, 1e11)
        level = request.query.get("level")
        if level is not None:
            params["level"] = values.log_level(level)
        if request.query.get("trace") is not None:
            params["trace"] = request.query["trace"]
        return _json(await self.run(request["caller"], cp.VERB_LOGS, (), params))

    async def prometheus(self, request: web.Request) -> web.Response:
        """The Prometheus text exposition, for a token whose client may read metrics."""
        if self.metrics_view is None:
            raise web.HTTPNotFound()
        found = self.tokens.caller(request.headers.get("Authorization"))
        if found is None:
            self.stats["unauthenticated"] += 1
            return problems.unauthenticated("/metrics needs `Authorization: Bearer <token>` of a client that may "
                                            "read metrics; issue one with: ndn-edge client token NAME")
        caller, _ = found
        if not names.allowed(caller.rules, cp.METRICS_TARGET):
            raise PermissionDenied(f"client '{caller.name}' may not read metrics; the operator can allow it with: "
                                   f"ndn-edge acl grant {caller.name} {'/'.join(cp.METRICS_TARGET)}")
        body, content_type = self.metrics_view.exposition()
        return web.Response(body=body, headers={"Content-Type": content_type, "Cache-Control": "no-cache"})

    async def openapi(self, request: web.Request) -> web.Response:
        caller: Caller = request["caller"]
        devices = await self.visible_services(caller)
        doc = openapi.document(devices, version=__version__, site=self.site, client=caller.name)
        etag = openapi.etag_of(doc)
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if etag in {t.strip() for t in request.headers.get("If-None-Match", "").split(",")}:
            return web.Response(status=304, headers=headers)
        return _json(doc, headers=headers)

    async def visible_services(self, caller: Caller) -> list[tuple[str, list[dict[str, Any]]]]:
        """(device under the site, its services) for every device online or asleep (reachable now or by a queued
        call) and every service the caller may use."""
        out = []
        token = None
        while True:
            page = await self.run(caller, cp.VERB_DEVICES, (), {"page_size": cp.MAX_PAGE_SIZE, "page_token": token})
            for item in page["items"]:
                if item.get("state") not in ("online", "asleep"):
                    continue
                rel = "/".join(names.relative(item["name"], self.site))
                try:
                    services = await self.run(caller, cp.VERB_SERVICES, (), {"device": rel})
                except (NotFound, PermissionDenied):
                    continue  # it left, or the rules changed, between the two requests
                out.append((rel, services["items"]))
            token = page["next_page_token"]
            if token is None:
                return out

    async def index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def static(self, request: web.Request) -> web.FileResponse:
        """One of the dashboard's files (only the files shipped in static/, by name)."""
        name = request.match_info["name"]
        if name not in _static_files():
            raise web.HTTPNotFound()
        return web.FileResponse(STATIC / name, headers={"Cache-Control": "no-cache"})

    def metrics(self) -> dict[str, int]:
        """Counters of the HTTP face."""
        return {**self.stats, "in_flight": self._in_flight, "open_streams": len(self.streams)}


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER


def neutral_server_header() -> None:
    """Make aiohttp's default Server header (used where no application runs: the parser's 400s) neutral too."""
    web_response.SERVER_SOFTWARE = SERVER


async def _body(request: web.Request, what: str = "the request body (the arguments)") -> dict[str, Any]:
    """The request's JSON object body ({} when empty); 415 for a body in another media type."""
    raw = await request.read()
    if raw and request.headers.get("Content-Type") and request.content_type != "application/json" \
            and not request.content_type.endswith("+json"):
        raise web.HTTPUnsupportedMediaType(text=f"send {what} as application/json, not {request.content_type}")
    return values.body_object(raw, what)


@functools.lru_cache(maxsize=1)
def _static_files() -> frozenset[str]:
    return frozenset(p.name for p in STATIC.iterdir() if p.is_file())


def _json(value: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=values.to_json(value), status=status, content_type=JSON, headers=headers)


def _page(request: web.Request) -> dict[str, Any]:
    params: dict[str, Any] = {"page_size": _int(request, "page_size", cp.DEFAULT_PAGE_SIZE, 1, cp.MAX_PAGE_SIZE)}
    token = request.query.get("page_token")
    if token is not None:
        params["page_token"] = token or None
    return params


def _int(request: web.Request, key: str, default: int, low: int, high: int) -> int:
    text = request.query.get(key)
    if text is None:
        return default
    try:
        value = int(text, 10)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise InvalidArgument(f"{key} must be an integer from {low} to {high}, got {text[:40]!r}")
    return value


def _number(request: web.Request, key: str, default: float, low: float, high: float) -> float:
    text = request.query.get(key)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:  # NaN fails too
        raise InvalidArgument(f"{key} must be a number from {low:g} to {high:g}, got {text[:40]!r}")
    return value


def _discard(work: Awaitable[Any]) -> None:
    close = getattr(work, "close", None)
    if close is not None:
        close()
