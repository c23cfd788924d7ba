"""The gateway process: the store, the device side, the client server and the address record, started and
stopped together.

    gw = Gateway(Home.resolve(), iface="127.0.0.1", group="224.0.23.170", port=56363, listen=("127.0.0.1", 0))
    await gw.run()          # until cancelled (Ctrl-C); or `await gw.start()` ... `await gw.stop()`

Decisions:
- All durable state lives in the home's SQLite store (devices, keys, clients, rules, sequence leases), so a
  restart loses nothing. It is checked whole at start (refused otherwise, saying how to restore) and copied to
  HOME/backup/gateway.db then and every `BACKUP_EVERY_S`, so there is always a last good copy.
  `gateway.json` only says where the running gateway listens and is removed on a clean stop (and only if it
  still names this process).
- The home's site is decided once, in the store (`Store.claim_site`): a gateway started with another site is
  refused rather than serving clients whose credentials name the first.
- A second gateway on the same home is refused while the recorded pid is alive: two gateways would fight over
  sequence leases and the record.
- Start-up order: store, device side (so discovery starts early), the communication patterns on it
  (`ndn_edge.patterns.hub`: report intake, operations, pub/sub), observability (`ndn_edge.observability`: device
  logs into the intake, the health poller, the tracer), the client face with its verbs, the HTTP face when
  asked for (`ndn_edge.http`, its own verb table over the same parts), the metrics listener when asked for,
  then the record (clients can only find a gateway that is ready). Stop in reverse; each part is stopped even
  if another fails.
- With a federation (`federation`: the home's enrolment, `ndn_edge.federation`), the gateway also joins it: the
  federation starts before the device side (its sequence leases and call journal are the invoker's), and is
  attached to the faces once they exist. Without one nothing of it is imported, and nothing changes.
- `run_loop` runs the gateway on uvloop where it is installed (a dependency on Linux and macOS): the same
  asyncio API, with sockets and callbacks in C, 5-15 % less gateway CPU per call (docs/operations.md).
  Elsewhere it is plain asyncio; the gateway uses nothing else.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from ndn_edge import __version__
from ndn_edge.errors import ConfigError, StoreError
from ndn_edge.limits import Limits
from ndn_edge.logs import event
from ndn_edge.quiet_gc import QuietCollector
from ndn_edge.state.home import Home, reachable_host
from ndn_edge.wire.protocol import DEFAULT_GROUP, DEFAULT_IFACE, DEFAULT_PORT, DEFAULT_SITE

if TYPE_CHECKING:
    from ndn_edge.clients.face import ClientFace
    from ndn_edge.devices.side import DeviceSide
    from ndn_edge.federation.config import FederationConfig
    from ndn_edge.federation.node import Federation
    from ndn_edge.http.options import HttpOptions
    from ndn_edge.http.server import HttpFace
    from ndn_edge.observability.hub import Observability, ObservabilityOptions
    from ndn_edge.observability.metrics import MetricsFace
    from ndn_edge.patterns.hub import Patterns
    from ndn_edge.state.store import Store

log = logging.getLogger("ndn_edge.daemon")

BACKUP_EVERY_S = 6 * 3600.0


def run_loop(main: Coroutine[Any, Any, Any]) -> Any:
    """`asyncio.run(main)`, on uvloop's event loop when uvloop is installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


class Gateway:
    """One gateway serving one home."""

    def __init__(self, home: Home, *, iface: str = DEFAULT_IFACE, group: str = DEFAULT_GROUP,
                 port: int = DEFAULT_PORT, listen: tuple[str, int] = ("127.0.0.1", 0),
                 site: str | None = None, limits: Limits | None = None, http: HttpOptions | None = None,
                 observe: ObservabilityOptions | None = None, metrics: tuple[str, int] | None = None,
                 federation: FederationConfig | None = None) -> None:
        self.home = home
        self.limits = limits or Limits()
        self.iface = iface
        self.group = group
        self.port = port
        self.listen = listen
        self._requested_site = site
        self.site = site or DEFAULT_SITE  # the home's, once started (Store.claim_site)
        self.store: Store | None = None
        self.devices: DeviceSide | None = None
        self.patterns: Patterns | None = None
        self.clients: ClientFace | None = None
        self.http_options = http
        self.http: HttpFace | None = None  # the REST API and dashboard (ndn_edge.http), when `http` is given
        self.observe_options = observe
        self.obs: Observability | None = None  # metrics, device logs, traces (ndn_edge.observability)
        self.metrics_listen = metrics
        self.metrics: MetricsFace | None = None  # the metrics-only listener, when `metrics` is given
        self._record_written = False
        self._backups: asyncio.Task[None] | None = None
        self._quiet_gc = QuietCollector()
        self.federation_config = federation
        self.federation: Federation | None = None  # when `federation` is given (ndn_edge.federation)

    async def start(self) -> None:
        """Open the store, start both sides and write the address record."""
        from ndn_edge.clients.face import ClientFace
        from ndn_edge.devices.side import DeviceSide
        from ndn_edge.observability.hub import Observability
        from ndn_edge.patterns.hub import Patterns

        self._refuse_second_gateway()
        self.home.ensure()
        self.store = store = self.home.open_store(check=True)
        store.start_checkpoints()  # not in the commit of a batch of reports (state/store.py)
        self.home.back_up(store)
        try:
            self.site = store.claim_site(self._requested_site)
            if self.federation_config is not None:
                from ndn_edge.federation.node import Federation

                self.federation = Federation(self.home.path, self.federation_config, store, site=self.site)
                await self.federation.start()
            self.devices = DeviceSide(store, site=self.site, iface=self.iface, group=self.group, port=self.port)
            if self.federation is not None:
                self.federation.attach_devices(self.devices)
            await self.devices.start()
            self.patterns = Patterns(store, self.devices, site=self.site, limits=self.limits)
            await self.patterns.start()
            self.obs = Observability(store, self.devices, self.patterns, site=self.site,
                                     options=self.observe_options)
            await self.obs.start()
            devices_view = self.devices if self.federation is None else self.federation.devices_view(self.devices)
            self.clients = ClientFace.build(store, devices_view, self.patterns, site=self.site, listen=self.listen,
                                            limits=self.limits, obs=self.obs)
            host, port = await self.clients.start()
            view = None
            if self.http_options is not None or self.metrics_listen is not None:
                view = self.obs.view(self)
            if self.http_options is not None:
                from ndn_edge.http.server import HttpFace

                self.http = HttpFace.build(store, devices_view, self.patterns, site=self.site,
                                           options=self.http_options, limits=self.limits, obs=self.obs,
                                           metrics=view)
                await self.http.start()
                self.http.write_record(self.home.path)
            if self.metrics_listen is not None:
                from ndn_edge.observability.metrics import MetricsFace

                assert view is not None
                self.metrics = MetricsFace(view, self.metrics_listen)
                await self.metrics.start()
                self.metrics.write_record(self.home.path)
            if self.federation is not None:
                await self.federation.attach(self.devices, self.patterns, self.clients, self.http)
            # A wildcard bind is reached on this host through loopback; the record is for local clients.
            reach = reachable_host(host)
            self.home.write_gateway_record(reach, port, self.iface, self.group, self.port, self.site, os.getpid())
            self._record_written = True
            self._backups = asyncio.create_task(self._back_up_every(BACKUP_EVERY_S), name="store-backups")
        except BaseException:
            await self.stop()
            raise
        # What start-up made (modules, python-ndn's and aiohttp's tables) lives as long as the process: kept out of
        # the cyclic collector's walks, a full collection covers only what serving made since (one such collection
        # took 34 ms, a pause every request waiting then pays, in `python -m bench pubsub` before).
        gc.collect()
        gc.freeze()
        self._quiet_gc.start()  # and full collections of what serving makes at quiet moments (ndn_edge.quiet_gc)
        event(log, "gateway_started", version=__version__, home=str(self.home.path), site=self.site,
              listen=f"{host}:{port}", iface=self.iface, group=f"{self.group}:{self.port}", pid=os.getpid(),
              devices=store.count_devices(), clients=len(store.list_clients()))

    @property
    def address(self) -> tuple[str, int]:
        """Where clients reach this gateway."""
        if self.clients is None:
            raise RuntimeError("the gateway is not started")
        return self.clients.address

    async def stop(self) -> None:
        """Stop everything that was started, remove the record, close the store (idempotent)."""
        if self._record_written:
            self.home.remove_gateway_record(pid=os.getpid())
            self._record_written = False
        await self._quiet_gc.stop()
        backups, self._backups = self._backups, None
        if backups is not None:
            backups.cancel()
            await asyncio.gather(backups, return_exceptions=True)
        metrics, self.metrics = self.metrics, None
        http, self.http = self.http, None
        federation, self.federation = self.federation, None
        if federation is not None:
            try:
                await federation.stop()
            except Exception as err:  # the rest must stop all the same
                event(log, "federation_stop_failed", logging.WARNING, error=repr(err))
        clients, self.clients = self.clients, None
        obs, self.obs = self.obs, None
        patterns, self.patterns = self.patterns, None
        devices, self.devices = self.devices, None
        try:
            if metrics is not None:
                await metrics.stop()
            if http is not None:
                await http.stop()
            if clients is not None:
                await clients.stop()
        finally:
            try:
                if obs is not None:
                    await obs.stop()
                if patterns is not None:
                    await patterns.stop()
                if devices is not None:
                    await devices.stop()
            finally:
                if self.store is not None:
                    self.store.close()
                    self.store = None
                    event(log, "gateway_stopped", pid=os.getpid())

    async def run(self) -> None:
        """Start, serve until cancelled, stop."""
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()

    async def _back_up_every(self, interval_s: float) -> None:
        """Refresh the last good copy of the store (HOME/backup/gateway.db) while the store checks whole."""
        while True:
            await asyncio.sleep(interval_s)
            store = self.store
            if store is None:
                return
            try:
                store.verify()
                self.home.back_up(store)
                event(log, "store_backed_up", path=str(self.home.backup_path))
            except (StoreError, OSError) as err:
                event(log, "store_not_backed_up", logging.ERROR, error=str(err),
                      note="the previous copy is kept; check the disk and the store")

    def _refuse_second_gateway(self) -> None:
        try:
            record = self.home.read_gateway_record()
        except ConfigError:
            return
        if record.pid != os.getpid() and record.pid_alive():
            raise ConfigError(f"a gateway (pid {record.pid}) already serves home {self.home.path} at "
                              f"{record.host}:{record.port}; stop it first, or use another home with --home DIR")
