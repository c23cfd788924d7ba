"""The gateway's durable state in one SQLite file: devices, clients, access rules, sequence-number leases, meta.

Decisions:
- stdlib `sqlite3`, one connection per `Store`, used from one thread (the asyncio loop's). Every call is a short
  synchronous statement; nothing here awaits. `check_same_thread` stays on so misuse fails loudly.
- The file is created mode 0600 before SQLite opens it (it holds device and client keys); SQLite gives the
  `-wal` and `-shm` files the same mode.
- WAL journal, so the CLI can change clients and rules while the gateway runs; `busy_timeout` covers the short
  overlaps. `synchronous=NORMAL` for everyday writes (presence updates are frequent and cheap to lose on power
  loss), but sequence-number leases are committed with `synchronous=FULL`: a lease lost to a power cut would make
  a sender reuse numbers.
- The core schema (devices, clients, rules, leases, meta) is versioned with `PRAGMA user_version`;
  `_MIGRATIONS[i]` takes version i to i+1, each in one transaction. A store newer than this code is refused
  rather than guessed at. The version is read inside the write transaction, so two processes opening a new
  home at once (a gateway and `ndn-edge client add`) migrate it once: the second finds it done.
- Each feature owns its tables and their SQL (`patterns/operations.py`, `patterns/pubsub.py`,
  `devices/reports.py`): it declares its own migrations and runs them with `ensure_schema(feature, ...)`
  when it starts, versioned per feature in `schema_versions`. Stores made by 0.1, whose core step 2 created
  those tables, are adopted at the feature's version 1.
- A long-running owner (the gateway) checkpoints the WAL from a thread of its own (`start_checkpoints`): SQLite's
  automatic checkpoint runs inside the commit that crosses 1,000 pages, so every so often one batch of reports
  paid for copying the log into the file and syncing it (in-process, 5-8 ms every few hundred batches against a
  1 ms median; a sync on a slow disk or SD card costs far more). The thread's PASSIVE checkpoints never block the
  loop's writes; SQLite restarts the log once a checkpoint has copied all of it.
- Transactions are explicit (`isolation_level=None` plus `BEGIN IMMEDIATE`), so a read-modify-write such as a lease
  cannot interleave with another process.
- Records are frozen dataclasses whose `repr` leaves the key out: secrets never reach logs by accident.
- Page tokens are opaque: URL-safe base64 of the last name returned. Keyset pagination (`name > ?`) stays correct
  while devices come and go between pages, which an OFFSET would not.

Sequence leases follow RFC 8613 appendix B.1.1: `lease_seq_block` persists the end of a block before handing the
block out, so after a restart the holder resumes above anything it may have used. `SeqCounter` hands numbers out of
the leased block one at a time.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ndn_edge.errors import AlreadyExists, ConfigError, DamagedStore, StoreError, UnknownClient, UnknownDevice
from ndn_edge.names import format_pattern, parse_pattern
from ndn_edge.state.home import validate_client_name
from ndn_edge.wire.protocol import DEFAULT_SITE, KEY_BYTES

STATES = ("unknown", "online", "offline", "asleep", "left")
MAX_PAGE_SIZE = 1000
SITE_META = "site"  # the meta entry naming the home's site
_SEQ_MAX = (1 << 63) - 1  # SQLite INTEGER is signed 64-bit
_BUSY_TIMEOUT_S = 5.0
CHECKPOINT_EVERY_S = 1.0  # Store.start_checkpoints

_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 0 -> 1
        """CREATE TABLE devices (
            name TEXT PRIMARY KEY,
            key BLOB NOT NULL,
            key_id TEXT NOT NULL,
            site TEXT NOT NULL,
            created_at REAL NOT NULL,
            last_seen REAL,
            lease_until REAL,
            state TEXT NOT NULL DEFAULT 'unknown'
                CHECK (state IN ('unknown', 'online', 'offline', 'asleep', 'left')),
            sleep_until REAL,
            desc_hash TEXT,
            desc TEXT,
            rx_floor INTEGER NOT NULL DEFAULT 0
        )""",
        """CREATE TABLE clients (
            name TEXT PRIMARY KEY,
            key BLOB NOT NULL,
            created_at REAL NOT NULL
        )""",
        """CREATE TABLE rules (
            client TEXT NOT NULL REFERENCES clients(name) ON DELETE CASCADE,
            pattern TEXT NOT NULL,
            created_at REAL NOT NULL,
            UNIQUE (client, pattern)
        )""",
        """CREATE TABLE seq_leases (
            key TEXT PRIMARY KEY,
            mark INTEGER NOT NULL
        )""",
        """CREATE TABLE meta (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        )""",
    ),
    (  # 1 -> 2: what each feature's own tables are at (Store.ensure_schema)
        """CREATE TABLE IF NOT EXISTS schema_versions (
            feature TEXT PRIMARY KEY,
            version INTEGER NOT NULL
        )""",
    ),
    (  # 2 -> 3: stores made by 0.1, whose step 2 created the features' tables here, get the table too
        """CREATE TABLE IF NOT EXISTS schema_versions (
            feature TEXT PRIMARY KEY,
            version INTEGER NOT NULL
        )""",
    ),
    (  # 3 -> 4: the store's identity, which its home remembers (an emptied or swapped file is then noticed)
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('store_id', lower(hex(randomblob(8))))",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)

_DEVICE_COLUMNS = ("name, key, key_id, site, created_at, last_seen, lease_until, state, sleep_until, desc_hash, "
                   "desc, rx_floor")


def key_id(key: bytes) -> str:
    """The key-id of a key: the first 4 bytes of SHA-256(key) as 8 lowercase hex characters."""
    return hashlib.sha256(key).digest()[:4].hex()


@dataclass(frozen=True)
class DeviceRecord:
    """One provisioned device and what the gateway last heard from it."""

    name: str
    key: bytes = field(repr=False)
    key_id: str
    site: str
    created_at: float
    last_seen: float | None
    lease_until: float | None
    state: str
    sleep_until: float | None
    desc_hash: str | None
    desc: Any
    rx_floor: int

    @property
    def key_name(self) -> str:
        """The device key's name: `<device>/KEY/<key-id>`."""
        return f"{self.name}/KEY/{self.key_id}"


@dataclass(frozen=True)
class ClientRecord:
    """One client identity issued by the gateway."""

    name: str
    key: bytes = field(repr=False)
    created_at: float


class Rule(NamedTuple):
    """One access rule: `client` may call names matching `pattern` (canonical text)."""

    client: str
    pattern: str

    @property
    def parts(self) -> tuple[str, ...]:
        """The parsed pattern, for `ndn_edge.names.matches`."""
        return parse_pattern(self.pattern)


class Store:
    """The gateway's SQLite store; a context manager, to be used from one thread."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_s: float = _BUSY_TIMEOUT_S,
                 expect_id: str | None = None, check: bool = False) -> None:
        """Open (creating and migrating) the store at `path`. With `expect_id`, the file must be that store: an
        empty, new or other store file is refused (StoreError) rather than started afresh. With `check`, SQLite's
        quick_check must find the file whole."""
        self.path = os.fspath(path)
        self._checkpoints: tuple[threading.Event, threading.Thread] | None = None
        if self.path != ":memory:":
            _create_private(self.path)
        try:
            self._db = sqlite3.connect(self.path, timeout=busy_timeout_s, isolation_level=None)
        except sqlite3.Error as err:
            raise StoreError(f"cannot open store {self.path}: {err}") from err
        try:
            if expect_id is not None:
                self._expect(expect_id)
            self._use_wal(busy_timeout_s)
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            if check:
                self._check()
            self._migrate()
        except sqlite3.OperationalError as err:  # the file cannot be opened or written: not its content's fault
            self._db.close()
            raise StoreError(f"cannot use store {self.path}: {err}") from err
        except sqlite3.DatabaseError as err:
            self._db.close()
            raise DamagedStore(f"{self.path} is not a usable ndn-edge store: {err}") from err
        except BaseException:
            self._db.close()
            raise

    def _expect(self, store_id: str) -> None:
        found = None
        if self._db.execute("PRAGMA user_version").fetchone()[0] >= 4:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()
            found = row[0] if row else None
        if found != store_id:
            what = "is empty or new" if found is None else f"is another store ({found})"
            raise DamagedStore(f"{self.path} {what}, but this home's store is {store_id}")

    def _check(self) -> None:
        problems = [row[0] for row in self._db.execute("PRAGMA quick_check(5)").fetchall()]
        if problems != ["ok"]:
            raise sqlite3.DatabaseError("; ".join(str(p) for p in problems))

    def verify(self) -> None:
        """StoreError unless SQLite's quick_check finds the file whole."""
        try:
            self._check()
        except sqlite3.DatabaseError as err:
            raise DamagedStore(f"{self.path} is damaged: {err}") from err

    @property
    def store_id(self) -> str:
        """This store's identity (random, made with it)."""
        return str(self.get_meta("store_id"))

    def backup(self, path: str | os.PathLike[str]) -> None:
        """A consistent copy of the store at `path` (SQLite's backup API; written aside, then renamed into
        place, mode 0600), taken while the store stays in use."""
        target = os.fspath(path)
        tmp = f"{target}.{os.getpid()}.tmp"
        _create_private(tmp)
        try:
            copy = sqlite3.connect(tmp)
            try:
                self._db.backup(copy)
            finally:
                copy.close()
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def _use_wal(self, timeout_s: float) -> None:
        """Switch a new file to WAL. The switch needs the file to itself, and SQLite answers "locked" at once
        instead of waiting when another process opens the same new file in the same instant (a gateway and
        `ndn-edge client add` on a fresh home): retry until `timeout_s`. A file already in WAL needs nothing."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                    return
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def start_checkpoints(self, every_s: float = CHECKPOINT_EVERY_S) -> None:
        """Checkpoint the WAL every `every_s` from a thread with its own connection, instead of in whichever commit
        crosses SQLite's threshold (see the module's Decisions); stopped by `close`, which checkpoints once more."""
        if self._checkpoints is not None or self.path == ":memory:":
            return
        stop = threading.Event()
        conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)

        def run() -> None:
            try:
                while not stop.wait(every_s):
                    try:
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    except sqlite3.Error:  # busy or failing: the next turn tries again, the log only grows meanwhile
                        continue
            finally:
                conn.close()

        self._db.execute("PRAGMA wal_autocheckpoint=0")
        thread = threading.Thread(target=run, name="store-checkpoints", daemon=True)
        self._checkpoints = (stop, thread)
        thread.start()

    def close(self) -> None:
        """Close the database (idempotent); the checkpoint thread, if any, ends after a last checkpoint."""
        checkpoints, self._checkpoints = self._checkpoints, None
        if checkpoints is not None:
            checkpoints[0].set()
            checkpoints[1].join(_BUSY_TIMEOUT_S + 1)
            try:
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.Error:
                pass
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken before reading so read-modify-write cannot interleave. What SQLite
        refuses inside it (a full disk, a read-only file) is a StoreError saying so; nothing is half-written."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as err:
            if "locked" in str(err) or "busy" in str(err):
                raise StoreError(f"store {self.path} is busy ({err}); is another process holding it?") from err
            raise StoreError(f"store {self.path} cannot be written: {err}") from err
        try:
            yield self._db
            self._db.execute("COMMIT")
        except BaseException as exc:
            if self._db.in_transaction:
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # the connection already rolled back (SQLite does, on a full disk)
            if isinstance(exc, sqlite3.Error) and not isinstance(exc, sqlite3.IntegrityError):
                raise StoreError(f"store {self.path} cannot be written: {exc}") from exc
            raise

    def _migrate(self) -> None:
        while True:
            with self._tx() as db:
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise StoreError(f"store {self.path} has schema version {version}, newer than this ndn-edge "
                                     f"understands ({SCHEMA_VERSION}); upgrade ndn-edge")
                if version == SCHEMA_VERSION:
                    return
                for statement in _MIGRATIONS[version]:
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {version + 1}")

    def ensure_schema(self, feature: str, migrations: Sequence[Sequence[str]], *, adopt: str | None = None) -> None:
        """Bring `feature`'s own tables to `len(migrations)`: `migrations[i]` takes it from version i to i+1, in
        one transaction each. `adopt` names a table of its version 1 that a store made by 0.1 already holds (its
        core step 2 created the features' tables): such a store is taken to be at version 1."""
        while True:
            with self._tx() as db:
                row = db.execute("SELECT version FROM schema_versions WHERE feature = ?", (feature,)).fetchone()
                version = row[0] if row else 0
                if version == 0 and adopt is not None and db.execute(
                        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (adopt,)).fetchone():
                    version = 1
                if version > len(migrations):
                    raise StoreError(f"store {self.path} has {feature} tables of version {version}, newer than "
                                     f"this ndn-edge understands ({len(migrations)}); upgrade ndn-edge")
                if version == len(migrations):
                    if row is None and version:
                        db.execute("INSERT INTO schema_versions (feature, version) VALUES (?, ?)", (feature, version))
                    return
                for statement in migrations[version]:
                    db.execute(statement)
                db.execute("INSERT INTO schema_versions (feature, version) VALUES (?, ?) ON CONFLICT (feature) "
                           "DO UPDATE SET version = excluded.version", (feature, version + 1))

    @property
    def schema_version(self) -> int:
        """The schema version of the open file."""
        return self._db.execute("PRAGMA user_version").fetchone()[0]

    # -- devices

    def add_device(self, name: str, key: bytes, site: str, *, replace: bool = False) -> DeviceRecord:
        """Record a provisioned device; AlreadyExists unless `replace`, which installs the new key."""
        site = _check_site(site)
        _check_device_name(name, site)
        _check_key(key, "device")
        kid = key_id(key)
        with self._tx() as db:
            old = self.device(name)
            if old is not None and not replace:
                raise AlreadyExists(f"device {name} is already provisioned (key-id {old.key_id}); "
                                    "provision it again with replace to give it a new key")
            if old is None:
                db.execute("INSERT INTO devices (name, key, key_id, site, created_at) VALUES (?, ?, ?, ?, ?)",
                           (name, key, kid, site, time.time()))
            else:
                # A new key starts a new sequence space and says nothing yet about presence.
                db.execute("UPDATE devices SET key = ?, key_id = ?, site = ?, rx_floor = 0, state = 'unknown', "
                           "last_seen = NULL, lease_until = NULL, sleep_until = NULL WHERE name = ?",
                           (key, kid, site, name))
        record = self.device(name)
        assert record is not None
        return record

    def device(self, name: str) -> DeviceRecord | None:
        """The device called `name` (full URI), or None."""
        row = self._db.execute(f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE name = ?", (name,)).fetchone()
        return _device(row) if row else None

    def device_by_key_name(self, key_name: str) -> DeviceRecord | None:
        """The device whose current key is named `key_name` (`<device>/KEY/<key-id>`), or None."""
        if not isinstance(key_name, str):
            return None
        device, marker, kid = ([*key_name.rsplit("/", 2), "", ""])[:3]
        if marker != "KEY" or not device:
            return None
        record = self.device(device)
        return record if record is not None and record.key_id == kid else None

    def remove_device(self, name: str) -> None:
        """Forget a device; UnknownDevice if it is not there."""
        with self._tx() as db:
            if db.execute("DELETE FROM devices WHERE name = ?", (name,)).rowcount == 0:
                raise UnknownDevice(f"no device {name} in the store")

    def update_presence(self, name: str, state: str, last_seen: float | None, lease_until: float | None,
                        sleep_until: float | None = None, *, rx_floor: int | None = None) -> None:
        """Record what the device last said about itself; `rx_floor` only ever raises the stored floor."""
        if state not in STATES:
            raise ValueError(f"device state {state!r} is not one of {', '.join(STATES)}")
        with self._tx() as db:
            cur = db.execute("UPDATE devices SET state = ?, last_seen = ?, lease_until = ?, sleep_until = ?, "
                             "rx_floor = MAX(rx_floor, ?) WHERE name = ?",
                             (state, last_seen, lease_until, sleep_until, int(rx_floor or 0), name))
            if cur.rowcount == 0:
                raise UnknownDevice(f"no device {name} in the store")

    def set_description(self, name: str, desc_hash: str, desc_obj: Any) -> None:
        """Store the device's service descriptions (JSON-able) and the hash it announced for them."""
        text = json.dumps(desc_obj, sort_keys=True, separators=(",", ":"))
        with self._tx() as db:
            cur = db.execute("UPDATE devices SET desc_hash = ?, desc = ? WHERE name = ?", (desc_hash, text, name))
            if cur.rowcount == 0:
                raise UnknownDevice(f"no device {name} in the store")

    def list_devices(self, page_size: int = 50, page_token: str | None = None,
                     ) -> tuple[list[DeviceRecord], str | None]:
        """One page of devices ordered by name, and the token of the next page (None at the end)."""
        _check_page_size(page_size)
        after = _decode_token(page_token) if page_token else None
        if after is None:
            rows = self._db.execute(f"SELECT {_DEVICE_COLUMNS} FROM devices ORDER BY name LIMIT ?",
                                    (page_size + 1,)).fetchall()
        else:
            rows = self._db.execute(f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE name > ? ORDER BY name LIMIT ?",
                                    (after, page_size + 1)).fetchall()
        records = [_device(row) for row in rows[:page_size]]
        more = len(rows) > page_size
        return records, (_encode_token(records[-1].name) if more else None)

    def count_devices(self) -> int:
        """How many devices the store knows."""
        return self._db.execute("SELECT COUNT(*) FROM devices").fetchone()[0]

    # -- clients

    def add_client(self, name: str, key: bytes) -> ClientRecord:
        """Record a client identity; AlreadyExists if the name is taken."""
        validate_client_name(name)
        _check_key(key, "client")
        now = time.time()
        with self._tx() as db:
            try:
                db.execute("INSERT INTO clients (name, key, created_at) VALUES (?, ?, ?)", (name, key, now))
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"client '{name}' already exists") from None
        return ClientRecord(name=name, key=bytes(key), created_at=now)

    def client(self, name: str) -> ClientRecord | None:
        """The client called `name`, or None."""
        row = self._db.execute("SELECT name, key, created_at FROM clients WHERE name = ?", (name,)).fetchone()
        return ClientRecord(row[0], bytes(row[1]), row[2]) if row else None

    def list_clients(self) -> list[ClientRecord]:
        """Every client, ordered by name."""
        rows = self._db.execute("SELECT name, key, created_at FROM clients ORDER BY name").fetchall()
        return [ClientRecord(row[0], bytes(row[1]), row[2]) for row in rows]

    def remove_client(self, name: str) -> None:
        """Forget a client and its rules; what features keep for it goes too, through their foreign keys (a
        client's durable subscriptions and their queues: `patterns/pubsub.py`); UnknownClient if it is not
        there. A client added later under the same name starts with nothing of the old one's."""
        with self._tx() as db:
            db.execute("DELETE FROM rules WHERE client = ?", (name,))
            if db.execute("DELETE FROM clients WHERE name = ?", (name,)).rowcount == 0:
                raise UnknownClient(f"no client '{name}' in the store")

    # -- access rules

    def grant(self, client: str, pattern: str | Sequence[str]) -> bool:
        """Let `client` call names matching `pattern`; False if it already could by this exact rule."""
        text = _canonical_pattern(pattern)
        with self._tx() as db:
            self._require_client(client)
            cur = db.execute("INSERT OR IGNORE INTO rules (client, pattern, created_at) VALUES (?, ?, ?)",
                             (client, text, time.time()))
            return cur.rowcount == 1

    def revoke(self, client: str, pattern: str | Sequence[str]) -> bool:
        """Remove one rule of `client`; False if it had no such rule."""
        text = _canonical_pattern(pattern)
        with self._tx() as db:
            self._require_client(client)
            return db.execute("DELETE FROM rules WHERE client = ? AND pattern = ?", (client, text)).rowcount == 1

    def rules(self, client: str | None = None) -> list[Rule]:
        """The rules of `client` (UnknownClient if unknown), or of every client; ordered by client, pattern."""
        if client is None:
            rows = self._db.execute("SELECT client, pattern FROM rules ORDER BY client, pattern").fetchall()
        else:
            self._require_client(client)
            rows = self._db.execute("SELECT client, pattern FROM rules WHERE client = ? ORDER BY pattern",
                                    (client,)).fetchall()
        return [Rule(*row) for row in rows]

    def _require_client(self, name: str) -> None:
        if self._db.execute("SELECT 1 FROM clients WHERE name = ?", (name,)).fetchone() is None:
            raise UnknownClient(f"no client '{name}' in the store")

    # -- sequence-number leases

    def lease_seq_block(self, key: str, floor: int, block: int) -> int:
        """Lease numbers [start, start + block - 1] for `key`, start >= floor and above every earlier lease.

        The end of the block is committed (fully synced) before `start` is returned.
        """
        if isinstance(block, bool) or not isinstance(block, int) or block < 1:
            raise ValueError(f"lease block must be a positive integer, got {block!r}")
        if isinstance(floor, bool) or not isinstance(floor, int) or floor < 0:
            raise ValueError(f"sequence floor must be a non-negative integer, got {floor!r}")
        self._db.execute("PRAGMA synchronous=FULL")
        try:
            with self._tx() as db:
                row = db.execute("SELECT mark FROM seq_leases WHERE key = ?", (key,)).fetchone()
                start = max((row[0] if row else 0) + 1, floor)
                mark = start + block - 1
                if mark > _SEQ_MAX:
                    raise StoreError(f"sequence numbers for {key} are exhausted (asked up to {mark}); "
                                     "give the device a new key")
                db.execute("INSERT INTO seq_leases (key, mark) VALUES (?, ?) "
                           "ON CONFLICT (key) DO UPDATE SET mark = excluded.mark", (key, mark))
        finally:
            self._db.execute("PRAGMA synchronous=NORMAL")
        return start

    def repair_seq_mark(self, key: str, mark: int) -> None:
        """Lower the leased mark of `key` to `mark`: only for a mark that no valid number can reach (a client's
        number far ahead of its clock); leases otherwise only ever grow."""
        with self._tx() as db:
            db.execute("UPDATE seq_leases SET mark = ? WHERE key = ? AND mark > ?", (mark, key, mark))

    def seq_mark(self, key: str) -> int:
        """The highest number leased so far for `key` (0 if none)."""
        row = self._db.execute("SELECT mark FROM seq_leases WHERE key = ?", (key,)).fetchone()
        return row[0] if row else 0

    # -- tables owned by the features (patterns/operations.py, patterns/pubsub.py, devices/reports.py)

    def transaction(self) -> Any:
        """A write transaction (`with store.transaction() as db: db.execute(...)`), committed at the end."""
        return self._tx()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """The rows of one read statement."""
        try:
            return self._db.execute(sql, tuple(params)).fetchall()
        except sqlite3.Error as err:
            raise StoreError(f"store {self.path}: {err}") from err

    # -- the home's site

    def site(self) -> str | None:
        """The site this store's home serves, once decided (None before)."""
        return self.get_meta(SITE_META)

    def claim_site(self, site: str | None, *, wait_s: float = 0.0) -> str:
        """The home's site, decided once: the first process that names one (a gateway's `--site`, a client's
        `--site`) decides it, atomically; one that names none takes the decided site, or, after waiting up to
        `wait_s` for a starting gateway to decide it, the default. ConfigError when `site` differs from the
        decided one: a client of one site cannot talk to a gateway of another."""
        if site is not None:
            site = _check_site(site)
        deadline = time.monotonic() + wait_s
        while site is None and time.monotonic() < deadline and self.site() is None:
            time.sleep(0.05)
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (SITE_META, site or DEFAULT_SITE))
            decided = str(db.execute("SELECT value FROM meta WHERE key = ?", (SITE_META,)).fetchone()[0])
        if site is not None and site != decided:
            raise ConfigError(f"this home is for site '{decided}' (decided when its first gateway or client was "
                              f"made), not '{site}'; use --site {decided}, or another home with --home DIR for "
                              f"site '{site}'")
        return decided

    # -- meta

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        """A small named setting, or `default`."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        """Set a small named setting."""
        with self._tx() as db:
            db.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                       "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, str(value)))


class SeqCounter:
    """Hands out increasing sequence numbers for one key, leasing blocks from the store as needed."""

    def __init__(self, store: Store, key: str, block: int = 64) -> None:
        if block < 1:
            raise ValueError(f"lease block must be a positive integer, got {block!r}")
        self._store = store
        self._key = key
        self._block = block
        self._next = 0  # next number to hand out; with _mark == 0 nothing is leased yet
        self._mark = 0  # last number of the current lease

    @property
    def key(self) -> str:
        return self._key

    def next(self, floor: int = 0) -> int:
        """A number greater than every earlier one and at least `floor`; never reused across restarts."""
        want = max(self._next, floor)
        if self._mark == 0 or want > self._mark:
            want = self._store.lease_seq_block(self._key, want, self._block)
            self._mark = want + self._block - 1
        self._next = want + 1
        return want

    def ready(self) -> None:
        """Nothing to await: this gateway alone signs for the key."""
        return None


# -- helpers


def _device(row: Sequence[Any]) -> DeviceRecord:
    return DeviceRecord(name=row[0], key=bytes(row[1]), key_id=row[2], site=row[3], created_at=row[4],
                        last_seen=row[5], lease_until=row[6], state=row[7], sleep_until=row[8],
                        desc_hash=row[9], desc=json.loads(row[10]) if row[10] is not None else None,
                        rx_floor=row[11])


def _create_private(path: str) -> None:
    """Create an empty file mode 0600 unless it exists, so SQLite never creates it with the umask's mode."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as err:
        raise StoreError(f"cannot create store {path}: {err.strerror}") from err
    os.close(fd)


def _check_site(site: str) -> str:
    text = site.strip("/") if isinstance(site, str) else ""
    if not text or "/" in text:
        raise ValueError(f"site must be one name component such as 'edge', got {site!r}")
    return text


def _check_device_name(name: str, site: str) -> None:
    parts = name.split("/") if isinstance(name, str) else []
    if len(parts) < 3 or parts[0] != "" or "" in parts[1:]:
        raise ValueError(f"device name must look like /{site}/DEVICE, got {name!r}")
    if parts[1] != site:
        raise ValueError(f"device name {name!r} is not under site /{site}")


def _check_key(key: bytes, what: str) -> None:
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
        size = len(key) if isinstance(key, (bytes, bytearray)) else type(key).__name__
        raise ValueError(f"{what} key must be {KEY_BYTES} bytes, got {size}")


def _check_page_size(page_size: int) -> None:
    if isinstance(page_size, bool) or not isinstance(page_size, int) or not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ValueError(f"page_size must be an integer from 1 to {MAX_PAGE_SIZE}, got {page_size!r}")


def _canonical_pattern(pattern: str | Sequence[str]) -> str:
    parts = parse_pattern(pattern) if isinstance(pattern, str) else parse_pattern(format_pattern(pattern))
    return format_pattern(parts)


def _encode_token(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def _decode_token(token: str) -> str:
    try:
        name = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError, TypeError):
        name = ""
    if not name.startswith("/"):
        raise ValueError(f"invalid page_token {token!r}: pass the next_page_token of a previous page unchanged")
    return name
