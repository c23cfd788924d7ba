"""Hostile input on every face (issue 11): nothing anyone sends, with or without a key, ends a task, fills a log
or exhausts a shared resource. Each packet of `tests/hostile.py` is sent to a running gateway part; afterwards
the part must still do its job with real MicroPython boards, and each packet must have been counted.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os

import pytest

from ndn_edge.devices.side import DeviceSide
from ndn_edge.patterns.hub import Patterns
from tests import hostile
from tests.support import ROOT, online_with_services, start_board, until
from tests.support import run_scenario as run


def test_a_lying_key_locator_does_not_stop_discovery_or_the_report_intake(make_board, peer, store, mcast_port):
    """Issue 11 items 1 and 2: one keyless datagram under /edge/_sd/ann or /edge/_pub used to end the
    announcement task (every device then went offline for good) or the report intake."""
    board = make_board("/edge/lab/b1")
    store.add_client("alice", os.urandom(32))
    store.grant("alice", "lab/**")

    async def scenario():
        side = DeviceSide(store, port=mcast_port)
        await side.start()
        models = Patterns(store, side, site="edge")
        await models.start()
        try:
            corpus = list(hostile.device_side_corpus())
            for _, datagram in corpus:
                peer.send(datagram)
            await until(lambda: side.directory.counters["malformed"] + side.face.malformed >= 3 and
                        models.intake.counters["malformed"] >= 6, 5.0, "the hostile packets counted")
            tasks = [t for t in [*side.directory._tasks, models.intake._task] if t.done()]
            assert not tasks, f"a worker ended: {tasks}"
            # discovery and the report intake still work: the board joins and its publications arrive
            sub = models.pubsub.subscribe("alice", "lab/b1/tick")["sub"]
            await start_board(board, peer)
            await online_with_services(side, board, 10.0)
            await side.call(board.name, "ticks", {"on": True})
            page = await models.pubsub.poll("alice", sub, wait_ms=5000)
            counters = dict(side.directory.counters), dict(models.intake.counters)
        finally:
            await models.stop()
            await side.stop()
        return page, counters

    page, (directory, intake) = run(scenario)
    assert page["messages"] and page["messages"][0]["topic"] == "lab/b1/tick"
    assert directory["faults"] == 0 and intake["faults"] == 0  # dropped as malformed, not survived as a bug
    assert directory["malformed"] >= 3 and intake["malformed"] >= 6


def test_keyless_requests_with_lying_names_are_counted_and_logged_once(tmp_path, caplog):
    """Issue 11 item 5: a keyless request whose key-id component lies used to log a full traceback per
    datagram (about 1 KB each, no limit) and was not counted as a drop."""
    from ndn_edge.clients.face import ClientFace
    from ndn_edge.state.store import Store
    from tests.fakes import FakeDevices

    store = Store(tmp_path / "gw.db")
    store.add_client("alice", os.urandom(32))

    async def scenario():
        server = ClientFace.build(store, FakeDevices(), site="edge")
        host, port = await server.start()
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=(host, port))
        try:
            corpus = list(hostile.client_face_corpus())
            for _ in range(200):
                for _, datagram in corpus:
                    transport.sendto(datagram)
            total = 200 * len(corpus)
            await until(lambda: server.stats["received"] >= total, 10.0, "all read")  # handled as read
            await asyncio.sleep(0)
            return server.metrics()
        finally:
            transport.close()
            await server.stop()

    with caplog.at_level(logging.DEBUG, logger="ndn_edge"):
        metrics = run(scenario)
    store.close()
    total = 200 * len(list(hostile.client_face_corpus()))
    counted = sum(metrics["drops"].values())
    assert metrics["internal"] == 0
    assert counted == total, metrics
    assert metrics["drops"]["malformed"] >= 400
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(loud) <= 3, [r.getMessage() for r in loud]
    assert not any(r.exc_info for r in caplog.records)


def test_entries_filled_together_never_expire_into_a_burst_at_the_device(make_board, peer, store, mcast_port):
    """Issue 11 item 11 (cache avalanche): 40 cacheable answers filled in one instant, then read in a loop for
    three freshness periods. Hot entries are renewed in the background, one request at a time per device, so no
    caller ever waits for the device after the fill, and the device (counting its requests in `_health`) runs
    about one request per entry per period. Without it, every entry expired in the same instant and 40 callers
    missed together."""
    board = make_board("/edge/lab/b1", app=ROOT / "tests" / "apps" / "lean.py")
    entries = 40

    async def scenario():
        side = DeviceSide(store, port=mcast_port)
        await side.start()
        try:
            await start_board(board, peer)
            await online_with_services(side, board, 10.0)
            before = (await side.call(board.name, "_health")).value["requests"]
            retries = side.metrics()["invoker_retries"]
            await asyncio.gather(*(side.call(board.name, "reading", {"n": n}) for n in range(entries)))
            filled = (await side.call(board.name, "_health")).value["requests"] - before - 1
            # (a request the device answered late on a loaded machine was sent again: it may count twice there)
            filled = (filled, side.metrics()["invoker_retries"] - retries)
            loop = asyncio.get_running_loop()
            end = loop.time() + 6.5  # three freshness periods of 2 s, and a bit
            misses = rounds = 0
            while loop.time() < end and rounds < 5000:
                answers = await asyncio.gather(*(side.call(board.name, "reading", {"n": n})
                                                 for n in range(entries)))
                misses += sum(1 for a in answers if not a.cached)
                rounds += 1
                await asyncio.sleep(0.02)  # a dashboard refreshing 50 times a second
            reads = (await side.call(board.name, "_health")).value["requests"] - before - 2
            return filled, misses, rounds, reads, side.metrics()
        finally:
            await side.stop()

    filled, misses, rounds, reads, metrics = run(scenario, 40.0)
    assert entries <= filled[0] <= entries + filled[1], filled
    assert rounds > 100
    assert misses == 0, f"{misses} callers waited for the device; {metrics}"
    # each entry renewed once per period: 3 periods -> about 3 * 40 requests, never a read per call
    assert 2 * entries <= reads - filled[0] <= 4 * entries, (reads, metrics)
    assert metrics["invoker_early_refreshes"] >= 2 * entries


def test_a_sequence_number_far_ahead_of_its_time_cannot_lock_a_client_out(tmp_path):
    """Issue 11 item 8: a key holder that signs SignatureSeqNum 2**63 - 10**6 had every later request dropped as
    a replay, across restarts, until removed and re-added. Now such a number is refused, and a mark left by a
    gateway that accepted one is repaired at load."""
    from ndn_edge.client.api import Client
    from ndn_edge.state.home import Home
    from ndn_edge.state.store import Store
    from ndn_edge.wire import client_protocol as cw
    from tests.clientface import RawPeer, creds, decode_reply, request, serving

    async def scenario():
        store = Store(Home(tmp_path / "home").ensure().db_path)
        try:
            async with serving(tmp_path, rules={"alice": ["**"]}, store=store) as s:
                key = creds(s, "alice")
                peer = await RawPeer.open(s.addr)
                far, _ = request(key, "call", ("sim", "1", "echo"), {"args": {"far": True}}, seq=2 ** 63 - 10 ** 6)
                peer.send(far)
                assert await peer.recv(0.3) is None
                assert s.server.drops["stale"] == 1
                normal, _ = request(key, "call", ("sim", "1", "echo"), {"args": {"n": 1}})
                peer.send(normal)
                reply = await peer.recv()
                assert reply is not None and decode_reply(reply, key) == (True, {"value": {"n": 1}, "cached": False,
                                                                               "age_ms": 0, "stale": False})
                peer.close()
                lease = f"rx:{cw.client_key_name('edge', 'alice', key)}"
            # a store poisoned by a gateway that accepted such a number (before 0.2): the mark is repaired
            store.lease_seq_block(lease, 2 ** 63 - 10 ** 6, 10 ** 6)
            async with serving(tmp_path, store=store) as s:
                async with Client.connect(home=s.home.path, client="alice", gateway=s.address, timeout=2) as c:
                    assert await c.call("sim/1/echo", {"after": "repair"}) == {"after": "repair"}
                assert store.seq_mark(lease) < 2 ** 62
        finally:
            store.close()

    run(scenario)


def test_a_retransmission_after_many_other_requests_gets_its_reply(tmp_path):
    """Issue 11 item 10, confirmed: the client face kept the last 256 replies per client, about 50 ms at 5,500
    calls/s, less than a client's first resend (250 ms); the retransmission of a request whose reply was lost
    was then dropped as a replay and the caller saw DEADLINE_EXCEEDED. Replies are now kept for their request's
    lifetime (bounded in bytes)."""
    from tests.clientface import RawPeer, creds, request, serving

    async def scenario():
        async with serving(tmp_path, rules={"alice": ["**"]}) as s:
            key = creds(s, "alice")
            peer = await RawPeer.open(s.addr)
            first, _ = request(key, "call", ("sim", "1", "counter"), {})
            peer.send(first)
            assert await peer.recv() is not None  # "lost": the client did not see it
            for i in range(600):  # other calls in flight meanwhile
                packet, _ = request(key, "call", ("sim", "1", "echo"), {"args": {"i": i}})
                peer.send(packet)
                if i % 50 == 49:  # do not overrun the socket buffers
                    for _ in range(50):
                        assert await peer.recv() is not None
            peer.send(first)  # the client's retransmission
            again = await peer.recv()
            peer.close()
            return again, s.devices.count, s.server.metrics()

    again, count, metrics = run(scenario)
    assert again is not None, metrics
    assert count == 1  # the counter ran once
    assert metrics["drops"]["replay"] == 0 and metrics["retransmissions"] == 1


def test_a_revoked_rule_stops_delivery_of_what_was_already_queued(tmp_path):
    """Issue 11 item 7: after `acl revoke`, both kinds of subscription still delivered the messages queued before
    it (a durable queue can hold 100,000). Rules are checked again when a message is handed out."""
    from ndn_edge.patterns import pubsub as pubsub_module
    from tests.intake import drain, intake_and_pubsub, publication, store_with_alice

    key = os.urandom(32)

    async def scenario():
        store = store_with_alice(tmp_path / "store.db", key)
        intake, pubsub = await intake_and_pubsub(store)
        try:
            memory = pubsub.subscribe("alice", "sim/1/*")["sub"]
            durable = pubsub.subscribe("alice", "sim/1/*", durable="dash")["sub"]
            for n in range(1, 6):
                intake.on_interest(publication(key, 10 + n, n))
            await drain(intake)
            store.revoke("alice", "sim/**")
            pubsub._rules.clear()  # the rules cache lives a second (RULES_TTL_S); do not wait for it here
            got = [await pubsub.poll("alice", sub, wait_ms=0) for sub in (memory, durable)]
            store.grant("alice", "sim/**")
            pubsub._rules.clear()
            intake.on_interest(publication(key, 16, 6))
            await drain(intake)
            after = [await pubsub.poll("alice", sub, wait_ms=0) for sub in (memory, durable)]
            left = store.query("SELECT COUNT(*) FROM sub_queue")[0][0]
            return got, after, left, dict(pubsub.counters)
        finally:
            await pubsub.stop()
            await intake.stop()
            store.close()

    assert pubsub_module.RULES_TTL_S <= 1.0  # the revoke applies within a second without the cache clear
    got, after, left, counters = run(scenario)
    assert [page["messages"] for page in got] == [[], []]
    assert [[m["value"] for m in page["messages"]] for page in after] == [[6], [6]]
    assert counters["withheld"] == 10 and left == 1  # the durable queue holds only the undelivered 6


# -- per-client quotas (issue 11 item 6)


def test_one_client_over_its_subscription_quota_does_not_deny_the_others(tmp_path):
    """A client granted only sim/1/echo made 10,000 `subscribe '**'` calls; afterwards a client granted `**` got
    RESOURCE_EXHAUSTED, and the gateway grew by 35 MB. Now the first client stops at its own quota."""
    from ndn_edge.errors import ResourceExhausted
    from ndn_edge.limits import Limits
    from ndn_edge.patterns.pubsub import PubSub
    from ndn_edge.state.store import Store

    store = Store(tmp_path / "gw.db")
    for name, rule in (("mallory", "sim/1/echo"), ("alice", "**")):
        store.add_client(name, os.urandom(32))
        store.grant(name, rule)

    async def scenario():
        pubsub = PubSub(store, site="edge", limits=Limits(subscriptions_per_client=100))
        await pubsub.start()
        try:
            refused = 0
            for _ in range(10_000):
                try:
                    pubsub.subscribe("mallory", "**")
                except ResourceExhausted:
                    refused += 1
            alice = [pubsub.subscribe("alice", "**") for _ in range(3)]
            alice.append(pubsub.subscribe("alice", "sim/**", durable="dash"))
            return refused, alice, pubsub.subscriptions(), pubsub.counters["over_quota"]
        finally:
            await pubsub.stop()

    refused, alice, total, over = run(scenario)
    store.close()
    assert refused == 10_000 - 100 and over == refused
    assert all(sub["created"] for sub in alice) and total == 104


def test_operations_and_queued_calls_are_capped_per_client(tmp_path):
    from ndn_edge.errors import ResourceExhausted
    from ndn_edge.limits import Limits
    from ndn_edge.patterns.operations import Operations
    from ndn_edge.state.store import Store

    store = Store(tmp_path / "gw.db")
    store.add_device("/edge/sim/1", os.urandom(32), "edge")

    class Asleep:
        """The device side as operations sees it, with every device asleep (calls stay queued)."""

        class directory:
            @staticmethod
            def resolve(device: str) -> str:
                return device if device.startswith("/") else f"/edge/{device}"

        def is_online(self, device: str) -> bool:
            return False

    async def scenario():
        ops = Operations(store, Asleep(), site="edge", limits=Limits(operations_per_client=2,
                                                                     queued_calls_per_client=3))
        await ops.start()
        try:
            queued = [ops.enqueue("mallory", "sim/1", "echo", {"i": i})["state"] for i in range(3)]
            with pytest.raises(ResourceExhausted, match="queued_calls_per_client"):
                ops.enqueue("mallory", "sim/1", "echo", {"i": 4})
            assert ops.enqueue("alice", "sim/1", "echo", None)["state"] == "queued"
            for _ in range(2):  # two operations already running for mallory
                ops._insert("op", "mallory", "/edge/sim/1", "slow", {}, "running")
            with pytest.raises(ResourceExhausted, match="operations_per_client"):
                await ops.start_op("mallory", "sim/1", "slow", {}, timeout_s=1)
            return queued, ops.counters["over_quota"]
        finally:
            await ops.stop()

    queued, over = run(scenario)
    store.close()
    assert queued == ["queued"] * 3 and over == 2


def test_a_client_over_its_request_rate_is_refused_and_others_are_served(tmp_path):
    from ndn_edge.limits import Limits
    from tests.clientface import RawPeer, creds, decode_reply, request, serving

    async def scenario():
        limits = Limits(requests_per_s=20.0, request_burst=5)
        async with serving(tmp_path, rules={"mallory": ["**"], "alice": ["**"]}, limits=limits) as s:
            peer = await RawPeer.open(s.addr)
            mallory, alice = creds(s, "mallory"), creds(s, "alice")
            packets = [request(mallory, "call", ("sim", "1", "echo"), {"args": {"i": i}}, client="mallory")[0]
                       for i in range(8)]
            for packet in packets:
                peer.send(packet)
            replies = [decode_reply(await peer.recv(), mallory) for _ in packets]
            theirs, _ = request(alice, "call", ("sim", "1", "echo"), {"args": {"alice": 1}})
            peer.send(theirs)
            served = decode_reply(await peer.recv(), alice)
            await asyncio.sleep(0.2)  # the bucket refills at 20 per second: a pause of 4 tokens
            peer.send(packets[-1])  # the refused request again: it was not admitted, so it is served now
            retried = decode_reply(await peer.recv(), mallory)
            peer.close()
            return replies, served, retried, s.server.metrics()

    replies, served, retried, metrics = run(scenario)
    assert [ok for ok, _ in replies] == [True] * 5 + [False] * 3
    assert all(body["code"] == "RESOURCE_EXHAUSTED" and "request rate" in body["message"]
               for ok, body in replies if not ok)
    assert served[0] and retried == (True, {"value": {"i": 7}, "cached": False, "age_ms": 0, "stale": False})
    assert metrics["over_quota"] == 3


# -- damaged store files (issue 11 item 9)


def _start_gateway_in_process(cluster) -> tuple[int, str]:
    """`ndn-edge gateway` run in this process until it fails at start (it must, in these tests)."""
    code, _, err = cluster.cli("gateway", "--group", f"224.0.23.170:{cluster.port}")
    return code, err


def test_an_emptied_or_damaged_store_is_refused_with_the_way_back(tmp_path, mcast_port):
    """A gateway.db truncated to 0 bytes started silently as a new, empty store (devices, clients and sequence
    marks gone); a garbage page crashed start-up with a raw sqlite3.DatabaseError traceback."""
    import shutil

    from tests.support import Cluster

    cluster = Cluster(tmp_path, mcast_port)
    try:
        cluster.clients(alice="sim/**")
        home = cluster.start_gateway()  # checks the store and keeps the last good copy
        cluster.stop(cluster.gateway)
        db = home.db_path
        assert home.backup_path.exists() and home.store_id_file.exists()
        good = db.read_bytes()
        shutil.copy(db, tmp_path / "good.db")

        db.write_bytes(b"")  # emptied
        code, err = _start_gateway_in_process(cluster)
        assert code != 0 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert "is empty or new" in err and f"cp {home.backup_path} {db}" in err
        assert db.read_bytes() == b""  # refused before anything was written

        damaged = bytearray(good)
        page = 4096
        damaged[page:2 * page] = os.urandom(page)  # a garbage page
        db.write_bytes(bytes(damaged))
        for extra in (db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
            extra.unlink(missing_ok=True)
        code, err = _start_gateway_in_process(cluster)
        assert code != 0 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert "not a usable ndn-edge store" in err and "last good copy" in err

        # the way back, as printed
        shutil.move(db, db.with_name("gateway.db.damaged"))
        shutil.copy(home.backup_path, db)
        code, out, err = cluster.cli("client", "list", "--json")
        assert code == 0 and [c["name"] for c in json.loads(out)] == ["alice"]
    finally:
        cluster.close()


# -- fuzz runs, one per face (bounded in count and time, seeded)


async def _within(predicate, timeout_s: float) -> bool:
    """True once `predicate()` holds, False at the deadline."""
    try:
        await until(predicate, timeout_s, "condition")
    except AssertionError:
        return False
    return True


def _rss_kib() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


FUZZ_BATCHES = 4
FUZZ_PER_BATCH = 1500


def test_fuzz_the_multicast_face_and_the_device(make_board, peer, store, mcast_port):
    """Mutations of every packet that travels on the group (announcements, publications, calls, replies) and the
    hostile corpus, sent to a running device side with the patterns and to a real MicroPython board. After each
    batch the gateway still discovers, calls, publishes and reports; no worker faulted; memory stays bounded."""
    import random

    from ndn.encoding import InterestParam, make_interest

    from ndn_edge.wire import packets as wire
    from tests.intake import publication

    rng = random.Random(11)
    board = make_board("/edge/lab/b1")
    store.add_client("alice", os.urandom(32))
    store.grant("alice", "lab/**")

    async def scenario():
        side = DeviceSide(store, port=mcast_port)
        await side.start()
        patterns = Patterns(store, side, site="edge")
        await patterns.start()
        try:
            boot = await start_board(board, peer)
            await online_with_services(side, board, 10.0)
            await side.call(board.name, "ticks", {"on": True})
            sub = patterns.pubsub.subscribe("alice", "lab/b1/tick")["sub"]
            call, _ = wire.make_call(f"{board.name}/echo", {"x": 1}, board.key, 1 << 40, signer_owner=board.name)
            seeds = [boot, call, publication(board.key, 1 << 30, 5, device=board.name),
                     bytes(make_interest("/edge/_sd/query", InterestParam(lifetime=1000))),
                     *(packet for _, packet in hostile.device_side_corpus())]
            start_rss = _rss_kib()
            loop = asyncio.get_running_loop()
            for batch in range(FUZZ_BATCHES):
                deadline = loop.time() + 20
                for i in range(FUZZ_PER_BATCH):
                    peer.send(hostile.mutate(rng.choice(seeds), rng))
                    if i % 100 == 99:
                        await asyncio.sleep(0.005)  # let both sides read: a full buffer only drops datagrams
                    assert loop.time() < deadline
                # still discovers (a query is answered and the answer processed), calls, publishes, reports.
                # A device answers one query per 500 ms, and forged copies of the query were in the batch: ask
                # again until it answers (as the gateway's re-query does).
                announced = side.directory.counters["announcements"]
                for _ in range(8):
                    await side.query()
                    if await _within(lambda a=announced: side.directory.counters["announcements"] > a, 0.7):
                        break
                else:
                    raise AssertionError(f"no announcement processed after batch {batch}: {side.metrics()}")
                assert (await side.call(board.name, "echo", {"batch": batch}, timeout_s=5.0)).value == {"batch": batch}
                page = await patterns.pubsub.poll("alice", sub, ack=1 << 40, wait_ms=3000)
                assert page["messages"], (f"no publication after batch {batch}: {patterns.intake.counters} "
                                          f"{patterns.pubsub.counters}")
            grown = _rss_kib() - start_rss
            faults = (side.directory.counters["faults"], patterns.intake.counters["faults"])
            return grown, faults, side.metrics(), board.alive()
        finally:
            await patterns.stop()
            await side.stop()

    grown, faults, metrics, alive = run(scenario, 120.0)
    assert faults == (0, 0), metrics
    assert alive, "the MicroPython board died"
    assert grown < 40 * 1024, f"RSS grew by {grown} KiB"
    assert metrics["face_malformed"] + metrics["directory_malformed"] > FUZZ_BATCHES * FUZZ_PER_BATCH // 10


def test_fuzz_the_client_face(tmp_path):
    """Mutations of valid signed requests, keyless and keyed, at the client face; after each batch a client's
    call is served, nothing faulted, every datagram is accounted for, and memory stays bounded."""
    import random

    from ndn_edge.client.api import Client
    from tests.clientface import RawPeer, creds, request, serving

    rng = random.Random(12)

    async def scenario():
        async with serving(tmp_path, rules={"alice": ["**"]}) as s:
            key = creds(s, "alice")
            seeds = [request(key, "call", ("sim", "1", "echo"), {"args": {"a": [1, 2]}})[0],
                     request(key, "devices", params={"page_size": 5})[0],
                     request(key, "subscribe", params={"pattern": "**"})[0],
                     *(packet for _, packet in hostile.client_face_corpus())]
            peer = await RawPeer.open(s.addr)
            start_rss = _rss_kib()
            sent = 0
            async with Client.connect(home=s.home.path, client="alice", gateway=s.address, timeout=3) as client:
                for batch in range(FUZZ_BATCHES):
                    for i in range(FUZZ_PER_BATCH):
                        peer.send(hostile.mutate(rng.choice(seeds), rng))
                        sent += 1
                        if i % 100 == 99:
                            await asyncio.sleep(0.005)
                    assert await client.call("sim/1/echo", {"batch": batch}) == {"batch": batch}
                await until(lambda: s.server.stats["received"] >= sent, 5.0, "every datagram read")
            peer.close()
            return s.server.metrics(), sent, _rss_kib() - start_rss

    metrics, sent, grown = run(scenario, 120.0)
    assert metrics["internal"] == 0
    accounted = sum(metrics["drops"].values()) + metrics["accepted"] + metrics["idle"] + metrics["retransmissions"]
    assert accounted >= sent  # every hostile datagram dropped and counted, or served (a mutation may stay valid)
    assert grown < 40 * 1024, f"RSS grew by {grown} KiB"


def test_a_subscription_nobody_may_see_is_denied_at_once_and_one_without_devices_says_so(tmp_path):
    """Issue 15 item 6: `sub PATTERN` for a pattern this client may not see waited forever and printed nothing.
    Now it is PERMISSION_DENIED at once, as `call` is; and the answer counts the devices that could publish."""
    from ndn_edge.errors import PermissionDenied
    from ndn_edge.patterns.pubsub import PubSub
    from ndn_edge.state.store import Store

    store = Store(tmp_path / "gw.db")
    store.add_client("bob", os.urandom(32))
    store.grant("bob", "sim/**")
    store.add_device("/edge/sim/1", os.urandom(32), "edge")

    async def scenario():
        pubsub = PubSub(store, site="edge")
        await pubsub.start()
        try:
            with pytest.raises(PermissionDenied, match="may not see any topic matching 'lab/\\*\\*'"):
                pubsub.subscribe("bob", "lab/**")
            return pubsub.subscribe("bob", "sim/*/echo"), pubsub.subscribe("bob", "sim/9/echo")
        finally:
            await pubsub.stop()

    known, unknown = run(scenario)
    store.close()
    assert known["devices"] == 1 and unknown["devices"] == 0
