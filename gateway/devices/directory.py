"""The device directory: who is on the network, in what state, until when, and what services each offers.

Owns discovery as docs/protocol.md "Discovery" defines it: signed announcements `/<site>/_sd/ann/<digest>`
(join, renewal, sleep, leave), the active query `/<site>/_sd/query`, leases, and the service descriptions that
devices publish under `_desc`. Presence is written to the store so that a gateway restart loses nothing; events
(`join`, `leave`, `offline`, `sleep`) go to the structured log `ndn_edge.directory` (events `device_join`, ...,
with the fields in `extra["fields"]`) and to `on_event`.

Decisions:
- Announcements are verified before anything is believed: the device is found by its `KeyLocator` (the store
  maps key names to devices), then the parameters digest and the HMAC with that device's key are checked, then
  the announcement's `SignatureSeqNum` must be above the last accepted one for that key. Each failure is dropped
  and counted (`unknown_key`, `digest`, `bad_signature`, `replayed`, `malformed`), never answered.
- The last accepted announcement number is kept per *key name* (a re-provisioned device starts a new sequence)
  in memory, and persisted lightly in the store's meta table: on a state change, every `SEQ_PERSIST_EVERY`
  announcements, every `SEQ_FLUSH_INTERVAL_S` for the devices whose number moved, and at `stop()`. A gateway
  killed between writes accepts at most those few announcements again, which can only restate presence the
  device already claimed; devices persist their own counter (leased blocks), so their numbers never go back.
- The face callback only checks the name prefix on raw bytes and queues the packet; one task verifies, writes
  the store and emits events, so a burst of announcements never runs store writes inside the receive callback.
- Lease expiry is a heap of (lease_until, device) with lazy deletion and one task that sleeps until the earliest
  expiry (at least `SWEEP_MIN_WAIT_S`, so a crowd of superseded entries costs a few wake-ups a second, not one
  each): O(log n) per renewal, no scan of every device (the target is 10,000 devices on a Raspberry Pi).
- The owner queries at start; the directory repeats the query at `STARTUP_REQUERY_S`, because a device ignores
  queries for 500 ms after each answer, and a datagram may be lost.
- Wall-clock time (`time.time`) for presence, because it is stored and shown; monotonic time elsewhere.
- A reboot (an `up` announcement whose `uptime_ms` is well behind the previous one plus the time elapsed since
  it) is reported as a `join`, so subscribers and the
  invoker's circuit breaker learn that the device is back even when no lease lapsed in between.
- Two devices announcing one name and key (a second simulator of the same home, a cloned board) show as an
  uptime that goes back and then ahead again; a reboot only goes back. Reported in `devices` (`warning`) and
  the log, counted in `duplicates`; the reboot `join`s the flip-flop would emit are not.
- A sleeping device holds its lease until it should wake plus one lease period; then it is marked offline.
- At most `DESC_FETCHES_AT_ONCE` `_desc` fetches run at a time: after a start-up query every device answers
  within a second, and a fetch (with its retransmissions) for each at once would be the gateway's own
  implosion on the group.
Rejected: answering announcements (the protocol expects no reply) and trusting the announced name instead of the
key (anyone on the LAN could claim any name).
"""
from __future__ import annotations

import asyncio
import heapq
import logging
import os
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import cbor2
from ndn.encoding import Component, InterestParam, Name, SignatureType, make_interest, parse_interest
from ndn.encoding.tlv_model import DecodeError

from ndn_edge.errors import GatewayError, NotFound, StoreError
from ndn_edge.logs import Throttle
from ndn_edge.logs import event as emit
from ndn_edge.wire import packets as wire
from ndn_edge.wire.framing import components_ok, has_name_prefix
from ndn_edge.wire.tlv import T

log = logging.getLogger("ndn_edge.directory")

QUERY_LIFETIME_MS = 1000
SEQ_PERSIST_EVERY = 32
ANN_QUEUE_SIZE = 4096
SWEEP_MAX_WAIT_S = 5.0
SWEEP_MIN_WAIT_S = 0.05
SEQ_FLUSH_INTERVAL_S = 30.0
STARTUP_REQUERY_S = (1.0, 3.0)
SEQ_META_PREFIX = "ann_seq:"
DESC_FETCHES_AT_ONCE = 16
# A device whose announced uptime lags what our clock predicts by more than this rebooted (clock drift aside).
REBOOT_SLACK_MS = 1000
DEVICE_MTU = 1500  # a device's receive buffer unless it announces another (`mtu`, docs/protocol.md)
MIN_MTU, MAX_MTU = 576, 65_507
DUPLICATE_FLAG_S = 60.0  # how long `devices` warns after two devices last took turns announcing one name
DUPLICATE_WINDOW_S = 600.0  # an uptime ahead of the clock this soon after one that went back: two devices
DUPLICATE_WARNING = "two devices announce this name in turn: a call may run on either; stop one"
REBOOT_SLACK_RATIO = 0.1
_ANN_STATES = {"up": "online", "sleep": "asleep", "leave": "left"}
_PARSE_ERRORS = (DecodeError, ValueError, IndexError, TypeError, KeyError, struct.error)

Event = dict[str, Any]


class _Presence:
    """What the directory believes about one device, kept in memory next to the store."""

    __slots__ = (
        "ann_seq",
        "desc_hash",
        "duplicate_until",
        "key_name",
        "last_seen",
        "lease_until",
        "mem_free",
        "mtu",
        "name",
        "persisted_seq",
        "rx_floor",
        "sleep_until",
        "state",
        "uptime_ms",
        "went_back_at",
    )

    def __init__(self, name: str, key_name: str, state: str = "unknown", last_seen: float | None = None,
                 lease_until: float | None = None, sleep_until: float | None = None, rx_floor: int = 0,
                 desc_hash: str | None = None, ann_seq: int = 0) -> None:
        self.name = name
        self.key_name = key_name
        self.state = state
        self.last_seen = last_seen
        self.lease_until = lease_until
        self.sleep_until = sleep_until
        self.rx_floor = rx_floor
        self.desc_hash = desc_hash
        self.uptime_ms: int | None = None
        self.mem_free: int | None = None  # free heap, as the last announcement said
        self.mtu = DEVICE_MTU  # the largest datagram the device reads (announced when not the default)
        self.went_back_at: float | None = None  # when the uptime last went back (a reboot, or another device)
        self.duplicate_until: float | None = None  # until when `devices` warns of two devices with this name
        self.ann_seq = ann_seq
        self.persisted_seq = ann_seq


class Directory:
    """Device presence and descriptions for one site, fed by verified announcements."""

    def __init__(self, store: Any, face: Any, site: str, *, on_event: Callable[[Event], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.site = site.strip("/")
        self.on_event = on_event
        # Set by the owner (DeviceSide) to the invoker's fetch_description: the directory never signs Interests.
        self.fetcher: Callable[[str], Awaitable[Any]] | None = None
        # Set by the owner to hear where each verified announcement came from (paths.Paths.learn).
        self.on_address: Callable[[str, Any], None] | None = None
        self._store = store
        self._face = face
        self._clock = clock
        self._ann_prefix = b"".join(bytes(c) for c in Name.from_str(f"/{self.site}/_sd/ann"))
        self._presence: dict[str, _Presence] = {}
        self._queue: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue(ANN_QUEUE_SIZE)
        self._expiries: list[tuple[float, str]] = []
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._fetching: dict[str, asyncio.Task[None]] = {}
        self._fetch_slots: asyncio.Semaphore | None = None  # made in the loop that runs the fetches
        self._dirty: set[str] = set()  # devices whose announcement number is not persisted yet
        self.counters: dict[str, int] = {
            "announcements": 0, "unknown_key": 0, "digest": 0, "bad_signature": 0, "replayed": 0,
            "malformed": 0, "queue_full": 0, "queries": 0, "desc_fetches": 0, "desc_failures": 0, "faults": 0,
            "duplicates": 0,
        }
        self._throttle = Throttle(log)

    # -- lifecycle

    async def start(self) -> None:
        """Load presence from the store; start the announcement, lease and start-up query tasks."""
        if self._tasks:
            return
        self._load()
        self._wake = asyncio.Event()
        self._tasks = [asyncio.create_task(self._announcements(), name="directory-announcements"),
                       asyncio.create_task(self._sweep(), name="directory-leases"),
                       asyncio.create_task(self._requery(), name="directory-requery")]

    async def stop(self) -> None:
        """Stop the tasks and persist the announcement numbers not yet written."""
        tasks = self._tasks + list(self._fetching.values())
        self._tasks = []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._fetching.clear()
        self._persist_seqs()

    async def query(self) -> None:
        """Send the plain Interest `/<site>/_sd/query`; devices answer with an announcement."""
        param = InterestParam(nonce=int.from_bytes(os.urandom(4), "big"), lifetime=QUERY_LIFETIME_MS)
        self._face.send(bytes(make_interest(f"/{self.site}/_sd/query", param)))
        self.counters["queries"] += 1

    async def _requery(self) -> None:
        started = asyncio.get_running_loop().time()
        for at in STARTUP_REQUERY_S:
            await asyncio.sleep(max(0.0, started + at - asyncio.get_running_loop().time()))
            try:
                await self.query()
            except GatewayError as err:
                emit(log, "query_not_sent", logging.WARNING, error=str(err))

    # -- inbound (face callback: route only)

    def on_interest(self, packet: bytes, addr: Any = None) -> None:
        """Queue an announcement (and the address it came from) for verification; any other Interest (our own,
        looped back) is ignored."""
        if not has_name_prefix(packet, self._ann_prefix):
            return
        try:
            self._queue.put_nowait((packet, addr))
        except asyncio.QueueFull:
            self.counters["queue_full"] += 1

    # -- queries

    def resolve(self, device: str) -> str:
        """The full device name: `/edge/lab/b1` as is, `lab/b1` under this site."""
        text = device.strip()
        if text.startswith("/"):
            return text.rstrip("/")
        return f"/{self.site}/{text.strip('/')}"

    def is_online(self, device: str) -> bool:
        """True if the device announced `up` and its lease still holds."""
        p = self._presence.get(self.resolve(device))
        return p is not None and p.state == "online" and p.lease_until is not None and p.lease_until > self._clock()

    def presence(self, device: str) -> dict[str, Any] | None:
        """State, last_seen, lease_until and sleep_until as the directory holds them, or None if never seen."""
        p = self._presence.get(self.resolve(device))
        if p is None:
            return None
        out = {"state": self._effective_state(p.state, p.lease_until), "last_seen": p.last_seen,
               "lease_until": p.lease_until, "sleep_until": p.sleep_until}
        warning = self._warning(p.name)
        if warning is not None:
            out["warning"] = warning
        return out

    def snapshot(self) -> list[tuple[str, str, int | None, int | None, float | None]]:
        """(name, state, uptime_ms, mem_free, last_seen) of every device met, as its last announcement said."""
        return [(p.name, self._effective_state(p.state, p.lease_until), p.uptime_ms, p.mem_free, p.last_seen)
                for p in list(self._presence.values())]

    def mtu(self, device: str) -> int:
        """The largest datagram the device reads: what it announced, else the protocol's default (1,500)."""
        p = self._presence.get(device) or self._presence.get(self.resolve(device))
        return p.mtu if p is not None else DEVICE_MTU

    def rx_floor(self, device: str) -> int:
        """The lowest SignatureSeqNum the device said it accepts (0 if unknown)."""
        p = self._presence.get(self.resolve(device))
        return p.rx_floor if p is not None else 0

    def devices(self, page_size: int = 50, page_token: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """One page of devices (name, state, last_seen, lease_until, sleep_until, services) and the next token."""
        records, token = self._store.list_devices(page_size, page_token)
        out = []
        for r in records:
            services = r.desc.get("services") if isinstance(r.desc, dict) else None
            item = {"name": r.name, "state": self._effective_state(r.state, r.lease_until),
                    "last_seen": r.last_seen, "lease_until": r.lease_until, "sleep_until": r.sleep_until,
                    "services": len(services) if isinstance(services, list) else 0}
            warning = self._warning(r.name)
            if warning is not None:
                item["warning"] = warning
            out.append(item)
        return out, token

    def services(self, device: str) -> list[dict[str, Any]]:
        """The device's service descriptions (empty until fetched); NotFound for a device not in the store."""
        name = self.resolve(device)
        record = self._store.device(name)
        if record is None:
            raise NotFound(f"no device {name} in the store; `ndn-edge devices` lists the provisioned ones")
        services = record.desc.get("services") if isinstance(record.desc, dict) else None
        return [dict(s) for s in services if isinstance(s, dict)] if isinstance(services, list) else []

    def description_stored(self, device: str, desc_hash: str) -> None:
        """Note that the description with `desc_hash` is now in the store (called by the fetcher)."""
        p = self._presence.get(self.resolve(device))
        if p is not None:
            p.desc_hash = desc_hash

    # -- announcement processing (task)

    async def _announcements(self) -> None:
        # Survives anything one packet causes: counted, logged once per interval, and the next one is read.
        while True:
            packet, addr = await self._queue.get()
            try:
                self._handle(packet, addr)
            except StoreError as err:
                self.counters["faults"] += 1
                self._throttle.event("store", "announcement_not_recorded", error=str(err))
            except Exception as err:
                self.counters["faults"] += 1
                self._throttle.fault("directory-announcement", err, size=len(packet))

    def _drop(self, reason: str, detail: str) -> None:
        self.counters[reason] += 1
        emit(log, "announcement_dropped", logging.DEBUG, reason=reason, detail=detail)

    def _handle(self, packet: bytes, addr: Any = None) -> None:
        try:
            name, _, params, sig = parse_interest(packet, with_tl=True)
        except _PARSE_ERRORS as err:
            return self._drop("malformed", f"not an Interest: {err}")
        if not components_ok(name) or len(name) != 4 or \
                Component.get_type(name[-1]) != T.DIGEST_COMPONENT:
            return self._drop("malformed", f"name is not /{self.site}/_sd/ann/<digest>")
        info = sig.signature_info
        if (info is None or info.signature_type != SignatureType.HMAC_WITH_SHA256 or info.key_locator is None
                or not info.key_locator.name or not components_ok(info.key_locator.name)):
            return self._drop("malformed", "not signed with HMAC-SHA256 and a well-formed KeyLocator name")
        key_name = Name.to_str(info.key_locator.name)
        record = self._store.device_by_key_name(key_name)
        if record is None or record.site != self.site:
            return self._drop("unknown_key", f"no device of site {self.site} holds key {key_name}")
        fault = wire.interest_fault(sig, record.key, sig.digest_value_buf)
        if fault == "digest":
            return self._drop("digest", f"parameters digest mismatch from {record.name}")
        if fault:
            return self._drop("bad_signature", f"announcement claiming key {key_name} does not verify")
        seq = info.signature_seq_num
        if seq is None:
            return self._drop("malformed", f"announcement from {record.name} has no SignatureSeqNum")
        p = self._presence_for(record)
        if seq <= p.ann_seq:
            return self._drop("replayed", f"{record.name} announcement {seq} is not above {p.ann_seq}")
        try:
            body = cbor2.loads(bytes(params or b""))
            state = _ANN_STATES[body["state"]]
            lease_ms = _non_negative(body.get("lease_ms", 0), "lease_ms")
            sleep_ms = _non_negative(body.get("sleep_ms", 0), "sleep_ms")
            rx_floor = _non_negative(body.get("rx_floor", 0), "rx_floor")
            uptime_ms = body.get("uptime_ms")
            mem_free = body.get("mem_free")
            desc = body.get("desc")
            mtu = body.get("mtu", DEVICE_MTU)
            if isinstance(mtu, bool) or not isinstance(mtu, int) or not MIN_MTU <= mtu <= MAX_MTU:
                raise ValueError(f"mtu must be an integer from {MIN_MTU} to {MAX_MTU}, got {mtu!r}")
        except (cbor2.CBORDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
            return self._drop("malformed", f"announcement parameters from {record.name}: {err!r}")
        p.ann_seq = seq
        p.mem_free = mem_free if isinstance(mem_free, int) and not isinstance(mem_free, bool) else None
        p.mtu = mtu
        self._dirty.add(p.name)
        self.counters["announcements"] += 1
        if self.on_address is not None:
            self.on_address(p.name, addr)
        self._apply(p, state, lease_ms, sleep_ms, rx_floor, uptime_ms if isinstance(uptime_ms, int) else None,
                    desc if isinstance(desc, str) else None)

    def _apply(self, p: _Presence, state: str, lease_ms: int, sleep_ms: int, rx_floor: int, uptime_ms: int | None,
               desc: str | None) -> None:
        now = self._clock()
        old = self._effective_state(p.state, p.lease_until)
        rebooted = ahead = False
        if uptime_ms is not None and p.uptime_ms is not None and p.last_seen is not None:
            # The device's uptime should have advanced with our clock since its last announcement.
            elapsed_ms = (now - p.last_seen) * 1000
            expected_ms = p.uptime_ms + elapsed_ms
            slack_ms = max(REBOOT_SLACK_MS, REBOOT_SLACK_RATIO * elapsed_ms)
            rebooted = uptime_ms + slack_ms < expected_ms
            ahead = uptime_ms > expected_ms + slack_ms
        if ahead and p.went_back_at is not None and now - p.went_back_at < DUPLICATE_WINDOW_S:
            # back, then ahead again: two devices take turns announcing this name (no reboot runs time faster)
            self._duplicate(p, now)
        elif rebooted:
            p.went_back_at = now
            if p.duplicate_until is not None and now < p.duplicate_until:
                rebooted = False  # the other one's turn, not a reboot
        if state == "online":
            lease_until: float | None = now + lease_ms / 1000
            sleep_until: float | None = None
        elif state == "asleep":
            sleep_until = now + sleep_ms / 1000
            lease_until = sleep_until + lease_ms / 1000
        else:
            lease_until = sleep_until = None
        self._store.update_presence(p.name, state, now, lease_until, sleep_until, rx_floor=rx_floor)
        p.state, p.last_seen, p.lease_until, p.sleep_until = state, now, lease_until, sleep_until
        p.rx_floor = max(p.rx_floor, rx_floor)
        p.uptime_ms = uptime_ms
        if lease_until is not None:
            self._schedule(lease_until, p.name)
        self._persist_seq(p, force=state != old)
        if state == "online" and desc is not None and desc != p.desc_hash:
            self._fetch(p.name)
        if state == "online" and (old != "online" or rebooted):
            self._emit("join", p.name, now, rebooted=rebooted)
        elif state == "asleep" and old != "asleep":
            self._emit("sleep", p.name, now, sleep_until=sleep_until)
        elif state == "left" and old != "left":
            self._emit("leave", p.name, now)

    def _duplicate(self, p: _Presence, now: float) -> None:
        """Two devices announce with one name and key (a second `ndn-edge sim` of the same home, a board cloned
        with its config): each may run calls meant for the other. Counted, flagged in `devices` for
        `DUPLICATE_FLAG_S`, and logged as a warning at most once a minute per device."""
        self.counters["duplicates"] += 1
        p.duplicate_until = now + DUPLICATE_FLAG_S
        self._throttle.event(f"duplicate:{p.name}", "device_announced_twice", logging.WARNING, device=p.name,
                             note="two devices announce this name and key in turn (their uptimes alternate); a "
                                  "call may run on either: stop one, or provision it under another name")

    def _warning(self, name: str) -> str | None:
        p = self._presence.get(name)
        if p is None or p.duplicate_until is None or self._clock() >= p.duplicate_until:
            return None
        return DUPLICATE_WARNING

    def _presence_for(self, record: Any) -> _Presence:
        p = self._presence.get(record.name)
        if p is None or p.key_name != record.key_name:
            seq = int(self._store.get_meta(SEQ_META_PREFIX + record.key_name, "0") or 0)
            fresh = _Presence(record.name, record.key_name, record.state, record.last_seen, record.lease_until,
                              record.sleep_until, record.rx_floor, record.desc_hash, seq)
            if p is not None:  # a new key: same device, new sequence space
                fresh.state, fresh.last_seen, fresh.lease_until = p.state, p.last_seen, p.lease_until
            p = self._presence[record.name] = fresh
        return p

    def _load(self) -> None:
        token = None
        while True:
            records, token = self._store.list_devices(1000, token)
            for r in records:
                p = self._presence_for(r)
                if p.state in ("online", "asleep") and p.lease_until is not None:
                    heapq.heappush(self._expiries, (p.lease_until, p.name))
            if token is None:
                break

    # -- leases (task)

    def _schedule(self, lease_until: float, name: str) -> None:
        earliest = self._expiries[0][0] if self._expiries else None
        heapq.heappush(self._expiries, (lease_until, name))
        if self._wake is not None and (earliest is None or lease_until < earliest):
            self._wake.set()

    async def _sweep(self) -> None:
        assert self._wake is not None
        flushed = self._clock()
        while True:
            now = self._clock()
            while self._expiries and self._expiries[0][0] <= now:
                until, name = heapq.heappop(self._expiries)
                p = self._presence.get(name)
                if p is not None and p.lease_until == until and p.state in ("online", "asleep"):
                    self._expire(p, now)
            if now - flushed >= SEQ_FLUSH_INTERVAL_S:
                self._persist_seqs()
                flushed = now
            wait_s = min(self._expiries[0][0] - now, SWEEP_MAX_WAIT_S) if self._expiries else SWEEP_MAX_WAIT_S
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), max(wait_s, SWEEP_MIN_WAIT_S))
            except asyncio.TimeoutError:
                pass

    def _expire(self, p: _Presence, now: float) -> None:
        try:
            self._store.update_presence(p.name, "offline", p.last_seen, p.lease_until, None)
        except StoreError as err:
            emit(log, "offline_not_recorded", logging.WARNING, device=p.name, error=str(err))
        p.state, p.sleep_until = "offline", None
        self._persist_seq(p, force=True)
        self._emit("offline", p.name, now, last_seen=p.last_seen)

    # -- helpers

    def _effective_state(self, state: str, lease_until: float | None) -> str:
        if state in ("online", "asleep") and (lease_until is None or lease_until <= self._clock()):
            return "offline"
        return state

    def _persist_seq(self, p: _Presence, *, force: bool) -> None:
        if p.ann_seq != p.persisted_seq and (force or p.ann_seq - p.persisted_seq >= SEQ_PERSIST_EVERY):
            self._store.set_meta(SEQ_META_PREFIX + p.key_name, str(p.ann_seq))
            p.persisted_seq = p.ann_seq
        if p.ann_seq == p.persisted_seq:
            self._dirty.discard(p.name)

    def _persist_seqs(self) -> None:
        for name in list(self._dirty):
            p = self._presence.get(name)
            if p is None:
                self._dirty.discard(name)
                continue
            try:
                self._persist_seq(p, force=True)
            except StoreError as err:
                emit(log, "announcement_number_not_persisted", logging.WARNING, device=p.name, error=str(err))

    def _fetch(self, name: str) -> None:
        if self.fetcher is None or name in self._fetching:
            return
        task = asyncio.create_task(self._fetch_one(name), name=f"desc {name}")
        self._fetching[name] = task
        task.add_done_callback(lambda _t: self._fetching.pop(name, None))

    async def _fetch_one(self, name: str) -> None:
        assert self.fetcher is not None
        if self._fetch_slots is None:
            self._fetch_slots = asyncio.Semaphore(DESC_FETCHES_AT_ONCE)
        self.counters["desc_fetches"] += 1
        try:
            async with self._fetch_slots:
                await self.fetcher(name)
        except GatewayError as err:
            self.counters["desc_failures"] += 1
            emit(log, "desc_not_fetched", logging.WARNING, device=name, error=str(err),
                 retry="at its next announcement")

    def _emit(self, event: str, device: str, now: float, **extra: Any) -> None:
        ev: Event = {"event": event, "device": device, "time": now}
        ev.update({k: v for k, v in extra.items() if v is not None and v is not False})
        # The `ndn_edge` log formatters (gateway/logs.py) print the message as the event and `fields` as pairs.
        emit(log, f"device_{event}", **{k: v for k, v in ev.items() if k != "event"})
        if self.on_event is not None:
            try:
                self.on_event(ev)
            except Exception as err:  # a subscriber's bug must not stop discovery
                self._throttle.fault("directory-event-listener", err, event=event, device=device)


def _non_negative(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {value!r}")
    return value
