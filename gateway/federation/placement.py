"""Which gateway serves which device, now: leases in the shared store, gateway heartbeats, and what every gateway
knows of the devices it does not hear itself.

    placement = Placement(store, side, link, key, tag="1a2b", info={...}, serve=on_serve)
    await placement.start()
    placement.route("/edge/lab/t1")     # None: serve here; else the tag of the gateway that serves it
    placement.presence("/edge/lab/t1")  # the serving gateway's view: state, last_seen, lease_until, ...

Buckets (values sealed with the federation key):
- `ndne_<fed>_gw`: one record per gateway (`gw.<tag>`), renewed every `HEARTBEAT_S`: name, addresses, state,
  devices served. A gateway whose record has not moved for `DEAD_AFTER_S` is taken for dead.
- `ndne_<fed>_place`: one record per device (`d.<name>`): the tag of the gateway serving it, the device's
  presence as that gateway sees it, and its service descriptions.

Decisions:
- Exactly one gateway serves a device at a time, so that exactly one signs for it (the device accepts a
  SignatureSeqNum only above its mark): the one whose tag is in the device's record, written with
  compare-and-set. A gateway that hears a device online (its own directory, fed by the device's signed
  announcements) claims it when nobody serves it, when the server is dead, or when the server no longer hears it
  (the device moved); otherwise it stands by, hearing it too. A claim first leases a block of sequence numbers
  above anything any gateway used (`seqs.py`), then starts serving (the `serve` callback: subscribing to the
  device's subject), so a takeover never signs below its predecessor. Requests for a device whose server died are
  served here only once this gateway has claimed it (`route` names the dead server until then, for at most
  `CLAIM_GRACE_S`): served before, they were signed by a counter that had leased nothing above the predecessor's
  numbers, and the device dropped them as replays until its next announcement.
- A gateway that sees its tag replaced in a record stops serving that device at once (it was partitioned, and a
  standby took over). A clean stop gives every device up (its record is deleted with compare-and-set), so a
  standby takes over at its next pass instead of after `DEAD_AFTER_S`.
- Liveness is judged by when a heartbeat was *received* (this gateway's monotonic clock), not by the writer's
  clock, except for records found at start, which are dead if their own time says so.
- Presence of devices served elsewhere stays in memory (it is not written in this store's device rows, which
  stay this gateway's own view of its LAN); device listings overlay it (`node.FederatedDevices`). Service
  descriptions are written to the store (they are the device's, whoever fetched them).
Rejected: one lease per device renewed periodically (10,000 devices would be thousands of writes a second);
liveness from the NATS connection (a NATS server does not tell other clients that one went away).
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ndn_edge.federation.config import from_kv_key, kv_key
from ndn_edge.federation.keys import FederationKey
from ndn_edge.federation.link import watch_bucket
from ndn_edge.logs import Throttle, event

log = logging.getLogger("ndn_edge.federation")

HEARTBEAT_S = 1.0
DEAD_AFTER_S = 4.0
PASS_S = 0.5          # how often this gateway looks for devices to claim or records to refresh
CLAIM_GRACE_S = 3.0   # past DEAD_AFTER_S, how long requests for a device this gateway hears wait for its claim
REFRESH_LEASE_S = 15.0  # a served device's record is rewritten when its lease moved this much
HEARD = ("online", "asleep")


class _Entry:
    __slots__ = ("record", "rev")

    def __init__(self, record: dict[str, Any], rev: int) -> None:
        self.record = record
        self.rev = rev

    @property
    def gw(self) -> str | None:
        gw = self.record.get("gw")
        return gw if isinstance(gw, str) else None


class Placement:
    """Serving leases of the devices this gateway hears, and the federation's directory."""

    def __init__(self, store: Any, side: Any, link: Any, key: FederationKey, *, tag: str, info: dict[str, Any],
                 serve: Callable[[str, bool], Awaitable[None]],
                 prime: Callable[[str], Awaitable[None]] | None = None,
                 takeover: Callable[[str, str], Awaitable[None]] | None = None) -> None:
        self._store = store
        self._side = side
        self._link = link
        self._key = key
        self.tag = tag
        self.info = info
        self._serve = serve
        self._prime = prime
        self._takeover = takeover  # (device, previous server): what it kept of the device becomes this gateway's
        self._place = link.config.bucket("place")
        self._gw_bucket = link.config.bucket("gw")
        self.served: set[str] = set()
        self.entries: dict[str, _Entry] = {}
        self.gateways: dict[str, dict[str, Any]] = {}
        self._seen: dict[str, float] = {}  # tag -> monotonic time its heartbeat was received
        self._published: dict[str, tuple[str, float, str | None]] = {}  # device -> (state, lease_until, desc)
        self._descs: dict[str, tuple[str, dict[str, Any]]] = {}  # descriptions waiting for their device's record
        self._tasks: list[asyncio.Task[None]] = []
        self._jobs: set[asyncio.Future[None]] = set()
        self._wake = asyncio.Event()
        self._throttle = Throttle(log)
        self._beat = 0
        self.counters: dict[str, int] = {"claims": 0, "takeovers": 0, "lost": 0, "released": 0, "bad_seal": 0,
                                         "heartbeats": 0}

    async def start(self) -> None:
        self._side.listeners.append(self._on_event)
        self._tasks = [asyncio.create_task(self._heartbeats(), name="federation-heartbeats"),
                       asyncio.create_task(self._watch_gateways(), name="federation-gateways"),
                       asyncio.create_task(self._watch_places(), name="federation-places"),
                       asyncio.create_task(self._passes(), name="federation-claims")]

    async def stop(self) -> None:
        if self._on_event in self._side.listeners:
            self._side.listeners.remove(self._on_event)
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._link.connected:
            await self._release_all()

    # -- what the rest of the gateway asks

    def alive(self, tag: str | None) -> bool:
        if tag is None:
            return False
        if tag == self.tag:
            return True
        seen = self._seen.get(tag)
        return seen is not None and time.monotonic() - seen < DEAD_AFTER_S

    def route(self, device: str) -> str | None:
        """None to serve `device` here; else the tag of the live gateway that serves it, or of the dead one while
        this gateway is about to take the device over (`claiming`)."""
        if device in self.served:
            return None
        entry = self.entries.get(device)
        if entry is None or entry.gw in (None, self.tag):
            return None
        if not self.alive(entry.gw) and not self.claiming(device, entry.gw):
            return None
        return entry.gw

    def claiming(self, device: str, server: str) -> bool:
        """True while this gateway hears `device`, whose server `server` is dead, and its claim may still come
        (CLAIM_GRACE_S). Requests for it wait for the claim rather than being served here before: the claim leases
        sequence numbers above every gateway's first (a device drops a number at or below one it accepted), and
        makes this gateway the only one that signs for the device (another standby may hear it too)."""
        seen = self._seen.get(server)
        if seen is None or not self._link.connected or not self.hears(device) or \
                time.monotonic() - seen >= DEAD_AFTER_S + CLAIM_GRACE_S:
            return False
        self._wake.set()  # the claim at once, not at the next pass
        return True

    def presence(self, device: str) -> dict[str, Any] | None:
        """The serving gateway's view of a device served elsewhere (None: served here, or by nobody alive)."""
        entry = self.entries.get(device)
        if entry is None or device in self.served or entry.gw == self.tag:
            return None
        r = entry.record
        state = r.get("state", "unknown")
        if not self.alive(entry.gw):
            state = "offline" if state in HEARD else state
        elif state in HEARD and (r.get("lease_until") or 0) <= time.time():
            state = "offline"
        return {"state": state, "last_seen": r.get("last_seen"), "lease_until": r.get("lease_until"),
                "sleep_until": r.get("sleep_until"), "gateway": entry.gw}

    def hears(self, device: str) -> bool:
        """True if this gateway's own directory has the device online (or asleep) on its LAN."""
        p = self._side.presence(device)
        return p is not None and p["state"] in HEARD

    def live_gateways(self) -> list[str]:
        return sorted(tag for tag in self.gateways if self.alive(tag))

    # -- directory events of this gateway's LAN

    def _on_event(self, ev: dict[str, Any]) -> None:
        self._wake.set()

    # -- tasks

    async def _heartbeats(self) -> None:
        while True:
            if self._link.connected:
                self._beat += 1
                record = dict(self.info, tag=self.tag, beat=self._beat, at=time.time(), devices=len(self.served),
                              state=self._link.state)
                try:
                    await self._link.kv("gw").put(f"gw.{self.tag}", self._seal(self._gw_bucket, f"gw.{self.tag}",
                                                                                record))
                    self.counters["heartbeats"] += 1
                except Exception as err:  # partitioned a moment: the next beat
                    self._throttle.event("heartbeat", "federation_heartbeat_failed", logging.DEBUG, error=repr(err))
            await asyncio.sleep(HEARTBEAT_S)

    async def _watch_gateways(self) -> None:
        await self._watch("gw", self._gateway_update)

    async def _watch_places(self) -> None:
        await self._watch("place", self._place_update)

    async def _watch(self, what: str, take: Callable[[str, dict[str, Any] | None, int, bool], None]) -> None:
        await watch_bucket(self._link, what, self._key, take, counters=self.counters, throttle=self._throttle,
                           synced=self._wake.set)

    def _gateway_update(self, key: str, record: dict[str, Any] | None, rev: int, initial: bool) -> None:
        tag = key.partition(".")[2]
        if record is None:
            self.gateways.pop(tag, None)
            self._seen.pop(tag, None)
            self._wake.set()
            return
        self.gateways[tag] = record
        if initial and time.time() - float(record.get("at", 0)) > DEAD_AFTER_S:
            return  # a record left by a gateway that stopped long ago
        self._seen[tag] = time.monotonic()

    def _place_update(self, key: str, record: dict[str, Any] | None, rev: int, initial: bool) -> None:
        try:
            device = from_kv_key(key.partition(".")[2])
        except ValueError:
            return
        if record is None:
            self.entries.pop(device, None)
        else:
            self.entries[device] = _Entry(record, rev)
            desc = record.get("desc")
            if record.get("gw") != self.tag and isinstance(desc, dict) and record.get("desc_hash"):
                self._store_description(device, str(record["desc_hash"]), desc)
        if device in self.served and (record is None or record.get("gw") != self.tag):
            self.served.discard(device)
            self.counters["lost"] += 1
            event(log, "federation_device_lost", logging.WARNING, device=device,
                  to=record.get("gw") if record else None)
            task = asyncio.ensure_future(self._serve(device, False))
            self._jobs.add(task)
            task.add_done_callback(self._jobs.discard)
        self._wake.set()

    def _store_description(self, device: str, desc_hash: str, desc: dict[str, Any]) -> None:
        """Store a description another gateway published; one of a device whose record has not reached this
        store yet (identity sync runs beside the watch) is kept and stored at a later pass, not lost until the
        server publishes again (a standby would otherwise ask the device for it in the middle of a takeover)."""
        try:
            record = self._store.device(device)
            if record is None:
                self._descs[device] = (desc_hash, desc)
                return
            self._descs.pop(device, None)
            if record.desc_hash != desc_hash:
                self._store.set_description(device, desc_hash, desc)
        except Exception as err:  # a store error: at a later pass
            self._descs[device] = (desc_hash, desc)
            self._throttle.event("desc", "federation_description_not_stored", logging.DEBUG, error=repr(err))

    async def _passes(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), PASS_S)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            if not self._link.connected:
                continue
            try:
                await self._pass()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # NATS went away mid-pass: the next one
                self._throttle.event("pass", "federation_pass_failed", logging.WARNING, error=repr(err))

    async def _pass(self) -> None:
        """Claim what this gateway should serve; refresh the records of what it serves."""
        for device, (desc_hash, desc) in list(self._descs.items()):
            self._store_description(device, desc_hash, desc)
        descs = dict(self._store.query("SELECT name, desc_hash FROM devices"))
        for device in descs:
            p = self._side.presence(device)
            heard = p is not None and p["state"] in HEARD
            entry = self.entries.get(device)
            if device in self.served:
                if entry is not None and entry.gw == self.tag:
                    await self._refresh(device, entry, p, descs.get(device))
                continue
            if not heard:
                continue
            if entry is None or entry.gw is None:
                await self._claim(device, None, p, descs.get(device))
            elif entry.gw == self.tag or not self.alive(entry.gw) or \
                    entry.record.get("state") not in HEARD or (entry.record.get("lease_until") or 0) < time.time():
                await self._claim(device, entry, p, descs.get(device))

    async def _claim(self, device: str, entry: _Entry | None, p: dict[str, Any] | None, desc_hash: str | None) -> None:
        from nats.js.errors import KeyWrongLastSequenceError

        if self._prime is not None:
            await self._prime(device)
        record = self._record(device, p, desc_hash)
        key = f"d.{kv_key(device)}"
        value = self._seal(self._place, key, record)
        try:
            if entry is None:
                rev = await self._link.kv("place").create(key, value)
            else:
                rev = await self._link.kv("place").update(key, value, last=entry.rev)
        except KeyWrongLastSequenceError:
            return  # another gateway was quicker: its record arrives through the watch
        previous = entry.gw if entry is not None else None
        self.entries[device] = _Entry(record, rev)
        self.served.add(device)
        self._published[device] = (record["state"], record.get("lease_until") or 0, desc_hash)
        self.counters["claims"] += 1
        if previous not in (None, self.tag):
            self.counters["takeovers"] += 1
        event(log, "federation_device_served", device=device, previous=previous)
        if previous not in (None, self.tag) and self._takeover is not None:
            try:
                await self._takeover(device, previous)
            except Exception as err:  # NATS away a moment: the device is served all the same
                self._throttle.event("takeover", "federation_takeover_incomplete", logging.WARNING, device=device,
                                     error=repr(err))
        await self._serve(device, True)

    async def _refresh(self, device: str, entry: _Entry, p: dict[str, Any] | None, desc_hash: str | None) -> None:
        state = p["state"] if p is not None else "unknown"
        lease = (p or {}).get("lease_until") or 0
        last = self._published.get(device)
        if last is not None and last[0] == state and last[2] == desc_hash and lease - last[1] < REFRESH_LEASE_S:
            return
        from nats.js.errors import KeyWrongLastSequenceError

        record = self._record(device, p, desc_hash)
        key = f"d.{kv_key(device)}"
        try:
            rev = await self._link.kv("place").update(key, self._seal(self._place, key, record), last=entry.rev)
        except KeyWrongLastSequenceError:
            return  # taken over: the watch tells
        self.entries[device] = _Entry(record, rev)
        self._published[device] = (state, lease, desc_hash)

    def _record(self, device: str, p: dict[str, Any] | None, desc_hash: str | None) -> dict[str, Any]:
        p = p or {}
        record: dict[str, Any] = {"gw": self.tag, "state": p.get("state", "unknown"), "last_seen": p.get("last_seen"),
                                  "lease_until": p.get("lease_until"), "sleep_until": p.get("sleep_until"),
                                  "desc_hash": desc_hash, "at": time.time()}
        if desc_hash:
            stored = self._store.device(device)
            if stored is not None and isinstance(stored.desc, dict):
                record["desc"] = stored.desc
        return record

    async def _release_all(self) -> None:
        """Give up every device served here (a clean stop), so standbys take over at once."""
        kv = self._link.kv("place")
        for device in list(self.served):
            entry = self.entries.get(device)
            if entry is None or entry.gw != self.tag:
                continue
            try:
                await asyncio.wait_for(kv.delete(f"d.{kv_key(device)}", last=entry.rev), 1.0)
                self.counters["released"] += 1
            except Exception as err:  # taken over meanwhile, or NATS is gone: standbys wait for the heartbeat
                event(log, "federation_release_failed", logging.DEBUG, device=device, error=repr(err))
        self.served.clear()
        try:
            await asyncio.wait_for(self._link.kv("gw").delete(f"gw.{self.tag}"), 1.0)
        except Exception as err:
            event(log, "federation_release_failed", logging.DEBUG, error=repr(err))

    def _seal(self, bucket: str, key: str, record: dict[str, Any]) -> bytes:
        return self._key.seal(f"{bucket}/{key}", json.dumps(record, separators=(",", ":")).encode())
