"""What devices send on their own and need acknowledged: operation reports, publications and device logs.

Owns the intake of `/<site>/_op/<digest>`, `/<site>/_pub/<digest>` and `/<site>/_log/<digest>` signed Interests
(docs/protocol.md, "Reports"): verification, processing exactly once, and the acknowledgement (a Data of the
report's full name, signed with the device key, content `{"ok": true}`) sent back to where the report came from
(see Decisions).

    intake = ReportIntake(store, face, "edge", handlers={OPERATION: ops.on_report, PUBLICATION: pubsub.on_report})
    side.on_report -> intake.on_interest(packet, addr)  # the raw Interest and its sender; anything else is ignored
    await intake.start() ... await intake.stop()     # start() opens the intake's unicast socket (face.iface)

A handler is called inside the store transaction of its batch, as `handler(db, report)`, and returns what to do
with the report: `ACK` (processed: remember it, acknowledge it), `SILENT` (processed, needs no acknowledgement:
progress reports), `LATER` (not processed now; no acknowledgement, so the device sends it again) or `DROP`.
A handler that takes a report now and processes it later (pub/sub holding one back to restore order) calls
`intake.processed(db, report)` in that later transaction and `intake.ack(report)` after it. A handler may also ask
for a function to run at the end of the batch's transaction (`before_commit`: write once what many reports of
the batch changed) and after its commit (`after_commit`).

Decisions:
- Verified like announcements: the device is found by its `KeyLocator` (never by a claimed name), then the
  parameters digest and the HMAC with that device's key are checked.
- Exactly-once processing rests on the device's send counter: a report is retransmitted with the same bytes (same
  `SignatureSeqNum`, same signature) until acknowledged. The numbers processed are written to the store
  (`reports_seen`, key name and number -> parameters digest) in the same transaction as their effect, so a
  retransmission -- even after a gateway crash -- is recognised, acknowledged again and not processed twice. The
  same number with another digest is a forgery or a replay across a key change: dropped. The last `KEEP_SEEN`
  numbers per key are kept; anything at or below the highest number pruned is stale (a replay) and dropped.
  A small per-key memory of recent numbers answers retransmissions without a store read.
- The face callback only checks the name prefix on raw bytes and queues; one task takes what is queued (up to
  `BATCH` reports) and processes it in one store transaction: at a thousand reports a second, one commit per
  report would be the bottleneck. Acknowledgements go out after the commit: a report is acknowledged only once
  its effect is durable.
- Device records are cached for `RECORD_TTL_S` (re-provisioning takes effect within a second).
- A retransmission of a report already processed means its acknowledgement was lost. The share of those is
  followed per device, and acknowledgements to a device that loses more than 3 % are sent twice, a few
  milliseconds apart: the device's resend backoff (300 ms, doubling) makes every lost acknowledgement expensive,
  and its outbox (16 reports) stalls behind them. A clean link gets one copy. Not three: every device reads
  every datagram on the group, and a device's read that fills its buffer loses its tail, so more copies cost
  the other devices more than they save (measured by `python -m bench pubsub`: 10 devices publishing, 150 to
  230 messages/s with one copy, 58 with up to three). For the same reason second copies are sent only while the
  intake keeps up (`COPIES_MAX_BACKLOG`) and at most `EXTRA_COPIES_PER_S` a second: without these limits the
  copies fed the losses they were meant to repair, and the bench collapsed to 90 messages/s in one run of two.
- Acknowledgements are encoded with `ndn_edge.wire.client_protocol.encode_reply` (a Data without MetaInfo), a
  fraction of python-ndn's cost; the device checks the name and the HMAC only.
- Acknowledgements go back to where the report came from, over a unicast socket of the intake's own (the
  interface's address, a port of the system's choosing), unless the report came from the group's port (a device's
  group socket, which on Linux is bound to the group address and cannot receive unicast): then by the device's
  path (the group, or unicast to a device on the fallback: `DeviceSide.send_to`).
  A device sends its reports from a socket of its own (device/outbox.py) and, once an acknowledgement has come
  back from this socket, sends its new reports straight to it; so a publishing device costs the others nothing.
  Before, every report and every acknowledgement went to the group: every device read all of them (a foreign
  acknowledgement cost a device about 60 us on the unix port), and each multicast send cost the gateway about
  0.3 ms of kernel time delivering the loopback copies (`python -m bench pubsub`: the devices spent 1.25 ms of
  CPU per message, four fifths of it on other devices' traffic, and the gateway 15 % of its time sending).
- Reports laid out as devices write them are parsed by hand (`ndn_edge.wire.packets.parse_signed_interest`,
  as client requests are); python-ndn's parser, about 0.35 ms a report, only for other layouts. A number above
  the highest one recorded for its key cannot be a retransmission, so only the others are looked up in the store;
  the numbers processed are written with one statement per batch.
Rejected: a high-water mark alone (reports are retransmitted out of order for up to 44 s, interleaved with newer
ones) and acknowledging before processing (a crash in between would lose the report: the device has forgotten it).
"""
from __future__ import annotations

import asyncio
import collections
import hmac
import logging
import socket
import sqlite3
import struct
import time
from collections.abc import Callable
from typing import Any

import cbor2
from ndn.encoding import Component, Name, SignatureType, parse_interest
from ndn.encoding.tlv_model import DecodeError

from ndn_edge.errors import ConfigError, GatewayError, StoreError
from ndn_edge.logs import Throttle, event
from ndn_edge.wire import client_protocol as cw
from ndn_edge.wire import packets as wire
from ndn_edge.wire.framing import FramingError, components_ok, has_name_prefix, name_tlv, unwrap
from ndn_edge.wire.packets import split_components
from ndn_edge.wire.tlv import T

log = logging.getLogger("ndn_edge.reports")

OPERATION = "_op"
PUBLICATION = "_pub"
LOG = "_log"  # device logs (ndn_edge.observability.devlogs)
KINDS = (OPERATION, PUBLICATION, LOG)
ACK, SILENT, LATER, DROP = "ack", "silent", "later", "drop"
ACK_CONTENT = cbor2.dumps({"ok": True})
ACK_DATAGRAM_MAX = 512  # bytes of acknowledgements (about 130 each) sent back to back in one datagram; the
#                         device reads at most this much from an address it is still learning (device/outbox.py)
QUEUE_SIZE = 8192
BATCH = 256
KEEP_SEEN = 4096          # processed numbers kept per key in the store
RECENT_SEEN = 64          # ... and in memory
PRUNE_EVERY = 512         # prune a key's rows after this many new ones
RECORD_TTL_S = 1.0
ACK_LOSS_LEVELS = (0.03,)  # above each, one more copy of every acknowledgement (see the docstring)
ACK_LOSS_WEIGHT = 0.05          # of the newest report in the average
ACK_COPY_SPACING_S = 0.002
COPIES_MAX_BACKLOG = 4          # no extra copies while more reports than this wait to be processed
EXTRA_COPIES_PER_S = 100.0      # extra copies sent per second, at most, over all devices
RCVBUF_BYTES = 1 << 20          # the unicast socket's receive buffer (as the multicast face's)
_FLOOR_META = "report_floor:"
_PARSE_ERRORS = (DecodeError, ValueError, IndexError, TypeError, KeyError, struct.error)

# This module's own table (Store.ensure_schema): MIGRATIONS[i] takes it from version i to i+1.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # device reports already processed, for exactly-once processing of retransmissions
        """CREATE TABLE reports_seen (
            key_name TEXT NOT NULL,
            seq INTEGER NOT NULL,
            digest BLOB NOT NULL,
            PRIMARY KEY (key_name, seq)
        ) WITHOUT ROWID""",
    ),
)

Handler = Callable[[Any, "Report"], str]
Address = tuple[str, int]


class Report:
    """One verified report: which device sent it, its kind, parameters and what the acknowledgement needs."""

    __slots__ = ("addr", "device", "digest", "key_name", "kind", "name_tlv", "params", "received", "seq")

    def __init__(self, device: Any, kind: str, params: Any, seq: int, digest: bytes, name_tlv: bytes,
                 addr: Address | None = None, received: float | None = None) -> None:
        self.device = device      # the store's DeviceRecord
        self.key_name = device.key_name
        self.kind = kind
        self.params = params
        self.seq = seq
        self.digest = digest      # the ParametersSha256Digest: unique per report
        self.name_tlv = name_tlv  # the report's encoded full name, which the acknowledgement repeats
        self.addr = addr          # where it came from (the acknowledgement goes back there), if known
        self.received = time.time() if received is None else received


class _Unicast(asyncio.DatagramProtocol):
    """The intake's unicast socket: reports sent straight to the gateway come in here."""

    def __init__(self, intake: ReportIntake) -> None:
        self._intake = intake

    def datagram_received(self, data: bytes, addr: Address) -> None:
        try:
            packet = unwrap(data)
        except FramingError:
            self._intake.counters["malformed"] += 1
            return
        if packet is not None and packet[0] == T.INTEREST:
            self._intake.on_interest(packet, addr)

    def error_received(self, exc: Exception) -> None:  # an ICMP error for an earlier send: nothing to do
        pass


class _Key:
    """Per device key: recently processed numbers (memory), the floor below which reports are stale, and how
    often its acknowledgements are lost (the share of reports that arrive again: an exponential average)."""

    __slots__ = ("ack_loss", "floor", "new_rows", "recent", "top")

    def __init__(self, floor: int, top: int) -> None:
        self.recent: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self.floor = floor
        self.top = top  # the highest number recorded as processed: anything above it is new
        self.new_rows = 0
        self.ack_loss = 0.0

    def copies(self) -> int:
        """How many copies of an acknowledgement to send: 1 on a clean link, 2 on a lossy one."""
        return 1 + sum(self.ack_loss > level for level in ACK_LOSS_LEVELS)


class ReportIntake:
    """Verifies, processes once and acknowledges the reports of one site's devices."""

    def __init__(self, store: Any, face: Any, site: str, handlers: dict[str, Handler] | None = None, *,
                 send_to: Callable[[str, bytes], None] | None = None) -> None:
        self.site = site.strip("/")
        self._send_to = send_to  # by the device's path (DeviceSide.send_to); None: the face's group
        self.handlers: dict[str, Handler] = dict(handlers or {})
        self._store = store
        self._face = face
        self._prefixes = {kind: b"".join(bytes(c) for c in Name.from_str(f"/{self.site}/{kind}"))
                          for kind in KINDS}
        self._kinds = {prefix: kind for kind, prefix in self._prefixes.items()}
        self._queue: asyncio.Queue[tuple[bytes, Address | None, float]] = asyncio.Queue(QUEUE_SIZE)
        self._task: asyncio.Task[None] | None = None
        self._unicast: asyncio.DatagramTransport | None = None
        self.address: Address | None = None  # the unicast socket's, once open
        self._group_port = getattr(face, "port", None)
        self._keys: dict[str, _Key] = {}
        self._records: dict[str, tuple[Any, float]] = {}
        self._locators: dict[bytes, str | None] = {}
        self._signers: dict[str, tuple[bytes, cw.ReplySigner]] = {}
        self._after: list[Callable[[], None]] = []
        # A federation's (bridge.py, opsync.py): called after a batch's commit, each returns None or a future the
        # batch's acknowledgements wait for (its publications in the federation's stream, its operations'
        # changes in their mirror), so a report is acknowledged only once another gateway could take it over.
        self.ack_gates: list[Callable[[], asyncio.Future[Any] | None]] = []
        self._withheld: set[tuple[str, int]] = set()  # (key name, number) of reports whose acknowledgement waits
        self._gathered: dict[Address, list[bytes]] | None = None  # a batch's unicast acknowledgements, by address
        self._before: list[Callable[[Any], None]] = []
        self._seen_rows: list[tuple[str, int, bytes]] = []
        self._in_batch = False
        self.batch = 0  # the number of the current batch (handlers tell their batches apart by it)
        self._copy_tokens = EXTRA_COPIES_PER_S
        self._copy_at = time.monotonic()
        self.counters: dict[str, int] = {
            "received": 0, "processed": 0, "duplicates": 0, "acks": 0, "later": 0, "unknown_key": 0,
            "digest": 0, "bad_signature": 0, "stale": 0, "malformed": 0, "queue_full": 0, "errors": 0,
            "faults": 0, "acks_unicast": 0, "ack_datagrams": 0, "batches": 0, "acks_withheld": 0,
        }
        self._throttle = Throttle(log)

    # -- lifecycle

    async def start(self) -> None:
        """Start the processing task and open the unicast socket (on the face's interface, when it has one)."""
        if self._task is None:
            self._store.ensure_schema("reports", MIGRATIONS, adopt="reports_seen")
            await self._open_unicast()
            self._task = asyncio.create_task(self._run(), name="report-intake")

    async def stop(self) -> None:
        """Stop processing; reports still queued are not acknowledged (their devices send them again)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        transport, self._unicast = self._unicast, None
        if transport is not None:
            transport.close()

    async def _open_unicast(self) -> None:
        """The unicast socket on the multicast face's interface; without it acknowledgements go to the group."""
        iface = getattr(self._face, "iface", None)
        if not isinstance(iface, str) or self._unicast is not None:
            return
        from ndn_edge.devices.face import interface_address

        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
            sock.bind((interface_address(iface), 0))
            sock.setblocking(False)
        except (OSError, ConfigError) as err:
            sock.close()
            event(log, "report_socket_unavailable", logging.WARNING, iface=iface, error=str(err),
                  note="reports are acknowledged to the group")
            return
        loop = asyncio.get_running_loop()
        self._unicast, _ = await loop.create_datagram_endpoint(lambda: _Unicast(self), sock=sock)
        self.address = sock.getsockname()

    # -- inbound (face callbacks: route only)

    def on_interest(self, packet: bytes, addr: Address | None = None) -> None:
        """Queue a report Interest (from `addr`, by default the sender the face names); others are ignored."""
        if not any(has_name_prefix(packet, prefix) for prefix in self._prefixes.values()):
            return
        self.counters["received"] += 1
        try:
            self._queue.put_nowait((packet, addr or getattr(self._face, "last_addr", None), time.time()))
        except asyncio.QueueFull:
            self.counters["queue_full"] += 1

    # -- for handlers

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Run `fn` once the current batch is committed (wake waiters, deliver to memory)."""
        self._after.append(fn)

    def before_commit(self, fn: Callable[[Any], None]) -> None:
        """Run `fn(db)` at the end of the current batch's transaction (write once what the batch changed)."""
        self._before.append(fn)

    def processed(self, db: Any, report: Report) -> None:
        """Record `report` as processed, inside the caller's transaction (for reports handled `LATER`)."""
        self._seen_rows.append((report.key_name, report.seq, report.digest))
        if not self._in_batch:
            self._write_seen(db)
        key = self._key(report.key_name)
        key.new_rows += 1
        key.top = max(key.top, report.seq)
        self.after_commit(lambda: self._remember(key, report.seq, report.digest))

    def _write_seen(self, db: Any) -> None:
        rows, self._seen_rows = self._seen_rows, []
        if rows:
            db.executemany("INSERT OR REPLACE INTO reports_seen (key_name, seq, digest) VALUES (?, ?, ?)", rows)

    def ack(self, report: Report) -> None:
        """Send the acknowledgement of `report` (after its effect is committed), in as many copies as the
        device's acknowledgement loss calls for."""
        packet = cw.encode_reply(report.name_tlv, ACK_CONTENT, self._signer(report.device))
        addr = report.addr if report.addr is not None and report.addr[1] != self._group_port else None
        self._send(packet, report.device.name, addr)
        copies = self._key(report.key_name).copies() if self._queue.qsize() < COPIES_MAX_BACKLOG else 1
        if copies > 1 and self._extra_copy_allowed():
            loop = asyncio.get_running_loop()
            for i in range(1, copies):
                loop.call_later(ACK_COPY_SPACING_S * i, self._send, packet, report.device.name, addr)

    def _extra_copy_allowed(self) -> bool:
        """A token bucket: extra copies repair lossy links, at most `EXTRA_COPIES_PER_S` so they never become
        the load (on a busy group every device reads every acknowledgement)."""
        now = time.monotonic()
        self._copy_tokens = min(EXTRA_COPIES_PER_S, self._copy_tokens + (now - self._copy_at) * EXTRA_COPIES_PER_S)
        self._copy_at = now
        if self._copy_tokens < 1:
            return False
        self._copy_tokens -= 1
        return True

    def _send(self, packet: bytes, device: str, addr: Address | None) -> None:
        """To `addr` over the intake's unicast socket; without one (no address, or no socket), by the device's
        path."""
        try:
            if addr is not None and self._unicast is not None:
                if self._gathered is not None:  # a batch's: sent together when it is done (_send_gathered)
                    self._gathered.setdefault(addr, []).append(packet)
                    return
                self._unicast.sendto(packet, addr)
                self.counters["ack_datagrams"] += 1
                self.counters["acks_unicast"] += 1
            elif self._send_to is None:
                self._face.send(packet)
            else:
                self._send_to(device, packet)
            self.counters["acks"] += 1
        except GatewayError as err:  # the face is closed: the device sends the report again
            event(log, "ack_not_sent", logging.DEBUG, error=str(err))

    # -- processing (task)

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except asyncio.QueueEmpty:
                    break
            try:
                self._process(batch)
            except (StoreError, sqlite3.Error) as err:
                self.counters["errors"] += 1
                self._throttle.event("store", "reports_not_recorded", error=str(err),
                                     note="their devices send them again")
            except Exception as err:  # a bug: the batch is rolled back, its devices send it again
                self.counters["faults"] += 1
                self._throttle.fault("report-batch", err, reports=len(batch))
            await asyncio.sleep(0)  # let the receive path and clients run between batches

    def _process(self, batch: list[tuple[bytes, Address | None, float]]) -> None:
        self.batch += 1
        self.counters["batches"] += 1
        self._after = []
        self._before = []
        self._seen_rows = []
        acks: list[Report] = []
        seen_now: dict[tuple[str, int], bytes] = {}
        with self._store.transaction() as db:
            self._in_batch = True
            try:
                self._batch(db, batch, acks, seen_now)
            finally:
                self._in_batch = False
        after, self._after = self._after, []
        for fn in after:
            try:
                fn()
            except Exception as err:
                self._throttle.fault("report-after-commit", err)
        if self._withheld:  # a resend of a report whose acknowledgement waits: it goes with that one
            acks = [r for r in acks if (r.key_name, r.seq) not in self._withheld]
        waits = [g for g in (gate() for gate in self.ack_gates) if g is not None and not g.done()] if acks else []
        if not waits:
            self._ack_all(acks)
            return
        gate = waits[0] if len(waits) == 1 else asyncio.gather(*waits, return_exceptions=True)
        marks = [(r.key_name, r.seq) for r in acks]
        self._withheld.update(marks)
        self.counters["acks_withheld"] += len(marks)
        gate.add_done_callback(lambda _: self._release(acks, marks))

    def _release(self, acks: list[Report], marks: list[tuple[str, int]]) -> None:
        """Send the acknowledgements the batch's gate held back."""
        self._withheld.difference_update(marks)
        if self._task is not None:  # (stopped: not acknowledged, the devices send them again)
            self._ack_all(acks)

    def _ack_all(self, acks: list[Report]) -> None:
        self._gathered = {}
        try:
            for report in acks:
                self.ack(report)
        finally:
            gathered, self._gathered = self._gathered, None
            self._send_gathered(gathered)

    def _send_gathered(self, gathered: dict[Address, list[bytes]]) -> None:
        """The acknowledgements of one batch to each report socket, back to back in as few datagrams as
        `ACK_DATAGRAM_MAX` allows (the device walks a datagram's packets one after another)."""
        assert self._unicast is not None or not gathered
        for addr, packets in gathered.items():
            first = 0
            while first < len(packets):
                end, size = first + 1, len(packets[first])
                while end < len(packets) and size + len(packets[end]) <= ACK_DATAGRAM_MAX:
                    size += len(packets[end])
                    end += 1
                self._unicast.sendto(b"".join(packets[first:end]), addr)  # type: ignore[union-attr]
                self.counters["ack_datagrams"] += 1
                self.counters["acks_unicast"] += end - first
                self.counters["acks"] += end - first
                first = end

    def _batch(self, db: Any, batch: list[tuple[bytes, Address | None, float]], acks: list[Report],
               seen_now: dict[tuple[str, int], bytes]) -> None:
        """Verify and process each report of the batch inside its transaction, then write what the batch changed."""
        for packet, addr, received in batch:
            try:
                report = self._verify(packet, addr, received)
            except Exception as err:  # one packet's fault never costs the batch
                self.counters["faults"] += 1
                self._throttle.fault("report-verify", err, size=len(packet))
                continue
            if report is None:
                continue
            mark = (report.key_name, report.seq)
            known = seen_now.get(mark) or self._seen(db, report)
            key = self._key(report.key_name)
            key.ack_loss += ACK_LOSS_WEIGHT * ((known is not None) - key.ack_loss)
            if known is not None:
                if hmac.compare_digest(known, report.digest):
                    self.counters["duplicates"] += 1
                    acks.append(report)  # its acknowledgement was lost: send it again
                else:
                    self._drop("stale", f"{report.device.name} report {report.seq} differs from the one "
                                        "processed under that number")
                continue
            handler = self.handlers.get(report.kind)
            try:
                verdict = handler(db, report) if handler is not None else DROP
            except (StoreError, sqlite3.Error):
                raise
            except Exception:  # a handler's bug: the report is not acknowledged, the device sends it again
                self.counters["errors"] += 1
                log.exception("report_handler_failed", extra={"fields": {"device": report.device.name,
                                                                         "kind": report.kind}})
                continue
            if verdict in (ACK, SILENT):
                self.counters["processed"] += 1
                seen_now[mark] = report.digest
                self.processed(db, report)
                if verdict == ACK:
                    acks.append(report)
            elif verdict == LATER:
                self.counters["later"] += 1
        before, self._before = self._before, []
        for fn in before:
            fn(db)
        self._write_seen(db)
        self._prune(db)

    def _verify(self, packet: bytes, addr: Address | None = None, received: float | None = None) -> Report | None:
        """The verified report in `packet`, or None (dropped and counted)."""
        req = wire.parse_signed_interest(packet)
        kind = None if req is None else self._kinds.get(req.prefix)
        key_name = None if req is None else self._locator(req.key_locator)
        if req is None or kind is None or key_name is None or req.seq is None \
                or req.sig_type != SignatureType.HMAC_WITH_SHA256:
            return self._verify_slow(packet, addr, received)  # another layout: python-ndn's parser says what
        record = self._record(key_name)
        if record is None:
            return self._drop("unknown_key", f"no device of site {self.site} holds key {key_name}")
        fault = req.fault(record.key)
        if fault == "digest":
            return self._drop("digest", f"parameters digest mismatch from {record.name}")
        if fault:
            return self._drop("bad_signature", f"report claiming key {key_name} does not verify")
        floor = self._key(key_name).floor
        if req.seq <= floor:
            return self._drop("stale", f"{record.name} report {req.seq} is at or below the floor {floor}")
        try:
            body = cbor2.loads(req.params)
        except (cbor2.CBORDecodeError, ValueError, TypeError) as err:
            return self._drop("malformed", f"report parameters from {record.name}: {err}")
        if not isinstance(body, dict):
            return self._drop("malformed", f"report parameters from {record.name} are not a map")
        return Report(record, kind, body, req.seq, req.digest, req.name_tlv, addr, received)

    def _locator(self, value: bytes) -> str | None:
        """The KeyLocator name's value as a URI (cached), or None when a component is malformed."""
        try:
            return self._locators[value]
        except KeyError:
            pass
        parts = split_components(value)
        uri = Name.to_str(list(parts)) if parts and components_ok(parts) else None
        if len(self._locators) > 65536:
            self._locators.clear()
        self._locators[value] = uri
        return uri

    def _verify_slow(self, packet: bytes, addr: Address | None, received: float | None) -> Report | None:
        try:
            name, _, params, sig = parse_interest(packet, with_tl=True)
        except _PARSE_ERRORS as err:
            return self._drop("malformed", f"not an Interest: {err}")
        if not components_ok(name) or len(name) != 3 or \
                Component.get_type(name[-1]) != T.DIGEST_COMPONENT:
            return self._drop("malformed", f"name is not /{self.site}/<kind>/<digest>")
        kind = Component.to_str(name[1])
        info = sig.signature_info
        if (info is None or info.signature_type != SignatureType.HMAC_WITH_SHA256 or info.key_locator is None
                or not info.key_locator.name or not components_ok(info.key_locator.name)
                or info.signature_seq_num is None):
            return self._drop("malformed", "not signed with HMAC-SHA256, a KeyLocator name and a SignatureSeqNum")
        key_name = Name.to_str(info.key_locator.name)
        record = self._record(key_name)
        if record is None:
            return self._drop("unknown_key", f"no device of site {self.site} holds key {key_name}")
        digest = bytes(Component.get_value(name[-1]))
        fault = wire.interest_fault(sig, record.key, digest)
        if fault == "digest":
            return self._drop("digest", f"parameters digest mismatch from {record.name}")
        if fault:
            return self._drop("bad_signature", f"report claiming key {key_name} does not verify")
        seq = info.signature_seq_num
        if seq <= self._key(key_name).floor:
            return self._drop("stale", f"{record.name} report {seq} is at or below the floor "
                                       f"{self._key(key_name).floor}")
        try:
            body = cbor2.loads(bytes(params or b""))
        except (cbor2.CBORDecodeError, ValueError, TypeError) as err:
            return self._drop("malformed", f"report parameters from {record.name}: {err}")
        if not isinstance(body, dict):
            return self._drop("malformed", f"report parameters from {record.name} are not a map")
        encoded = name_tlv(packet)
        if encoded is None:
            return self._drop("malformed", "no Name")
        return Report(record, kind, body, seq, digest, bytes(encoded), addr, received)

    def _drop(self, reason: str, detail: str) -> None:
        self.counters[reason] += 1
        event(log, "report_dropped", logging.DEBUG, reason=reason, detail=detail)
        return None

    # -- helpers

    def _record(self, key_name: str) -> Any:
        now = time.monotonic()
        cached = self._records.get(key_name)
        if cached is not None and now - cached[1] < RECORD_TTL_S:
            return cached[0]
        record = self._store.device_by_key_name(key_name)
        if record is not None and record.site != self.site:
            record = None
        if len(self._records) > 65536:
            self._records.clear()
        self._records[key_name] = (record, now)
        return record

    def _key(self, key_name: str) -> _Key:
        key = self._keys.get(key_name)
        if key is None:
            floor = int(self._store.get_meta(_FLOOR_META + key_name, "0") or 0)
            top = self._store.query("SELECT MAX(seq) FROM reports_seen WHERE key_name = ?", (key_name,))[0][0]
            key = self._keys[key_name] = _Key(floor, max(floor, top or 0))
        return key

    def _seen(self, db: Any, report: Report) -> bytes | None:
        key = self._key(report.key_name)
        if report.seq > key.top:
            return None  # above every number recorded: new
        digest = key.recent.get(report.seq)
        if digest is not None:
            return digest
        row = db.execute("SELECT digest FROM reports_seen WHERE key_name = ? AND seq = ?",
                         (report.key_name, report.seq)).fetchone()
        return bytes(row[0]) if row else None

    def _remember(self, key: _Key, seq: int, digest: bytes) -> None:
        key.recent[seq] = digest
        while len(key.recent) > RECENT_SEEN:
            key.recent.popitem(last=False)

    def _prune(self, db: Any) -> None:
        for key_name, key in self._keys.items():
            if key.new_rows < PRUNE_EVERY:
                continue
            key.new_rows = 0
            row = db.execute("SELECT seq FROM reports_seen WHERE key_name = ? ORDER BY seq DESC LIMIT 1 OFFSET ?",
                             (key_name, KEEP_SEEN)).fetchone()
            if row is None:
                continue
            cut = row[0]
            db.execute("DELETE FROM reports_seen WHERE key_name = ? AND seq <= ?", (key_name, cut))
            db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET "
                       "value = excluded.value", (_FLOOR_META + key_name, str(cut)))
            key.floor = max(key.floor, cut)

    def _signer(self, record: Any) -> cw.ReplySigner:
        cached = self._signers.get(record.name)
        if cached is None or cached[0] != record.key:
            cached = (record.key, cw.ReplySigner(record.key_name, record.key))
            self._signers[record.name] = cached
        return cached[1]
