"""The SQLite store on real files: devices, pagination, presence, clients, rules, sequence leases, reopen."""
import hashlib
import os
import sqlite3
import stat

import pytest

from ndn_edge.errors import AlreadyExists, GatewayError, StoreError, UnknownClient, UnknownDevice
from ndn_edge.state.store import SCHEMA_VERSION, SeqCounter, Store, key_id

KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "gateway.db"


@pytest.fixture
def store(db_path):
    with Store(db_path) as s:
        yield s


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


# -- file, schema, reopen


def test_file_is_private_and_wal(store, db_path):
    assert mode(db_path) == 0o600
    store.add_client("alice", KEY_A)  # a write makes the WAL files appear
    assert os.path.exists(f"{db_path}-wal")
    assert mode(f"{db_path}-wal") == 0o600
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.schema_version == SCHEMA_VERSION >= 1


def test_file_is_private_even_with_a_permissive_umask(db_path):
    old = os.umask(0o000)
    try:
        Store(db_path).close()
    finally:
        os.umask(old)
    assert mode(db_path) == 0o600


def test_reopen_keeps_everything(db_path):
    with Store(db_path) as s:
        s.add_device("/edge/kitchen/th1", KEY_A, "edge")
        s.update_presence("/edge/kitchen/th1", "online", 100.0, 200.0, rx_floor=7)
        s.set_description("/edge/kitchen/th1", "00112233aabbccdd", {"services": [{"name": "temperature"}]})
        s.add_client("alice", KEY_B)
        s.grant("alice", "kitchen/**")
        s.set_meta("site", "edge")
        first = s.lease_seq_block("/edge/kitchen/th1/KEY/x", 0, 64)
    with Store(db_path) as s:
        dev = s.device("/edge/kitchen/th1")
        assert (dev.key, dev.state, dev.last_seen, dev.lease_until, dev.rx_floor) == (KEY_A, "online", 100.0, 200.0, 7)
        assert dev.desc == {"services": [{"name": "temperature"}]}
        assert dev.desc_hash == "00112233aabbccdd"
        assert s.client("alice").key == KEY_B
        assert [tuple(r) for r in s.rules()] == [("alice", "kitchen/**")]
        assert s.get_meta("site") == "edge"
        assert s.seq_mark("/edge/kitchen/th1/KEY/x") == first + 63
        assert s.schema_version == SCHEMA_VERSION


# The schema of a store made by ndn-edge 0.1 (user_version 2): its core step 2 created the features' tables.
STORE_0_1 = (
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
    """CREATE TABLE operations (
                id TEXT PRIMARY KEY,
                kind TEXT NOT NULL CHECK (kind IN ('op', 'call')),
                client TEXT NOT NULL,
                device TEXT NOT NULL,
                service TEXT NOT NULL,
                args BLOB NOT NULL,
                state TEXT NOT NULL
                    CHECK (state IN ('queued', 'starting', 'running', 'done', 'failed', 'cancelled')),
                device_op TEXT,
                progress REAL,
                note TEXT,
                result BLOB,
                error TEXT,
                created_at REAL NOT NULL,
                updated_at REAL NOT NULL,
                expires_at REAL
            )""",
    "CREATE INDEX operations_device_op ON operations (device, device_op)",
    "CREATE INDEX operations_state ON operations (state)",
    """CREATE TABLE retained (
                topic TEXT PRIMARY KEY,
                message BLOB NOT NULL
            )""",
    """CREATE TABLE publishers (
                device TEXT PRIMARY KEY,
                boot TEXT NOT NULL,
                seq INTEGER NOT NULL
            )""",
    """CREATE TABLE pub_held (
                device TEXT NOT NULL,
                seq INTEGER NOT NULL,
                message BLOB NOT NULL,
                PRIMARY KEY (device, seq)
            ) WITHOUT ROWID""",
    """CREATE TABLE subscriptions (
                id INTEGER PRIMARY KEY,
                client TEXT NOT NULL,
                name TEXT NOT NULL,
                pattern TEXT NOT NULL,
                acked INTEGER NOT NULL DEFAULT 0,
                lost INTEGER NOT NULL DEFAULT 0,
                created_at REAL NOT NULL,
                UNIQUE (client, name)
            )""",
    """CREATE TABLE sub_queue (
                sub INTEGER NOT NULL REFERENCES subscriptions(id) ON DELETE CASCADE,
                pos INTEGER NOT NULL,
                message BLOB NOT NULL,
                PRIMARY KEY (sub, pos)
            ) WITHOUT ROWID""",
    """CREATE TABLE reports_seen (
                key_name TEXT NOT NULL,
                seq INTEGER NOT NULL,
                digest BLOB NOT NULL,
                PRIMARY KEY (key_name, seq)
            ) WITHOUT ROWID""",
)


def test_a_store_made_by_0_1_keeps_everything_and_its_features_adopt_their_tables(tmp_path):
    import asyncio

    import cbor2

    from ndn_edge.patterns.operations import Operations
    from ndn_edge.patterns.pubsub import PubSub

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        for statement in STORE_0_1:
            db.execute(statement)
        db.execute("INSERT INTO clients (name, key, created_at) VALUES ('alice', ?, 1), ('bob', ?, 1)",
                   (KEY_A, KEY_B))
        db.execute("INSERT INTO subscriptions (id, client, name, pattern, created_at) VALUES "
                   "(1, 'alice', 'dash', 'sim/**', 1), (2, 'bob', 'log', '**', 1)")
        db.execute("INSERT INTO sub_queue (sub, pos, message) VALUES (1, 1, ?), (2, 1, ?)",
                   (cbor2.dumps({"topic": "sim/1/t"}), cbor2.dumps({"topic": "sim/1/t"})))
        db.execute("INSERT INTO operations (id, kind, client, device, service, args, state, created_at, updated_at) "
                   "VALUES ('op1', 'call', 'alice', '/edge/sim/1', 'echo', ?, 'done', 1, 1)", (cbor2.dumps({}),))
        db.execute("PRAGMA user_version = 2")

    async def open_features(store):
        pubsub, ops = PubSub(store, site="edge"), Operations(store, None, site="edge")
        await pubsub.start()
        await ops.start()
        subs = sorted(pubsub._subs)
        await ops.stop()
        await pubsub.stop()
        return subs

    with Store(path) as store:
        assert store.schema_version == SCHEMA_VERSION
        subs = asyncio.run(open_features(store))
        assert subs == [("alice", "d:dash"), ("bob", "d:log")]
        assert store.query("SELECT feature, version FROM schema_versions ORDER BY feature") == [
            ("operations", 2), ("pubsub", 2)]
        assert store.query("SELECT id, state FROM operations") == [("op1", "done")]
        store.remove_client("bob")  # the rebuilt tables cascade from clients now
        assert store.query("SELECT id FROM subscriptions") == [(1,)]
        assert store.query("SELECT sub FROM sub_queue") == [(1,)]


def test_processes_opening_a_new_store_at_once_all_succeed(tmp_path):
    """Issue 11 item 4: `ndn-edge gateway &` then at once `ndn-edge client add` on a fresh home made one of
    them fail with 'table devices already exists' (13 of 30 gateways): the migration raced."""
    import subprocess
    import sys
    import time

    code = ("import sys, time\n"
            "from ndn_edge.state.store import Store\n"
            "t = float(sys.argv[2])\n"
            "time.sleep(max(0.0, t - time.time() - 0.01))\n"  # asleep until 10 ms before, then spinning to t
            "while time.time() < t: pass\n"
            "s = Store(sys.argv[1]); s.close()\n")
    for attempt in range(3):
        path = tmp_path / f"race{attempt}.db"
        at = time.time() + 1.0
        procs = [subprocess.Popen([sys.executable, "-c", code, str(path), str(at)], stderr=subprocess.PIPE,
                                  text=True) for _ in range(8)]
        for proc in procs:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
        with Store(path) as s:
            assert s.schema_version == SCHEMA_VERSION


def test_newer_schema_is_refused(db_path):
    Store(db_path).close()
    with sqlite3.connect(db_path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer than this ndn-edge"):
        Store(db_path)


def test_not_a_database_is_a_store_error(tmp_path):
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable ndn-edge store"):
        Store(path)


# -- devices


def test_add_and_get_device(store):
    rec = store.add_device("/edge/kitchen/th1", KEY_A, "edge")
    assert rec.key_id == hashlib.sha256(KEY_A).digest()[:4].hex() == key_id(KEY_A)
    assert rec.key_name == f"/edge/kitchen/th1/KEY/{rec.key_id}"
    assert (rec.site, rec.state, rec.last_seen, rec.lease_until, rec.sleep_until, rec.rx_floor) == \
        ("edge", "unknown", None, None, None, 0)
    assert store.device("/edge/kitchen/th1") == rec
    assert store.device("/edge/nope") is None
    assert KEY_A.hex() not in repr(rec) and repr(KEY_A) not in repr(rec)


def test_duplicate_device_and_replace(store):
    old = store.add_device("/edge/sim/1", KEY_A, "edge")
    store.update_presence("/edge/sim/1", "online", 1.0, 2.0, rx_floor=50)
    with pytest.raises(AlreadyExists) as info:
        store.add_device("/edge/sim/1", KEY_B, "edge")
    assert isinstance(info.value, GatewayError) and "/edge/sim/1" in str(info.value)
    assert store.device("/edge/sim/1").key == KEY_A
    new = store.add_device("/edge/sim/1", KEY_B, "edge", replace=True)
    assert new.key == KEY_B and new.key_id == key_id(KEY_B) != old.key_id
    assert new.created_at == old.created_at
    assert (new.state, new.rx_floor, new.last_seen) == ("unknown", 0, None)
    assert store.device_by_key_name(old.key_name) is None
    assert store.device_by_key_name(new.key_name) == new


@pytest.mark.parametrize("name, site", [
    ("edge/sim/1", "edge"), ("/edge", "edge"), ("/edge//1", "edge"), ("/edge/1/", "edge"), ("/home/1", "edge"),
])
def test_bad_device_names_are_refused(store, name, site):
    with pytest.raises(ValueError):
        store.add_device(name, KEY_A, site)


def test_bad_keys_are_refused(store):
    with pytest.raises(ValueError, match="32 bytes, got 31"):
        store.add_device("/edge/sim/1", KEY_A[:31], "edge")
    with pytest.raises(ValueError, match="32 bytes"):
        store.add_client("bob", "x" * 32)


def test_site_may_be_given_with_a_slash(store):
    assert store.add_device("/edge/sim/1", KEY_A, "/edge").site == "edge"


def test_device_by_key_name(store):
    rec = store.add_device("/edge/a/b", KEY_A, "edge")
    assert store.device_by_key_name(f"/edge/a/b/KEY/{rec.key_id}") == rec
    assert store.device_by_key_name("/edge/a/b/KEY/00000000") is None
    assert store.device_by_key_name(f"/edge/a/KEY/{rec.key_id}") is None
    assert store.device_by_key_name(f"/edge/a/b/NOTKEY/{rec.key_id}") is None
    assert store.device_by_key_name("KEY") is None
    assert store.device_by_key_name(None) is None


def test_remove_device(store):
    store.add_device("/edge/sim/1", KEY_A, "edge")
    store.remove_device("/edge/sim/1")
    assert store.device("/edge/sim/1") is None
    with pytest.raises(UnknownDevice):
        store.remove_device("/edge/sim/1")


def test_presence_updates(store):
    store.add_device("/edge/sim/1", KEY_A, "edge")
    store.update_presence("/edge/sim/1", "online", 10.0, 40.0, rx_floor=5)
    dev = store.device("/edge/sim/1")
    assert (dev.state, dev.last_seen, dev.lease_until, dev.sleep_until, dev.rx_floor) == ("online", 10.0, 40.0, None, 5)
    store.update_presence("/edge/sim/1", "asleep", 20.0, 40.0, sleep_until=100.0, rx_floor=3)
    dev = store.device("/edge/sim/1")
    assert (dev.state, dev.sleep_until, dev.rx_floor) == ("asleep", 100.0, 5)  # the floor never goes down
    store.update_presence("/edge/sim/1", "offline", 20.0, None)
    dev = store.device("/edge/sim/1")
    assert (dev.state, dev.lease_until, dev.sleep_until, dev.rx_floor) == ("offline", None, None, 5)
    with pytest.raises(ValueError, match="not one of"):
        store.update_presence("/edge/sim/1", "dancing", 1.0, None)
    with pytest.raises(UnknownDevice):
        store.update_presence("/edge/nope", "online", 1.0, None)


def test_description_round_trip(store):
    store.add_device("/edge/sim/1", KEY_A, "edge")
    desc = {"name": "/edge/sim/1", "services": [{"name": "t", "args": {"x": "int"}, "cache_ms": None}]}
    store.set_description("/edge/sim/1", "0123456789abcdef", desc)
    dev = store.device("/edge/sim/1")
    assert (dev.desc_hash, dev.desc) == ("0123456789abcdef", desc)
    with pytest.raises(UnknownDevice):
        store.set_description("/edge/nope", "x", {})


def test_pagination_walks_every_device_once_in_order(store):
    names = sorted(f"/edge/sim/{i:03d}" for i in range(23))
    for i, n in enumerate(reversed(names)):
        store.add_device(n, bytes([i]) * 32, "edge")
    seen, token, pages = [], None, 0
    while True:
        page, token = store.list_devices(page_size=5, page_token=token)
        pages += 1
        seen += [d.name for d in page]
        assert len(page) == (5 if token else 3)
        if token is None:
            break
        assert isinstance(token, str) and "/" not in token
    assert seen == names and pages == 5
    assert store.count_devices() == 23


def test_pagination_exact_multiple_and_empty(store):
    assert store.list_devices() == ([], None)
    for i in range(4):
        store.add_device(f"/edge/d{i}", bytes([i]) * 32, "edge")
    page, token = store.list_devices(page_size=2)
    page2, token2 = store.list_devices(page_size=2, page_token=token)
    assert [d.name for d in page + page2] == ["/edge/d0", "/edge/d1", "/edge/d2", "/edge/d3"]
    assert token2 is None


def test_pagination_survives_a_removal_between_pages(store):
    for i in range(6):
        store.add_device(f"/edge/d{i}", bytes([i]) * 32, "edge")
    _page, token = store.list_devices(page_size=3)
    store.remove_device("/edge/d2")  # the last device of the first page
    rest, token = store.list_devices(page_size=3, page_token=token)
    assert [d.name for d in rest] == ["/edge/d3", "/edge/d4", "/edge/d5"] and token is None


@pytest.mark.parametrize("size", [0, 1001, -1, 2.5, True, "10"])
def test_page_size_is_validated(store, size):
    with pytest.raises(ValueError, match="page_size"):
        store.list_devices(page_size=size)


@pytest.mark.parametrize("token", ["!!!", "Zm9v", "\u00e9"])
def test_bad_page_token_is_a_clear_value_error(store, token):
    with pytest.raises(ValueError, match="invalid page_token"):
        store.list_devices(page_token=token)


# -- clients and rules


def test_clients(store):
    rec = store.add_client("bob", KEY_A)
    store.add_client("alice", KEY_B)
    assert store.client("bob") == rec and rec.key == KEY_A
    assert KEY_A.hex() not in repr(rec)
    assert [c.name for c in store.list_clients()] == ["alice", "bob"]
    with pytest.raises(AlreadyExists, match="'bob' already exists"):
        store.add_client("bob", KEY_B)
    with pytest.raises(ValueError, match="invalid client name"):
        store.add_client("_hidden", KEY_A)
    assert store.client("nobody") is None


def test_rules_grant_revoke_and_canonical_form(store):
    store.add_client("bob", KEY_A)
    store.add_client("alice", KEY_B)
    assert store.grant("bob", "/kitchen/**") is True
    assert store.grant("bob", "kitchen/**") is False  # same rule, canonical form
    assert store.grant("bob", ("garage", "*")) is True
    assert store.grant("alice", "**") is True
    assert store.rules() == [("alice", "**"), ("bob", "garage/*"), ("bob", "kitchen/**")]
    assert store.rules("bob") == [("bob", "garage/*"), ("bob", "kitchen/**")]
    assert store.rules("bob")[1].parts == ("kitchen", "**")
    assert store.revoke("bob", "/garage/*") is True
    assert store.revoke("bob", "garage/*") is False
    assert store.rules("bob") == [("bob", "kitchen/**")]


def test_rules_for_unknown_clients_and_bad_patterns(store):
    with pytest.raises(UnknownClient, match="no client 'ghost'"):
        store.grant("ghost", "**")
    with pytest.raises(UnknownClient):
        store.revoke("ghost", "**")
    with pytest.raises(UnknownClient):
        store.rules("ghost")
    store.add_client("bob", KEY_A)
    with pytest.raises(ValueError, match="empty component"):
        store.grant("bob", "a//b")
    assert store.rules() == []


def test_client_removal_cascades_to_rules(store, db_path):
    store.add_client("bob", KEY_A)
    store.add_client("alice", KEY_B)
    store.grant("bob", "kitchen/**")
    store.grant("alice", "garage/**")
    store.remove_client("bob")
    assert store.client("bob") is None
    assert store.rules() == [("alice", "garage/**")]
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("SELECT COUNT(*) FROM rules WHERE client = 'bob'").fetchone()[0] == 0
    with pytest.raises(UnknownClient):
        store.remove_client("bob")
    store.add_client("bob", KEY_A)  # a new client of the same name starts with no rules
    assert store.rules("bob") == []


# -- sequence leases


def test_lease_blocks_are_disjoint_and_increasing(store):
    a = store.lease_seq_block("k", 0, 64)
    b = store.lease_seq_block("k", 0, 64)
    assert (a, b) == (1, 65)
    assert store.seq_mark("k") == 128
    assert store.lease_seq_block("other", 0, 10) == 1  # keys are independent


def test_lease_respects_floor(store):
    assert store.lease_seq_block("k", 1000, 64) == 1000
    assert store.seq_mark("k") == 1063
    assert store.lease_seq_block("k", 5, 64) == 1064  # a low floor never moves backwards


def test_lease_validates(store):
    with pytest.raises(ValueError, match="positive"):
        store.lease_seq_block("k", 0, 0)
    with pytest.raises(ValueError, match="non-negative"):
        store.lease_seq_block("k", -1, 8)
    with pytest.raises(StoreError, match="exhausted"):
        store.lease_seq_block("k", (1 << 63) - 4, 8)


def test_seq_counter_is_monotonic_across_restarts(db_path):
    handed = []
    with Store(db_path) as s:
        counter = SeqCounter(s, "/edge/sim/1/KEY/abcd", block=8)
        handed += [counter.next() for _ in range(5)]
        assert s.seq_mark("/edge/sim/1/KEY/abcd") == 8  # one lease for five numbers
    with Store(db_path) as s:  # a restart: the unused rest of the block is skipped, never reused
        counter = SeqCounter(s, "/edge/sim/1/KEY/abcd", block=8)
        handed += [counter.next() for _ in range(20)]
    assert handed[:5] == [1, 2, 3, 4, 5]
    assert handed[5] == 9
    assert handed == sorted(set(handed))


def test_seq_counter_respects_floor(store):
    counter = SeqCounter(store, "k", block=8)
    assert counter.next() == 1
    assert counter.next(floor=5) == 5  # inside the current block: no new lease
    assert store.seq_mark("k") == 8
    assert counter.next(floor=100) == 100  # above the block: a new lease starting at the floor
    assert store.seq_mark("k") == 107
    assert counter.next(floor=3) == 101
    assert counter.next() == 102


def test_two_counters_on_one_key_never_share_numbers(db_path):
    with Store(db_path) as s1, Store(db_path) as s2:
        c1, c2 = SeqCounter(s1, "k", block=4), SeqCounter(s2, "k", block=4)
        got = [c.next() for _ in range(10) for c in (c1, c2)]
    assert len(got) == len(set(got))


def test_checkpoints_run_in_their_own_thread_not_in_a_commit(db_path):
    # Store.start_checkpoints: the owner's connection never checkpoints (SQLite's automatic checkpoint is off);
    # the thread copies the log into the file within a second or two, and close() ends the thread.
    import threading
    import time

    s = Store(db_path)
    s.start_checkpoints(every_s=0.05)
    try:
        assert s._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        s._db.execute("CREATE TABLE filler (b BLOB)")
        before = os.path.getsize(db_path)
        for _ in range(40):  # 40 commits of 64 KiB: more than SQLite's 1,000-page threshold would let pass
            with s.transaction() as db:
                db.execute("INSERT INTO filler VALUES (?)", (os.urandom(65536),))
        deadline = time.monotonic() + 10
        while os.path.getsize(db_path) < before + 40 * 65536 and time.monotonic() < deadline:
            time.sleep(0.02)  # polling a file size: the thread's progress has no other signal
        assert os.path.getsize(db_path) >= before + 40 * 65536, "the log was not copied into the file"
    finally:
        s.close()
    assert not any(t.name == "store-checkpoints" for t in threading.enumerate())
    with Store(db_path) as again:
        assert again._db.execute("SELECT count(*) FROM filler").fetchone()[0] == 40
