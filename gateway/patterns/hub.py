"""The communication models beyond request/response, composed on one device side and served to clients.

Owns the wiring -- device reports (`ndn_edge.devices.reports`) to operations (`ndn_edge.patterns.operations`) and pub/sub
(`ndn_edge.patterns.pubsub`), directory events to both -- and the client verbs of docs/gateway-protocol.md that use them:
`notify`, `start`, `enqueue`, `op_get`, `op_cancel`, `ops`, `gather`, `subscribe`, `poll`, `unsubscribe`. The
client server authenticates a request and hands the verb here with the client's name and rules.

    models = Models(store, device_side, site="edge")
    await models.start()          # after device_side.start(): hooks into its face and its directory events
    coro = models.verb("start", "alice", rules, ("sim", "1", "slow"), {"args": {"seconds": 3}})
    await models.stop()

Access rules, as for `call`: a verb aimed at a service (`notify`, `start`, `enqueue`) needs a rule matching
`<device...>/<service>`; an operation (`op_get`, `op_cancel`, and what `ops` lists) is visible to the clients
allowed to call its service; `gather` calls only the devices whose service the rules allow; a subscription
sees only the topics the rules allow (`ndn_edge.patterns.pubsub`).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ndn_edge.wire import client_protocol as cw
from ndn_edge.names import allowed
from ndn_edge.errors import InvalidArgument, PermissionDenied
from ndn_edge.patterns.gather import gather, split_pattern
from ndn_edge.patterns.notify import notify
from ndn_edge.patterns.operations import DEFAULT_TTL_S, Operations
from ndn_edge.patterns.pubsub import PubSub
from ndn_edge.devices.reports import OPERATION, PUBLICATION, ReportIntake

DEFAULT_POLL_MAX = 100
MAX_POLL_MAX = 1000
DEFAULT_WAIT_MS = 0

Rules = Sequence[Sequence[str]]


class Models:
    """Report intake, operations and pub/sub for one device side, plus the client verbs."""

    def __init__(self, store: Any, devices: Any, *, site: str) -> None:
        self.site = site.strip("/")
        self.store = store
        self.devices = devices
        self.intake = ReportIntake(store, devices.face, self.site)
        self.pubsub = PubSub(store, site=self.site, intake=self.intake)
        self.operations = Operations(store, devices, site=self.site)
        self.intake.handlers = {OPERATION: self.operations.on_report, PUBLICATION: self.pubsub.on_report}
        self._started = False

    async def start(self) -> None:
        """Hook into the device side (reports, events) and start the parts."""
        if self._started:
            return
        await self.intake.start()
        await self.pubsub.start()
        await self.operations.start()
        self.devices.on_report = self.intake.on_interest
        self.devices.listeners.append(self._event)
        self._started = True

    async def stop(self) -> None:
        """Unhook and stop the parts (idempotent)."""
        if not self._started:
            return
        self._started = False
        self.devices.on_report = None
        if self._event in self.devices.listeners:
            self.devices.listeners.remove(self._event)
        await self.operations.stop()
        await self.pubsub.stop()
        await self.intake.stop()

    def metrics(self) -> dict[str, int]:
        """Counters of the parts, prefixed `reports_`, `ops_`, `pubsub_`."""
        out = {f"reports_{k}": v for k, v in self.intake.counters.items()}
        out.update({f"ops_{k}": v for k, v in self.operations.counters.items()})
        out.update({f"pubsub_{k}": v for k, v in self.pubsub.counters.items()})
        out["pubsub_subscriptions"] = self.pubsub.subscriptions()
        return out

    def _event(self, event: dict[str, Any]) -> None:
        self.pubsub.on_event(event)
        self.operations.on_event(event)

    # -- client verbs

    def verb(self, verb: str, client: str, rules: Rules, target: tuple[str, ...], params: dict[str, Any]) -> Any:
        """The coroutine serving `verb` for `client`; CallError at once for a request that cannot be served."""
        if verb in (cw.VERB_NOTIFY, cw.VERB_START, cw.VERB_ENQUEUE):
            device, service = self._service_target(verb, client, rules, target)
            args = params.get("args")
            if args is not None and not isinstance(args, dict):
                raise InvalidArgument(f"args must be a map, got {type(args).__name__}")
            if verb == cw.VERB_NOTIFY:
                return notify(self.devices, device, service, args)
            if verb == cw.VERB_START:
                timeout_ms = cw.int_param(params, "timeout_ms", cw.DEFAULT_TIMEOUT_MS, 1, cw.MAX_TIMEOUT_MS)
                return self.operations.start_op(client, device, service, args, timeout_s=timeout_ms / 1000)
            ttl_ms = cw.int_param(params, "ttl_ms", int(DEFAULT_TTL_S * 1000), 1, 7 * 86400 * 1000)
            return _value(self.operations.enqueue(client, device, service, args, ttl_s=ttl_ms / 1000))
        if target:
            raise InvalidArgument(f"{verb} takes no name components after it, got {'/'.join(target)}")
        if verb in (cw.VERB_OP_GET, cw.VERB_OP_CANCEL):
            op_id = params.get("op")
            device, service = self.operations.target(op_id)
            self._check(client, rules, (*self._relative(device), service), f"see operation {op_id} of")
            if verb == cw.VERB_OP_GET:
                wait_ms = cw.int_param(params, "wait_ms", 0, 0, cw.MAX_TIMEOUT_MS)
                return self.operations.get(op_id, wait_ms=wait_ms)
            timeout_ms = cw.int_param(params, "timeout_ms", cw.DEFAULT_TIMEOUT_MS, 1, cw.MAX_TIMEOUT_MS)
            return self.operations.cancel(op_id, timeout_s=timeout_ms / 1000)
        if verb == cw.VERB_OPS:
            page_size = cw.int_param(params, "page_size", cw.DEFAULT_PAGE_SIZE, 1, cw.MAX_PAGE_SIZE)
            items, token = self.operations.list(
                page_size, params.get("page_token"),
                lambda device, service: allowed(rules, (*self._relative(device), service)))
            return _value({"items": items, "next_page_token": token})
        if verb == cw.VERB_GATHER:
            pattern, service = split_pattern(params.get("pattern"))
            args = params.get("args")
            if args is not None and not isinstance(args, dict):
                raise InvalidArgument(f"args must be a map, got {type(args).__name__}")
            timeout_ms = cw.int_param(params, "timeout_ms", cw.DEFAULT_TIMEOUT_MS, 1, cw.MAX_TIMEOUT_MS)
            return _results(gather(self.devices, site=self.site, pattern=pattern, service=service, args=args,
                                   timeout_s=timeout_ms / 1000, allowed=lambda name: allowed(rules, name)))
        if verb == cw.VERB_SUBSCRIBE:
            pattern = params.get("pattern")
            if not isinstance(pattern, str):
                raise InvalidArgument(f"subscribe needs a pattern (text), got {pattern!r}")
            return _value(self.pubsub.subscribe(client, pattern, params.get("durable")))
        if verb == cw.VERB_POLL:
            return self.pubsub.poll(client, params.get("sub"), ack=cw.int_param(params, "ack", 0, 0, 1 << 62),
                                    max_messages=cw.int_param(params, "max", DEFAULT_POLL_MAX, 1, MAX_POLL_MAX),
                                    wait_ms=cw.int_param(params, "wait_ms", DEFAULT_WAIT_MS, 0, cw.MAX_TIMEOUT_MS))
        if verb == cw.VERB_UNSUBSCRIBE:
            return _value(self.pubsub.unsubscribe(client, params.get("sub")))
        raise InvalidArgument(f"not a communication-model verb: {verb!r}")

    def _service_target(self, verb: str, client: str, rules: Rules, target: tuple[str, ...]) -> tuple[str, str]:
        if len(target) < 2:
            raise InvalidArgument(f"{verb} needs DEVICE/SERVICE, got {'/'.join(target) or 'nothing'}")
        self._check(client, rules, target, verb)
        return "/" + "/".join((self.site, *target[:-1])), target[-1]

    def _check(self, client: str, rules: Rules, name: tuple[str, ...], what: str) -> None:
        if not allowed(rules, name):
            raise PermissionDenied(f"client '{client}' may not {what} {'/'.join(name)}; the operator can allow "
                                   f"it with: ndn-edge acl grant {client} {'/'.join(name)}")

    def _relative(self, name: str) -> tuple[str, ...]:
        parts = tuple(p for p in str(name).split("/") if p)
        return parts[1:] if parts[:1] == (self.site,) else parts


async def _value(value: Any) -> Any:
    return value


async def _results(items: Any) -> dict[str, Any]:
    return {"results": await items}
