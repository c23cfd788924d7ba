"""Device logs on the host: the `/<site>/_log` reports devices send (`dev.log`, and the error of a handler that
raised), stored per device in the store, forwarded into the gateway's own log, and read by `ndn-edge logs`, the
`logs` verb and the HTTP API (docs/protocol.md "Device logs", docs/gateway-protocol.md).

    logs = DeviceLogs(store, site="edge", intake=intake)
    intake.handlers[LOG] = logs.on_report          # called in the intake's transaction, exactly once per report
    page = logs.query(visible=lambda device: True, pattern=("sim", "*"), tail=True, limit=100)
    await logs.wait(5.0)                           # until new entries are stored (or the time is up)

An entry is `{"id", "device", "boot", "seq", "time", "level", "level_no", "message", "trace_id", "span_id"}` plus
`"gap": n` when n entries of that device are missing right before it (dropped by the board while it could not
send, a report the board gave up on, or entries over this gateway's rate for the device). `time` is the gateway's
clock: when the report arrived, less the entry's age the device reported (a retransmitted report makes entries
look up to a few seconds older than they are). `id` orders entries as they were stored; `after=id` resumes there.

Decisions:
- The table is this module's own (`Store.ensure_schema`), bounded: the newest `KEEP_PER_DEVICE` entries of each
  device and `KEEP_TOTAL` in all; older ones are deleted as new ones come.
- A device is rate-limited here too (`RATE_PER_S` entries a second, bursts of `BURST`), whatever its firmware
  does: a device over it has the excess counted, not stored (the next stored entry carries the `gap`), and its
  report acknowledged all the same, so it moves on. A malformed report, or entry, is counted and acknowledged:
  sending it again would not make it valid.
- Messages are cut to `MAX_MESSAGE` characters and sent to the gateway's log with the device's level (logger
  `ndn_edge.devicelog`, event `device_log`, the device, its trace id): the log's formatter quotes them, so a
  device cannot forge log lines.
Rejected: storing entries in the pub/sub tables as a topic (a log has no subscribers to queue for, and needs its
own bound per device and its own filters).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from ndn_edge import names
from ndn_edge.devices.reports import ACK, Report
from ndn_edge.logs import event

log = logging.getLogger("ndn_edge.devicelog")

KEEP_PER_DEVICE = 1000
KEEP_TOTAL = 100_000
PRUNE_EVERY = 100          # stored entries of one device between two prunes of its rows
RATE_PER_S = 50.0          # entries a device may have stored per second, sustained ...
BURST = 500                # ... and at once
MAX_ENTRIES = 64           # entries in one report; a report with more is malformed
MAX_MESSAGE = 512          # characters of a message kept
MAX_SCAN = 5000            # rows one query reads
LEVELS = ((40, "error"), (30, "warning"), (20, "info"), (0, "debug"))
LEVEL_NUMBERS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
_LOG_LEVELS = {"error": logging.ERROR, "warning": logging.WARNING, "info": logging.INFO, "debug": logging.DEBUG}
_COLUMNS = "id, device, boot, seq, level, time, message, trace_id, span_id, gap"

# This module's own table (Store.ensure_schema): MIGRATIONS[i] takes it from version i to i+1.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE device_logs (
            id INTEGER PRIMARY KEY,
            device TEXT NOT NULL,
            boot TEXT NOT NULL,
            seq INTEGER NOT NULL,
            level INTEGER NOT NULL,
            time REAL NOT NULL,
            message TEXT NOT NULL,
            trace_id TEXT,
            span_id TEXT,
            gap INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX device_logs_device ON device_logs (device, id)",
        "CREATE INDEX device_logs_trace ON device_logs (trace_id) WHERE trace_id IS NOT NULL",
    ),
)


def level_name(level: int) -> str:
    """debug, info, warning or error for a level number (Python's logging numbers)."""
    return next(name for floor, name in LEVELS if level >= floor)


class _Device:
    """What is kept in memory per device: its position in its numbering, its rate bucket, its counters."""

    __slots__ = ("at", "boot", "dropped", "seq", "tokens", "unpruned")

    def __init__(self, boot: str | None, seq: int, now: float) -> None:
        self.boot = boot
        self.seq = seq  # the last entry stored or accounted for
        self.tokens = float(BURST)
        self.at = now
        self.unpruned = 0
        self.dropped = 0  # the board's own count of entries it dropped (its last report)


class DeviceLogs:
    """Device log entries in, stored, forwarded, queried and followed."""

    def __init__(self, store: Any, *, site: str, intake: Any = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.site = site.strip("/")
        self._store = store
        self._intake = intake
        self._clock = clock
        self._devices: dict[str, _Device] = {}
        self._changed: asyncio.Event | None = None
        self._since_global_prune = 0
        self.counters: dict[str, int] = {"reports": 0, "entries": 0, "stored": 0, "gaps": 0, "lost": 0,
                                         "rate_limited": 0, "malformed": 0}
        self.levels: dict[str, int] = dict.fromkeys(LEVEL_NUMBERS, 0)  # entries stored, by level

    def start(self) -> None:
        """Create (or migrate) the table."""
        self._store.ensure_schema("device_logs", MIGRATIONS)

    def dropped_by_device(self) -> dict[str, int]:
        """Each device's own count of entries it dropped, as its last report said."""
        return {name: d.dropped for name, d in self._devices.items()}

    # -- intake (inside its transaction)

    def on_report(self, db: Any, report: Report) -> str:
        """Store one log report's entries; always ACK (a report is never made valid by sending it again)."""
        self.counters["reports"] += 1
        p = report.params
        boot, entries, dropped = p.get("boot"), p.get("entries"), p.get("dropped", 0)
        if (not isinstance(boot, str) or not 0 < len(boot) <= 16 or not isinstance(entries, list)
                or len(entries) > MAX_ENTRIES or isinstance(dropped, bool) or not isinstance(dropped, int)):
            self.counters["malformed"] += 1
            event(log, "log_report_dropped", logging.DEBUG, device=report.device.name, reason="malformed")
            return ACK
        name = report.device.name
        state = self._state(db, name)
        state.dropped = max(0, dropped)
        self._refill(state)
        rows = []
        for raw in entries:
            entry = _entry(raw)
            if entry is None:
                self.counters["malformed"] += 1
                continue
            self.counters["entries"] += 1
            seq, age_ms, level, message, trace_id, span_id = entry
            if state.tokens < 1.0:
                self.counters["rate_limited"] += 1
                continue  # not accounted for: the next entry stored shows it in its gap
            state.tokens -= 1.0
            gap = 0
            if boot == state.boot:
                if seq > state.seq + 1:
                    gap = seq - state.seq - 1
            elif seq > 1:
                gap = seq - 1  # this boot's first entries never arrived
            if gap:
                self.counters["gaps"] += 1
                self.counters["lost"] += gap
            if boot != state.boot or seq > state.seq:
                state.boot, state.seq = boot, seq
            rows.append((name, boot, seq, level, report.received - age_ms / 1000, message, trace_id, span_id, gap))
        if not rows:
            return ACK
        db.executemany("INSERT INTO device_logs (device, boot, seq, level, time, message, trace_id, span_id, gap) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        self.counters["stored"] += len(rows)
        state.unpruned += len(rows)
        self._since_global_prune += len(rows)
        if state.unpruned >= PRUNE_EVERY:
            state.unpruned = 0
            db.execute("DELETE FROM device_logs WHERE device = ? AND id <= (SELECT id FROM device_logs WHERE "
                       "device = ? ORDER BY id DESC LIMIT 1 OFFSET ?)", (name, name, KEEP_PER_DEVICE))
        if self._since_global_prune >= PRUNE_EVERY * 10:
            self._since_global_prune = 0
            db.execute("DELETE FROM device_logs WHERE id <= (SELECT id FROM device_logs ORDER BY id DESC LIMIT 1 "
                       "OFFSET ?)", (KEEP_TOTAL,))
        defer = self._intake.after_commit if self._intake is not None else _now
        defer(lambda: self._stored(name, rows))
        return ACK

    def _state(self, db: Any, name: str) -> _Device:
        state = self._devices.get(name)
        if state is None:
            row = db.execute("SELECT boot, seq FROM device_logs WHERE device = ? ORDER BY id DESC LIMIT 1",
                             (name,)).fetchone()
            state = self._devices[name] = _Device(row[0] if row else None, row[1] if row else 0, self._clock())
        return state

    def _refill(self, state: _Device) -> None:
        now = self._clock()
        state.tokens = min(float(BURST), state.tokens + (now - state.at) * RATE_PER_S)
        state.at = now

    def _stored(self, name: str, rows: list[tuple[Any, ...]]) -> None:
        """After the commit: into the gateway's log, and wake those who follow."""
        device = "/".join(names.relative(name, self.site))
        for _, boot, seq, level, _, message, trace_id, _, gap in rows:
            level_text = level_name(level)
            self.levels[level_text] += 1
            fields: dict[str, Any] = {"device": device, "seq": seq, "boot": boot, "message": message}
            if trace_id:
                fields["trace_id"] = trace_id
            if gap:
                fields["gap"] = gap
            event(log, "device_log", _LOG_LEVELS[level_text], **fields)
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()

    # -- reading

    async def wait(self, timeout_s: float) -> None:
        """Until entries are stored, or `timeout_s`."""
        if self._changed is None:
            self._changed = asyncio.Event()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout_s)
        except asyncio.TimeoutError:
            pass

    def query(self, *, visible: Callable[[tuple[str, ...]], bool], pattern: Sequence[str] | None = None,
              after: int = 0, since: float | None = None, level: int = 0, trace_id: str | None = None,
              limit: int = 100, tail: bool = False) -> tuple[list[dict[str, Any]], int]:
        """Entries of the devices `visible` (relative name) allows and `pattern` matches, oldest first, and the
        cursor to pass as `after` next time. With `tail` (and no `after`), the last `limit` of them."""
        where: list[str] = ["id > ?"]
        args: list[Any] = [after]
        if since is not None:
            where.append("time >= ?")
            args.append(since)
        if level > 0:
            where.append("level >= ?")
            args.append(level)
        if trace_id is not None:
            where.append("trace_id = ?")
            args.append(trace_id)
        newest_first = tail and after == 0
        rows = self._store.query(f"SELECT {_COLUMNS} FROM device_logs WHERE {' AND '.join(where)} ORDER BY id "
                                 f"{'DESC' if newest_first else 'ASC'} LIMIT ?", (*args, MAX_SCAN))
        out: list[dict[str, Any]] = []
        cursor = after
        seen: dict[str, bool] = {}
        for row in rows:
            if not newest_first:
                cursor = row[0]
            rel = names.relative(row[1], self.site)
            ok = seen.get(row[1])
            if ok is None:
                ok = seen[row[1]] = visible(rel) and (pattern is None or names.matches(pattern, rel))
            if not ok:
                continue
            out.append(_as_entry(row, "/".join(rel)))
            if len(out) >= limit:
                break
        if newest_first:
            out.reverse()
            cursor = rows[0][0] if rows else self._last_id()
        return out, cursor

    def _last_id(self) -> int:
        row = self._store.query("SELECT MAX(id) FROM device_logs")
        return int(row[0][0] or 0) if row else 0


def _entry(raw: Any) -> tuple[int, int, int, str, str | None, str | None] | None:
    """(seq, age_ms, level, message, trace id, span id) of one entry `[seq, age_ms, level, text(, trace)]`;
    None when malformed."""
    if not isinstance(raw, list) or len(raw) not in (4, 5):
        return None
    seq, age_ms, level, message = raw[:4]
    if any(isinstance(v, bool) or not isinstance(v, int) for v in (seq, age_ms, level)):
        return None
    if not 0 < seq < 1 << 32 or not 0 <= age_ms < 1 << 31 or not 0 <= level <= 100 or not isinstance(message, str):
        return None
    trace_id = span_id = None
    if len(raw) == 5:
        trace = raw[4]
        if not isinstance(trace, bytes) or len(trace) != 24:
            return None
        trace_id, span_id = trace[:16].hex(), trace[16:].hex()
    return seq, age_ms, level, message[:MAX_MESSAGE], trace_id, span_id


def _as_entry(row: tuple[Any, ...], device: str) -> dict[str, Any]:
    entry_id, _, boot, seq, level, at, message, trace_id, span_id, gap = row
    out = {"id": entry_id, "device": device, "boot": boot, "seq": seq, "time": at, "level": level_name(level),
           "level_no": level, "message": message, "trace_id": trace_id, "span_id": span_id}
    if gap:
        out["gap"] = gap
    return out


def _now(fn: Callable[[], None]) -> None:
    fn()
