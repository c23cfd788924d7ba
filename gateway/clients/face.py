"""The client face of the gateway: signed requests over UDP unicast in, signed replies out.

`ClientFace` owns one UDP socket (`--listen`, default 127.0.0.1 and an ephemeral port) and, for every client
key it has seen, the replay state and the last replies. The pipeline for one datagram (docs/gateway-protocol.md):
size check, LP unwrap, parse, name shape, client lookup, digest, HMAC, time window, sequence/nonce check; then
the verb, which `clients.verbs.Verbs` checks against the client's rules and runs; then the reply. This module
owns authentication and replay protection only, the verbs module everything a request asks for.

Decisions:
- Unauthenticated traffic gets no answer at all (unknown client, bad digest or signature, stale time, replay),
  only a counter, so the socket tells a scanner nothing. Once the signature checks, every outcome is a signed
  reply, errors included (`PERMISSION_DENIED`, `INVALID_ARGUMENT`, ...).
- The datagram callback parses, authenticates and admits the datagram at once (`_parse`, `_authenticate`,
  `_admit`: each drops and counts what fails), in about 25 us. A verb that can answer at once (a cache hit) is
  answered there; any other runs in its own task, so slow devices never hold up other clients. Too many requests
  in flight answer `RESOURCE_EXHAUSTED`. The socket's receive buffer is the only queue: under overload the kernel
  drops, which costs the gateway nothing. Rejected: a queue and a worker task between callback and handling
  (its hand-off cost a tenth of a cached call and bought nothing: the handling never waits).
- Client keys and rules are read from the store and kept for `refresh_s` (1 s): `ndn-edge client remove` or
  `acl revoke` take effect within a second without a round trip to SQLite per packet. Unknown key names are
  cached negatively for the same time, so a flood of made-up names costs one query per name per second.
- Replay protection per client key: `SignatureTime` within 60 s of the gateway clock; `SignatureSeqNum` above the
  high-water mark, or less than 2 s (in the clients' microsecond numbering) below it and never seen (several
  processes of one client interleave); and a bounded cache of recent `SignatureNonce`s. The high-water mark is
  leased to the store (RFC 8613 B.1.1, as devices do): before accepting a number above the persisted mark the
  gateway commits `mark = number + 1 s`, at most one synced write per second per active client. A clean stop
  records the exact marks, so a quick restart does not reject clients for up to that second; after a crash the
  leased marks hold.
- A retransmission (same number, same signature) is not a replay: it joins the request in flight or gets the
  cached reply, so a client retrying a non-idempotent call never runs it twice.
- Listing is filtered by the rules (a client sees the devices and services it could call); `services` of a
  device outside the rules is `PERMISSION_DENIED` whether or not the device exists, so rules do not leak names.
- Framing (LpPacket unwrapping, idle and fragmented packets) is `ndn_edge.wire.framing`'s, the device side's rules, so
  both faces accept and drop the same datagrams; the Interest itself is parsed by
  `ndn_edge.wire.packets.parse_signed_interest` when it has the usual layout of a signed request (a quarter of the cost
  of a cached call went to python-ndn's generic parser), by python-ndn otherwise; replies are encoded by
  `ndn_edge.wire.client_protocol`.
- In a federation (`ndn_edge.federation`), a request for a device another gateway serves is authenticated and
  admitted here as any other (so a replay to this gateway is dropped here), then relayed whole, its signed bytes
  unchanged, to the serving gateway (`forwarder`); that gateway checks it again exactly as if the client were its
  own (`receive_forwarded`: the same pipeline, with the NATS reply in place of a UDP address) and its signed reply
  comes back to the client unchanged. A request relayed to this gateway is never relayed again.
Rejected: answering unauthenticated requests with an error (turns the gateway into a reflector and an oracle),
and a per-packet store read (SQLite on the hot path for every call).
"""
from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import inspect
import json
import logging
import socket
import struct
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import cbor2
from ndn.encoding import Component, parse_interest
from ndn.encoding.ndnlp_v2 import parse_lp_packet_v2
from ndn.encoding.tlv_model import DecodeError

from ndn_edge.clients.verbs import Caller, Encoded, Verbs
from ndn_edge.errors import (
    CallError,
    GatewayError,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    StoreError,
    Unavailable,
    UnknownDevice,
)
from ndn_edge.interfaces import REPLY_MORE, REQUEST_ID, DeviceAccess, Forwarder
from ndn_edge.limits import Limits
from ndn_edge.logs import Throttle, event
from ndn_edge.state.store import Store, key_id
from ndn_edge.wire import client_protocol as cw
from ndn_edge.wire import framing
from ndn_edge.wire.packets import SignedRequest, parse_signed_interest, split_components
from ndn_edge.wire.tlv import DIGEST_BYTES, T

log = logging.getLogger("ndn_edge.server")

DROP_REASONS = ("malformed", "oversized", "unsupported", "unknown_client", "digest", "signature", "stale",
                "replay")
_SECURITY_REASONS = ("unknown_client", "digest", "signature", "stale", "replay")
_PARSE_ERRORS = (ValueError, IndexError, TypeError, struct.error, DecodeError, OverflowError)
_HMAC_SHA256 = 4
_LEASE_BLOCK_US = 1_000_000       # one synced write per second of a client's numbering, at most
_CLEAN_META = "client_rx_clean"   # exact high-water marks written at a clean stop
_RECENT_REPLIES = 65_536          # per client key, at most ...
_RECENT_REPLY_BYTES = 8 << 20     # ... and this many bytes of replies
_DEFAULT_LIFETIME_MS = 4000       # NDN's InterestLifetime when a request carries none
_REPLY_SLACK_S = 1.0              # a reply is kept this long past its request's lifetime
_SEEN_SEQS = 8192
_NONCES = 8192
_NEGATIVE_CACHE = 4096
_WARN_EVERY_S = 10.0
_RCVBUF = 1 << 20


class _Request:
    """A parsed request, before authentication: its parts, the name's components and the LP PIT token."""

    __slots__ = ("components", "lifetime_ms", "parts", "pit")

    def __init__(self, parts: SignedRequest, components: tuple[bytes, ...], pit: bytes | None) -> None:
        self.parts = parts
        self.components = components  # of the name without its digest: site, _gw, verb, target...
        self.pit = pit
        self.lifetime_ms = min(parts.lifetime_ms or _DEFAULT_LIFETIME_MS, cw.MAX_TIMEOUT_MS)


class _Exchange:
    """One accepted request: its name, signature, where to answer, and the reply once there is one."""

    __slots__ = ("addr", "keep_until", "name", "pit", "reply", "seq", "signature")

    def __init__(self, seq: int, name: bytes, signature: bytes, addr: Any, pit: bytes | None,
                 keep_until: float) -> None:
        self.seq = seq
        self.keep_until = keep_until  # monotonic: the client may retransmit until its request's lifetime ends
        self.name = name  # the request's encoded Name TLV, which the reply repeats
        self.signature = signature
        self.addr = addr
        self.pit = pit
        self.reply: bytes | None = None


class _Peer:
    """One client key: its rules, its replay state and its recent exchanges."""

    __slots__ = (
        "caller",
        "floor",
        "high",
        "key",
        "key_name",
        "lease_key",
        "loaded_at",
        "mark",
        "name",
        "nonces",
        "recent",
        "recent_bytes",
        "seen",
        "signer",
        "tokens",
        "tokens_at",
    )

    def __init__(self, name: str, key: bytes, key_name: str, rules: tuple[tuple[str, ...], ...], now: float) -> None:
        self.name = name
        self.key = key
        self.key_name = key_name
        self.lease_key = f"rx:{key_name}"
        self.caller = Caller(name, rules)
        self.loaded_at = now
        self.signer = cw.ReplySigner(key_name, key)
        self.high = 0    # highest number accepted
        self.floor = 0   # nothing at or below this is accepted
        self.mark = 0    # persisted lease: numbers up to here may be accepted without a write
        self.seen: OrderedDict[int, None] = OrderedDict()        # accepted numbers, in arrival order
        self.nonces: OrderedDict[int, float] = OrderedDict()     # nonce -> arrival (monotonic s)
        self.recent: OrderedDict[int, _Exchange] = OrderedDict()  # seq -> exchange, for retransmissions
        self.recent_bytes = 0  # size of the replies held in `recent`
        self.tokens = -1.0  # the request-rate bucket (Limits): -1 until the first request fills it
        self.tokens_at = now

    def take_token(self, limits: Limits, now: float) -> bool:
        """True if the client may make one more request now (its rate quota); uses one token."""
        if self.tokens < 0:
            self.tokens = float(limits.request_burst)
        else:
            self.tokens = min(float(limits.request_burst), self.tokens + (now - self.tokens_at) * limits.requests_per_s)
        self.tokens_at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True

    def remember(self, seq: int, ex: _Exchange) -> None:
        """Keep `ex` for retransmissions until its request's lifetime ends, within the count and byte budgets."""
        self.recent[seq] = ex
        self.trim()

    def trim(self) -> None:
        """Forget exchanges (oldest first) whose requests can no longer be retransmitted, and any past the
        budgets; an exchange is appended at acceptance, so the oldest come first (lifetimes may differ, so an
        expired one behind a longer-lived one waits for it: the budgets bound that)."""
        now = time.monotonic()
        while self.recent:
            old = next(iter(self.recent.values()))
            if (old.keep_until > now and len(self.recent) <= _RECENT_REPLIES
                    and self.recent_bytes <= _RECENT_REPLY_BYTES):
                break
            self.recent.popitem(last=False)
            if old.reply is not None:
                self.recent_bytes -= len(old.reply)


class Relayed:
    """Where the reply to a request relayed by another gateway goes (in place of a UDP address)."""

    __slots__ = ("deliver",)

    def __init__(self, deliver: Callable[[bytes], None]) -> None:
        self.deliver = deliver

    def __str__(self) -> str:
        return "federation"


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, server: ClientFace) -> None:
        self._server = server

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._server._receive(data, addr)

    def error_received(self, exc: Exception) -> None:
        self._server.stats["send_errors"] += 1


class ClientFace:
    """Serves signed client requests on a UDP socket: authenticates them, then runs their verbs (`Verbs`)."""

    def __init__(self, store: Store, verbs: Verbs, *, site: str,
                 listen: tuple[str, int] = ("127.0.0.1", 0), max_in_flight: int = 1024,
                 refresh_s: float = 1.0, limits: Limits | None = None) -> None:
        self._store = store
        self._verbs = verbs
        self.limits = limits or Limits()
        self.site = site
        self._listen = listen
        self._max_in_flight = max_in_flight
        self._refresh_s = refresh_s
        self._site_comp = bytes(Component.from_str(site))
        self._gw_comp = bytes(Component.from_str(cw.GW))
        self._client_comp = bytes(Component.from_str(cw.CLIENT))
        self._key_comp = bytes(Component.from_str("KEY"))
        self._peers: dict[bytes, _Peer] = {}    # by the KeyLocator Name's value
        self._unknown: dict[bytes, float] = {}
        self._clean: dict[str, int] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self._tasks: set[asyncio.Task] = set()
        self._relays: set[asyncio.Future[bytes | None]] = set()  # relayed to another gateway (forwarder)
        self._stopping = False
        self._throttle = Throttle(log, _WARN_EVERY_S)
        self._wrong_site_answered: dict[str, float] = {}
        self.stats: dict[str, int] = {"received": 0, "accepted": 0, "replies": 0, "errors": 0, "denied": 0,
                                      "retransmissions": 0, "idle": 0, "send_errors": 0, "internal": 0,
                                      "over_quota": 0, "wrong_site": 0, "pushed": 0}
        self.drops: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self.forwarder: Forwarder | None = None  # set by a federation (ndn_edge.federation)

    @property
    def verbs(self) -> Verbs:
        """The verb table this face runs."""
        return self._verbs

    def invalidate(self, client: str | None = None) -> None:
        """Read `client`'s key and rules (every client's, for None) from the store at its next request, and
        forget unknown key names: a federation applying a change made on another gateway calls this."""
        for peer in self._peers.values():
            if client is None or peer.name == client:
                peer.loaded_at = -1e18
        self._unknown.clear()

    def receive_forwarded(self, data: bytes, deliver: Callable[[bytes], None]) -> None:
        """A client's request relayed by another gateway of the federation: served as if it came from the
        client, the reply passed to `deliver` instead of sent on the socket."""
        self._receive(data, Relayed(deliver))

    @classmethod
    def build(cls, store: Store, devices: DeviceAccess, patterns: Any = None, *, site: str, obs: Any = None,
              **options: Any) -> ClientFace:
        """A client face whose verbs run on `devices` (and the communication `patterns`, when given; calls
        counted and traced by `obs`, ndn_edge.observability's Observability), with the metrics verb reporting
        the counters of all of them."""
        face: ClientFace

        def counters() -> dict[str, Any]:
            out: dict[str, Any] = {"clients": face.metrics(), "devices": devices.metrics()}
            if patterns is not None:
                out["patterns"] = patterns.metrics()
            if obs is not None:
                out["observability"] = obs.counters()
            return out

        face = cls(store, Verbs(devices, patterns, site=site, counters=counters, obs=obs), site=site, **options)
        return face

    # -- life cycle

    async def start(self) -> tuple[str, int]:
        """Bind the socket and start serving; returns the bound (host, port)."""
        loop = asyncio.get_running_loop()
        self._load_clean_marks()
        try:
            transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), local_addr=self._listen)
        except OSError as err:
            host, port = self._listen
            raise Unavailable(f"cannot listen for clients on {host}:{port}: {err.strerror or err}; "
                              "choose another address with --listen HOST:PORT") from err
        self._transport = transport
        self._stopping = False
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
            except OSError:
                pass
        host, port = self.address
        event(log, "client_server_listening", host=host, port=port, site=self.site)
        return host, port

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the socket is bound to."""
        if self._transport is None:
            raise RuntimeError("ClientFace is not started")
        host, port = self._transport.get_extra_info("sockname")[:2]
        return host, port

    async def stop(self) -> None:
        """Stop serving: requests in flight are answered UNAVAILABLE; exact replay marks are saved."""
        self._stopping = True  # no new requests; those in flight get their answer
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        relays = list(self._relays)
        for relay in relays:
            relay.cancel()
        await asyncio.gather(*tasks, *relays, return_exceptions=True)
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        self._save_clean_marks()
        event(log, "client_server_stopped", **self.stats, drops=self.drops)

    def metrics(self) -> dict[str, Any]:
        """Counters of the client face."""
        return {**self.stats, "drops": dict(self.drops), "in_flight": len(self._tasks) + len(self._relays),
                "clients": len(self._peers)}

    # -- receive path

    def _receive(self, data: bytes, addr: Any) -> None:
        if self._stopping:
            return
        self.stats["received"] += 1
        if len(data) > cw.MAX_PACKET_BYTES:
            self._drop("oversized", addr, size=len(data))
            return
        try:
            self._handle(data, addr)
        except Exception as err:  # a bug in one packet's handling must not stop the face
            self.stats["internal"] += 1
            self._throttle.fault("client-packet", err, addr=_addr(addr))

    def _handle(self, data: bytes, addr: Any) -> None:
        """One datagram: parse, authenticate, admit (replay check), dispatch."""
        request = self._parse(data, addr)
        if request is None:
            return
        peer = self._authenticate(request, addr)
        if peer is None:
            return
        ex = self._admit(peer, request, addr)
        if ex is None:
            return
        if self.forwarder is not None and not isinstance(addr, Relayed):
            relay = self.forwarder.forward(request.parts.prefix, request.parts.params, data, request.lifetime_ms)
            if relay is not None:
                if len(self._tasks) + len(self._relays) >= self._max_in_flight:
                    relay.cancel()
                    self._reply_error(peer, ex, ResourceExhausted(
                        f"the gateway has {len(self._tasks) + len(self._relays)} requests in flight; retry later"))
                    return
                self._relays.add(relay)
                relay.add_done_callback(functools.partial(self._relayed, peer, ex, request))
                return
        try:
            if log.isEnabledFor(logging.DEBUG):
                event(log, "client_request", logging.DEBUG, client=peer.name, addr=_addr(addr), seq=ex.seq,
                      name="/".join(Component.to_str(c) for c in request.components[2:]))
            self._dispatch(peer, ex, request.parts.prefix, request.parts.params)
        except Exception as err:  # accepted, so it must be answered; the bug goes to the log
            self.stats["internal"] += 1
            self._throttle.fault("client-dispatch", err, client=peer.name)
            self._reply_error(peer, ex, Internal(f"gateway error: {type(err).__name__}: {err}"))

    def _parse(self, data: bytes, addr: Any) -> _Request | None:
        """The request in a datagram, or None (dropped and counted)."""
        try:
            packet = framing.unwrap(data)
        except framing.FramingError:
            return self._drop("malformed", addr)
        if packet is None:
            self.stats["idle"] += 1
            return None
        pit = None
        if packet is not data:  # it came in an LpPacket: keep the PIT token for the reply
            try:
                token = parse_lp_packet_v2(data, with_tl=True).pit_token
            except _PARSE_ERRORS:
                return self._drop("malformed", addr)
            pit = bytes(token) if token is not None else None
        if packet[:1] != bytes([T.INTEREST]):
            return self._drop("unsupported", addr, why="not an Interest")
        parts = parse_signed_interest(packet)
        if parts is None:  # any layout but the usual one
            try:
                parts = _from_python_ndn(packet)
            except _PARSE_ERRORS:
                return self._drop("malformed", addr)
            if parts is None:
                return self._drop("malformed", addr, why="a name component's length is wrong")
        components = _components(parts.prefix)
        if components is None:
            return self._drop("malformed", addr, why="a name component's length is wrong")
        if len(components) < 3 or components[1] != self._gw_comp:
            return self._drop("unsupported", addr, why="not a gateway request")
        if parts.sig_type != _HMAC_SHA256 or not parts.key_locator:
            return self._drop("unsupported", addr, why="not signed with HMAC-SHA256 and a key name")
        if parts.seq is None or parts.time_ms is None or parts.nonce is None:
            return self._drop("malformed", addr, why="SignatureSeqNum, SignatureTime and SignatureNonce are required")
        return _Request(parts, components, pit)

    def _authenticate(self, request: _Request, addr: Any) -> _Peer | None:
        """The client whose key signed the request, or None (dropped and counted)."""
        parts = request.parts
        if request.components[0] != self._site_comp:
            return self._wrong_site(request, addr)
        peer = self._peer(parts.key_locator)
        if peer is None:
            if _components(parts.key_locator) is None:
                return self._drop("malformed", addr, why="a key name component's length is wrong")
            return self._drop("unknown_client", addr)
        fault = parts.fault(peer.key)
        if fault is not None:
            return self._drop(fault, addr, client=peer.name)
        assert parts.time_ms is not None and parts.seq is not None  # checked by _parse
        skew_ms = parts.time_ms - time.time() * 1000
        if abs(skew_ms) > cw.TIME_WINDOW_MS:
            return self._drop("stale", addr, client=peer.name, skew_ms=int(skew_ms))
        if parts.seq > (parts.time_ms + cw.TIME_WINDOW_MS) * 1000:
            # Clients number in microseconds of their clock: a number far ahead of the signed time would lift
            # the high-water mark (persisted) past anything the client will send for years.
            return self._drop("stale", addr, client=peer.name, why="SignatureSeqNum ahead of SignatureTime")
        return peer

    def _wrong_site(self, request: _Request, addr: Any) -> None:
        """A request for another site. From a client of this gateway, signed with its key (its credentials name
        the wrong site), it gets a signed answer saying so, at most once a second per client; anything else is
        dropped like any request from nobody."""
        ident = _components(request.parts.key_locator) or ()
        record = None
        if len(ident) == 5 and ident[1] == self._client_comp and ident[3] == self._key_comp and \
                all(Component.get_type(c) == T.GENERIC_COMPONENT for c in ident):
            record = self._store.client(Component.to_str(ident[2]))
            if record is not None and key_id(record.key) != Component.to_str(ident[4]):
                record = None
        if record is None or request.parts.fault(record.key) is not None:
            return self._drop("unknown_client", addr)
        now = time.monotonic()
        if now - self._wrong_site_answered.get(record.name, -1.0) < 1.0:
            return self._drop("unsupported", addr, why="wrong site, answered a moment ago")
        self._wrong_site_answered[record.name] = now
        self.stats["wrong_site"] += 1
        theirs = Component.to_str(request.components[0])
        err = InvalidArgument(f"this gateway serves site '{self.site}', but client '{record.name}' signed for site "
                              f"'{theirs}': fix \"site\" in its credentials file, or remove and add the client "
                              "again")
        signer = cw.ReplySigner("/" + "/".join(Component.to_str(c) for c in ident), record.key)
        self._send(cw.encode_reply(request.parts.name_tlv, cbor2.dumps(err.to_wire()), signer, nack=True,
                                   pit_token=request.pit), addr)
        event(log, "wrong_site", logging.WARNING, client=record.name, site=theirs, addr=_addr(addr))
        return None

    def _admit(self, peer: _Peer, request: _Request, addr: Any) -> _Exchange | None:
        """A new exchange for a fresh request; None for a retransmission (answered here) or a replay (dropped)."""
        parts = request.parts
        seq, nonce = parts.seq, parts.nonce
        assert seq is not None and nonce is not None  # checked by _parse
        verdict = self._replay_verdict(peer, seq, nonce, parts.signature)
        if verdict == "retransmission":
            ex = peer.recent[seq]
            self.stats["retransmissions"] += 1
            ex.addr = addr
            if ex.reply is not None:
                self._send(ex.reply, addr)
            return None
        if verdict == "replay":
            return self._drop("replay", addr, client=peer.name, seq=seq)
        now = time.monotonic()
        ex = _Exchange(seq, parts.name_tlv, parts.signature, addr, request.pit,
                       now + request.lifetime_ms / 1000 + _REPLY_SLACK_S)
        if not peer.take_token(self.limits, now):
            # Not admitted: the number stays unused, so the client's retransmission after a pause is served.
            self.stats["over_quota"] += 1
            self._reply_error(peer, ex, ResourceExhausted(
                f"client '{peer.name}' is over its request rate ({self.limits.requests_per_s:g} per second, "
                f"bursts of {self.limits.request_burst}); slow down and retry"))
            return None
        try:
            self._accept(peer, seq, nonce)
        except StoreError as err:
            event(log, "replay_lease_failed", logging.ERROR, client=peer.name, error=str(err))
            self._reply_error(peer, ex, Unavailable("the gateway cannot record sequence numbers now; retry later"))
            return None
        self.stats["accepted"] += 1
        peer.remember(seq, ex)
        return ex

    # -- clients and replay state

    def _peer(self, key_locator: bytes) -> _Peer | None:
        """The client owning this key name (the KeyLocator Name's value), from memory or (at most every
        refresh_s) the store."""
        ident = key_locator
        now = time.monotonic()
        peer = self._peers.get(ident)
        if peer is not None and now - peer.loaded_at < self._refresh_s:
            return peer
        missed = self._unknown.get(ident)
        if missed is not None and now - missed < self._refresh_s:
            return None
        record = None
        comps = _components(ident) or ()
        if (len(comps) == 5 and comps[0] == self._site_comp and comps[1] == self._client_comp
                and comps[3] == self._key_comp and all(Component.get_type(c) == T.GENERIC_COMPONENT for c in comps)):
            client = Component.to_str(comps[2])
            kid = Component.to_str(comps[4])
            try:
                record = self._store.client(client)
            except StoreError as err:
                event(log, "client_lookup_failed", logging.ERROR, client=client, error=str(err))
            if record is not None and key_id(record.key) != kid:
                record = None
        if record is None:
            self._peers.pop(ident, None)
            if len(self._unknown) >= _NEGATIVE_CACHE:
                self._unknown.clear()
            self._unknown[ident] = now
            return None
        rules = tuple(rule.parts for rule in self._store.rules(record.name))
        if peer is not None and peer.key == record.key:
            peer.caller = Caller(record.name, rules)
            peer.loaded_at = now
            return peer
        key_name = cw.client_key_name(self.site, record.name, record.key)
        peer = _Peer(record.name, record.key, key_name, rules, now)
        mark = self._store.seq_mark(peer.lease_key)
        ceiling = int((time.time() * 1000 + cw.TIME_WINDOW_MS) * 1000)
        if mark > ceiling:
            # Leased by a number far ahead of its client's clock, which gateways before 0.2 accepted: it would
            # lock the client out for good. No request above the ceiling is accepted now, so nothing it could
            # have covered can be replayed.
            event(log, "replay_mark_repaired", logging.WARNING, client=record.name, mark=mark, ceiling=ceiling)
            self._store.repair_seq_mark(peer.lease_key, ceiling)
            mark = ceiling
        clean = self._clean.get(peer.lease_key)
        if clean is not None and clean <= mark:
            # A clean stop recorded the exact mark; the next accept re-leases (and syncs) before executing.
            peer.high = peer.floor = peer.mark = clean
        else:
            peer.high = peer.floor = peer.mark = mark
        self._peers[ident] = peer
        self._unknown.pop(ident, None)
        return peer

    def _replay_verdict(self, peer: _Peer, seq: int, nonce: int, signature: bytes) -> str:
        """"new", "retransmission" (same number and signature as an accepted request) or "replay"."""
        ex = peer.recent.get(seq)
        if ex is not None:
            return "retransmission" if hmac.compare_digest(ex.signature, signature) else "replay"
        if seq <= peer.floor:
            return "replay"
        if seq <= peer.high and (peer.high - seq >= cw.REORDER_WINDOW_US or seq in peer.seen):
            return "replay"
        if nonce in peer.nonces:
            return "replay"
        return "new"

    def _accept(self, peer: _Peer, seq: int, nonce: int) -> None:
        """Record `seq` and `nonce` as used, leasing a new mark first when `seq` passes the persisted one."""
        if seq > peer.mark:
            start = self._store.lease_seq_block(peer.lease_key, seq, _LEASE_BLOCK_US)
            peer.mark = start + _LEASE_BLOCK_US - 1
            self._clean.pop(peer.lease_key, None)
        if seq > peer.high:
            peer.high = seq
        peer.seen[seq] = None
        while len(peer.seen) > _SEEN_SEQS:
            old, _ = peer.seen.popitem(last=False)
            peer.floor = max(peer.floor, old)
        now = time.monotonic()
        peer.nonces[nonce] = now
        horizon = now - 2 * cw.TIME_WINDOW_MS / 1000
        while peer.nonces and (len(peer.nonces) > _NONCES or next(iter(peer.nonces.values())) < horizon):
            peer.nonces.popitem(last=False)

    def _load_clean_marks(self) -> None:
        try:
            text = self._store.get_meta(_CLEAN_META)
            marks = json.loads(text) if text else {}
            self._clean = {str(k): int(v) for k, v in marks.items()} if isinstance(marks, dict) else {}
            if text:
                self._store.set_meta(_CLEAN_META, "{}")  # from now on only leases count, until the next clean stop
        except (ValueError, TypeError, AttributeError):
            self._clean = {}

    def _save_clean_marks(self) -> None:
        marks = dict(self._clean)
        for peer in self._peers.values():
            if peer.high:
                marks[peer.lease_key] = peer.high
        try:
            self._store.set_meta(_CLEAN_META, json.dumps(marks, sort_keys=True))
        except StoreError as err:  # the leased marks still protect; clients may wait up to a second
            event(log, "clean_marks_not_saved", logging.WARNING, error=str(err))

    # -- verbs

    def _dispatch(self, peer: _Peer, ex: _Exchange, prefix: bytes, app_params: bytes) -> None:
        # A verb may send more answers than one (a poll with `push`), to a client on this face's socket
        more = None if isinstance(ex.addr, Relayed) else REPLY_MORE.set(functools.partial(self._more, peer, ex))
        try:
            self._run_verb(peer, ex, prefix, app_params)
        finally:
            if more is not None:
                REPLY_MORE.reset(more)

    def _run_verb(self, peer: _Peer, ex: _Exchange, prefix: bytes, app_params: bytes) -> None:
        try:
            verb, target = _verb_and_target(prefix)
            result = self._verbs.run(peer.caller, verb, target, _decode_params(app_params))
        except CallError as err:
            self._reply_error(peer, ex, err)
            return
        if not inspect.isawaitable(result):  # answered at once (a cache hit): no task
            self._reply_content(peer, ex, result)
            return
        if len(self._tasks) >= self._max_in_flight:
            _discard(result)
            self._reply_error(peer, ex, ResourceExhausted(f"the gateway has {len(self._tasks)} requests in "
                                                          "flight; retry later"))
            return
        if self.forwarder is None:
            self._spawn(self._run(peer, ex, result))
            return
        token = REQUEST_ID.set(ex.signature)  # the invoker's journal keys non-idempotent calls on it
        try:
            self._spawn(self._run(peer, ex, result))
        finally:
            REQUEST_ID.reset(token)

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _relayed(self, peer: _Peer, ex: _Exchange, request: _Request, relay: asyncio.Future[bytes | None]) -> None:
        """The serving gateway's reply, passed on unchanged; served here if this gateway became the one to serve
        the target meanwhile (a takeover). A done callback: no task per relayed request."""
        self._relays.discard(relay)
        try:
            if relay.cancelled():
                self._reply_error(peer, ex, Unavailable("the gateway is shutting down; retry when it is back"))
                return
            err = relay.exception()
            if err is None:
                wire = relay.result()
                if wire is None:
                    self._dispatch(peer, ex, request.parts.prefix, request.parts.params)
                else:
                    self._answer(peer, ex, wire)
                    if cw.FRESH_MS in wire:  # a call's value the serving gateway holds fresh: kept here too
                        self._keep(peer, ex, request, wire)
                return
            if not isinstance(err, CallError):
                raise err
            self._reply_error(peer, ex, err)
        except Exception as err:  # the client must get an answer; the bug goes to the log
            self.stats["internal"] += 1
            self._throttle.fault("client-relay", err, client=peer.name)
            self._reply_error(peer, ex, Internal(f"gateway error: {type(err).__name__}: {err}"))

    def _keep(self, peer: _Peer, ex: _Exchange, request: _Request, wire: bytes) -> None:
        """Pass a relayed reply's content on to the forwarder (which keeps a call's value) once its HMAC, under
        this client's key, verifies as the client will verify it."""
        assert self.forwarder is not None
        try:
            data = framing.unwrap(wire)
        except framing.FramingError:
            return
        found = cw.read_reply(data, ex.name, peer.signer) if data is not None else None
        if found is not None and not found[0]:
            self.forwarder.keep(request.parts.prefix, request.parts.params, found[1])

    # -- replies

    async def _run(self, peer: _Peer, ex: _Exchange, work: Awaitable[Any]) -> None:
        try:
            content = await work
        except CallError as err:
            self._reply_error(peer, ex, err)
            return
        except UnknownDevice as err:
            self._reply_error(peer, ex, NotFound(str(err)))
            return
        except GatewayError as err:
            self._reply_error(peer, ex, Internal(str(err)))
            return
        except asyncio.CancelledError:
            self._reply_error(peer, ex, Unavailable("the gateway is shutting down; retry when it is back"))
            raise
        except Exception as err:  # the client must get an answer; the bug goes to the log with its traceback
            self.stats["internal"] += 1
            self._throttle.fault("client-request", err, client=peer.name)
            self._reply_error(peer, ex, Internal(f"gateway error: {type(err).__name__}: {err}"))
            return
        self._reply_content(peer, ex, content)

    def _reply_content(self, peer: _Peer, ex: _Exchange, content: Any) -> None:
        if isinstance(content, Encoded):
            self._reply(peer, ex, content, nack=False)
            return
        try:
            body = cbor2.dumps(content)
        except (cbor2.CBOREncodeError, TypeError, ValueError) as err:
            self._reply_error(peer, ex, Internal(f"result cannot be encoded as CBOR: {err}"))
            return
        self._reply(peer, ex, body, nack=False)

    def _reply_error(self, peer: _Peer, ex: _Exchange, err: CallError) -> None:
        self.stats["errors"] += 1
        if isinstance(err, PermissionDenied):
            self.stats["denied"] += 1
        self._reply(peer, ex, cbor2.dumps(err.to_wire()), nack=True)

    def _reply(self, peer: _Peer, ex: _Exchange, body: bytes, *, nack: bool) -> None:
        wire = cw.encode_reply(ex.name, body, peer.signer, nack=nack, pit_token=ex.pit)
        if len(wire) > cw.MAX_REPLY_BYTES:
            err = ResourceExhausted(f"the reply is {len(wire)} bytes, more than {cw.MAX_REPLY_BYTES}; ask for a "
                                    "smaller page_size or a smaller result")
            wire = cw.encode_reply(ex.name, cbor2.dumps(err.to_wire()), peer.signer, nack=True, pit_token=ex.pit)
        self._answer(peer, ex, wire)

    def _more(self, peer: _Peer, ex: _Exchange, content: Any) -> bool:
        """One more answer to an answered request (REPLY_MORE): a Data of its name, signed as its reply was, sent
        to where it came from; False (nothing sent) when the face is stopping or the answer is too large. Not
        kept for retransmissions: a retransmitted request gets its first answer again."""
        if self._stopping or self._transport is None:
            return False
        wire = cw.encode_reply(ex.name, cbor2.dumps(content), peer.signer, nack=False, pit_token=ex.pit)
        if len(wire) > cw.MAX_REPLY_BYTES:
            return False
        self.stats["pushed"] += 1
        self._transport.sendto(wire, ex.addr)
        return True

    def _answer(self, peer: _Peer, ex: _Exchange, wire: bytes) -> None:
        """Keep the reply for retransmissions of its request (within the peer's budget), then send it."""
        ex.reply = wire
        if peer.recent.get(ex.seq) is ex:
            peer.recent_bytes += len(wire)
            peer.trim()
        self.stats["replies"] += 1
        self._send(wire, ex.addr)

    def _send(self, wire: bytes, addr: Any) -> None:
        if isinstance(addr, Relayed):
            addr.deliver(wire)
            return
        if self._transport is not None:
            self._transport.sendto(wire, addr)

    def _drop(self, reason: str, addr: Any, **fields: Any) -> None:
        """Count (and maybe log) a dropped datagram; returns None so callers can `return self._drop(...)`."""
        self.drops[reason] += 1
        if reason in _SECURITY_REASONS and self._throttle.event(reason, "client_drop", logging.WARNING,
                                                                reason=reason, addr=_addr(addr), **fields):
            return
        event(log, "client_drop", logging.DEBUG, reason=reason, addr=_addr(addr), **fields)


@functools.lru_cache(maxsize=4096)
def _components(value: bytes) -> tuple[bytes, ...] | None:
    """The components of a Name's value (a request's name, a key name), split once per distinct value: clients
    send the same few again and again. None when one is malformed."""
    return split_components(value)


@functools.lru_cache(maxsize=4096)
def _verb_and_target(prefix: bytes) -> tuple[str, tuple[str, ...]]:
    """The verb and the target of a request name (the value before its digest: `<site>/_gw/<verb>/<target...>`),
    decoded once per distinct name."""
    components = _components(prefix) or ()
    rest = components[2:]
    if any(Component.get_type(c) != T.GENERIC_COMPONENT for c in rest):
        raise InvalidArgument("name components must be generic components")
    return Component.to_str(rest[0]), tuple(Component.to_str(c) for c in rest[1:])


def _decode_params(raw: Any) -> dict[str, Any]:
    if raw is None or len(raw) == 0:
        return {}
    try:
        params = cbor2.loads(bytes(raw))
    except (cbor2.CBORDecodeError, RecursionError, ValueError, TypeError, OverflowError) as err:
        raise InvalidArgument(f"ApplicationParameters are not valid CBOR: {err}") from err
    if not isinstance(params, dict):
        raise InvalidArgument(f"ApplicationParameters must be a CBOR map, got {type(params).__name__}")
    if not cw.is_plain(params):
        raise InvalidArgument("ApplicationParameters may hold only plain CBOR values (no tags), "
                              f"nested at most {cw.MAX_CBOR_DEPTH} deep")
    return params


def _discard(work: Awaitable[Any]) -> None:
    """Drop an awaitable that will not be awaited (a coroutine is closed, so it warns of nothing)."""
    close = getattr(work, "close", None)
    if close is not None:
        close()


def _from_python_ndn(packet: bytes) -> SignedRequest | None:
    """The parts of a signed Interest in any other layout, read by python-ndn; None when a name component is
    malformed (python-ndn splits names without checking each component's length)."""
    name, interest, app_params, sig = parse_interest(packet, with_tl=True)
    info = sig.signature_info
    locator = info.key_locator.name if info is not None and info.key_locator is not None else None
    if not name or not framing.components_ok(name) or (locator and not framing.components_ok(locator)):
        return None
    last = bytes(name[-1])
    name_tlv = framing.name_tlv(packet)
    if len(last) != DIGEST_BYTES + 2 or last[0] != T.DIGEST_COMPONENT or name_tlv is None:
        return None
    return SignedRequest(
        name_tlv, b"".join(bytes(c) for c in name[:-1]), last[2:], bytes(app_params or b""),
        info.signature_type if info is not None else -1, b"".join(bytes(c) for c in locator or ()),
        info.signature_nonce if info is not None else None, info.signature_time if info is not None else None,
        info.signature_seq_num if info is not None else None, bytes(sig.signature_value_buf or b""),
        b"".join(bytes(p) for p in sig.signature_covered_part or ()),
        b"".join(bytes(p) for p in sig.digest_covered_part or ()), interest.lifetime)


def _sha256(parts: Sequence[Any]) -> bytes:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.digest()


def _addr(addr: Any) -> str:
    try:
        return f"{addr[0]}:{addr[1]}"
    except (TypeError, IndexError):
        return str(addr)
