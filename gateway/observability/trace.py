"""W3C trace context end to end, and the gateway's part of a call's trace: a timeline, and OpenTelemetry spans.

    ctx = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")   # TraceContext, or None
    tracer = Tracer()                                  # OpenTelemetry off: contexts are carried, nothing recorded
    trace = tracer.start(ctx_text, "call", "/edge/sim/1", "echo")            # a CallTrace
    trace.cache("miss"); trace.request_start(); trace.sent(1); trace.replied(); trace.end("OK")

The context travels (docs/gateway-protocol.md, docs/protocol.md "Trace context"): the client library, the CLI and
the HTTP API (from an incoming `traceparent` header, else a new one) put `traceparent` in a request's parameters;
the gateway puts the trace id and its own span id, 24 bytes, in front of the arguments it sends to a device that
says it reads them (`"trace": true` in its `_desc`); the device writes them in the log entries of that call.

Decisions:
- OpenTelemetry is optional (`ndn-edge[otel]`) and off unless configured (`ndn-edge gateway --otlp URL`, or
  `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`): the SDK is imported only then. A call
  then gets spans `ndn_edge.call` (the client request, a child of the client's span) with children
  `ndn_edge.cache` (the cache decision: hit, negative_hit, miss, coalesced, stale) and `ndn_edge.device_request`
  (its id is the span id the device receives) with one `ndn_edge.attempt` per transmission; a gather is one
  `ndn_edge.gather` span with an `ndn_edge.call` per device. Spans are made with explicit parents, never the
  ambient context: the gateway serves many calls at once in one task per call.
- Off, a call that carries a context still gets a `CallTrace`, on the uncached path only: it costs one object and
  carries the ids to the device and into the gateway's log lines about the call. A cached hit makes none.
- A client may ask for the timeline of its call (`"timeline": true`, what `ndn-edge call --trace` prints): the
  same hooks then append (milliseconds since the gateway started the call, what, detail) events.
- The span a coalesced call waits on belongs to the first caller's trace; the others record `coalesced` and no
  attempts of their own. A device's own time is not reported (a reply carries none).
Rejected: contextvars-based spans (`start_as_current_span`): the invoker's shared request tasks would inherit
whichever caller created them.
"""
from __future__ import annotations

import os
import re
import time
from typing import Any, NamedTuple

from ndn_edge.errors import ConfigError

TRACEPARENT = "traceparent"
TIMELINE = "timeline"
DEVICE_HEAD = b"\x58\x18"  # CBOR: a byte string of 24 bytes (trace id, span id), before the arguments
_TRACEPARENT_RE = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
_MAX_EVENTS = 200


class TraceContext(NamedTuple):
    """A W3C trace context: trace id (32 hex), parent span id (16 hex), flags (1: sampled)."""

    trace_id: str
    span_id: str
    flags: int = 1

    def header(self) -> str:
        """The `traceparent` text."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags:02x}"

    def child(self) -> TraceContext:
        """The same trace with a new span id."""
        return TraceContext(self.trace_id, os.urandom(8).hex(), self.flags)


def parse(text: Any) -> TraceContext | None:
    """The context in a `traceparent` value (version 00, lowercase hex, ids not all zero); None otherwise."""
    if not isinstance(text, str) or len(text) != 55:
        return None
    m = _TRACEPARENT_RE.fullmatch(text)
    if m is None or m.group(1) == _ZERO_TRACE or m.group(2) == _ZERO_SPAN:
        return None
    return TraceContext(m.group(1), m.group(2), int(m.group(3), 16))


def new() -> TraceContext:
    """A new trace, sampled."""
    ids = os.urandom(24).hex()
    return TraceContext(ids[:32], ids[32:], 1)


def device_prefix(trace_id: str, span_id: str) -> bytes:
    """What goes in front of the arguments to a device: the CBOR byte string of trace id and span id."""
    return DEVICE_HEAD + bytes.fromhex(trace_id + span_id)


class Tracer:
    """Starts the gateway's part of a call's trace; with an OpenTelemetry tracer provider, records spans."""

    def __init__(self, provider: Any = None) -> None:
        self.provider = provider
        self._otel = provider.get_tracer("ndn_edge") if provider is not None else None

    @property
    def on(self) -> bool:
        """True when spans are recorded."""
        return self._otel is not None

    def start(self, traceparent: Any, kind: str, device: str, service: str, *, timeline: bool = False,
              parent: CallTrace | None = None, **attributes: Any) -> CallTrace:
        """The trace of one call (`kind` "call", "gather", ...) under `traceparent` (or `parent`'s span); a new
        trace when there is neither."""
        ctx = parent.context if parent is not None else parse(traceparent) or new()
        return CallTrace(self, ctx, kind, device, service, timeline, parent, attributes)

    def shutdown(self) -> None:
        """Flush and stop the exporter (OpenTelemetry on)."""
        if self.provider is not None:
            self.provider.shutdown()


class CallTrace:
    """One call's trace at the gateway: the context to pass on, the timeline, the spans (OpenTelemetry on)."""

    __slots__ = ("_attempt", "_cache", "_otel", "_request", "_root", "_t0", "context", "device", "events",
                 "service")

    def __init__(self, tracer: Tracer, ctx: TraceContext, kind: str, device: str, service: str, timeline: bool,
                 parent: CallTrace | None, attributes: dict[str, Any]) -> None:
        self.context = ctx  # the caller's context: trace id and the caller's span id
        self.device = device
        self.service = service
        # a gather's calls add to the gather's timeline
        self.events: list[tuple[float, str, str]] | None = parent.events if parent is not None else (
            [] if timeline else None)
        self._t0: float = parent._t0 if parent is not None else time.monotonic()
        self._otel: Any = tracer._otel
        self._root: Any = None
        self._request: Any = None
        self._attempt: Any = None
        self._cache = ""
        if self._otel is not None:
            attrs = {"ndn_edge.device": device, "ndn_edge.service": service,
                     **{f"ndn_edge.{key}": value for key, value in attributes.items()}}
            context = _in(parent._root) if parent is not None and parent._root is not None else _remote(ctx)
            self._root = self._otel.start_span(f"ndn_edge.{kind}", context=context, kind=_kind("SERVER"),
                                               attributes={k: v for k, v in attrs.items() if v is not None})
            self.context = TraceContext(ctx.trace_id, _span_id(self._root), ctx.flags)
        self._note(kind, f"{device}/{service}" if service else device)

    @property
    def trace_id(self) -> str:
        return self.context.trace_id

    def log_fields(self) -> dict[str, str]:
        """What the gateway's log lines about this call carry."""
        return {"trace_id": self.context.trace_id}

    def _note(self, what: str, detail: str = "") -> None:
        if self.events is not None and len(self.events) < _MAX_EVENTS:
            self.events.append((round((time.monotonic() - self._t0) * 1000, 3), what, detail))

    def cache(self, outcome: str) -> None:
        """The cache decision: hit, negative_hit, miss, coalesced (waits on another caller's request), stale."""
        self._cache = outcome
        self._note("cache", outcome)
        if self._root is not None:
            span = self._otel.start_span("ndn_edge.cache", context=_in(self._root),
                                         attributes={"ndn_edge.cache.result": outcome})
            span.end()
            self._root.set_attribute("ndn_edge.cache.result", outcome)

    def request_start(self) -> None:
        """The device request begins (the span whose id the device receives)."""
        self._note("device request", self.device)
        if self._root is not None:
            self._request = self._otel.start_span("ndn_edge.device_request", context=_in(self._root),
                                                  kind=_kind("CLIENT"),
                                                  attributes={"ndn_edge.device": self.device,
                                                              "ndn_edge.service": self.service})

    def device_prefix(self) -> bytes:
        """The trace context for the device: this trace, and the device request's span (else the caller's)."""
        span = _span_id(self._request) if self._request is not None else self.context.span_id
        return device_prefix(self.context.trace_id, span)

    def sent(self, attempt: int) -> None:
        """Transmission `attempt` (from 1) of the device request went out; the previous one got no reply."""
        self._note("attempt", str(attempt))
        if self._request is not None:
            if self._attempt is not None:
                self._attempt.set_attribute("ndn_edge.outcome", "no_reply")
                self._attempt.end()
            self._attempt = self._otel.start_span("ndn_edge.attempt", context=_in(self._request),
                                                  attributes={"ndn_edge.attempt": attempt})

    def replied(self, outcome: str = "reply") -> None:
        """The device request ended: `reply`, `timeout` or `error` (the request was abandoned)."""
        self._note("device " + outcome)
        if self._attempt is not None:
            self._attempt.set_attribute("ndn_edge.outcome", outcome if outcome == "reply" else "no_reply")
            self._attempt.end()
            self._attempt = None
        if self._request is not None:
            self._request.set_attribute("ndn_edge.outcome", outcome)
            self._request.end()
            self._request = None

    def end(self, code: str, message: str = "", **attributes: Any) -> None:
        """The call ended with `code` ("OK" or a wire code)."""
        self._note("end", code if not message else f"{code}: {message}"[:200])
        if self._request is not None:
            self.replied("error")
        if self._root is not None:
            from opentelemetry.trace import Status, StatusCode

            self._root.set_attribute("ndn_edge.code", code)
            for key, value in attributes.items():
                if value is not None:
                    self._root.set_attribute(f"ndn_edge.{key}", value)
            if code != "OK":
                self._root.set_status(Status(StatusCode.ERROR, f"{code}: {message}"[:200]))
            self._root.end()
            self._root = None

    def timeline(self) -> dict[str, Any]:
        """What a client that asked for the timeline gets: `{"trace_id", "events": [[ms, what, detail]...]}`."""
        return {"trace_id": self.context.trace_id, "events": [list(e) for e in self.events or ()]}


def _span_id(span: Any) -> str:
    return f"{span.get_span_context().span_id:016x}"


def _in(span: Any) -> Any:
    from opentelemetry import trace

    return trace.set_span_in_context(span)


def _remote(ctx: TraceContext) -> Any:
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    parent = SpanContext(trace_id=int(ctx.trace_id, 16), span_id=int(ctx.span_id, 16), is_remote=True,
                         trace_flags=TraceFlags(ctx.flags & 1))
    return trace.set_span_in_context(NonRecordingSpan(parent))


def _kind(name: str) -> Any:
    from opentelemetry.trace import SpanKind

    return getattr(SpanKind, name)


def otel_provider(endpoint: str | None = None, *, exporter: Any = None, service_name: str = "ndn-edge-gateway") -> Any:
    """A TracerProvider exporting to `exporter` (tests: the SDK's in-memory one, synchronously), else by OTLP
    over HTTP to `endpoint` (or the OTEL_EXPORTER_OTLP_* variables) in batches; ConfigError without the SDK."""
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError as err:
        raise ConfigError("tracing needs the OpenTelemetry SDK: pip install 'ndn-edge[otel]'") from err
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        return provider
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as err:
        raise ConfigError("OTLP export needs the OTLP exporter: pip install 'ndn-edge[otel]'") from err
    if endpoint is not None and not endpoint.rstrip("/").endswith("/v1/traces"):
        endpoint = endpoint.rstrip("/") + "/v1/traces"
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider


def otlp_endpoint_from_env() -> str | None:
    """The OTLP endpoint the standard variables name, if any."""
    return os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") \
        or None
