"""Structured logs for the gateway: one event per line on stderr, as `key=value` pairs or JSON.

Every record is an *event* (a short snake_case word such as `client_drop`) plus fields; `event(log, "started",
port=1234)` writes `ts=2024-05-01T12:00:00.123Z level=info logger=ndn_edge.daemon event=started port=1234`. The
gateway's loggers all live under `ndn_edge`.
Values with spaces, quotes or `=` are quoted JSON-style, so a line splits unambiguously on spaces.

Decisions: stdlib `logging` (applications embedding the gateway keep their own handlers; this module only offers
a formatter and `setup()`), fields travel in `extra={"fields": ...}` so ordinary `log.info("text")` calls from
other code still format. Secrets never go through here: records carry names and key ids, never keys.
Rejected: a third-party structured-logging library (one more dependency for twenty lines).
"""
from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

LOGGER = "ndn_edge"
_RESERVED = ("ts", "level", "logger", "event")


def event(log: logging.Logger, what: str, level: int = logging.INFO, /, **fields: Any) -> None:
    """Log event `what` with `fields` (cheap when the level is disabled; any field name is allowed)."""
    if log.isEnabledFor(level):
        log.log(level, what, extra={"fields": fields})


class KeyValueFormatter(logging.Formatter):
    """`ts=... level=... logger=... event=... key=value ...` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [f"ts={_iso(record.created)}", f"level={record.levelname.lower()}", f"logger={record.name}",
                 f"event={_kv_value(record.getMessage())}"]
        for key, value in getattr(record, "fields", {}).items():
            parts.append(f"{key}={_kv_value(value)}")
        if record.exc_info:
            parts.append(f"exc={_kv_value(self.formatException(record.exc_info))}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    """One JSON object per line with the same keys as `KeyValueFormatter`."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {"ts": _iso(record.created), "level": record.levelname.lower(),
                               "logger": record.name, "event": record.getMessage()}
        for key, value in getattr(record, "fields", {}).items():
            obj[f"_{key}" if key in _RESERVED else key] = value
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, default=str, separators=(",", ":"))


def setup(level: str = "info", fmt: str = "kv", stream: TextIO | None = None) -> logging.Handler:
    """Send the `ndn_edge` loggers to `stream` (stderr) in format `kv` or `json`; returns the handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger(LOGGER)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    root.propagate = False
    return handler


class Throttle:
    """At most one log line per key every `interval_s`, saying how many were folded into it.

    For what the network can cause at any rate (drops, a worker's fault on one packet): every occurrence is
    counted by its caller, but the log gets one line per interval per key, so no input can fill it.
    """

    def __init__(self, log: logging.Logger, interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log = log
        self._interval_s = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._folded: dict[str, int] = {}

    def due(self, key: str) -> int | None:
        """None if `key` was logged within the interval (counted as folded); else how many were folded since."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval_s:
            self._folded[key] = self._folded.get(key, 0) + 1
            return None
        if len(self._last) > 1024:  # keys come from a fixed vocabulary; this only bounds a caller's mistake
            self._last.clear()
        self._last[key] = now
        return self._folded.pop(key, 0)

    def event(self, key: str, what: str, level: int = logging.WARNING, /, **fields: Any) -> bool:
        """Log event `what` unless `key` was logged within the interval; True if it was logged."""
        folded = self.due(key)
        if folded is None:
            return False
        event(self._log, what, level, folded=folded, **fields)
        return True

    def fault(self, where: str, err: BaseException, **fields: Any) -> None:
        """A worker survived `err` while handling one input at `where`: one ERROR line (with the traceback)
        per interval per place; the caller counts every occurrence."""
        folded = self.due(where)
        if folded is None:
            return
        self._log.error("worker_fault", exc_info=(type(err), err, err.__traceback__),
                        extra={"fields": {"where": where, "error": f"{type(err).__name__}: {err}",
                                          "folded": folded, **fields}})


def teardown(handler: logging.Handler) -> None:
    """Undo `setup()`."""
    logging.getLogger(LOGGER).removeHandler(handler)
    handler.close()


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


def _kv_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return repr(value)
    text = value if isinstance(value, str) else json.dumps(value, default=str, separators=(",", ":"))
    if text and not any(c in text for c in ' "=\n\t\\'):
        return text
    return json.dumps(text)
