"""Device sequence numbers leased from the shared store, so that no two gateways ever sign with the same number
for a device and a gateway that takes a device over starts above anything any gateway used.

    seqs = SharedSeqs(store, link, key)
    counter = seqs.counter("/edge/lab/t1/KEY/1a2b3c4d")   # what the invoker signs with (`next(floor)`)
    await seqs.prime("/edge/lab/t1/KEY/1a2b3c4d")         # lease a block before serving the device

Bucket `ndne_<fed>_seq`: `k.<key name>` -> the highest number leased so far by any gateway (sealed).

Decisions:
- The invoker's signing is synchronous (it signs in the middle of a send), so leasing is done ahead: a counter
  holds a block leased with compare-and-set (`BLOCK` numbers, the shared mark raised to its end) and leases the
  next block in the background when half of it is used. Each shared block is also leased in the local store
  (fully synced, as `Store.lease_seq_block` always does), so a restart without NATS resumes above it.
- When no shared block is at hand (partitioned, or a burst outran the background lease) the counter leases
  locally, above everything it knows of the shared mark, and raises the shared mark to cover it as soon as it
  can: the gateway keeps serving its LAN. Only a standby that takes over during a partition can then sign below
  numbers this gateway used; the device drops those as replays (never runs anything twice) until its next
  announcement's `rx_floor` moves the standby above them.
- A block leased locally may lie below numbers other gateways used (what this gateway knows of the shared mark
  may be old, or nothing: a counter that never leased from the store starts at the device's last announced
  `rx_floor`, and the serving gateway may have signed above it since). So while the store answers, a counter
  on a local block leases a shared one in the background and moves to it as soon as it has it, without waiting
  for the local block to run out; and before it signs for the first time (`ready`, which the invoker awaits,
  bounded) it leases a shared block first. Otherwise the device would drop every request of the rest of the
  local block as a replay until its next announcement (a third of its lease: 20 s by default), and four such
  requests fill the invoker's window for the device.
Rejected: one compare-and-set per call (a round trip to the cluster per signed request).
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from ndn_edge.federation.config import kv_key
from ndn_edge.federation.keys import BadSeal, FederationKey
from ndn_edge.logs import Throttle

log = logging.getLogger("ndn_edge.federation")

BLOCK = 1024
_CAS_TRIES = 20


class FedCounter:
    """Hands out a device key's sequence numbers from shared blocks (the invoker's `SeqCounter`'s contract)."""

    def __init__(self, seqs: SharedSeqs, key: str) -> None:
        self._seqs = seqs
        self._key = key
        self._next = 0
        self._mark = 0      # last number of the block in use
        self._shared = False  # the block in use was leased in the shared store (else locally, or none yet)
        self._ahead: tuple[int, int] | None = None  # the next block, leased in the shared store already
        self._refill: asyncio.Task[None] | None = None

    @property
    def key(self) -> str:
        return self._key

    def next(self, floor: int = 0) -> int:
        """A number above every earlier one and at least `floor`, never used by any gateway."""
        want = max(self._next, floor)
        ahead = self._ahead
        if ahead is not None and ahead[1] < want:  # below the floor a device announced: of no use
            ahead = self._ahead = None
        if ahead is not None and (want > self._mark or not self._shared):
            # the block in use is spent, or was leased locally (it may lie below other gateways' numbers)
            self._ahead = None
            want, self._mark, self._shared = max(want, ahead[0]), ahead[1], True
        elif self._mark == 0 or want > self._mark:
            self._ahead = None
            want = self._seqs.lease_locally(self._key, want)
            self._mark, self._shared = want + BLOCK - 1, False
        self._next = want + 1
        if self._ahead is None and self._refill is None and (not self._shared or self._mark - want < BLOCK // 2):
            self.refill()
        return want

    def ready(self) -> asyncio.Task[None] | None:
        """What to wait for before signing: the lease of a shared block when none is at hand (the counter never
        signed, or signs from a local lease) and the store answers; None when the counter may sign now."""
        if self._shared or self._ahead is not None:
            return None
        return self.refill()

    def refill(self) -> asyncio.Task[None] | None:
        """Lease the next block in the background (once at a time)."""
        if self._refill is None and self._seqs.connected():
            try:
                self._refill = asyncio.get_running_loop().create_task(self._lease())
            except RuntimeError:  # no loop (a synchronous caller): the next call leases
                return None
        return self._refill

    async def _lease(self) -> None:
        try:
            self._ahead = await self._seqs.lease_shared(self._key, max(self._mark, self._next) + 1)
        except Exception as err:  # NATS away: the counter leases locally when it must
            self._seqs.throttle.event("lease", "federation_seq_lease_failed", logging.DEBUG, key=self._key,
                                      error=repr(err))
        finally:
            self._refill = None


class SharedSeqs:
    """The federation's sequence-number marks, one per device key."""

    def __init__(self, store: Any, link: Any, key: FederationKey) -> None:
        self._store = store
        self._link = link
        self._key = key
        self._bucket = link.config.bucket("seq")
        self._counters: dict[str, FedCounter] = {}
        self._known: dict[str, int] = {}       # key -> the shared mark last read or written
        self._unpublished: dict[str, int] = {}  # key -> a local lease the shared mark must still cover
        self.throttle = Throttle(log)
        self.counters: dict[str, int] = {"shared_leases": 0, "local_leases": 0, "conflicts": 0, "bad_seal": 0}

    def connected(self) -> bool:
        return bool(self._link.connected)

    def counter(self, key: str) -> FedCounter:
        """The counter of device key `key` (the invoker's factory)."""
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = FedCounter(self, key)
        return counter

    async def prime(self, key: str) -> None:
        """Lease a shared block for `key` now (before serving its device)."""
        task = self.counter(key).refill()
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)

    def lease_locally(self, key: str, want: int) -> int:
        """A block leased in the local store only, above the known shared mark; shared as soon as possible."""
        start = self._store.lease_seq_block(key, max(want, self._known.get(key, 0) + 1), BLOCK)
        self.counters["local_leases"] += 1
        self._unpublished[key] = max(self._unpublished.get(key, 0), start + BLOCK - 1)
        if self.connected():
            try:
                asyncio.get_running_loop().create_task(self.publish())
            except RuntimeError:
                pass
        return start

    async def publish(self) -> None:
        """Raise the shared marks to cover the blocks leased locally (after a partition, or a burst)."""
        for key, mark in list(self._unpublished.items()):
            try:
                await self._cas(key, lambda current, mark=mark: max(current, mark))
            except Exception as err:
                self.throttle.event("publish", "federation_seq_publish_failed", logging.DEBUG, error=repr(err))
                return
            if self._unpublished.get(key) == mark:
                del self._unpublished[key]

    async def lease_shared(self, key: str, floor: int) -> tuple[int, int]:
        """Lease [start, start + BLOCK - 1] with start >= floor above the shared mark and this store's mark."""
        floor = max(floor, self._store.seq_mark(key) + 1)
        end = await self._cas(key, lambda current: max(current + 1, floor) + BLOCK - 1)
        start = end - BLOCK + 1
        local = self._store.lease_seq_block(key, start, BLOCK)
        if local != start:  # another counter of this store leased locally meanwhile: use what was leased here
            return local, min(end, local + BLOCK - 1)
        self.counters["shared_leases"] += 1
        return start, end

    async def _cas(self, key: str, raise_to: Any) -> int:
        from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

        kv = self._link.kv("seq")
        name = f"k.{kv_key(key)}"
        where = f"{self._bucket}/{name}"
        for _ in range(_CAS_TRIES):
            try:
                entry = await kv.get(name)
                rev: int | None = entry.revision
                try:
                    current = int(json.loads(self._key.open(where, entry.value))["mark"])
                except (BadSeal, ValueError, KeyError, TypeError):
                    self.counters["bad_seal"] += 1
                    current = self._known.get(key, 0)  # a forged mark is overwritten, never trusted lower
            except KeyNotFoundError:
                rev, current = None, 0
            target = int(raise_to(current))
            if target <= current and rev is not None:
                self._known[key] = current
                return current
            value = self._key.seal(where, json.dumps({"mark": target}).encode())
            try:
                if rev is None:
                    await kv.create(name, value)
                else:
                    await kv.update(name, value, last=rev)
            except KeyWrongLastSequenceError:
                self.counters["conflicts"] += 1
                continue
            self._known[key] = target
            return target
        raise RuntimeError(f"sequence mark of {key} kept changing ({_CAS_TRIES} tries)")
