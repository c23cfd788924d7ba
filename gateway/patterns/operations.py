"""Operations the gateway keeps in its store: long-running device operations, and calls queued for devices that
sleep or are away.

Owns the `operations` table and everything that moves a row through its states:

    queued --(device awake)--> running --> done | failed          a queued call (kind "call")
    starting --(device answers {"op": id})--> running --> done | failed | cancelled     a long-running op ("op")
    queued --(ttl passes)--> failed (DEADLINE_EXCEEDED)           queued --(cancel)--> cancelled

    ops = Operations(store, device_side, site="edge")
    info = await ops.start_op("alice", "sim/1", "slow", {"seconds": 3}, timeout_s=5)   # {"op": id, "state", ...}
    info = await ops.get(info["op"], wait_ms=20000)                  # long-poll until it changes
    info = ops.enqueue("alice", "sim/2", "echo", {"x": 1}, ttl_s=300)  # delivered when sim/2 is awake

Decisions:
- The device reports an operation's end itself (`/<site>/_op` reports, through `ndn_edge.devices.reports`); the row is
  updated in the intake's transaction and the report acknowledged after the commit. Progress reports update the
  row too (they are never acknowledged). A final report for an operation whose start reply has not been
  processed yet is left unacknowledged (`LATER`): the device sends it again, by then the row knows the device's
  operation id.
- Nothing depends on the client staying connected: the state is in the store; `get` reads it (and can wait for
  a change), `ops` lists it.
- After a gateway restart, operations that were running are asked about (`<device>/_op_get`) as soon as their
  device is online; so are those of a device that joins again (it may have restarted and lost them: NOT_FOUND
  from `_op_get` fails the operation with UNAVAILABLE), and any running operation not heard of for
  `RECONCILE_S`. Operations being started when the gateway stopped fail: the device may or may not have started
  them, and the gateway cannot tell.
- Queued calls are delivered in order, one at a time per device, when it is online: at once if it is, else
  when it announces itself (the directory's `join`, which waking from sleep is), checked again every `SWEEP_S`.
  A call the device did not answer is queued again if the service is idempotent; a not-idempotent one fails
  with DEADLINE_EXCEEDED saying it may have run (running it again could run it twice). A queued call expires at
  its TTL with DEADLINE_EXCEEDED.
- Ids are the creation time in milliseconds (12 hex digits) and 4 random bytes: unique, unguessable enough for
  listing order, and sorted by creation, so pages are keyset-paginated on the id (newest first).
- Finished operations are kept `KEEP_FINISHED_S` (7 days), then deleted.
Rejected: polling devices for progress (the device reports; polling only repairs lost reports) and keeping
operations in memory only (a restart would lose every handle clients hold).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any

import cbor2

from ndn_edge.devices.descriptions import check_args, find_service
from ndn_edge.devices.reports import ACK, DROP, LATER, SILENT, Report
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
from ndn_edge.limits import Limits
from ndn_edge.logs import event

log = logging.getLogger("ndn_edge.operations")

FINAL = frozenset({"done", "failed", "cancelled"})
DEFAULT_TTL_S = 300.0
MAX_TTL_S = 7 * 86400.0
DELIVERY_TIMEOUT_S = 10.0
RECONCILE_S = 30.0
RECHECK_S = (0.5, 8.0)  # an adopted operation's `_op_get` that failed is tried again: first and longest wait
KEEP_FINISHED_S = 7 * 86400.0
SWEEP_S = 0.5
CLEANUP_EVERY_S = 60.0
# The operations table, this module's own (Store.ensure_schema): MIGRATIONS[i] takes it from version i to i+1.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE operations (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('op', 'call')),
            client TEXT NOT NULL,
            device TEXT NOT NULL,
            service TEXT NOT NULL,
            args BLOB NOT NULL,
            state TEXT NOT NULL
                CHECK (state IN ('queued', 'starting', 'running', 'done', 'failed', 'cancelled')),
            device_op TEXT,
            progress REAL,
            note TEXT,
            result BLOB,
            error TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            expires_at REAL
        )""",
        "CREATE INDEX operations_device_op ON operations (device, device_op)",
        "CREATE INDEX operations_state ON operations (state)",
    ),
    (  # per-client quotas count a client's operations by state
        "CREATE INDEX operations_client ON operations (client, state)",
    ),
)
_COLUMNS = ("id, kind, client, device, service, args, state, device_op, progress, note, result, error, created_at, "
            "updated_at, expires_at")


class Operations:
    """Long-running operations and queued calls, in the store, moved along by device reports and events."""

    def __init__(self, store: Any, devices: Any, *, site: str, limits: Limits | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.site = site.strip("/")
        self.limits = limits or Limits()
        self._store = store
        self._devices = devices
        self._clock = clock
        self._events: dict[str, asyncio.Event] = {}
        self._delivering: dict[str, asyncio.Task[None]] = {}
        self._checking: dict[str, asyncio.Task[None]] = {}
        self._due: set[str] = set()  # running operations to ask the device about when it is online
        # Adopted running operations (a takeover) not yet checked with their device: op id -> (next try, wait).
        # Their `_op_get` is tried again until answered, not only after RECONCILE_S: the gateway that kept them
        # died, so a report of their end may have been acknowledged by it and never reach this one.
        self._recheck: dict[str, tuple[float, float]] = {}
        self._task: asyncio.Task[None] | None = None
        self.id_tag: str | None = None  # a federation's gateway tag (4 hex), ending every id: its owner is known
        # A federation's (opsync.py): told of every change (inside its transaction), and awaited before a started
        # operation's info is returned, so another gateway knows the operation before its client does.
        self.on_change: Callable[[str], None] | None = None
        self.mirror: Callable[[str], Awaitable[None]] | None = None
        self.counters: dict[str, int] = {"started": 0, "queued": 0, "delivered": 0, "expired": 0, "reports": 0,
                                         "orphan_reports": 0, "reconciled": 0, "cancelled": 0, "over_quota": 0}

    # -- lifecycle

    async def start(self) -> None:
        """Recover what a stop interrupted; start the sweeper (expiry, delivery, reconciliation)."""
        if self._task is not None:
            return
        self._store.ensure_schema("operations", MIGRATIONS, adopt="operations")
        self._recover(self._rows("WHERE state IN ('starting', 'running')"))
        self._task = asyncio.create_task(self._sweep(), name="operations-sweep")

    def _recover(self, rows: list[tuple[Any, ...]]) -> None:
        """Operations this gateway finds in the middle of something it did not see end (a restart, a takeover):
        one being started fails, a call being delivered is queued again if idempotent (else fails), a running
        operation is asked about as soon as its device is online."""
        for row in rows:
            op = _Row(row)
            if op.state == "starting":
                self._finish(op.id, "failed", error=Internal(
                    "the gateway stopped while starting this operation; the device may have started it"))
            elif op.kind == "call":
                if self._idempotent(op.device, op.service):
                    self._update(op.id, state="queued")
                else:
                    self._finish(op.id, "failed", error=DeadlineExceeded(
                        "the gateway stopped while delivering this call; it may have run (the service is not "
                        "idempotent, so it is not sent again)"))
            elif op.state == "running":
                self._due.add(op.id)

    async def stop(self) -> None:
        """Stop the sweeper and the deliveries; wake waiters."""
        tasks = [t for t in (self._task, *self._delivering.values(), *self._checking.values()) if t is not None]
        self._task = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for ev in self._events.values():
            ev.set()
        self._events.clear()

    # -- client verbs

    async def start_op(self, client: str, device: str, service: str, args: dict[str, Any] | None, *,
                       timeout_s: float, trace: Any = None) -> dict[str, Any]:
        """Start a long-running service; the operation's info once the device has accepted it."""
        name = self._resolve(device)
        self._within_quota(client, "kind = 'op' AND state IN ('starting', 'running')",
                           self.limits.operations_per_client, "long-running operations running",
                           "operations_per_client")
        svc = await self._service(name, service, timeout_s)
        if not svc.get("long_running"):
            raise InvalidArgument(f"{self._rel(name)}/{service} is not a long-running service; call it with "
                                  "`call` (services declared long_running=True are started with `start`)")
        check_args(svc, args, f"{self._rel(name)}/{service}")
        op_id = self._insert("op", client, name, service, args, "starting")
        try:
            reply = await self._devices.call(name, service, args, timeout_s=timeout_s, trace=trace)
        except BaseException:
            self._delete(op_id)
            raise
        device_op = reply.value.get("op") if isinstance(reply.value, dict) else None
        if not isinstance(device_op, str) or not device_op:
            self._finish(op_id, "failed", error=Internal(f"{name}/{service} answered without an operation id: "
                                                         f"{reply.value!r}"))
        else:
            self._update(op_id, state="running", device_op=device_op)
            self.counters["started"] += 1
        if self.mirror is not None:
            await self.mirror(op_id)
        return self.info(op_id)

    def enqueue(self, client: str, device: str, service: str, args: dict[str, Any] | None, *,
                ttl_s: float = DEFAULT_TTL_S) -> dict[str, Any]:
        """Queue a call for delivery when the device is online (at once if it is); its info."""
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)) or not 0 < ttl_s <= MAX_TTL_S:
            raise InvalidArgument(f"ttl must be a number of seconds from 0 to {MAX_TTL_S:.0f}, got {ttl_s!r}")
        name = self._resolve(device)
        record = self._store.device(name)
        if record is None:
            raise NotFound(f"no device {name}; `ndn-edge devices` lists the known ones")
        self._within_quota(client, "kind = 'call' AND state = 'queued'", self.limits.queued_calls_per_client,
                           "queued calls", "queued_calls_per_client")
        desc = record.desc if isinstance(record.desc, dict) else None
        svc = find_service(desc, service)
        if desc is not None and svc is None:
            raise NotFound(f"device {name} has no service {service!r}")
        check_args(svc, args, f"{self._rel(name)}/{service}")
        op_id = self._insert("call", client, name, service, args, "queued", expires_at=self._clock() + ttl_s)
        self.counters["queued"] += 1
        if self._devices.is_online(name):
            self._deliver_soon(name)
        return self.info(op_id)

    async def get(self, op_id: str, *, wait_ms: int = 0) -> dict[str, Any]:
        """The operation's info; with `wait_ms`, after its next change (or at once if it is finished)."""
        info = self.info(op_id)
        if wait_ms > 0 and info["state"] not in FINAL:
            ev = self._events.setdefault(op_id, asyncio.Event())
            try:
                await asyncio.wait_for(ev.wait(), wait_ms / 1000)
            except asyncio.TimeoutError:
                pass
            info = self.info(op_id)
        return info

    async def cancel(self, op_id: str, *, timeout_s: float) -> dict[str, Any]:
        """Cancel a queued call or a running operation; its info (a running one ends `cancelled` when the
        device reports it)."""
        op = self._get_row(op_id)
        if op.state in FINAL:
            return self.info(op_id)
        if op.state == "queued":
            self._finish(op_id, "cancelled", error=None)
            self.counters["cancelled"] += 1
            return self.info(op_id)
        if op.kind == "op" and op.state == "running" and op.device_op:
            try:
                await self._devices.call(op.device, "_op_cancel", {"op": op.device_op}, timeout_s=timeout_s)
                self._update(op_id, note="cancelling")
            except NotFound:  # it ended meanwhile, or the device forgot it
                await self._reconcile(op_id)
            self.counters["cancelled"] += 1
            return self.info(op_id)
        raise Unavailable(f"operation {op_id} is being {'started' if op.state == 'starting' else 'delivered'}; "
                          "cancel again in a moment")

    def page(self, page_size: int, page_token: str | None,
             visible: Callable[[str, str], bool]) -> tuple[list[dict[str, Any]], str | None]:
        """One page of operations, newest first, those `visible(device, service)` allows; and the next token."""
        if page_token is not None and (not isinstance(page_token, str) or not page_token.isalnum()):
            raise InvalidArgument(f"invalid page_token {page_token!r}: pass the next_page_token of a previous "
                                  "page unchanged")
        where, params = ("WHERE id < ?", (page_token,)) if page_token else ("", ())
        rows = self._rows(f"{where} ORDER BY id DESC LIMIT ?", (*params, page_size + 1))
        more = len(rows) > page_size
        rows = rows[:page_size]
        items = [_Row(r).info(self) for r in rows if visible(r[3], r[4])]
        return items, (rows[-1][0] if more and rows else None)

    def target(self, op_id: str) -> tuple[str, str]:
        """(device, service) of an operation, for access checks; NotFound if there is none."""
        op = self._get_row(op_id)
        return op.device, op.service

    def info(self, op_id: str) -> dict[str, Any]:
        """What clients see of an operation."""
        return self._get_row(op_id).info(self)

    # -- a federation's (ndn_edge.federation.opsync): rows as they are mirrored, and rows taken over

    def changed_since(self, since: float) -> list[tuple[Any, ...]]:
        """The rows updated at or after `since` (columns as `COLUMNS`)."""
        return self._rows("WHERE updated_at >= ?", (since,))

    def exists(self, op_id: Any) -> bool:
        return isinstance(op_id, str) and bool(self._store.query("SELECT 1 FROM operations WHERE id = ?", (op_id,)))

    def row_info(self, row: tuple[Any, ...]) -> dict[str, Any]:
        """What clients see of a row (columns as `COLUMNS`) that another gateway keeps."""
        return _Row(row).info(self)

    def rows(self, ids: list[str]) -> list[tuple[Any, ...]]:
        """The rows of these operations (columns as `COLUMNS`), those that exist."""
        return [row for op_id in ids for row in self._rows("WHERE id = ?", (op_id,))]

    def adopt(self, rows: list[tuple[Any, ...]]) -> list[str]:
        """Keep the rows another gateway kept (it died, and this one serves their device now): inserted as they
        were, then recovered as after a restart: a running operation is asked about (`_op_get`) as soon as its
        device is online, and again after a failure until the device answers; its device's reports find its row.
        The ids of those inserted (a row known here already is not)."""
        taken: list[str] = []
        with self._store.transaction() as db:
            for row in rows:
                marks = ", ".join("?" * len(row))
                cur = db.execute(f"INSERT OR IGNORE INTO operations ({_COLUMNS}) VALUES ({marks})", row)
                if cur.rowcount:
                    taken.append(row[0])
        if taken:
            now = self._clock()
            self._recheck.update((r[0], (now, RECHECK_S[0])) for r in rows
                                 if r[0] in taken and r[6] == "running" and r[1] == "op")
            self._recover([r for r in rows if r[0] in taken and r[6] in ("starting", "running")])
            for op_id in taken:
                self._changed(op_id)
            queued = {r[3] for r in rows if r[0] in taken and r[6] == "queued"}
            for device in queued:
                if self._devices.is_online(device):
                    self._deliver_soon(device)
        return taken

    # -- device reports (in the intake's transaction) and directory events

    def on_report(self, db: Any, report: Report) -> str:
        """Apply an operation report; the intake's verdict."""
        p = report.params
        device_op, state = p.get("op"), p.get("state")
        if not isinstance(device_op, str) or state not in ("running", *FINAL):
            return DROP
        self.counters["reports"] += 1
        row = db.execute("SELECT id, state FROM operations WHERE device = ? AND device_op = ? AND kind = 'op'",
                         (report.device.name, device_op)).fetchone()
        if row is None:
            self.counters["orphan_reports"] += 1
            return LATER if state in FINAL else DROP
        op_id, current = row
        if current in FINAL:
            return ACK
        self._apply(db, op_id, p)
        return ACK if state in FINAL else SILENT

    def on_event(self, change: dict[str, Any]) -> None:
        """A directory event: a device that joins gets its queued calls, and its running operations checked."""
        if change.get("event") != "join" or not isinstance(change.get("device"), str):
            return
        device = change["device"]
        self._deliver_soon(device)
        for row in self._store.query("SELECT id FROM operations WHERE device = ? AND kind = 'op' AND "
                                     "state = 'running'", (device,)):
            self._due.add(row[0])

    # -- state changes

    def _apply(self, db: Any, op_id: str, p: dict[str, Any]) -> None:
        state = p.get("state")
        progress = p.get("progress")
        fields: dict[str, Any] = {"updated_at": self._clock()}
        if isinstance(progress, (int, float)) and not isinstance(progress, bool):
            fields["progress"] = float(progress)
        if isinstance(p.get("note"), str):
            fields["note"] = p["note"]
        if state in FINAL:
            fields["state"] = state
            if state == "done":
                fields["result"] = cbor2.dumps(p.get("result"))
            else:
                err = p.get("error") if isinstance(p.get("error"), dict) else None
                if err is None and state == "failed":
                    err = {"code": "INTERNAL", "message": "the device reported a failure without an error"}
                if err is not None:
                    fields["error"] = json.dumps({"code": str(err.get("code")), "message": str(err.get("message"))})
        sets = ", ".join(f"{k} = ?" for k in fields)
        db.execute(f"UPDATE operations SET {sets} WHERE id = ?", (*fields.values(), op_id))
        self._changed(op_id)

    def _changed(self, op_id: str) -> None:
        if self.on_change is not None:
            self.on_change(op_id)
        ev = self._events.pop(op_id, None)
        if ev is not None:
            ev.set()

    def _update(self, op_id: str, **fields: Any) -> None:
        fields["updated_at"] = self._clock()
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._store.transaction() as db:
            db.execute(f"UPDATE operations SET {sets} WHERE id = ?", (*fields.values(), op_id))
        self._changed(op_id)

    def _finish(self, op_id: str, state: str, *, value: Any = None, error: CallError | None = None) -> None:
        fields: dict[str, Any] = {"state": state}
        if state == "done":
            fields["result"] = cbor2.dumps(value)
        elif error is not None:
            fields["error"] = json.dumps(error.to_wire())
        self._update(op_id, **fields)

    def _insert(self, kind: str, client: str, device: str, service: str, args: dict[str, Any] | None,
                state: str, *, expires_at: float | None = None) -> str:
        if args is not None and not isinstance(args, dict):
            raise InvalidArgument(f"args must be a map, got {type(args).__name__}")
        now = self._clock()
        op_id = f"{int(now * 1000):012x}{os.urandom(4 if self.id_tag is None else 2).hex()}{self.id_tag or ''}"
        with self._store.transaction() as db:
            db.execute(f"INSERT INTO operations ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL, "
                       "NULL, NULL, ?, ?, ?)", (op_id, kind, client, device, service, cbor2.dumps(args or {}),
                                                state, now, now, expires_at))
        return op_id

    def _delete(self, op_id: str) -> None:
        try:
            with self._store.transaction() as db:
                db.execute("DELETE FROM operations WHERE id = ?", (op_id,))
        except StoreError as err:
            event(log, "operation_not_deleted", logging.WARNING, op=op_id, error=str(err))

    # -- delivery of queued calls

    def _deliver_soon(self, device: str) -> None:
        if device in self._delivering or self._task is None:
            return
        task = asyncio.create_task(self._deliver(device), name=f"deliver {device}")
        self._delivering[device] = task
        task.add_done_callback(lambda t: self._delivering.pop(device, None) if self._delivering.get(device) is t
                               else None)

    async def _deliver(self, device: str) -> None:
        while True:
            rows = self._rows("WHERE device = ? AND state = 'queued' AND kind = 'call' ORDER BY id LIMIT 1",
                              (device,))
            if not rows:
                return
            op = _Row(rows[0])
            if op.expires_at is not None and op.expires_at <= self._clock():
                self._expire(op)
                continue
            if not self._devices.is_online(device):
                return
            self._update(op.id, state="running")
            try:
                reply = await self._devices.call(device, op.service, op.args, timeout_s=DELIVERY_TIMEOUT_S)
            except Unavailable:
                self._update(op.id, state="queued")  # asleep again, or its circuit is open: next time
                return
            except DeadlineExceeded as err:
                if self._idempotent(device, op.service):
                    self._update(op.id, state="queued")
                    return
                self._finish(op.id, "failed", error=DeadlineExceeded(
                    f"{self._rel(device)}/{op.service} did not answer the queued call; it may have run (the "
                    f"service is not idempotent, so it is not sent again): {err.message}"))
                continue
            except CallError as err:
                self._finish(op.id, "failed", error=err)
                continue
            except asyncio.CancelledError:
                try:
                    self._update(op.id, state="queued")
                except StoreError:
                    pass
                raise
            self.counters["delivered"] += 1
            self._finish(op.id, "done", value=reply.value)

    def _expire(self, op: _Row) -> None:
        self.counters["expired"] += 1
        presence = self._devices.directory.presence(op.device) or {}
        why = "did not come online"
        if presence.get("state") == "asleep" and presence.get("sleep_until"):
            why = f"is asleep until {time.strftime('%H:%M:%S', time.localtime(presence['sleep_until']))}"
        ttl = (op.expires_at or 0) - op.created_at
        self._finish(op.id, "failed", error=DeadlineExceeded(
            f"queued call to {self._rel(op.device)}/{op.service} expired after its ttl of {ttl:g} s: the device "
            f"{why}"))

    # -- reconciliation with the device

    async def _reconcile(self, op_id: str) -> None:
        op = self._get_row(op_id)
        if op.state != "running" or not op.device_op:
            self._recheck.pop(op_id, None)
            return
        try:
            reply = await self._devices.call(op.device, "_op_get", {"op": op.device_op}, timeout_s=5.0)
        except NotFound:
            self._recheck.pop(op_id, None)
            self._finish(op_id, "failed", error=Unavailable(
                f"{self._rel(op.device)} no longer knows operation {op.device_op}: it restarted, or forgot it "
                "(a device remembers its last 4 finished operations)"))
            return
        except CallError as err:
            event(log, "operation_not_reconciled", op=op_id, error=str(err))
            again = self._recheck.get(op_id)
            if again is not None:  # adopted: tried again after a wait that doubles
                self._recheck[op_id] = (self._clock() + again[1], min(again[1] * 2, RECHECK_S[1]))
                self._due.add(op_id)
            return
        self._recheck.pop(op_id, None)
        self.counters["reconciled"] += 1
        if isinstance(reply.value, dict) and reply.value.get("state") in ("running", *FINAL):
            with self._store.transaction() as db:
                self._apply(db, op_id, reply.value)

    def _check_soon(self, op_id: str) -> None:
        if op_id in self._checking:
            return
        task = asyncio.create_task(self._reconcile(op_id), name=f"reconcile {op_id}")
        self._checking[op_id] = task
        task.add_done_callback(lambda _t: self._checking.pop(op_id, None))

    async def _sweep(self) -> None:
        cleaned = 0.0
        while True:
            await asyncio.sleep(SWEEP_S)
            try:
                self._sweep_once()
                now = self._clock()
                if now - cleaned > CLEANUP_EVERY_S:
                    cleaned = now
                    with self._store.transaction() as db:
                        db.execute("DELETE FROM operations WHERE state IN ('done', 'failed', 'cancelled') AND "
                                   "updated_at < ?", (now - KEEP_FINISHED_S,))
            except (StoreError, sqlite3.Error) as err:
                event(log, "operations_sweep_failed", logging.WARNING, error=str(err))

    def _sweep_once(self) -> None:
        now = self._clock()
        for row in self._rows("WHERE state = 'queued'"):
            op = _Row(row)
            if op.device in self._delivering:
                continue
            if op.expires_at is not None and op.expires_at <= now:
                self._expire(op)
            elif self._devices.is_online(op.device):
                self._deliver_soon(op.device)
        stale = now - RECONCILE_S
        for row in self._store.query("SELECT id FROM operations WHERE state = 'running' AND kind = 'op' AND "
                                     "updated_at < ?", (stale,)):
            self._due.add(row[0])
        for op_id in list(self._due):
            try:
                op = self._get_row(op_id)
            except NotFound:
                self._due.discard(op_id)
                self._recheck.pop(op_id, None)
                continue
            if op.state != "running":
                self._due.discard(op_id)
                self._recheck.pop(op_id, None)
            elif op_id in self._recheck and self._recheck[op_id][0] > now:
                continue
            elif self._devices.is_online(op.device):
                self._due.discard(op_id)
                self._check_soon(op_id)

    # -- helpers

    def _within_quota(self, client: str, where: str, limit: int, what: str, name: str) -> None:
        count = self._store.query(f"SELECT COUNT(*) FROM operations WHERE client = ? AND {where}", (client,))[0][0]
        if count >= limit:
            self.counters["over_quota"] += 1
            raise ResourceExhausted(f"client '{client}' has {count} {what}, its limit ({name}); wait for some "
                                    "to finish or cancel them (`ndn-edge ops`)")

    async def _service(self, name: str, service: str, timeout_s: float) -> dict[str, Any]:
        record = self._store.device(name)
        if record is None:
            raise NotFound(f"no device {name}; `ndn-edge devices` lists the known ones")
        desc = record.desc
        if not isinstance(desc, dict):
            if not self._devices.is_online(name):
                raise Unavailable(f"device {name} is not online and its services are not known yet")
            desc = await self._devices.invoker.fetch_description(name, timeout_s=timeout_s)
        svc = find_service(desc, service)
        if svc is None:
            raise NotFound(f"device {name} has no service {service!r}")
        return svc

    def _idempotent(self, device: str, service: str) -> bool:
        record = self._store.device(device)
        svc = find_service(record.desc, service) if record is not None else None
        return bool(svc and svc.get("idempotent"))

    def _rows(self, where: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return self._store.query(f"SELECT {_COLUMNS} FROM operations {where}", params)

    def _get_row(self, op_id: Any) -> _Row:
        rows = self._rows("WHERE id = ?", (op_id,)) if isinstance(op_id, str) else []
        if not rows:
            raise NotFound(f"no operation {op_id!r}; `ndn-edge ops` lists them")
        return _Row(rows[0])

    def _resolve(self, device: str) -> str:
        return self._devices.directory.resolve(device)

    def _rel(self, name: str) -> str:
        prefix = f"/{self.site}/"
        return name[len(prefix):] if name.startswith(prefix) else name


class _Row:
    """One row of `operations`."""

    __slots__ = (
        "args",
        "client",
        "created_at",
        "device",
        "device_op",
        "error",
        "expires_at",
        "id",
        "kind",
        "note",
        "progress",
        "result",
        "service",
        "state",
        "updated_at",
    )

    def __init__(self, row: tuple[Any, ...]) -> None:
        (self.id, self.kind, self.client, self.device, self.service, args, self.state, self.device_op,
         self.progress, self.note, result, error, self.created_at, self.updated_at, self.expires_at) = row
        self.args = cbor2.loads(args) if args else None
        self.result = cbor2.loads(result) if result is not None else None
        self.error = json.loads(error) if error else None

    def info(self, ops: Operations) -> dict[str, Any]:
        out: dict[str, Any] = {"op": self.id, "kind": self.kind, "target": f"{ops._rel(self.device)}/{self.service}",
                               "client": self.client, "state": self.state, "progress": self.progress,
                               "created": self.created_at, "updated": self.updated_at}
        if self.note is not None:
            out["note"] = self.note
        if self.state == "done":
            out["result"] = self.result
        if self.error is not None:
            out["error"] = self.error
        if self.expires_at is not None and self.state == "queued":
            out["expires"] = self.expires_at
        return out
