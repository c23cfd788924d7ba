"""The gateway's HTTP face: the REST API and the dashboard on aiohttp, in the gateway's own event loop.

    face = HttpFace.build(store, device_side, patterns, site="edge", options=HttpOptions(("127.0.0.1", 8080)))
    url = await face.start()        # "http://127.0.0.1:8080"
    await face.stop()

Decisions:
- Part of the gateway process, not a second program: the routes run the same verb table (`Verbs`) on the same
  device side and patterns as the NDN client face, in the same loop, with no hop in between.
- Off unless asked for (`ndn-edge gateway --http HOST:PORT`, or `"http"` in HOME/config.json). Listening on
  anything but loopback without TLS logs a warning: tokens would cross the network in clear. `--http-cert` and
  `--http-key` serve HTTPS with the standard library's `ssl` (TLS 1.2 at least).
- The address is recorded in HOME/http.json (`{"url", "pid"}`, mode 0600, removed at a clean stop), beside
  gateway.json, so tools (`ndn-edge up`, `ndn-edge client token`) can print the dashboard's URL.
- No access log: aiohttp's would be one line per request on the hot path, and its format includes the query
  string; requests are counted (`metrics`) instead, and nothing that holds a token is ever logged.
- At stop, event streams are cancelled first, then the runner is cleaned up with a short grace period.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ndn_edge.clients.verbs import Verbs
from ndn_edge.errors import Unavailable
from ndn_edge.http.api import Api, neutral_server_header
from ndn_edge.http.options import HttpOptions
from ndn_edge.http.tokens import Tokens
from ndn_edge.limits import Limits
from ndn_edge.logs import Throttle, event
from ndn_edge.state.home import is_loopback, listener_url, remove_listener_record, write_listener_record

log = logging.getLogger("ndn_edge.http")

RECORD = "http.json"
SHUTDOWN_S = 1.0
MALFORMED_LOG_EVERY_S = 60.0  # one line a minute about requests the HTTP parser refused (they are counted)


class _MalformedRequests(logging.Filter):
    """On aiohttp's server logger: a request its parser refuses (an oversized header, a bad method, garbage) is
    answered 400 by aiohttp before any route runs, and logged with a full traceback, each time. Anyone who can
    reach the port could fill the log with them. Here they are counted (`malformed` in the face's stats) and
    logged as one line at most once a minute; anything else aiohttp logs (a bug) passes unchanged."""

    def __init__(self, stats: dict[str, int]) -> None:
        super().__init__()
        self._stats = stats
        self._throttle = Throttle(log, MALFORMED_LOG_EVERY_S)

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        self._stats["malformed"] = self._stats.get("malformed", 0) + 1
        self._throttle.event("malformed", "http_request_malformed", logging.INFO,
                             error=f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"[:200])
        return False


class HttpFace:
    """The REST API and the dashboard, served by aiohttp on one listening socket."""

    def __init__(self, api: Api, options: HttpOptions) -> None:
        self.api = api
        self.options = options
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._record: Path | None = None
        self._malformed: _MalformedRequests | None = None

    @classmethod
    def build(cls, store: Any, devices: Any, patterns: Any, *, site: str, options: HttpOptions,
              limits: Limits | None = None, obs: Any = None, metrics: Any = None) -> HttpFace:
        """A face whose routes run the verbs on `devices` and `patterns` (calls counted and traced by `obs`);
        `GET /metrics` serves `metrics` (a MetricsView) when given."""
        face: HttpFace

        def counters() -> dict[str, Any]:
            out: dict[str, Any] = {"http": face.api.metrics(), "devices": devices.metrics()}
            if patterns is not None:
                out["patterns"] = patterns.metrics()
            if obs is not None:
                out["observability"] = obs.counters()
            return out

        verbs = Verbs(devices, patterns, site=site, counters=counters, obs=obs)
        face = cls(Api(verbs, Tokens(store), site=site, limits=limits, metrics=metrics), options)
        return face

    async def start(self) -> str:
        """Listen; returns the base URL."""
        context = self.options.ssl_context()
        host, port = self.options.listen
        neutral_server_header()
        if self._malformed is None:
            self._malformed = _MalformedRequests(self.api.stats)
            logging.getLogger("aiohttp.server").addFilter(self._malformed)
        runner = web.AppRunner(self.api.application(), access_log=None, shutdown_timeout=SHUTDOWN_S,
                               handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=context, reuse_address=True)
        try:
            await site.start()
        except OSError as err:
            await runner.cleanup()
            raise Unavailable(f"cannot serve HTTP on {host}:{port}: {err.strerror or err}; choose another address "
                              "with --http HOST:PORT") from err
        self._runner, self._site = runner, site
        if not is_loopback(host) and not self.options.tls:
            event(log, "http_without_tls", logging.WARNING, host=host, port=self.address[1],
                  note="bearer tokens cross the network in clear: give --http-cert and --http-key, or listen "
                       "on 127.0.0.1 behind a TLS proxy")
        event(log, "http_listening", url=self.url, tls=self.options.tls)
        return self.url

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the socket is bound to."""
        server = self._site._server if self._site is not None else None
        sockets = getattr(server, "sockets", None)
        if not sockets:
            raise RuntimeError("the HTTP face is not started")
        host, port = sockets[0].getsockname()[:2]
        return host, port

    @property
    def url(self) -> str:
        """The base URL: http(s)://HOST:PORT (a wildcard address shown as loopback)."""
        host, port = self.address
        return listener_url("https" if self.options.tls else "http", host, port)

    def write_record(self, home_path: Path) -> Path:
        """Record the URL in HOME/http.json (mode 0600)."""
        path = home_path / RECORD
        write_listener_record(path, self.url)
        self._record = path
        return path

    async def stop(self) -> None:
        """Close the event streams and the listener; remove the record (idempotent)."""
        if self._record is not None:
            remove_listener_record(self._record)
            self._record = None
        streams = list(self.api.streams)
        for task in streams:
            task.cancel()
        runner, self._runner, self._site = self._runner, None, None
        if runner is not None:
            await runner.cleanup()
            event(log, "http_stopped", **self.api.stats)
        if self._malformed is not None:
            logging.getLogger("aiohttp.server").removeFilter(self._malformed)
            self._malformed = None


def read_record(home_path: Path) -> str | None:
    """The URL HOME/http.json records, or None."""
    try:
        url = json.loads((home_path / RECORD).read_text()).get("url")
    except (OSError, ValueError, AttributeError):
        return None
    return url if isinstance(url, str) else None
