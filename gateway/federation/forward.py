"""Calls across gateways, over NATS request/reply.

Two kinds of request travel between gateways:

- **Relayed** (`Relay.forward`, the client face's `Forwarder`): the client's own signed request, byte for byte, to
  the subject of its target (`ndne.<fed>.d.<site>.<device...>`, answered by the one gateway serving the device:
  a queue group, so even two gateways claiming one device would not both run a call) or of the gateway that
  keeps the operation it names (`ndne.<fed>.g.<tag>`). The serving gateway checks it exactly as if the client
  were its own (signature, time, replay, rules: `ClientFace.receive_forwarded`), and its signed reply is passed
  back to the client unchanged: the client verifies its HMAC as ever, so neither NATS nor this gateway could
  alter it unnoticed.
- **Vouched** (`Vouch`, the verbs' `Router`): a request this gateway makes for a client it authenticated itself
  (an HTTP bearer token, one device of a gather), `V1 | HMAC | CBOR {client, verb, target, params, time, nonce}`
  with an HMAC under the federation key; the serving gateway checks the HMAC, the time (60 s) and the nonce
  (replays are dropped), then the client's rules *in its own store*, and answers `R1 | HMAC | CBOR {nonce,
  ok | err}`.

Decisions:
- A request for a device nobody else serves (or when this gateway is partitioned) is served here, as on a
  single gateway: the answer is whatever this gateway knows (UNAVAILABLE for a device it does not hear).
- "No responders" (the serving gateway died or gave the device up) is retried every `RETRY_S` until the
  request's lifetime ends, routing again each time: when this gateway took the device over meanwhile it serves
  the request itself (`None`), and the invoker's journal makes a non-idempotent call's retry safe.
- What arrives on a subject is checked before anything is believed: an unknown first byte, a vouched request
  whose HMAC, time or nonce fails, a reply that is not a Data, are dropped and counted (`dropped`), never
  answered. Callbacks only record; the work runs in tasks (at most `MAX_IN_FLIGHT` vouched requests at once).
- Replies to relayed requests leave through one pump task (the face answers from a plain callback).
"""
from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import cbor2
from ndn.encoding import Component

from ndn_edge import names
from ndn_edge.clients.verbs import Caller, Encoded
from ndn_edge.errors import (
    CallError,
    DeadlineExceeded,
    GatewayError,
    Internal,
    NotFound,
    PermissionDenied,
    Unavailable,
    UnknownClient,
    UnknownDevice,
)
from ndn_edge.federation.keys import FederationKey
from ndn_edge.logs import Throttle
from ndn_edge.observability.stats import RTT_BUCKETS_S, Histograms
from ndn_edge.wire import client_protocol as cp
from ndn_edge.wire.packets import split_components
from ndn_edge.wire.tlv import T

log = logging.getLogger("ndn_edge.federation")

DEVICE_VERBS = frozenset({cp.VERB_CALL, cp.VERB_NOTIFY, cp.VERB_START, cp.VERB_ENQUEUE})
OP_VERBS = frozenset({cp.VERB_OP_GET, cp.VERB_OP_CANCEL})
RETRY_S = 0.2
TAKEOVER_CHECK_S = 0.25  # a relayed request looks this often whether this gateway took its device over
VOUCH_WINDOW_MS = 60_000
MAX_IN_FLIGHT = 1024
RELAY, VOUCH = "relay", "vouch"
OK, TAKEN_OVER = "OK", "taken_over"  # results besides wire error codes (taken over: served here after all)
_NONCES = 16_384
_MAC = 32
_VOUCH, _ANSWER = b"V1", b"R1"
_PACKET_TYPES = (T.INTEREST, 0x64)
_DATA_TYPES = (T.DATA, 0x64)


@functools.lru_cache(maxsize=4096)
def verb_and_target(prefix: bytes) -> tuple[str, tuple[str, ...]] | None:
    """The verb and target of a request name's value (before its digest), or None."""
    comps = split_components(prefix)
    if comps is None or len(comps) < 3 or any(Component.get_type(c) != T.GENERIC_COMPONENT for c in comps):
        return None
    text = tuple(Component.to_str(c) for c in comps[2:])
    return text[0], text[1:]


def op_owner(op_id: Any) -> str | None:
    """The tag ending an operation id made in a federation (20 hex characters), or None."""
    if isinstance(op_id, str) and len(op_id) == 20:
        return op_id[-4:]
    return None


class Remote:
    """Requests to other gateways: relayed client requests and vouched requests (see the module's decisions)."""

    def __init__(self, link: Any, key: FederationKey, placement: Any, *, site: str, tag: str) -> None:
        self._link = link
        self._key = key
        self._placement = placement
        self.site = site
        self.tag = tag
        self._throttle = Throttle(log)
        self.latency_s: list[float] = []  # recent round trips of relayed requests
        self.results: dict[tuple[str, str], int] = {}  # (RELAY or VOUCH, wire code, OK or TAKEN_OVER) -> count
        self.latency = Histograms(RTT_BUCKETS_S, max_series=4)  # round trips by kind
        self.keeper: Callable[[Any], str | None] = _first_keeper(tag, placement)  # the gateway keeping an op
        self.counters: dict[str, int] = {"relayed": 0, "relay_retries": 0, "relay_timeouts": 0, "vouched": 0,
                                         "vouch_errors": 0, "taken_over": 0}

    # -- the client face's Forwarder

    def forward(self, prefix: bytes, params: bytes, datagram: bytes,
                lifetime_ms: int) -> Awaitable[bytes | None] | None:
        if not self._link.connected:
            return None
        found = verb_and_target(prefix)
        if found is None:
            return None
        verb, target = found
        if verb in DEVICE_VERBS and len(target) >= 2:
            device = names.full(self.site, target[:-1])
            if self._placement.route(device) is None:
                return None
            return self._relay(self._link.config.device_subject(device), device, datagram, lifetime_ms)
        if verb in OP_VERBS:
            owner = self.keeper(_param(params, "op"))
            if owner is None:
                return None
            return self._relay(self._link.config.gateway_subject(owner), None, datagram, lifetime_ms)
        return None

    async def _relay(self, subject: str, device: str | None, datagram: bytes, lifetime_ms: int) -> bytes | None:
        started = time.monotonic()
        try:
            data = await self._relaying(subject, device, datagram, lifetime_ms)
        except CallError as err:
            self._count(RELAY, err.code, started)
            raise
        self._count(RELAY, TAKEN_OVER if data is None else OK, started)
        return data

    def _count(self, kind: str, result: str, started: float) -> None:
        """One forwarded request's result and round trip (ndn_edge_federation_forwarded_* metrics)."""
        key = (kind, result)
        self.results[key] = self.results.get(key, 0) + 1
        self.latency.observe(kind, time.monotonic() - started)

    async def _relaying(self, subject: str, device: str | None, datagram: bytes,
                        lifetime_ms: int) -> bytes | None:
        from nats.errors import NoRespondersError

        deadline = time.monotonic() + lifetime_ms / 1000
        self.counters["relayed"] += 1
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.counters["relay_timeouts"] += 1
                raise DeadlineExceeded(f"no answer through the federation within {lifetime_ms} ms")
            if not self._link.connected:
                raise Unavailable("this gateway is cut off from its federation (partitioned); the device is served "
                                  "by another gateway")
            started = time.monotonic()
            try:
                msg = await self._answer(self._link.nc.request(subject, datagram, timeout=remaining), device)
                if msg is None:
                    self.counters["taken_over"] += 1
                    return None  # this gateway serves it now
            except NoRespondersError:
                self.counters["relay_retries"] += 1
                await asyncio.sleep(min(RETRY_S, max(0.0, deadline - time.monotonic())))
                if device is not None and self._placement.route(device) is None:
                    self.counters["taken_over"] += 1
                    return None  # this gateway serves it now
                continue
            except asyncio.TimeoutError:
                continue  # the deadline check above ends it
            except Exception as err:
                if "timeout" in type(err).__name__.lower():
                    continue
                raise Unavailable(f"the federation could not relay the request: {err!r}") from err
            data = msg.data
            if not data or data[0] not in _DATA_TYPES:
                self.counters["vouch_errors"] += 1
                continue  # not a reply: dropped, the wait goes on
            self.latency_s = [*self.latency_s[-255:], time.monotonic() - started]
            return bytes(data)

    async def _answer(self, request: Awaitable[Any], device: str | None) -> Any:
        """The reply to a relayed request; None if this gateway took the device over while it waited (the request
        reached a gateway that died before answering: no reply will ever come, and waiting for the deadline would
        fail a call this gateway can now make itself)."""
        pending = asyncio.ensure_future(request)
        try:
            while True:
                done, _ = await asyncio.wait({pending}, timeout=TAKEOVER_CHECK_S)
                if done:
                    return pending.result()
                if device is not None and self._placement.route(device) is None:
                    return None
        finally:
            if not pending.done():
                pending.cancel()
                await asyncio.gather(pending, return_exceptions=True)

    # -- vouched requests

    async def vouch(self, subject: str, caller: Caller, verb: str, target: tuple[str, ...], params: dict[str, Any],
                    timeout_s: float) -> bytes:
        """The content (CBOR) another gateway answered for a request made for `caller`; CallError as it said."""
        started = time.monotonic()
        try:
            content = await self._vouching(subject, caller, verb, target, params, timeout_s)
        except CallError as err:
            self._count(VOUCH, err.code, started)
            raise
        self._count(VOUCH, OK, started)
        return content

    async def _vouching(self, subject: str, caller: Caller, verb: str, target: tuple[str, ...],
                        params: dict[str, Any], timeout_s: float) -> bytes:
        if not self._link.connected:
            raise Unavailable("this gateway is cut off from its federation (partitioned)")
        nonce = os.urandom(12)
        body = cbor2.dumps({"c": caller.name, "v": verb, "t": list(target), "p": params,
                            "ts": int(time.time() * 1000), "n": nonce, "g": self.tag})
        from nats.errors import NoRespondersError

        self.counters["vouched"] += 1
        try:
            msg = await self._link.nc.request(subject, _VOUCH + self._key.vouch(body) + body, timeout=timeout_s)
        except NoRespondersError as err:
            raise Unavailable(f"no gateway of the federation answers for {subject.split('.', 3)[-1]} now; retry "
                              "in a few seconds") from err
        except Exception as err:
            if "timeout" in type(err).__name__.lower():
                raise DeadlineExceeded(f"no answer through the federation within {timeout_s * 1000:.0f} ms") from err
            raise Unavailable(f"the federation could not carry the request: {err!r}") from err
        data = bytes(msg.data)
        mac, answer = data[2:2 + _MAC], data[2 + _MAC:]
        if data[:2] != _ANSWER or not self._key.vouched(nonce + answer, mac):
            self.counters["vouch_errors"] += 1
            raise Internal("a gateway of the federation answered with something that does not verify")
        reply = cbor2.loads(answer)
        if "err" in reply:
            wire_err = reply["err"]
            raise CallError.from_wire(wire_err.get("code"), wire_err.get("message"))
        return bytes(reply["ok"])


class Serve:
    """This gateway's side: what arrives on the subjects of the devices it serves and on its own subject."""

    def __init__(self, link: Any, key: FederationKey, *, tag: str) -> None:
        self._link = link
        self._key = key
        self.tag = tag
        self.face: Any = None   # the client face (receive_forwarded), once built
        self.verbs: Any = None  # a verb table without a router: requests here are served here
        self.store: Any = None
        self._subs: dict[str, Any] = {}
        self._own: Any = None
        self._out: list[tuple[str, bytes]] = []
        self._ready = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._nonces: OrderedDict[bytes, float] = OrderedDict()
        self._throttle = Throttle(log)
        self.counters: dict[str, int] = {"relayed_in": 0, "vouched_in": 0, "dropped": 0, "replies": 0,
                                         "over_capacity": 0}

    async def start(self) -> None:
        self._pump = asyncio.create_task(self._replies(), name="federation-replies")

    async def stop(self) -> None:
        for sub in [*self._subs.values(), self._own]:
            if sub is not None:
                try:
                    await sub.unsubscribe()
                except Exception:  # the connection is gone with it
                    pass
        self._subs.clear()
        self._own = None
        tasks = [t for t in (self._pump, *self._tasks) if t is not None]
        self._pump = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def listen_own(self) -> None:
        """Answer on this gateway's own subject (the operations it keeps); again after a reconnect."""
        if self._own is None and self._link.connected:
            self._own = await self._link.nc.subscribe(self._link.config.gateway_subject(self.tag), cb=self._on_msg)

    async def serve(self, device: str, on: bool) -> None:
        """Start (or stop) answering on the subject of `device`."""
        subject = self._link.config.device_subject(device)
        sub = self._subs.pop(subject, None)
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception:  # gone with the connection
                pass
        if on and self._link.connected:
            self._subs[subject] = await self._link.nc.subscribe(subject, queue="serve", cb=self._on_msg)

    async def _on_msg(self, msg: Any) -> None:
        data, reply = msg.data, msg.reply
        if not reply or not data:
            self.counters["dropped"] += 1
            return
        if data[0] in _PACKET_TYPES and self.face is not None:
            self.counters["relayed_in"] += 1
            self.face.receive_forwarded(bytes(data), functools.partial(self._send, reply))
        elif data[:2] == _VOUCH and self.verbs is not None:
            if len(self._tasks) >= MAX_IN_FLIGHT:
                self.counters["over_capacity"] += 1
                return
            task = asyncio.create_task(self._vouched(bytes(data), reply))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self.counters["dropped"] += 1

    def _send(self, subject: str, data: bytes) -> None:
        self._out.append((subject, data))
        self._ready.set()

    async def _replies(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            batch, self._out = self._out, []
            for subject, data in batch:
                try:
                    await self._link.nc.publish(subject, data)
                    self.counters["replies"] += 1
                except Exception as err:  # the requester gave up, or NATS went away: it retries or times out
                    self._throttle.event("reply", "federation_reply_lost", logging.DEBUG, error=repr(err))

    async def _vouched(self, data: bytes, reply: str) -> None:
        mac, body = data[2:2 + _MAC], data[2 + _MAC:]
        if not self._key.vouched(body, mac):
            return self._drop("vouch_forged")
        try:
            req = cbor2.loads(body)
            client, verb, target, params, ts, nonce = (req["c"], req["v"], tuple(req["t"]), req["p"], req["ts"],
                                                       bytes(req["n"]))
            if not isinstance(client, str) or not isinstance(verb, str) or not isinstance(params, dict) or \
                    not all(isinstance(t, str) for t in target):
                raise ValueError("wrong types")
        except (cbor2.CBORDecodeError, KeyError, TypeError, ValueError):
            return self._drop("vouch_malformed")
        now = time.time()
        if abs(now * 1000 - int(ts)) > VOUCH_WINDOW_MS:
            return self._drop("vouch_stale")
        if nonce in self._nonces:
            return self._drop("vouch_replay")
        self._nonces[nonce] = now
        while len(self._nonces) > _NONCES or (self._nonces and next(iter(self._nonces.values())) < now - 120):
            self._nonces.popitem(last=False)
        self.counters["vouched_in"] += 1
        try:
            rules = tuple(rule.parts for rule in self.store.rules(client))
            result = self.verbs.run(Caller(client, rules), verb, target, params)
            if asyncio.iscoroutine(result) or isinstance(result, Awaitable):
                result = await result
            content = bytes(result) if isinstance(result, Encoded) else cbor2.dumps(result)
            answer = cbor2.dumps({"n": nonce, "ok": content})
        except UnknownClient:
            answer = cbor2.dumps({"n": nonce, "err": PermissionDenied(
                f"client '{client}' is not known on every gateway yet; retry in a second").to_wire()})
        except CallError as err:
            answer = cbor2.dumps({"n": nonce, "err": err.to_wire()})
        except UnknownDevice as err:
            answer = cbor2.dumps({"n": nonce, "err": NotFound(str(err)).to_wire()})
        except GatewayError as err:
            answer = cbor2.dumps({"n": nonce, "err": Internal(str(err)).to_wire()})
        except (cbor2.CBOREncodeError, TypeError, ValueError) as err:
            answer = cbor2.dumps({"n": nonce, "err": Internal(f"result cannot be encoded: {err}").to_wire()})
        self._send(reply, _ANSWER + self._key.vouch(nonce + answer) + answer)

    def _drop(self, why: str) -> None:
        self.counters["dropped"] += 1
        self._throttle.event(why, "federation_request_dropped", logging.WARNING, reason=why)


def _first_keeper(tag: str, placement: Any) -> Callable[[Any], str | None]:
    """Operations routed by the tag ending their id (before `opsync.OpsSync.keeper` is plugged in)."""
    def keeper(op_id: Any) -> str | None:
        owner = op_owner(op_id)
        return owner if owner is not None and owner != tag and placement.alive(owner) else None
    return keeper


def _param(params: bytes, key: str) -> Any:
    try:
        value = cbor2.loads(params) if params else {}
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError, OverflowError):
        return None
    return value.get(key) if isinstance(value, dict) else None

