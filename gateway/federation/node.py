"""`Federation`: one gateway's membership of a federation, plugged into the gateway through its seams.

    fed = Federation(home, config, store, site="edge")
    await fed.start()                       # NATS in the background; identity sync
    fed.attach_devices(device_side)         # shared sequence leases, the call journal (before calls start)
    face = ClientFace.build(store, fed.devices_view(device_side), patterns, ...)
    await fed.attach(device_side, patterns, face, http)   # placement, relays, routing, publications
    ...
    await fed.stop()

What it plugs in, and where (`ndn_edge.interfaces`): the client face's `forwarder` (relayed requests) and
`receive_forwarded`; every verb table's `router` (vouched requests, gather over the federation, metrics); the
invoker's `counters` (shared sequence leases) and `journal`; the operations' id tag; the device side's report
hook (a standby ignores the reports of devices another gateway serves) and its directory's description fetcher
(only the serving gateway asks a device, so only it signs); pub/sub's exporter and delivery (`bridge.py`).

Decisions:
- The gateway starts and serves its LAN whether or not NATS answers; everything here catches up in the
  background, and `state` ("connecting", "connected", "partitioned") is logged, written to
  HOME/federation.state.json for `ndn-edge federation status`, and reported by the metrics verb.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ndn_edge import __version__, names
from ndn_edge.answers import Answer
from ndn_edge.clients.verbs import Caller, Encoded, Verbs
from ndn_edge.federation.config import FederationConfig, remove_state, write_state
from ndn_edge.federation.forward import DEVICE_VERBS, OP_VERBS, RETRY_S, Gone, Remote, Serve, vouch_identity
from ndn_edge.federation.identity import IdentitySync
from ndn_edge.federation.journal import CallJournal
from ndn_edge.federation.keys import FederationKey
from ndn_edge.federation.link import CONNECTED, NatsLink
from ndn_edge.federation.placement import Placement
from ndn_edge.federation.seqs import SharedSeqs
from ndn_edge.interfaces import REQUEST_ID
from ndn_edge.logs import Throttle
from ndn_edge.observability.stats import OK
from ndn_edge.observability.trace import TIMELINE
from ndn_edge.wire import client_protocol as cp
from ndn_edge.wire.packets import parse_signed_interest, split_components

log = logging.getLogger("ndn_edge.federation")

STATE_EVERY_S = 2.0
QUERY_AFTER_RECORD_S = 0.2  # a device record applied from the bucket: the LAN is asked this much later (one query
#                             for the many records of one sync)
_SUBSCRIPTION_VERBS = frozenset({cp.VERB_SUBSCRIBE, cp.VERB_POLL, cp.VERB_UNSUBSCRIBE})
_SLACK_S = 1.0


class Federation:
    """A gateway's part in its federation."""

    def __init__(self, home: Path, config: FederationConfig, store: Any, *, site: str) -> None:
        if config.site != site:
            from ndn_edge.errors import ConfigError

            raise ConfigError(f"this home serves site '{site}' but its federation serves site '{config.site}'; "
                              "enrol a home of that site")
        self.home = Path(home)
        self.config = config
        self.store = store
        self.site = site
        self.tag = config.gateway
        self.key = FederationKey(config.key)
        self.link = NatsLink(config, name=f"ndn-edge gateway {self.tag}", on_state=self._state_changed)
        self.identity = IdentitySync(store, self.link, self.key, site=site, tag=self.tag,
                                     on_change=self._identity_changed)
        self.seqs = SharedSeqs(store, self.link, self.key)
        self.journal = CallJournal(self.link, self.key)
        self.serve = Serve(self.link, self.key, tag=self.tag)
        self.placement: Placement | None = None
        self.remote: Remote | None = None
        self.bridge: Any = None
        self.ops: Any = None   # opsync.OpsSync, with the communication patterns
        self.subs: Any = None  # durable.SharedSubs, with the communication patterns
        self._faces: list[Any] = []
        self._tokens: list[Any] = []
        self._side: Any = None
        self._pending_desc: set[str] = set()
        self._query_due = False  # a discovery query is due after device records applied (_identity_changed)
        self._report_keys: dict[bytes, str | None] = {}
        self._task: asyncio.Task[None] | None = None
        self._jobs: set[asyncio.Future[Any]] = set()
        self._throttle = Throttle(log)
        self.counters: dict[str, int] = {"reports_ignored": 0, "desc_deferred": 0}

    # -- life cycle

    async def start(self) -> None:
        await self.link.start()
        await self.identity.start()
        await self.serve.start()
        self._write_state()

    def attach_devices(self, side: Any) -> None:
        """Before the device side starts: its sequence numbers and journal come from the federation."""
        side.invoker.counters = self.seqs.counter
        side.invoker.journal = self.journal
        self._side = side
        fetch = side.directory.fetcher

        async def fetch_if_served(name: str) -> Any:
            if self.placement is None or name in self.placement.served or not self.link.connected:
                return await fetch(name)
            self._pending_desc.add(name)  # fetched by whoever serves it: this gateway if it claims it
            self.counters["desc_deferred"] += 1
            return None

        side.directory.fetcher = fetch_if_served

    def devices_view(self, side: Any) -> FederatedDevices:
        return FederatedDevices(side, self)

    async def attach(self, side: Any, patterns: Any, face: Any, http: Any = None) -> None:
        """After the faces are built: placement, relays, routing, publications."""
        host, port = face.address
        info = {"home": str(self.home), "listen": f"{host}:{port}", "version": __version__, "site": self.site,
                "pid": os.getpid(), "started": time.time()}
        if http is not None:
            info["http"] = http.url
        self.placement = Placement(self.store, side, self.link, self.key, tag=self.tag, info=info,
                                   serve=self._serve, prime=self._prime, takeover=self._takeover)
        self.remote = Remote(self.link, self.key, self.placement, site=self.site, tag=self.tag)
        if patterns is not None:
            from ndn_edge.federation.durable import SharedSubs
            from ndn_edge.federation.opsync import OpsSync

            self.ops = OpsSync(self.link, self.key, patterns.operations, tag=self.tag, alive=self.placement.alive,
                               intake=getattr(patterns, "intake", None))
            self.subs = SharedSubs(self.link, self.key, patterns.pubsub, tag=self.tag)
            self.remote.keeper = self.ops.keeper
            await self.ops.start()
            await self.subs.start()
        self.serve.face = face
        self.serve.store = self.store
        self.serve.verbs = Verbs(side, patterns, site=self.site)
        face.forwarder = self.remote
        self._faces.append(face)
        face.verbs.router = FedRouter(self, face.verbs)
        if http is not None:
            verbs = http.api.verbs
            verbs.router = FedRouter(self, verbs)
            self._tokens.append(http.api.tokens)
        if patterns is not None:
            patterns.operations.id_tag = self.tag
            intake = side.on_report
            if intake is not None:
                side.on_report = self._reports_to(intake)
            from ndn_edge.federation.bridge import Bridge

            self.bridge = Bridge(self.link, self.key, patterns.pubsub, self.placement, tag=self.tag, site=self.site,
                                 intake=getattr(patterns, "intake", None))
            await self.bridge.start()
        await self.placement.start()
        self._task = asyncio.create_task(self._report_state(), name="federation-state")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._jobs) if t is not None]
        self._task = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for face in self._faces:
            face.forwarder = None
        if self.remote is not None:
            self.remote.close()
        for part in (self.bridge, self.subs, self.ops):
            if part is not None:
                await part.stop()
        if self.placement is not None:
            await self.placement.stop()
        await self.serve.stop()
        await self.identity.stop()
        await self.link.stop()
        remove_state(self.home)

    # -- hooks

    async def _prime(self, device: str) -> None:
        record = self.store.device(device)
        if record is not None:
            await self.seqs.prime(record.key_name)

    async def _takeover(self, device: str, previous: str) -> None:
        if self.ops is not None:
            await self.ops.adopt(device, previous)

    async def _serve(self, device: str, on: bool) -> None:
        await self.serve.serve(device, on)
        if on and device in self._pending_desc and self._side is not None:
            self._pending_desc.discard(device)
            self._background(self._fetch_description(device))

    def _background(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)

    async def _fetch_description(self, device: str) -> None:
        try:
            await self._side.invoker.fetch_description(device)
        except Exception as err:  # at its next announcement
            self._throttle.event("desc", "desc_not_fetched", logging.DEBUG, device=device, error=repr(err))

    def _reports_to(self, intake: Any) -> Any:
        def filtered(packet: bytes, addr: Any = None) -> None:
            device = self._reporter(packet)
            if device is not None and self.link.connected and self.placement is not None and \
                    device not in self.placement.served:
                self.counters["reports_ignored"] += 1  # the serving gateway takes it
                return
            intake(packet, addr)
        return filtered

    def _reporter(self, packet: bytes) -> str | None:
        """The device a report claims to come from (its KeyLocator; the intake verifies it), or None."""
        parts = parse_signed_interest(packet)
        if parts is None or not parts.key_locator:
            return None
        found = self._report_keys.get(parts.key_locator)
        if found is None and parts.key_locator not in self._report_keys:
            comps = split_components(parts.key_locator)
            if comps is not None and len(comps) >= 3:
                from ndn.encoding import Name

                found = Name.to_str(list(comps[:-2]))
            if len(self._report_keys) > 20_000:
                self._report_keys.clear()
            self._report_keys[parts.key_locator] = found
        return found

    def _identity_changed(self, kind: str, who: str) -> None:
        if kind in ("c", "r", "t"):
            for face in self._faces:
                face.invalidate(who or None)
            for tokens in self._tokens:
                tokens.invalidate()
        elif kind == "d" and self._side is not None and not self._query_due:
            # A device record new here (provisioned at another gateway): the device's announcements were dropped
            # until now as an unknown key, and its next comes at its renewal, a third of its lease later (20 s by
            # default). A standby whose sync came after its start-up queries did not know a device it had to take
            # over. Ask the LAN's devices now.
            self._query_due = True
            asyncio.get_running_loop().call_later(QUERY_AFTER_RECORD_S, self._query_devices)

    def _query_devices(self) -> None:
        self._query_due = False
        if self._side is not None:
            self._background(self._side.query())

    def _state_changed(self, state: str) -> None:
        if state == CONNECTED:
            self.identity.resync()
            self._background(self._reconnected())
        self._write_state()

    async def _reconnected(self) -> None:
        try:
            await self.serve.listen_own()
            await self.seqs.publish()
            if self.placement is not None:
                for device in list(self.placement.served):
                    await self.serve.serve(device, True)
        except Exception as err:
            self._throttle.event("reconnect", "federation_resubscribe_failed", logging.WARNING, error=repr(err))

    async def _report_state(self) -> None:
        while True:
            self._write_state()
            await asyncio.sleep(STATE_EVERY_S)

    def _write_state(self) -> None:
        write_state(self.home, self.status())

    # -- what it reports

    def status(self) -> dict[str, Any]:
        p = self.placement
        return {"federation": self.config.federation, "gateway": self.tag, "state": self.link.state,
                "since": self.link.since, "nats": [_safe(u) for u in self.config.nats],
                "server": self.link.server(), "pid": os.getpid(),
                "served": sorted(p.served) if p is not None else [],
                "gateways": p.live_gateways() if p is not None else [],
                "identity_synced_at": self.identity.synced_at, "at": time.time()}

    def metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.link.state, "gateway": self.tag}
        for name, part in (("link", self.link), ("identity", self.identity), ("seqs", self.seqs),
                           ("journal", self.journal), ("serve", self.serve), ("placement", self.placement),
                           ("remote", self.remote), ("bridge", self.bridge), ("ops", self.ops),
                           ("subs", self.subs)):
            if part is not None:
                out.update({f"{name}_{k}": v for k, v in part.counters.items()})
        out.update(self.counters)
        if self.placement is not None:
            out["served"] = len(self.placement.served)
            out["gateways"] = len(self.placement.live_gateways())
        if self.remote is not None:
            out.update({f"kept_{k}": v for k, v in self.remote.kept.counters.items()}, kept=len(self.remote.kept))
        if self.remote is not None and self.remote.latency_s:
            out["relay_p50_ms"] = round(_quantile(self.remote.latency_s, 0.5) * 1000, 3)
            out["relay_p99_ms"] = round(_quantile(self.remote.latency_s, 0.99) * 1000, 3)
        if self.identity.lag_s:
            out["identity_lag_ms"] = round(_quantile(self.identity.lag_s, 0.5) * 1000, 3)
        if self.bridge is not None and self.bridge.lag_s:
            out["pubsub_lag_ms"] = round(_quantile(self.bridge.lag_s, 0.5) * 1000, 3)
        if self.ops is not None and self.ops.lag_s:
            out["ops_lag_ms"] = round(_quantile(self.ops.lag_s, 0.5) * 1000, 3)
        return out


class FedRouter:
    """The verbs' `Router`: devices served elsewhere through vouched requests, gather over the federation."""

    def __init__(self, fed: Federation, verbs: Verbs) -> None:
        self._fed = fed
        self._verbs = verbs

    def route(self, caller: Caller, verb: str, target: tuple[str, ...], params: dict[str, Any]) -> Any:
        fed = self._fed
        if verb == cp.VERB_METRICS:
            return {**self._verbs.counters(), "federation": fed.metrics()}
        if fed.subs is not None and verb in _SUBSCRIPTION_VERBS:
            shared = self._shared_subscription(caller, verb, params)
            if shared is not None:
                return shared
        if fed.placement is None or fed.remote is None or not fed.link.connected:
            return None
        if verb in DEVICE_VERBS:
            device = names.full(fed.site, target[:-1])
            if fed.placement.route(device) is None:
                return None
            if verb == cp.VERB_CALL and params.get(TIMELINE) is not True:
                kept = fed.remote.kept.answer(device, target[-1], params.get("args"))
                if kept is not None:  # a value a relayed reply left, still fresh (results.py)
                    self._verbs.calls.record(device, target[-1], OK, 0.0)
                    return Encoded(cp.encode_call_result(kept))
            timeout_s = cp.int_param(params, "timeout_ms", cp.DEFAULT_TIMEOUT_MS, 1, cp.MAX_TIMEOUT_MS) / 1000
            return self._vouch(fed.config.device_subject(device), caller, verb, target, params, timeout_s,
                               device=device)
        if verb == cp.VERB_OPS and fed.ops is not None:
            return self._ops(caller, params)
        if verb in OP_VERBS:
            owner = fed.ops.keeper(params.get("op")) if fed.ops is not None else None
            if owner is None:
                return self._mirrored(caller, verb, params)
            wait_ms = cp.int_param(params, "wait_ms", 0, 0, cp.MAX_TIMEOUT_MS)
            timeout_s = max(wait_ms / 1000, cp.int_param(params, "timeout_ms", cp.DEFAULT_TIMEOUT_MS, 1,
                                                         cp.MAX_TIMEOUT_MS) / 1000)
            return self._vouch(fed.config.gateway_subject(owner), caller, verb, target, params, timeout_s,
                               owner=owner)
        if verb == cp.VERB_GATHER and self._verbs.patterns is not None:
            return self._gather(caller, params)
        return None

    def _shared_subscription(self, caller: Caller, verb: str, params: dict[str, Any]) -> Any:
        """The federation's durable subscriptions (`durable.py`): a durable subscribe, and polls and
        unsubscribes of their ids; None for anything else."""
        from ndn_edge.clients.verbs import DEFAULT_POLL_MAX, MAX_POLL_MAX

        subs = self._fed.subs
        if verb == cp.VERB_SUBSCRIBE and params.get("durable") is not None:
            pattern = params.get("pattern")
            if not isinstance(pattern, str):
                return None  # the verb's own error
            return subs.subscribe(caller.name, pattern, params.get("durable"))
        if verb not in (cp.VERB_POLL, cp.VERB_UNSUBSCRIBE) or not subs.owns(params.get("sub")):
            return None
        if verb == cp.VERB_UNSUBSCRIBE:
            return subs.unsubscribe(caller.name, params["sub"])
        after = cp.int_param(params, "after", -1, -1, 1 << 62)
        return subs.poll(caller.name, params["sub"], ack=cp.int_param(params, "ack", 0, 0, 1 << 62),
                         max_messages=cp.int_param(params, "max", DEFAULT_POLL_MAX, 1, MAX_POLL_MAX),
                         wait_ms=cp.int_param(params, "wait_ms", 0, 0, cp.MAX_TIMEOUT_MS),
                         after=None if after < 0 else after)

    def _ops(self, caller: Caller, params: dict[str, Any]) -> dict[str, Any]:
        """The federation's operations (every gateway's, as mirrored), one page."""
        page_size = cp.int_param(params, "page_size", cp.DEFAULT_PAGE_SIZE, 1, cp.MAX_PAGE_SIZE)
        rules = caller.rules
        verbs = self._verbs
        items, token = self._fed.ops.page(
            page_size, params.get("page_token"),
            lambda device, service: names.allowed(rules, (*verbs.relative(device), service)))
        return {"items": items, "next_page_token": token}

    def _mirrored(self, caller: Caller, verb: str, params: dict[str, Any]) -> Any:
        """An operation no live gateway keeps, read from the mirror (None: not mirrored, or kept here)."""
        ops = self._fed.ops
        op_id = params.get("op")
        if ops is None or self._verbs.patterns is None or self._verbs.patterns.operations.exists(op_id):
            return None
        target = ops.target(op_id)
        if target is None:
            return None
        device, service = target
        self._verbs.check(caller, (*self._verbs.relative(device), service), f"see operation {op_id} of")
        if verb == cp.VERB_OP_CANCEL:
            from ndn_edge.errors import Unavailable

            raise Unavailable(f"operation {op_id} is kept by a gateway that is not running, and no gateway has "
                              "taken its device over; cancel it when one has")
        return ops.info(op_id)

    async def _vouch(self, subject: str, caller: Caller, verb: str, target: tuple[str, ...],
                     params: dict[str, Any], timeout_s: float, *, device: str | None = None,
                     owner: str | None = None) -> Any:
        """The answer of the gateway serving `device` (keeping the operation, for `owner`). When that gateway goes
        (nobody answers its subject, or its directory lease lapses while it has the request), the request is
        routed again at once rather than left to its deadline: to whichever gateway serves the device now
        (the same subject, the same nonce), or here (this gateway took the device over, or nobody serves it: the
        answer is what this gateway knows, UNAVAILABLE for a device it does not hear)."""
        fed = self._fed
        remote, placement = fed.remote, fed.placement
        assert remote is not None and placement is not None
        deadline = time.monotonic() + timeout_s + _SLACK_S
        nonce = os.urandom(12)  # on every try: the serving gateway journals a non-idempotent call under it
        while True:
            sent_to = placement.route(device) if device is not None else owner

            def gone(sent_to: str | None = sent_to) -> bool:
                return placement.route(device) != sent_to if device is not None else not placement.alive(owner)
            try:
                content = await remote.vouch(subject, caller, verb, target, params,
                                             max(0.001, deadline - time.monotonic()), nonce=nonce, gone=gone)
                if verb == cp.VERB_CALL and device is not None:
                    remote.kept.keep(device, target[-1], params.get("args"), content)
                return Encoded(content)
            except Gone:
                if deadline - time.monotonic() <= RETRY_S:
                    raise
                if not gone():  # nobody answers while the directory still names the gateway: again shortly
                    await asyncio.sleep(RETRY_S)
                    if not gone():
                        continue
            if device is not None and placement.route(device) is not None:
                continue  # another gateway serves it now: the device's subject reaches it
            return await self._here(caller, verb, target, params, nonce)

    async def _here(self, caller: Caller, verb: str, target: tuple[str, ...], params: dict[str, Any],
                    nonce: bytes) -> Any:
        """A vouched request whose gateway went, routed again (served here, or by an operation's new keeper or
        its mirror), under the identity it had there, so the journal keeps a non-idempotent call to one run."""
        token = REQUEST_ID.set(vouch_identity(nonce))
        try:
            result = self._verbs.run(caller, verb, target, params)
            return await result if inspect.isawaitable(result) else result
        finally:
            REQUEST_ID.reset(token)

    async def _gather(self, caller: Caller, params: dict[str, Any]) -> dict[str, Any]:
        from ndn_edge.patterns.gather import gather, split_pattern

        pattern, service = split_pattern(params.get("pattern"))  # type: ignore[arg-type]
        args = params.get("args")
        if args is not None and not isinstance(args, dict):
            from ndn_edge.errors import InvalidArgument

            raise InvalidArgument(f"args must be a map, got {type(args).__name__}")
        timeout_s = cp.int_param(params, "timeout_ms", cp.DEFAULT_TIMEOUT_MS, 1, cp.MAX_TIMEOUT_MS) / 1000
        rules = caller.rules
        results = await gather(FederatedDevices(self._fed._side, self._fed, caller=caller), site=self._fed.site,
                               pattern=pattern, service=service, args=args, timeout_s=timeout_s,
                               allowed=lambda name: names.allowed(rules, name))
        return {"results": results}


class FederatedDevices:
    """The device side as seen from one gateway of a federation: its own devices, plus the presence of those other
    gateways serve (listings), and calls to them (gather)."""

    def __init__(self, side: Any, fed: Federation, *, caller: Caller | None = None) -> None:
        self._side = side
        self._fed = fed
        self._caller = caller
        self.site = side.site
        self.store = side.store
        self.directory = self  # gather asks `directory.presence` why a device is down

    def resolve(self, device: str) -> str:
        return str(self._side.resolve(device))

    def prepare(self, device: str, service: str, args: dict[str, Any] | None) -> Any:
        return self._side.prepare(device, service, args)

    async def complete(self, ticket: Any, *, timeout_s: float) -> Answer:
        return await self._side.complete(ticket, timeout_s=timeout_s)

    async def call(self, device: str, service: str, args: dict[str, Any] | None = None, *,
                   timeout_s: float = 5.0, trace: Any = None) -> Any:
        name = self.resolve(device)
        placement = self._fed.placement
        if placement is None or placement.route(name) is None or self._caller is None or self._fed.remote is None:
            return await self._side.call(name, service, args, timeout_s=timeout_s, trace=trace)
        import cbor2

        target = (*names.relative(name, self.site), service)
        sent_to = placement.route(name)
        content = await self._fed.remote.vouch(
            self._fed.config.device_subject(name), self._caller, cp.VERB_CALL, target,
            {"args": args, "timeout_ms": max(1, int(timeout_s * 1000))}, timeout_s + _SLACK_S,
            gone=lambda: placement.route(name) != sent_to)
        return _Remote(cbor2.loads(content))

    def devices(self, page_size: int = 50, page_token: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        items, token = self._side.devices(page_size, page_token)
        placement = self._fed.placement
        if placement is not None:
            for item in items:
                remote = placement.presence(item.get("name", ""))
                if remote is not None:
                    item.update(remote)
                elif item.get("name") in placement.served:
                    item["gateway"] = self._fed.tag
        return items, token

    def services(self, device: str) -> list[dict[str, Any]]:
        return list(self._side.services(device))

    def known(self, device: str) -> bool:
        return bool(self._side.known(device))

    def metrics(self) -> dict[str, int]:
        return dict(self._side.metrics())

    def is_online(self, device: str) -> bool:
        name = self.resolve(device)
        placement = self._fed.placement
        if placement is not None and placement.route(name) is not None:
            p = placement.presence(name)
            return p is not None and p["state"] == "online"
        return bool(self._side.is_online(name))

    def presence(self, device: str) -> dict[str, Any] | None:
        name = self.resolve(device)
        placement = self._fed.placement
        remote = placement.presence(name) if placement is not None else None
        return remote if remote is not None else self._side.presence(name)


class _Remote:
    """An answer from another gateway, as gather reads one."""

    __slots__ = ("age_ms", "cached", "stale", "value")

    def __init__(self, content: Any) -> None:
        content = content if isinstance(content, dict) else {}
        self.value = content.get("value")
        self.cached = bool(content.get("cached"))
        self.age_ms = int(content.get("age_ms") or 0)
        self.stale = bool(content.get("stale"))


def _quantile(values: Iterable[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _safe(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}"
