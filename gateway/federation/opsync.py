"""Operations across the federation: every gateway's operations mirrored in one JetStream key-value bucket, so
that any gateway lists them all, reads one whose keeper died, and the gateway that takes a device over keeps
its operations.

    sync = OpsSync(link, key, operations, tag="1a2b")
    await sync.start()
    sync.keeper("0190a1b2c3d4e5f61a2b")    # None: kept here (or by nobody alive); else the keeper's tag
    await sync.adopt("/edge/lab/t1", "9f9f")   # on a takeover: gateway 9f9f's operations of that device
    sync.page(50, None, visible)            # the federation's operations, newest first

Bucket `ndne_<fed>_ops`: `o.<op id>` -> {"row": the `operations` row (bytes as hex), "gw": keeper, "at"},
sealed with the federation key; entries expire after `link.OPS_TTL_S` (the 7 days finished ones are kept).

Decisions:
- The keeper's store stays the truth; the bucket is a copy, written by the keeper `PUSH_S` after a row changes
  (one query of the rows changed since the last pass), and at once where someone is told of a change: a
  started operation's info is returned to its client only once its row is in the mirror (`Operations.mirror`),
  and a device's report of an operation (its end) is acknowledged only once the rows the report's batch changed
  are (`gate`, one of the report intake's `ack_gates`): a keeper that dies then leaves the device's report
  unacknowledged, and the device sends it again to whoever takes it over. Each wait is bounded (`MIRROR_WAIT_S`;
  a partitioned gateway does not wait). A change nobody was told of (progress, a cancel's request) may still
  be lost with its keeper in the `PUSH_S` window: the new keeper catches up from the device, asking with
  `_op_get` (again after a failure, until the device answers); what remains lost is in docs/operations.md
  ("Failover on one LAN").
- An operation is routed to the gateway that keeps it now: the mirror's `gw` if it is alive, else the tag
  ending its id (its first keeper). A keeper that died and whose device nobody took over leaves its operations
  readable (their last mirrored state) but not cancellable.
- Takeover: the placement's claim of a device from another gateway adopts that gateway's unfinished operations
  of the device (inserted in this store as they were, then recovered as after a restart: a running one is asked
  about with `_op_get` until the device answers, a queued call is delivered, one being started fails) and
  rewrites their mirror with this gateway's tag at once (changed or not: every gateway routes them here), all
  before the device is served here, so the device's report of an end finds its row.
Rejected: one bucket write per state change from inside operations.py (a round trip to the cluster in the
device report's transaction); the writes above happen after the commit, outside it.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from ndn_edge.errors import InvalidArgument
from ndn_edge.federation.keys import FederationKey
from ndn_edge.federation.link import BucketPart, watch_bucket
from ndn_edge.logs import event

log = logging.getLogger("ndn_edge.federation")

PUSH_S = 0.25
MIRROR_WAIT_S = 2.0    # a change's mirror is waited for at most this long (an acknowledgement, a start's reply)
NOTED_MAX = 50_000     # changed operations noted for the next gate; beyond, left to the periodic pass
PRUNE_EVERY = 40       # passes between looks for rows deleted here (a start that failed, a cleanup)
MAX_RECORDS = 200_000  # mirrored operations kept in memory
_BYTES = (5, 10)       # columns that are bytes (args, result)
_FINAL = ("done", "failed", "cancelled")


def _encode(row: tuple[Any, ...]) -> list[Any]:
    return [bytes(v).hex() if i in _BYTES and v is not None else v for i, v in enumerate(row)]


def _decode(values: Any) -> tuple[Any, ...]:
    if not isinstance(values, list) or len(values) != 15 or not isinstance(values[0], str):
        raise ValueError("not an operation row")
    return tuple(bytes.fromhex(v) if i in _BYTES and v is not None else v for i, v in enumerate(values))


class OpsSync(BucketPart):
    """This gateway's operations in the federation's bucket, and everyone's as that bucket says."""

    def __init__(self, link: Any, key: FederationKey, operations: Any, *, tag: str,
                 alive: Callable[[str | None], bool] = lambda tag: False, intake: Any = None) -> None:
        super().__init__(link, key, "ops", tag=tag, counters=("pushed", "mirrored", "adopted", "bad_seal",
                                                               "pruned", "dropped"))
        self._ops = operations
        self.alive = alive
        self.records: dict[str, tuple[tuple[Any, ...], str]] = {}  # op id -> (row, keeper), as mirrored
        self._pushed: dict[str, float] = {}  # op id -> the updated_at last written by this gateway
        self._mark = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._intake = intake
        self._noted: set[str] = set()  # changed since the last gate

    async def start(self) -> None:
        self._ops.on_change = self._note
        self._ops.mirror = self.mirror
        if self._intake is not None:
            self._intake.ack_gates.append(self.gate)
        self._tasks = [asyncio.create_task(self._pushes(), name="federation-ops-out"),
                       asyncio.create_task(watch_bucket(self._link, "ops", self._key, self._take,
                                                        counters=self.counters, throttle=self._throttle),
                                           name="federation-ops-in")]

    async def stop(self) -> None:
        self._ops.on_change = self._ops.mirror = None
        if self._intake is not None and self.gate in self._intake.ack_gates:
            self._intake.ack_gates.remove(self.gate)
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- what the router asks

    def keeper(self, op_id: Any) -> str | None:
        """The live gateway keeping `op_id`, if not this one (None: serve it here)."""
        if not isinstance(op_id, str) or self._ops.exists(op_id):
            return None
        found = self.records.get(op_id)
        if found is not None and found[1] != self.tag and self.alive(found[1]):
            return found[1]
        owner = op_id[-4:] if len(op_id) == 20 else None
        if owner is not None and owner != self.tag and self.alive(owner):
            return owner
        return None

    def info(self, op_id: Any) -> dict[str, Any] | None:
        """The last mirrored state of an operation no live gateway keeps (None if not mirrored)."""
        found = self.records.get(op_id) if isinstance(op_id, str) else None
        return self._ops.row_info(found[0]) if found is not None else None

    def target(self, op_id: Any) -> tuple[str, str] | None:
        found = self.records.get(op_id) if isinstance(op_id, str) else None
        return (found[0][3], found[0][4]) if found is not None else None

    def page(self, page_size: int, page_token: str | None,
             visible: Callable[[str, str], bool]) -> tuple[list[dict[str, Any]], str | None]:
        """One page of the federation's operations, newest first (as `Operations.page`, over every gateway)."""
        if page_token is not None and (not isinstance(page_token, str) or not page_token.isalnum()):
            raise InvalidArgument(f"invalid page_token {page_token!r}: pass the next_page_token of a previous "
                                  "page unchanged")
        local, _ = self._ops.page(page_size + 1, page_token, lambda device, service: True)
        rows: dict[str, Any] = {op_id: row for op_id, (row, _) in self.records.items()
                                if page_token is None or op_id < page_token}
        picked = sorted({*(item["op"] for item in local), *rows}, reverse=True)[:page_size + 1]
        here = {item["op"]: item for item in local}
        more = len(picked) > page_size
        picked = picked[:page_size]
        items = []
        for op_id in picked:
            if op_id in here:
                device, service = self._ops.target(op_id)
                item = here[op_id]
            else:
                device, service = rows[op_id][3], rows[op_id][4]
                item = self._ops.row_info(rows[op_id])
            if visible(device, service):
                items.append(item)
        return items, (picked[-1] if more and picked else None)

    # -- takeover

    async def adopt(self, device: str, previous: str) -> None:
        """Keep the unfinished operations `previous` kept of `device` (this gateway serves it now)."""
        rows = [row for row, gw in list(self.records.values())
                if gw == previous and row[3] == device and row[6] not in _FINAL]
        if not rows:
            return
        taken = self._ops.adopt(rows)
        self.counters["adopted"] += len(taken)
        event(log, "federation_operations_adopted", device=device, previous=previous, count=len(taken))
        for op_id in taken:
            self._pushed.pop(op_id, None)
        # Rewritten with this gateway's tag now, changed or not (a running one keeps its row until the device
        # answers), so every gateway routes them here.
        await self._push(self._ops.rows(taken))

    # -- the mirror

    def _note(self, op_id: str) -> None:
        if len(self._noted) < NOTED_MAX:
            self._noted.add(op_id)

    def gate(self) -> asyncio.Future[None] | None:
        """One of the report intake's `ack_gates`: None, or a future done once the operations changed since the
        last call are in the mirror (or after MIRROR_WAIT_S), so a device's report of an end is acknowledged only
        once the gateway that would take the device over knows it."""
        noted, self._noted = self._noted, set()
        if not noted or not self._link.connected:
            return None
        return asyncio.ensure_future(self._mirror(sorted(noted)))

    async def mirror(self, op_id: str) -> None:
        """Write `op_id`'s row to the mirror now (Operations.mirror: before a started operation's info is
        returned, so its handle is good on every gateway even if this one dies at once)."""
        await self._mirror([op_id])

    async def _mirror(self, ids: list[str]) -> None:
        if not self._link.connected:
            return
        try:
            await asyncio.wait_for(self._push(self._ops.rows(ids)), MIRROR_WAIT_S)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # NATS slow or gone: the periodic pass writes it
            self._throttle.event("ops-now", "federation_operation_not_mirrored", logging.DEBUG, error=repr(err))

    async def _pushes(self) -> None:
        passes = 0
        while True:
            await asyncio.sleep(PUSH_S)
            if not self._link.connected:
                continue
            passes += 1
            try:
                await self._push()
                if passes % PRUNE_EVERY == 0:
                    await self._prune()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # NATS went away, the table is not there yet: the next pass
                self._throttle.event("ops", "federation_operations_not_mirrored", logging.DEBUG, error=repr(err))

    async def _push(self, also: Sequence[tuple[Any, ...]] = ()) -> None:
        """Write the rows changed since the last pass, and `also` (rows to write whether changed or not)."""
        started = time.time()
        kv = self._link.kv("ops")
        for row in [*also, *self._ops.changed_since(self._mark - 1.0)]:
            op_id, updated = row[0], float(row[13])
            if self._pushed.get(op_id) == updated:
                continue
            key = f"o.{op_id}"
            body = json.dumps({"row": _encode(row), "gw": self.tag, "at": time.time()}).encode()
            await kv.put(key, self._key.seal(f"{self._bucket}/{key}", body))
            self._pushed[op_id] = updated
            self.records[op_id] = (row, self.tag)
            self.counters["pushed"] += 1
        self._mark = started

    async def _prune(self) -> None:
        """Forget, here and in the bucket, the operations this gateway wrote and no longer has."""
        kv = self._link.kv("ops")
        for op_id in [i for i in self._pushed if not self._ops.exists(i)]:
            self._pushed.pop(op_id, None)
            found = self.records.get(op_id)
            if found is not None and found[1] == self.tag:
                self.records.pop(op_id, None)
                await kv.delete(f"o.{op_id}")
                self.counters["pruned"] += 1

    def _take(self, key: str, record: dict[str, Any] | None, rev: int, initial: bool) -> None:
        op_id = key.partition(".")[2]
        if record is None:
            self.records.pop(op_id, None)
            return
        try:
            row, gw = _decode(record.get("row")), record.get("gw")
            if row[0] != op_id or not isinstance(gw, str):
                raise ValueError("a row under another id")
        except (ValueError, TypeError) as err:
            self.counters["dropped"] += 1
            self._throttle.event("ops-record", "federation_record_dropped", logging.WARNING, key=key, error=str(err))
            return
        if op_id not in self.records and len(self.records) >= MAX_RECORDS:
            self.counters["dropped"] += 1
            return
        self.records[op_id] = (row, gw)
        self.counters["mirrored"] += 1
        at = record.get("at")
        if not initial and gw != self.tag and isinstance(at, (int, float)):
            self._lag(float(at))
