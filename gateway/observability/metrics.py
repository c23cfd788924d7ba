"""The gateway in Prometheus' terms: every part's counters as metric families, read when Prometheus scrapes.

    view = MetricsView(gateway)          # anything with .site, .store, .devices, .patterns, .clients, .http, .obs
    text, content_type = view.exposition()
    face = MetricsFace(view, ("127.0.0.1", 9464)); await face.start()   # `ndn-edge gateway --metrics ADDR`

Where it is served: `GET /metrics` on the HTTP API's listener, with a bearer token whose client may read metrics
(`ndn-edge acl grant NAME _gw/metrics`, the rule of the `metrics` verb), and, with `--metrics HOST:PORT`, on a
listener of its own that serves nothing else and asks for no token (bind it to loopback, or to a network only
Prometheus reaches; anything else logs `metrics_without_auth`). docs/operations.md "Metrics" lists the families;
docs/grafana-dashboard.json uses them.

Decisions:
- One source of truth: a scrape reads the dictionaries the parts already keep (the faces', the directory's, the
  invoker's, the report intake's, operations', pub/sub's, the HTTP API's, and `ndn_edge.observability.stats`),
  the same the `metrics` verb returns; nothing is counted twice and nothing here runs between scrapes.
- Labels are bounded: `device` and `service` only for provisioned devices (and, for calls, services their
  description offers); a call to any other name is counted under `_other`; never an argument value. Device
  names are relative to the site, as the CLI writes them (`sim/1`).
- Drops on both faces share one family, `ndn_edge_packets_dropped_total{face, part, reason}`, with one
  vocabulary of reasons (`signature`, `replay`, `overload`, ...) whatever the part calls them.
- What a device says about itself (`_health`, polled; free heap and uptime from its announcements too) is
  `ndn_edge_board_*`; what the gateway measured of a device is `ndn_edge_device_*`.
Rejected: the default global registry (two gateways in one process, as in tests, would share it) and the
`prometheus_client` HTTP server thread (the gateway serves from its own event loop).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ndn_edge import __version__, names
from ndn_edge.errors import StoreError, Unavailable
from ndn_edge.logs import event
from ndn_edge.observability.stats import Histograms
from ndn_edge.state.home import is_loopback, listener_url, remove_listener_record, write_listener_record

log = logging.getLogger("ndn_edge.metrics")

RECORD = "metrics.json"
PREFIX = "ndn_edge_"
# reason names of each part, in the shared vocabulary
_DIRECTORY_DROPS = {"unknown_key": "unknown_key", "digest": "digest", "bad_signature": "signature",
                    "replayed": "replay", "malformed": "malformed", "queue_full": "overload"}
_REPORT_DROPS = {"unknown_key": "unknown_key", "digest": "digest", "bad_signature": "signature", "stale": "replay",
                 "malformed": "malformed", "queue_full": "overload"}
_BREAKER_STATES = ("closed", "open", "half_open")
_DEVICE_STATES = ("unknown", "online", "asleep", "offline", "left")
_OP_KINDS = ("op", "call")
_FED_STATES = ("connecting", "connected", "partitioned")
_OP_STATES = ("queued", "starting", "running", "done", "failed", "cancelled")


class MetricsView:
    """A `prometheus_client` collector over a running gateway's parts, with its own registry."""

    def __init__(self, gateway: Any) -> None:
        from prometheus_client import CollectorRegistry, ProcessCollector

        self.gateway = gateway
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        ProcessCollector(registry=self.registry)
        self._rel: dict[str, str] = {}

    def exposition(self) -> tuple[bytes, str]:
        """The text exposition of every metric, and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def describe(self) -> list[Any]:
        return []  # families are known at collection only

    def relative(self, name: str) -> str:
        rel = self._rel.get(name)
        if rel is None:
            if len(self._rel) > 100_000:
                self._rel.clear()
            rel = self._rel[name] = "/".join(names.relative(name, self.gateway.site)) if name.startswith("/") \
                else name
        return rel

    # -- collection

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        gw = self.gateway
        info = GaugeMetricFamily(PREFIX + "build_info", "The gateway's version and site.", labels=["version", "site"])
        info.add_metric([__version__, gw.site], 1)
        yield info
        families: list[Any] = []
        if gw.devices is not None:
            families += self._devices(gw.devices)
        if gw.clients is not None:
            families += self._client_face(gw.clients)
        if gw.patterns is not None:
            families += self._patterns(gw.patterns)
        if gw.http is not None:
            families += self._http(gw.http.api.metrics())
        families.append(self._drops(gw))
        obs = getattr(gw, "obs", None)
        if obs is not None:
            families += self._observability(obs, gw.devices)
        fed = getattr(gw, "federation", None)
        if fed is not None:
            families += self._federation(fed)
        yield from families

    def _federation(self, fed: Any) -> list[Any]:
        """`ndn_edge.federation`'s parts: state, gateways, forwarded requests, lags, every part's counters."""
        state = _gauge("federation_state", "This gateway's link to its federation: 1 for the current state.",
                       ["state"])
        for name in _FED_STATES:
            state.add_metric([name], 1 if fed.link.state == name else 0)
        partitioned = _gauge("federation_partitioned", "1 while this gateway is cut off from NATS after having "
                             "been connected (it serves its own LAN with the rules it has).",
                             value=1 if fed.link.state == "partitioned" else 0)
        placement = fed.placement
        gateways = _gauge("federation_gateways", "Gateways of the federation whose heartbeat is recent (this one "
                          "included).", value=len(placement.live_gateways()) if placement is not None else 0)
        served = _gauge("federation_devices_served", "Devices this gateway serves for the federation.",
                        value=len(placement.served) if placement is not None else 0)
        forwarded = _counter("federation_forwarded", "Requests forwarded to another gateway, by kind (relay: a "
                             "client's signed request; vouch: one made for a client authenticated here) and result "
                             "(OK, a wire error code, or taken_over: served here after its gateway died).",
                             ["kind", "result"])
        families = [state, partitioned, gateways, served, forwarded]
        remote = fed.remote
        if remote is not None:
            for (kind, result), n in sorted(remote.results.items()):
                forwarded.add_metric([kind, result], n)
            families.append(self._histogram("federation_forward_seconds", "Round trip of forwarded requests, by kind.",
                                            ["kind"], remote.latency, lambda label: [str(label)]))
        lag = _gauge("federation_lag_seconds", "Replication lag of what other gateways wrote (recent values): "
                     "identity records, publications, operations, durable subscriptions' reads.", ["what", "quantile"])
        for what, part in (("identity", fed.identity), ("publications", fed.bridge), ("operations", fed.ops),
                           ("subscriptions", fed.subs)):
            values = sorted(getattr(part, "lag_s", None) or [])
            for q in (0.5, 0.99):
                if values:
                    lag.add_metric([what, str(q)], values[min(len(values) - 1, int(q * len(values)))])
        events = _counter("federation_events", "Every federation part's counters (claims, takeovers, records "
                          "applied, values that did not open, ...), by part and event.", ["part", "event"])
        for part_name, part in (("link", fed.link), ("identity", fed.identity), ("seqs", fed.seqs),
                                ("journal", fed.journal), ("serve", fed.serve), ("placement", placement),
                                ("remote", remote), ("bridge", fed.bridge), ("ops", fed.ops), ("subs", fed.subs)):
            counters = getattr(part, "counters", None) if part is not None else None
            for name, n in (counters or {}).items():
                if _number(n):
                    events.add_metric([part_name, name], n)
        held = _gauge("federation_subscriptions_held", "Durable subscriptions of the federation this gateway "
                      "serves now.", value=fed.subs.held() if fed.subs is not None else 0)
        return [*families, lag, events, held]

    def _drops(self, gw: Any) -> Any:
        drops = _counter("packets_dropped", "Datagrams dropped unanswered, by face, part and reason.",
                         ["face", "part", "reason"])
        if gw.clients is not None:
            for reason, n in gw.clients.metrics()["drops"].items():
                drops.add_metric(["client", "client", reason], n)
        if gw.devices is not None:
            drops.add_metric(["devices", "mcast", "malformed"], gw.devices.face.counters()["malformed"])
            d = gw.devices.directory.counters
            for part, reason in _DIRECTORY_DROPS.items():
                drops.add_metric(["devices", "announcements", reason], d[part])
        if gw.patterns is not None:
            r = gw.patterns.intake.counters
            for part, reason in _REPORT_DROPS.items():
                drops.add_metric(["devices", "reports", reason], r[part])
        return drops

    def _devices(self, side: Any) -> list[Any]:
        inv = side.invoker.metrics
        hits, negative = inv["cache_hits"], inv["negative_hits"]
        lookups = _counter("cache_lookups", "Calls looked up in the gateway's cache, by result.", ["result"])
        lookups.add_metric(["hit"], hits)
        lookups.add_metric(["negative_hit"], negative)
        lookups.add_metric(["miss"], max(0, inv["calls"] - hits - negative))
        out = [lookups,
               _counter("cache_coalesced", "Cache misses that joined a request already on its way to the device.",
                        value=inv["coalesced"]),
               _counter("cache_stale_served", "Stale values served because the device did not answer.",
                        value=inv["stale_served"]),
               _counter("cache_early_refreshes", "Hot entries renewed in the background before they expired.",
                        value=inv["early_refreshes"]),
               _gauge("cache_entries", "Entries in the gateway's cache.", value=len(side.invoker.cache)),
               _counter("device_requests", "Requests sent to devices (each may be transmitted several times).",
                        value=inv["device_requests"]),
               _counter("device_retries", "Retransmissions of requests to devices.", value=inv["retries"]),
               _counter("device_resigned", "Requests signed again after the device announced a higher floor.",
                        value=inv["resigned"]),
               _counter("device_timeouts", "Requests to devices that got no answer by their deadline.",
                        value=inv["timeouts"]),
               _counter("device_fail_fast", "Calls failed at once: device offline or circuit open.",
                        value=inv["fail_fast"]),
               _counter("device_error_replies", "Error answers from devices.", value=inv["errors"]),
               _counter("device_bad_replies", "Replies from devices that did not verify.", value=inv["bad_packets"]),
               _counter("device_unmatched_data", "Data on the group that answered no request of the gateway.",
                        value=inv["unmatched_data"])]
        breaker = _gauge("breaker_state", "Each device's circuit breaker: 1 for its current state.",
                         ["device", "state"])
        failures = _gauge("breaker_consecutive_timeouts", "Calls in a row that timed out, per device.", ["device"])
        for name, b in side.invoker.breakers().items():
            device = self.relative(name)
            state = b.state
            for s in _BREAKER_STATES:
                breaker.add_metric([device, s], 1 if s == state else 0)
            failures.add_metric([device], b.failures)
        out += [breaker, failures, self._histogram("device_round_trip_seconds",
                                                   "First transmission of a request to its verified reply, per "
                                                   "device.", ["device"], side.invoker.round_trips,
                                                   lambda label: [self.relative(label)])]
        by_state = dict.fromkeys(_DEVICE_STATES, 0)
        for _, state, *_ in side.directory.snapshot():
            by_state[state] = by_state.get(state, 0) + 1
        devices = _gauge("devices", "Devices the directory knows, by state.", ["state"])
        for state, n in by_state.items():
            devices.add_metric([state], n)
        out.append(devices)
        d = side.directory.counters
        face = side.face.counters()
        out += [_counter("announcements", "Announcements accepted (join, renewal, sleep, leave).",
                         value=d["announcements"]),
                _counter("discovery_queries", "Discovery queries sent.", value=d["queries"]),
                _counter("desc_fetches", "Service descriptions fetched from devices.", value=d["desc_fetches"]),
                _counter("desc_failures", "Service description fetches that failed.", value=d["desc_failures"])]
        datagrams = _counter("mcast_datagrams", "Datagrams on the devices' multicast group.", ["direction"])
        datagrams.add_metric(["in"], face["received"])
        datagrams.add_metric(["out"], face["sent"])
        out += [datagrams, _counter("mcast_socket_errors", "Errors the multicast socket reported.",
                                    value=face["errors"])]
        return out

    def _client_face(self, face: Any) -> list[Any]:
        m = face.metrics()
        out = [_counter("client_received", "Datagrams received on the client face.", value=m["received"]),
               _counter("client_accepted", "Client requests authenticated and accepted.", value=m["accepted"]),
               _counter("client_replies", "Replies sent to clients.", value=m["replies"]),
               _counter("client_error_replies", "Error replies sent to clients.", value=m["errors"]),
               _counter("client_pushed_answers", "More answers pushed to answered polls (docs/gateway-protocol.md).",
                        value=m["pushed"]),
               _counter("client_denied", "Client requests denied by the access rules.", value=m["denied"]),
               _counter("client_retransmissions", "Client retransmissions answered from the reply cache.",
                        value=m["retransmissions"]),
               _counter("client_over_quota", "Client requests refused over the client's request rate.",
                        value=m["over_quota"]),
               _counter("client_internal_errors", "Client requests that met a gateway bug.", value=m["internal"]),
               _gauge("client_in_flight", "Client requests being served.", value=m["in_flight"]),
               _gauge("clients_active", "Client keys the gateway holds replay state for.", value=m["clients"])]
        return out

    def _patterns(self, patterns: Any) -> list[Any]:
        r = patterns.intake.counters
        reports = _counter("reports", "Device reports (operations, publications, logs), by outcome.", ["result"])
        for key, label in (("processed", "processed"), ("duplicates", "duplicate"), ("later", "later"),
                           ("errors", "error"), ("faults", "fault")):
            reports.add_metric([label], r[key])
        out = [reports, _counter("report_acks", "Acknowledgements sent for device reports.", value=r["acks"])]
        ops = patterns.operations.counters
        events = _counter("operation_events", "Long-running operations and queued calls, by event.", ["event"])
        for key, n in ops.items():
            events.add_metric([key], n)
        by_state = _gauge("operations", "Operations the gateway keeps, by kind (op: long-running, call: a queued "
                                        "call) and state.", ["kind", "state"])
        counts = {(kind, state): 0 for kind in _OP_KINDS for state in _OP_STATES}
        try:
            for kind, state, n in patterns.store.query("SELECT kind, state, COUNT(*) FROM operations GROUP BY "
                                                       "kind, state"):
                counts[(kind, state)] = n
        except StoreError as err:  # the store is busy or closing: the scrape goes on without it
            event(log, "operations_not_counted", logging.DEBUG, error=str(err))
        for (kind, state), n in counts.items():
            by_state.add_metric([kind, state], n)
        ps = patterns.pubsub.counters
        out += [events, by_state,
                _gauge("subscriptions", "Subscriptions, durable and in memory.", value=patterns.pubsub.subscriptions()),
                _counter("publications", "Publications received from devices.", value=ps["published"]),
                _counter("publications_delivered", "Messages queued for subscriptions.", value=ps["delivered"]),
                _counter("publication_gaps", "Messages delivered after a gap in their publisher's numbering.",
                         value=ps["gaps"]),
                _counter("publications_held", "Publications held back until their predecessor arrived.",
                         value=ps["held"]),
                _counter("publications_late", "Publications delivered after their successors.", value=ps["late"]),
                _counter("publications_delivered_elsewhere", "Publications resent to this gateway after another "
                         "gateway of the federation delivered them (acknowledged, not delivered again).",
                         value=ps["delivered_elsewhere"]),
                _counter("publications_withheld", "Messages withheld from subscribers whose rules no longer allow "
                                                  "them.", value=ps["withheld"]),
                _counter("membership_events", "Membership events published (join, leave, offline, sleep).",
                         value=ps["membership"])]
        return out

    def _http(self, m: dict[str, int]) -> list[Any]:
        return [_counter("http_requests", "Requests to the HTTP API.", value=m["requests"]),
                _counter("http_unauthenticated", "HTTP API requests without a current token.",
                         value=m["unauthenticated"]),
                _counter("http_over_rate", "HTTP API requests over the client's request rate.", value=m["over_rate"]),
                _counter("http_error_responses", "HTTP API error responses.", value=m["errors"]),
                _counter("http_internal_errors", "HTTP API requests that met a gateway bug.", value=m["internal"]),
                _gauge("http_in_flight", "HTTP API requests waiting on devices.", value=m["in_flight"]),
                _gauge("http_open_streams", "Open event streams.", value=m["open_streams"])]

    def _observability(self, obs: Any, side: Any) -> list[Any]:
        calls = _counter("calls", "Calls through the gateway, by device, service and result code (OK or the wire "
                                  "code).", ["device", "service", "code"])
        for (device, service, code), n in list(obs.calls.counts.items()):
            calls.add_metric([self.relative(device), service, code], n)
        out = [calls, self._histogram("call_duration_seconds", "Calls from when the gateway started them to its "
                                      "answer (the client's view, less the network), by device and service.",
                                      ["device", "service"], obs.calls.durations,
                                      lambda label: [self.relative(label[0]), label[1]])]
        if obs.logs is not None:
            c = obs.logs.counters
            entries = _counter("device_log_entries", "Device log entries stored, by level.", ["level"])
            for level, n in obs.logs.levels.items():
                entries.add_metric([level], n)
            dropped = _counter("device_log_dropped", "Device log entries not stored, by reason.", ["reason"])
            dropped.add_metric(["rate_limited"], c["rate_limited"])
            dropped.add_metric(["malformed"], c["malformed"])
            out += [entries, dropped,
                    _counter("device_log_reports", "Device log reports received.", value=c["reports"]),
                    _counter("device_log_lost", "Device log entries that never arrived (gaps in their numbering).",
                             value=c["lost"])]
        if side is not None:
            out += self._boards(obs, side)
        return out

    def _boards(self, obs: Any, side: Any) -> list[Any]:
        health = obs.health
        polls = _counter("health_polls", "Polls of devices' _health, by result.", ["result"])
        polls.add_metric(["ok"], health.counters["polls"])
        polls.add_metric(["failed"], health.counters["failures"])
        mem = _gauge("board_mem_free_bytes", "A device's free heap, as it last said (_health or announcement).",
                     ["device"])
        uptime = _gauge("board_uptime_seconds", "A device's uptime, as it last said.", ["device"])
        reboots = _counter("board_reboots", "Reboots of a device the gateway noticed since it started.", ["device"])
        age = _gauge("board_health_age_seconds", "Seconds since a device's _health was last read.", ["device"])
        requests = _counter("board_requests", "Requests the device executed since it booted.", ["device"])
        errors = _counter("board_errors", "Errors the device answered or survived since it booted.", ["device"])
        oom = _counter("board_oom", "MemoryErrors the device survived since it booted.", ["device"])
        bdrops = _counter("board_drops", "Packets the device dropped since it booted, by reason.",
                          ["device", "reason"])
        reports_dropped = _counter("board_reports_dropped", "Reports the device dropped (outbox full or given up).",
                                   ["device"])
        logs_dropped = _counter("board_logs_dropped", "Log entries the device dropped (its buffer was full).",
                                ["device"])
        ops = _gauge("board_ops_running", "Long-running operations running on the device.", ["device"])
        now = time.time()
        board_logs = obs.logs.dropped_by_device() if obs.logs is not None else {}
        for name, _, up_ms, mem_free, seen in side.directory.snapshot():
            device = self.relative(name)
            polled = health.latest.get(name)
            h = polled[1] if polled is not None else {}
            fresher = polled is not None and (seen is None or polled[0] >= seen)
            m = h.get("mem_free") if fresher else mem_free
            u = h.get("uptime_ms") if fresher else up_ms
            if _number(m):
                mem.add_metric([device], m)
            if isinstance(u, (int, float)) and not isinstance(u, bool):
                uptime.add_metric([device], u / 1000)
            reboots.add_metric([device], health.reboots.get(name, 0))
            if name in board_logs:
                logs_dropped.add_metric([device], board_logs[name])
            if polled is None:
                continue
            age.add_metric([device], max(0.0, now - polled[0]))
            for family, key in ((requests, "requests"), (errors, "errors"), (oom, "oom"),
                                (reports_dropped, "reports_dropped"), (ops, "ops_running")):
                if _number(h.get(key)):
                    family.add_metric([device], h[key])
            if name not in board_logs and _number(h.get("logs_dropped")):
                logs_dropped.add_metric([device], h["logs_dropped"])
            d = h.get("drops")
            if isinstance(d, dict):
                for reason, n in list(d.items())[:16]:
                    if isinstance(reason, str) and _number(n):
                        bdrops.add_metric([device, reason[:32]], n)
        return [polls, mem, uptime, reboots, age, requests, errors, oom, bdrops, reports_dropped, logs_dropped, ops]

    def _histogram(self, name: str, doc: str, labels: list[str], hist: Histograms, values: Any) -> Any:
        from prometheus_client.core import HistogramMetricFamily

        family = HistogramMetricFamily(PREFIX + name, doc, labels=labels)
        for label, buckets, total in hist.cumulative():
            family.add_metric(values(label), buckets, total)
        return family


def _counter(name: str, doc: str, labels: list[str] | None = None, *, value: float | None = None) -> Any:
    from prometheus_client.core import CounterMetricFamily

    return CounterMetricFamily(PREFIX + name, doc, value=value, labels=labels)


def _gauge(name: str, doc: str, labels: list[str] | None = None, *, value: float | None = None) -> Any:
    from prometheus_client.core import GaugeMetricFamily

    return GaugeMetricFamily(PREFIX + name, doc, value=value, labels=labels)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class MetricsFace:
    """A listener that serves `GET /metrics` and nothing else (`ndn-edge gateway --metrics HOST:PORT`)."""

    def __init__(self, view: MetricsView, listen: tuple[str, int]) -> None:
        self.view = view
        self.listen = listen
        self._runner: Any = None
        self._site: Any = None
        self._record: Path | None = None
        self.scrapes = 0

    async def start(self) -> str:
        """Listen; returns the metrics URL."""
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        host, port = self.listen
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as err:
            await runner.cleanup()
            raise Unavailable(f"cannot serve metrics on {host}:{port}: {err.strerror or err}; choose another "
                              "address with --metrics HOST:PORT") from err
        self._runner, self._site = runner, site
        if not is_loopback(host):
            event(log, "metrics_without_auth", logging.WARNING, host=host, port=self.address[1],
                  note="the metrics listener asks for no token; let only Prometheus reach it, or serve /metrics "
                       "on the HTTP API (--http), which needs one")
        event(log, "metrics_listening", url=self.url)
        return self.url

    @property
    def address(self) -> tuple[str, int]:
        sockets = getattr(self._site._server, "sockets", None) if self._site is not None else None
        if not sockets:
            raise RuntimeError("the metrics listener is not started")
        host, port = sockets[0].getsockname()[:2]
        return host, port

    @property
    def url(self) -> str:
        host, port = self.address
        return listener_url("http", host, port, "/metrics")

    def write_record(self, home_path: Path) -> None:
        """Record the URL in HOME/metrics.json (`{"url", "pid"}`, mode 0600)."""
        path = home_path / RECORD
        write_listener_record(path, self.url)
        self._record = path

    async def stop(self) -> None:
        if self._record is not None:
            remove_listener_record(self._record)
            self._record = None
        runner, self._runner, self._site = self._runner, None, None
        if runner is not None:
            await runner.cleanup()

    async def _metrics(self, request: Any) -> Any:
        from aiohttp import web

        self.scrapes += 1
        body, content_type = self.view.exposition()
        return web.Response(body=body, headers={"Content-Type": content_type})
