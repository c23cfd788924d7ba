"""Identity and rules shared by the federation: clients and their keys, access rules, HTTP token hashes and
device records with their keys, kept in each gateway's SQLite store and in one JetStream key-value bucket.

    sync = IdentitySync(store, link, key, site="edge", tag="1a2b", on_change=face_invalidate)
    await sync.start()        # reconciles when connected, then follows both sides

Records, in bucket `ndne_<fed>_ident` (every value sealed with the federation key, `keys.py`):

    c.<name>                 {"key": hex, "created_at"}          a client (name: base64url, as every part below)
    r.<client>.<pattern>     {}                                   one access rule
    d.<device>               {"key": hex, "site", "created_at"}   a provisioned device
    t.<token id>             {"client", "hash": hex, "created_at"} an HTTP token (its SHA-256 only)

Decisions:
- SQLite stays the gateway's truth for serving (the client face, the HTTP tokens, the invoker read it as they
  always did), so a gateway cut off from NATS serves with the rules it has. The bucket is the federation's
  meeting point: a change made on any gateway's home reaches every other gateway's store.
- Three-way merge with a base: `fed_synced` (this module's table) holds, for every record, the digest of what
  this store and the bucket last agreed on. A record whose local digest differs from the base was changed here
  (by the CLI, another process: `ndn-edge client add`, `acl revoke`, `provision`) and is pushed; one whose
  bucket digest differs was changed elsewhere and is applied here; a record changed on both sides keeps this
  side's change (it is pushed, and wins). So a gateway that was stopped or partitioned catches up both ways.
- Changes by other processes are noticed by polling `PRAGMA data_version` every `POLL_S` (it moves only when
  another connection commits), so the CLI needs no NATS at all; the gateway's own writes do not move it.
- Changes arriving from the bucket are applied in the store in one transaction with the base, and then
  announced (`on_change`), so the client face and the HTTP tokens drop what they cached for that client at once:
  a revoke on any gateway applies on every gateway within a second.
- A value that does not open (not sealed with this federation's key) is dropped and counted, never applied.
Rejected: making the CLI write to NATS (every admin command would need the network and the federation key, and a
partitioned home could not be administered), and a gateway-wide lock over both stores (no such thing in NATS).
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from ndn_edge.errors import StoreError
from ndn_edge.federation.config import from_kv_key, kv_key
from ndn_edge.federation.keys import BadSeal, FederationKey
from ndn_edge.federation.link import BucketPart
from ndn_edge.logs import event

log = logging.getLogger("ndn_edge.federation")

FEATURE = "federation"
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE fed_synced (
            key TEXT PRIMARY KEY,
            digest TEXT NOT NULL
        ) WITHOUT ROWID""",
    ),
)
POLL_S = 0.1
STALL_CHECK_S = 1.0
_KIND_ORDER = {"c": 0, "d": 1, "r": 2, "t": 3}  # clients before what refers to them


def digest(plain: bytes) -> str:
    return hashlib.sha256(plain).hexdigest()[:32]


def _plain(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode()


class IdentitySync(BucketPart):
    """Keeps the identity tables of one store and the federation's identity bucket in step."""

    LAGS = 100

    def __init__(self, store: Any, link: Any, key: FederationKey, *, site: str, tag: str,
                 on_change: Callable[[str, str], None] | None = None) -> None:
        super().__init__(link, key, "ident", tag=tag, counters=("pushed", "applied", "bad_seal", "deferred",
                                                                 "resyncs"))
        self._store = store
        self.site = site
        self.on_change = on_change
        self._remote: dict[str, bytes] = {}   # key -> plain record, as the bucket holds it
        self._task: asyncio.Task[None] | None = None
        self._resync = asyncio.Event()
        self._seen_rev = 0
        self.synced_at: float | None = None

    async def start(self) -> None:
        from ndn_edge.http.tokens import FEATURE as TOKENS
        from ndn_edge.http.tokens import MIGRATIONS as TOKEN_MIGRATIONS

        self._store.ensure_schema(FEATURE, MIGRATIONS)
        self._store.ensure_schema(TOKENS, TOKEN_MIGRATIONS)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="federation-identity")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def resync(self) -> None:
        """Start over from a full reconciliation (after a partition)."""
        self._resync.set()

    # -- the loop: watch the bucket, poll the store

    async def _run(self) -> None:
        while True:
            await self._link.wait_connected(3600.0)
            if not self._link.connected:
                continue
            self._resync.clear()
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # NATS went away mid-way, a store error: start over in a moment
                self._throttle.event("identity", "federation_identity_sync_failed", logging.WARNING,
                                     error=str(err) or repr(err))
            await asyncio.sleep(0.5)

    async def _session(self) -> None:
        kv = self._link.kv("ident")
        watcher = await self._link.watch("ident")
        try:
            self._remote = {}
            self._seen_rev = 0
            while True:  # the bucket's current values, up to the end-of-initial-data marker
                entry = await watcher.updates(timeout=5.0)
                if entry is None:
                    break
                self._seen_rev = max(self._seen_rev, int(entry.revision or 0))
                self._take(entry, initial=True)
            self.counters["resyncs"] += 1
            await self._reconcile(kv, full=True)
            version = self._data_version()
            stalled = 0
            checked = time.monotonic()
            while not self._resync.is_set():
                try:
                    entry = await watcher.updates(timeout=POLL_S)
                except asyncio.TimeoutError:
                    entry = None
                except Exception as err:
                    if type(err).__name__ != "TimeoutError":
                        raise
                    entry = None
                if entry is not None:
                    self._seen_rev = max(self._seen_rev, int(entry.revision or 0))
                    self._take(entry, initial=False)
                if time.monotonic() - checked > STALL_CHECK_S:
                    checked = time.monotonic()
                    stalled = stalled + 1 if await self._link.last_revision("ident") > self._seen_rev else 0
                    if stalled >= 2:
                        return  # the watch lost its consumer (a NATS server went away): start over
                now = self._data_version()
                if now != version:
                    version = now
                    await self._reconcile(kv, full=False)
        finally:
            try:
                await watcher.stop()
            except Exception:  # the connection is gone already
                pass

    def _data_version(self) -> int:
        return int(self._store.query("PRAGMA data_version")[0][0])

    def _take(self, entry: Any, *, initial: bool) -> None:
        """One value (or deletion) from the bucket: remembered, and applied here unless this side changed it."""
        key = entry.key
        if entry.operation in ("DEL", "PURGE") or entry.value is None:
            self._remote.pop(key, None)
            plain = None
        else:
            try:
                wrapped = json.loads(self._key.open(f"{self._bucket}/{key}", entry.value))
                plain = _plain(wrapped["r"])
                at = float(wrapped.get("at", 0))
            except (BadSeal, ValueError, KeyError, TypeError) as err:
                self.counters["bad_seal"] += 1
                self._throttle.event("bad_seal", "federation_record_dropped", logging.WARNING, bucket=self._bucket,
                                     key=key, error=str(err))
                return
            self._remote[key] = plain
            if not initial and wrapped.get("by") != self.tag:
                self._lag(at)
        if initial:
            return
        rows = self._store.query("SELECT digest FROM fed_synced WHERE key = ?", (key,))
        base = rows[0][0] if rows else None
        local = self._local_one(key)
        local_digest = digest(local) if local is not None else None
        remote_digest = digest(plain) if plain is not None else None
        if local_digest == remote_digest:
            self._set_base(key, remote_digest)
        elif local_digest == base:
            self._apply(key, plain)

    async def _reconcile(self, kv: Any, *, full: bool) -> None:
        """Three-way merge of this store, the base and the bucket (see the module's decisions)."""
        local, base = self._local(), self._base()
        keys = set(local) | set(base) | (set(self._remote) if full else set())
        if not full:
            keys |= {k for k in self._remote if k in base or k in local}
        for key in sorted(keys, key=_order):
            here = local.get(key)
            d_here = digest(here) if here is not None else None
            there = self._remote.get(key)
            d_there = digest(there) if there is not None else None
            d_base = base.get(key)
            if d_here == d_there:
                if d_base != d_here:
                    self._set_base(key, d_here)
            elif d_here != d_base:   # changed here: push (wins over a change there)
                await self._push(kv, key, here)
            elif full or d_there != d_base:   # changed there
                self._apply(key, there)
        self.synced_at = time.time()

    async def _push(self, kv: Any, key: str, plain: bytes | None) -> None:
        if plain is None:
            try:
                await kv.delete(key)
            except Exception as err:
                if "not found" not in str(err).lower():
                    raise
            self._remote.pop(key, None)
        else:
            wrapped = json.dumps({"r": json.loads(plain), "at": time.time(), "by": self.tag}).encode()
            await kv.put(key, self._key.seal(f"{self._bucket}/{key}", wrapped))
            self._remote[key] = plain
        self.counters["pushed"] += 1
        self._set_base(key, digest(plain) if plain is not None else None)

    # -- this store's side

    def _local(self) -> dict[str, bytes]:
        """Every identity record of this store, by bucket key."""
        out: dict[str, bytes] = {}
        for name, key, created in self._store.query("SELECT name, key, created_at FROM clients"):
            out[f"c.{kv_key(name)}"] = _plain({"key": bytes(key).hex(), "created_at": created})
        for client, pattern in self._store.query("SELECT client, pattern FROM rules"):
            out[f"r.{kv_key(client)}.{kv_key(pattern)}"] = _plain({})
        for name, key, site, created in self._store.query("SELECT name, key, site, created_at FROM devices"):
            out[f"d.{kv_key(name)}"] = _plain({"key": bytes(key).hex(), "site": site, "created_at": created})
        for tid, client, hashed, created in self._store.query(
                "SELECT id, client, hash, created_at FROM http_tokens"):
            out[f"t.{tid}"] = _plain({"client": client, "hash": bytes(hashed).hex(), "created_at": created})
        return out

    def _local_one(self, key: str) -> bytes | None:
        """The record of this store under one bucket key, or None."""
        kind, _, rest = key.partition(".")
        try:
            if kind == "c":
                rows = self._store.query("SELECT key, created_at FROM clients WHERE name = ?", (from_kv_key(rest),))
                return _plain({"key": bytes(rows[0][0]).hex(), "created_at": rows[0][1]}) if rows else None
            if kind == "r":
                client, _, pattern = rest.partition(".")
                rows = self._store.query("SELECT 1 FROM rules WHERE client = ? AND pattern = ?",
                                         (from_kv_key(client), from_kv_key(pattern)))
                return _plain({}) if rows else None
            if kind == "d":
                rows = self._store.query("SELECT key, site, created_at FROM devices WHERE name = ?",
                                         (from_kv_key(rest),))
                return _plain({"key": bytes(rows[0][0]).hex(), "site": rows[0][1], "created_at": rows[0][2]}) \
                    if rows else None
            if kind == "t":
                rows = self._store.query("SELECT client, hash, created_at FROM http_tokens WHERE id = ?", (rest,))
                return _plain({"client": rows[0][0], "hash": bytes(rows[0][1]).hex(), "created_at": rows[0][2]}) \
                    if rows else None
        except ValueError:
            return None
        return None

    def _base(self) -> dict[str, str]:
        return dict(self._store.query("SELECT key, digest FROM fed_synced"))

    def _set_base(self, key: str, value: str | None) -> None:
        with self._store.transaction() as db:
            _write_base(db, key, value)

    def _apply(self, key: str, plain: bytes | None) -> None:
        """Make this store hold the bucket's record (None: not hold it), with the base, in one transaction."""
        kind, _, rest = key.partition(".")
        try:
            record = json.loads(plain) if plain is not None else None
            with self._store.transaction() as db:
                who = _APPLY[kind](db, rest, record, self.site)
                _write_base(db, key, digest(plain) if plain is not None else None)
        except (KeyError, ValueError, TypeError) as err:
            self.counters["bad_seal"] += 1
            self._throttle.event("bad_record", "federation_record_dropped", logging.WARNING, key=key, error=repr(err))
            return
        except sqlite3.IntegrityError:  # a rule or token of a client not here yet: the next reconcile
            self.counters["deferred"] += 1
            return
        except StoreError as err:
            self._throttle.event("store", "federation_record_not_applied", logging.WARNING, key=key, error=str(err))
            return
        self.counters["applied"] += 1
        event(log, "federation_record_applied", logging.DEBUG, kind=kind, name=who, removed=plain is None)
        if self.on_change is not None:
            self.on_change(kind, who)


def _order(key: str) -> tuple[int, str]:
    return _KIND_ORDER.get(key[:1], 9), key


def _write_base(db: Any, key: str, value: str | None) -> None:
    if value is None:
        db.execute("DELETE FROM fed_synced WHERE key = ?", (key,))
    else:
        db.execute("INSERT INTO fed_synced (key, digest) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET "
                   "digest = excluded.digest", (key, value))


def _client(db: Any, rest: str, record: Any, site: str) -> str:
    name = from_kv_key(rest)
    if record is None:
        db.execute("DELETE FROM rules WHERE client = ?", (name,))
        db.execute("DELETE FROM clients WHERE name = ?", (name,))
    else:
        key = bytes.fromhex(record["key"])
        if len(key) != 32:
            raise ValueError(f"client {name} has a key of {len(key)} bytes")
        db.execute("INSERT INTO clients (name, key, created_at) VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE "
                   "SET key = excluded.key", (name, key, float(record["created_at"])))
    return name


def _rule(db: Any, rest: str, record: Any, site: str) -> str:
    client_part, _, pattern_part = rest.partition(".")
    client, pattern = from_kv_key(client_part), from_kv_key(pattern_part)
    if record is None:
        db.execute("DELETE FROM rules WHERE client = ? AND pattern = ?", (client, pattern))
    else:
        from ndn_edge.names import format_pattern, parse_pattern

        if format_pattern(parse_pattern(pattern)) != pattern:
            raise ValueError(f"rule pattern {pattern!r} is not canonical")
        db.execute("INSERT OR IGNORE INTO rules (client, pattern, created_at) VALUES (?, ?, ?)",
                   (client, pattern, time.time()))
    return client


def _device(db: Any, rest: str, record: Any, site: str) -> str:
    from ndn_edge.state.store import key_id

    name = from_kv_key(rest)
    if record is None:
        db.execute("DELETE FROM devices WHERE name = ?", (name,))
        return name
    key = bytes.fromhex(record["key"])
    if len(key) != 32 or record["site"] != site or not name.startswith(f"/{site}/"):
        raise ValueError(f"device record {name} is not a device of site {site} with a 32-byte key")
    db.execute("INSERT INTO devices (name, key, key_id, site, created_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) "
               "DO UPDATE SET key = excluded.key, key_id = excluded.key_id", (name, key, key_id(key), site,
                                                                            float(record["created_at"])))
    return name


def _token(db: Any, rest: str, record: Any, site: str) -> str:
    if record is None:
        row = db.execute("SELECT client FROM http_tokens WHERE id = ?", (rest,)).fetchone()
        db.execute("DELETE FROM http_tokens WHERE id = ?", (rest,))
        return str(row[0]) if row else ""
    db.execute("INSERT INTO http_tokens (id, client, hash, created_at) VALUES (?, ?, ?, ?) ON CONFLICT (id) DO "
               "UPDATE SET hash = excluded.hash", (rest, record["client"], bytes.fromhex(record["hash"]),
                                                   float(record["created_at"])))
    return str(record["client"])


_APPLY: dict[str, Callable[[Any, str, Any, str], str]] = {"c": _client, "r": _rule, "d": _device, "t": _token}
