"""The gateway's connection to the federation's NATS cluster: connecting, reconnecting, the buckets and the
stream, and the answer to "are we partitioned?".

    link = NatsLink(config, on_state=print)
    await link.start()          # returns at once; connects in the background, retrying
    kv = link.kv("ident")       # a bucket, once connected
    link.state                  # "connecting" | "connected" | "partitioned"

Decisions:
- The gateway never waits for NATS to start or to serve its own LAN: `start` returns at once and the first
  connection is retried every `RETRY_S` in a task; nats-py reconnects by itself afterwards. A gateway that lost
  its connection is `partitioned`: it goes on serving its LAN with the clients and rules it has (they are in
  its SQLite store), says so (log event, `federation status`, the metrics verb), and catches up when the
  connection returns (the owners of each bucket resynchronise on `on_state("connected")`).
- Pings every second, two outstanding at most: a connection whose peer went silent is noticed in about 3 s.
- Buckets are replicated on three servers where the cluster has three, else one (a single test server).
- Errors of the client library reach the log once per interval, never a traceback per packet.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from ndn_edge.federation.config import FederationConfig
from ndn_edge.federation.keys import BadSeal, FederationKey
from ndn_edge.logs import Throttle, event

log = logging.getLogger("ndn_edge.federation")

RETRY_S = 1.0
PING_S = 1
# The JetStream requests a watch makes (its consumer, its stream's last sequence) wait this long for an answer, not
# nats-py's 5 s: while a stream elects a new leader after a NATS server died they get none, and a watch that asks
# again sooner follows the bucket again about when the election ends (seconds earlier).
WATCH_REQUEST_TIMEOUT_S = 1.5
WATCH_INACTIVE_S = 60.0  # a watch's consumer that nobody reads any more (its request timed out) goes after this
CONNECT_TIMEOUT_S = 2
CALLS_TTL_S = 180.0
STREAM_MAX_AGE_S = 24 * 3600.0
STREAM_MAX_BYTES = 64 << 20
BUCKETS = ("ident", "place", "gw", "seq", "calls", "ops", "subs")
OPS_TTL_S = 7 * 86400.0  # finished operations are kept this long (patterns/operations.py KEEP_FINISHED_S)

CONNECTING, CONNECTED, PARTITIONED = "connecting", "connected", "partitioned"


class NatsLink:
    """One NATS connection for one gateway, with its JetStream buckets."""

    def __init__(self, config: FederationConfig, *, name: str = "ndn-edge",
                 on_state: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.name = name
        self.on_state = on_state
        self.state = CONNECTING
        self.since = time.time()
        self.nc: Any = None
        self.js: Any = None
        self._watch_js: Any = None  # JetStream with WATCH_REQUEST_TIMEOUT_S, for watches
        self._kv: dict[str, Any] = {}
        self._watch_kv: dict[str, Any] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._throttle = Throttle(log)
        self.counters: dict[str, int] = {"connects": 0, "disconnects": 0, "errors": 0}

    async def start(self) -> None:
        """Connect in the background."""
        if self._task is None:
            self._task = asyncio.create_task(self._connect_loop(), name="federation-connect")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        nc, self.nc = self.nc, None
        if nc is not None:
            try:
                await asyncio.wait_for(nc.close(), 2.0)
            except Exception as err:  # closing a broken connection: nothing left to do
                event(log, "federation_close_failed", logging.DEBUG, error=repr(err))

    @property
    def connected(self) -> bool:
        return self.state == CONNECTED and self.nc is not None and self.nc.is_connected

    def server(self) -> str | None:
        """The NATS server this gateway is connected to now (host:port), or None."""
        url = self.nc.connected_url if self.connected else None
        return f"{url.hostname}:{url.port}" if url is not None else None

    async def wait_connected(self, timeout_s: float) -> bool:
        """True once connected (within `timeout_s`)."""
        try:
            await asyncio.wait_for(self._ready.wait(), timeout_s)
        except asyncio.TimeoutError:
            return False
        return True

    async def last_revision(self, what: str) -> int:
        """The last revision written to bucket `what` (its stream's last sequence): a watcher that saw less for
        a while has stalled (its consumer lost with a NATS server) and is started again by its owner."""
        info = await self._watch_js.stream_info(f"KV_{self.config.bucket(what)}")
        return int(info.state.last_seq)

    async def watch(self, what: str) -> Any:
        """A watcher of every key of bucket `what` (nats-py's KeyWatcher), once connected; its requests time out
        after WATCH_REQUEST_TIMEOUT_S, so that a watch started again during a leader election fails fast and its
        owner tries again."""
        kv = self._watch_kv.get(what)
        if kv is None:
            kv = self._watch_kv[what] = await self._watch_js.key_value(self.config.bucket(what))
        return await kv.watchall(inactive_threshold=WATCH_INACTIVE_S)

    def kv(self, what: str) -> Any:
        """The bucket `what` (one of BUCKETS), once connected."""
        return self._kv[what]

    # -- connection

    async def _connect_loop(self) -> None:
        import nats

        while True:
            try:
                nc = await nats.connect(
                    list(self.config.nats), name=self.name, connect_timeout=CONNECT_TIMEOUT_S,
                    reconnect_time_wait=RETRY_S, max_reconnect_attempts=-1, ping_interval=PING_S,
                    max_outstanding_pings=2, allow_reconnect=True, error_cb=self._error,
                    disconnected_cb=self._disconnected, reconnected_cb=self._reconnected)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # unreachable, refused, bad credentials: retried, logged once a while
                self._throttle.event("connect", "federation_unreachable", logging.WARNING,
                                     nats=",".join(_safe(u) for u in self.config.nats), error=str(err) or repr(err))
                await asyncio.sleep(RETRY_S)
                continue
            self.nc = nc
            self.js = nc.jetstream()
            self._watch_js = nc.jetstream(timeout=WATCH_REQUEST_TIMEOUT_S)
            self._watch_kv = {}
            try:
                await self._ensure_buckets()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # JetStream not ready yet (a cluster electing its leaders)
                self._throttle.event("buckets", "federation_buckets_not_ready", logging.WARNING, error=repr(err))
                await _close_quietly(nc)
                self.nc = None
                await asyncio.sleep(RETRY_S)
                continue
            self.counters["connects"] += 1
            self._set(CONNECTED)
            self._ready.set()
            return

    async def _ensure_buckets(self) -> None:
        """Open (or create) every bucket and the publications stream, all at once: each creation in a cluster
        waits for a new replica group to elect its leader, and one after another they took seconds."""
        results = await asyncio.gather(*(self._ensure_bucket(what) for what in BUCKETS if what not in self._kv),
                                       self._ensure_stream(), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _ensure_bucket(self, what: str) -> None:
        from nats.js.api import KeyValueConfig, StorageType

        name = self.config.bucket(what)
        try:
            self._kv[what] = await self.js.key_value(name)
            return
        except Exception:  # not there yet: create it
            pass
        ttl = CALLS_TTL_S if what == "calls" else OPS_TTL_S if what == "ops" else None
        last: Exception | None = None
        for replicas in (3, 1):
            try:
                self._kv[what] = await self.js.create_key_value(KeyValueConfig(
                    bucket=name, history=1, replicas=replicas, ttl=ttl, storage=StorageType.FILE))
                return
            except Exception as err:  # fewer servers than replicas: try one
                last = err
        raise last or RuntimeError(f"cannot create bucket {name}")

    async def _ensure_stream(self) -> None:
        from nats.js.api import StorageType, StreamConfig

        last_err: Exception = RuntimeError(f"cannot create stream {self.config.stream}")
        for replicas in (3, 1):
            try:
                await self.js.add_stream(StreamConfig(
                    name=self.config.stream, subjects=[self.config.pub_subjects], max_age=STREAM_MAX_AGE_S,
                    max_bytes=STREAM_MAX_BYTES, num_replicas=replicas, storage=StorageType.FILE))
                return
            except Exception as err:
                if "already in use" in str(err).lower() or "exists" in str(err).lower():
                    return
                last_err = err
        raise last_err

    async def _error(self, err: Exception) -> None:
        self.counters["errors"] += 1
        self._throttle.event("error", "federation_nats_error", logging.WARNING, error=str(err) or repr(err))

    async def _disconnected(self) -> None:
        if self.state == CONNECTED:
            self.counters["disconnects"] += 1
            self._set(PARTITIONED)

    async def _reconnected(self) -> None:
        self._set(CONNECTED)

    def _set(self, state: str) -> None:
        if state == self.state:
            return
        self.state, self.since = state, time.time()
        level = logging.WARNING if state == PARTITIONED else logging.INFO
        event(log, f"federation_{state}", level, nats=",".join(_safe(u) for u in self.config.nats),
              note="serving this LAN with the clients and rules it has; catching up when NATS returns"
              if state == PARTITIONED else "")
        if self.on_state is not None:
            self.on_state(state)


class ReplyInbox:
    """One subscription, `<inbox>.*`, that takes every reply to a part's requests on the current connection
    (nats-py subscribes it again after a reconnect); a reply's token is its subject after `prefix`."""

    def __init__(self, cb: Callable[[Any], Any]) -> None:
        self._cb = cb
        self._nc: Any = None
        self.prefix = ""

    async def on(self, nc: Any) -> str:
        """The prefix of reply subjects on connection `nc` (subscribed at its first use)."""
        if self._nc is not nc:
            prefix = nc.new_inbox() + "."
            await nc.subscribe(prefix + "*", cb=self._cb)
            self.prefix, self._nc = prefix, nc
        return self.prefix

    def token(self, subject: str) -> str:
        return subject[len(self.prefix):]


Take = Callable[[str, "dict[str, Any] | None", int, bool], None]


class BucketPart:
    """What every part that keeps one of the federation's buckets in step with this gateway holds (identity.py,
    opsync.py, durable.py): the link, the federation key, this gateway's tag, the bucket's name, a log throttle,
    the recent replication lags (reported by the metrics verb) and its counters, all at 0."""

    LAGS = 256  # replication lags kept

    def __init__(self, link: Any, key: FederationKey, what: str, *, tag: str, counters: tuple[str, ...]) -> None:
        self._link = link
        self._key = key
        self.tag = tag
        self._bucket = link.config.bucket(what)
        self._throttle = Throttle(log)
        self.lag_s: list[float] = []
        self.counters: dict[str, int] = dict.fromkeys(counters, 0)

    def _lag(self, at: float) -> None:
        """A value written elsewhere at `at` (the writer's clock) is taken here now."""
        self.lag_s = [*self.lag_s[-(self.LAGS - 1):], max(0.0, time.time() - at)]


async def watch_bucket(link: NatsLink, what: str, key: FederationKey, take: Take, *, counters: dict[str, int],
                       throttle: Throttle, synced: Callable[[], None] | None = None) -> None:
    """Follow bucket `what` for ever: `take(key, record or None, revision, initial)` for each sealed JSON record
    (None: deleted), `synced()` once the values present at the start were taken. A value that does not open is
    dropped and counted (`counters["bad_seal"]`); a watch that stalls (its consumer went with a NATS server) or
    breaks with the connection is started again."""
    bucket = link.config.bucket(what)
    while True:
        await link.wait_connected(3600.0)
        watcher = None
        try:
            watcher = await link.watch(what)
            initial = True
            seen, stalled = 0, 0
            while link.connected:
                try:
                    entry = await watcher.updates(timeout=1.0)
                except Exception as err:
                    if "timeout" not in type(err).__name__.lower():
                        raise
                    # Quiet for a second: a watch whose consumer went with a NATS server stays quiet.
                    stalled = stalled + 1 if await link.last_revision(what) > seen else 0
                    if stalled >= 2:
                        break
                    continue
                if entry is None:
                    initial = False
                    if synced is not None:
                        synced()
                    continue
                seen = max(seen, int(entry.revision or 0))
                if entry.operation in ("DEL", "PURGE") or not entry.value:
                    take(entry.key, None, entry.revision, initial)
                    continue
                try:
                    record = json.loads(key.open(f"{bucket}/{entry.key}", entry.value))
                    if not isinstance(record, dict):
                        raise ValueError("not a map")
                except (BadSeal, ValueError) as err:
                    counters["bad_seal"] = counters.get("bad_seal", 0) + 1
                    throttle.event(f"seal-{what}", "federation_record_dropped", logging.WARNING, bucket=bucket,
                                   key=entry.key, error=str(err))
                    continue
                take(entry.key, record, entry.revision, initial)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # the connection went away: watch again once it is back
            throttle.event(f"watch-{what}", "federation_watch_restarted", logging.INFO, error=repr(err))
        finally:
            if watcher is not None:
                try:
                    await watcher.stop()
                except Exception:  # already gone with its connection
                    pass
        await asyncio.sleep(0.2)


def _safe(url: str) -> str:
    """A NATS URL without its user and password, for logs."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}"


async def _close_quietly(nc: Any) -> None:
    try:
        await asyncio.wait_for(nc.close(), 2.0)
    except Exception:  # already broken
        pass
