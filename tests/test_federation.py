"""Gateways federated over a real three-node nats-server cluster with JetStream on 127.0.0.1: three gateways on
three multicast groups ("LANs") with MicroPython devices behind each, a standby gateway on one LAN, a gateway
reaching NATS through a relay that can cut it off (docs/operations.md "More than one gateway").

Two scenarios, each with its own cluster (they may run on two workers at once), each a sequence of checks on the
same running parts: starting a federation costs a few seconds, checking one more thing on it very little."""
from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.request

import cbor2
import pytest

from ndn_edge.errors import PermissionDenied
from tests.federation import NatsCluster, Relay, Site, enrol, wait_for


def _connect(site_home, gateway: str, client: str = "alice", timeout: float = 10.0):
    from ndn_edge.client.api import Client

    return Client.connect_sync(home=site_home, client=client, gateway=gateway, timeout=timeout)


def _online(client, names: list[str]) -> bool:
    seen = {d["name"] for d in client.devices() if d["state"] == "online" and d["services"]}
    return set(names) <= seen


async def _nats_values(urls: str) -> list[bytes]:
    """Every value of every bucket and every message of every stream, read by a NATS client without the key."""
    import nats

    nc = await nats.connect(urls.split(","))
    out: list[bytes] = []
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            name = info.config.name
            last = info.state.last_seq
            for seq in range(max(1, info.state.first_seq), last + 1):
                try:
                    msg = await js.get_msg(name, seq)
                except Exception:  # deleted (a KV value replaced): nothing to read
                    continue
                out.append(bytes(msg.data or b""))
    finally:
        await nc.close()
    return out


async def _hostile(urls: str, subject: str) -> None:
    """Garbage and forged vouched requests on a device's subject: none answered."""
    import nats

    nc = await nats.connect(urls.split(","))
    try:
        for payload in (b"", b"\x00garbage", b"\x05\x01\x00", b"V1" + bytes(32) + cbor2.dumps({"c": "alice"}),
                        b"V1" + b"x" * 300):
            try:
                await nc.request(subject, payload, timeout=0.3)
                raise AssertionError(f"a hostile message {payload[:8]!r} was answered")
            except nats.errors.TimeoutError:
                pass
    finally:
        await nc.close()


@pytest.mark.soak(seconds=22)
def test_three_gateways_serve_every_model_across_the_federation(tmp_path):
    cluster = NatsCluster(tmp_path / "nats")
    a, b, c = sites = [Site(tmp_path, name) for name in ("a", "b", "c")]
    try:
        cluster.start()
        cluster.wait_ready()
        enrol(sites, cluster.urls)
        a.ok("client", "add", "alice")
        a.ok("acl", "grant", "alice", "**")
        a.start_gateway("--http", "127.0.0.1:0")
        b.start_gateway()
        c.start_gateway()
        a.start_sim(1, "a", "--tick", "0")
        b.start_sim(1, "b", "--tick", "0")
        c.start_sim(1, "c", "--tick", "0.5")

        with _connect(a.home, a.address()) as alice:
            # Clients and rules made on A reach every gateway; devices of every LAN are listed on A.
            wait_for(lambda: _online(alice, ["/edge/a/1", "/edge/b/1", "/edge/c/1"]), 40, "every device on A")
            listed = {d["name"]: d for d in alice.devices()}
            assert listed["/edge/c/1"]["gateway"] == c.status()["gateway"]

            # Request/response across gateways: a non-idempotent counter moves by one per call.
            first = wait_for(lambda: alice.call("c/1/counter"), 10, "a call through A to C")
            assert [alice.call("c/1/counter") for _ in range(3)] == [first + 1, first + 2, first + 3]
            assert alice.call("b/1/echo", {"x": [1, "two"]}) == {"x": [1, "two"]}
            assert alice.call_ex("c/1/temperature").value == alice.call_ex("c/1/temperature").value

            # A value C holds fresh (temperature: cache_ms 2000) is kept by A for what is left of it, and the same
            # call is answered on A without a relay: C's value, cached, as old as it is at C plus its time on A.
            def answered_on_a():
                before = alice.metrics()["federation"]
                first, again = alice.call_ex("c/1/temperature"), alice.call_ex("c/1/temperature")
                after = alice.metrics()["federation"]
                hits = after["kept_hits"] - before["kept_hits"]
                return (first, again, after) if hits >= 1 and after["remote_relayed"] <= before["remote_relayed"] + 1 \
                    else None
            first, again, fed_metrics = wait_for(answered_on_a, 10, "a kept value answered on A")
            assert again.cached and again.value == first.value and again.age_ms >= first.age_ms
            assert fed_metrics["kept"] >= 1

            # A long-running operation started through A on C's device, its handle read through B, and listed by
            # every gateway (`ndn-edge ops`, GET /api/v1/operations: the federation's operations).
            # A call queued through A for C's device: kept by C, its handle usable from any gateway.
            queued = alice.call("c/1/echo", {"queued": 1}, persist=True, ttl=20)
            assert queued.id.endswith(c.state()["gateway"]) and queued.result(timeout=15) == {"queued": 1}

            op = alice.start("c/1/slow", {"seconds": 1})
            assert op.id.endswith(c.state()["gateway"])
            with _connect(a.home, b.address()) as via_b:
                assert via_b.operation(op.id).result(timeout=15) == 1
                wait_for(lambda: any(o["op"] == op.id and o["state"] == "done" for o in via_b.ops()), 5,
                         "C's operation listed through B")

            # Scatter/gather over the three LANs.
            outcomes = alice.gather("*/*/temperature", deadline=5)
            assert set(outcomes) == {"a/1", "b/1", "c/1"}
            assert all(o.error is None and isinstance(o.value, float) for o in outcomes.values()), outcomes

            metrics = alice.metrics()["federation"]
            assert metrics["state"] == "connected" and metrics["remote_relayed"] >= 4 and metrics["gateways"] == 3

        # Pub/sub: a subscriber on A gets C's publications, in order.
        async def subscribe() -> list[int]:
            from ndn_edge.client.api import Client

            async with Client.connect(home=a.home, client="alice", gateway=a.address(), timeout=10) as client:
                seqs: list[int] = []
                async with asyncio.timeout(20):
                    async for msg in client.subscribe("c/*/tick"):
                        if not msg.retained:
                            seqs.append(msg.seq)
                        if len(seqs) == 3:
                            return seqs
            return seqs
        seqs = asyncio.run(subscribe())
        assert seqs == list(range(seqs[0], seqs[0] + 3))

        # A rule revoked on B stops a call through A (to C's device) within a second.
        with _connect(a.home, a.address()) as alice:
            alice.call("c/1/echo", {"n": 1})
            alice.call("c/1/temperature")  # kept on A for up to 2 s
            b.ok("acl", "revoke", "alice", "**")
            revoked = time.monotonic()

            def denied() -> bool:
                try:
                    alice.call("c/1/echo", {"n": 2}, timeout=2)
                except PermissionDenied:
                    return True
                return False
            wait_for(denied, 5, "the revoke to apply through A", interval_s=0.02)
            assert time.monotonic() - revoked < 1.0
            with pytest.raises(PermissionDenied):  # A's rules apply to what it keeps, as C's to what C caches
                alice.call("c/1/temperature", timeout=2)
            b.ok("acl", "grant", "alice", "**")
            wait_for(lambda: alice.call("c/1/echo", {"n": 3}, timeout=2) == {"n": 3}, 5, "the grant to apply")

        # The HTTP API on A, with a token issued on B, calls C's device.
        token = c.ok("client", "token", "alice").strip().split()[-1]
        url = json.loads((a.home / "http.json").read_text())["url"]

        def http_call() -> dict:
            req = urllib.request.Request(f"{url}/api/v1/call/c/1/echo", data=b'{"h": 1}', method="POST",
                                         headers={"Authorization": f"Bearer {token}",
                                                  "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=5) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as err:
                if err.code == 401:  # the token has not reached A yet
                    return {}
                raise
        assert wait_for(http_call, 5, "an HTTP call through A")["value"] == {"h": 1}

        # Prometheus on A: forwarded calls by result, their round trip, gateways seen, not partitioned.
        req = urllib.request.Request(f"{url}/metrics", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            scraped = resp.read().decode()
        for line in ('ndn_edge_federation_forwarded_total{kind="relay",result="OK"}',
                     'ndn_edge_federation_forwarded_total{kind="vouch",result="OK"}',
                     "ndn_edge_federation_forward_seconds_count", "ndn_edge_federation_gateways 3.0",
                     "ndn_edge_federation_partitioned 0.0", 'ndn_edge_federation_state{state="connected"} 1.0',
                     'ndn_edge_federation_lag_seconds{quantile="0.5",what="identity"}'):
            assert line in scraped, line
        # `federation status`: NATS and JetStream health, and the devices each gateway serves.
        status = a.ok("federation", "status")
        assert "NATS: reachable" in status and "ident: leader" in status and "serves: /edge/c/1" in status
        assert "on NATS server 127.0.0.1:" in status  # the node this home's gateway is connected to

        # A NATS client without the federation key reads no secret: no device or client key, in any form.
        from ndn_edge.state.store import Store

        with Store(a.home / "gateway.db") as store:
            secrets = [d.key for d in store.list_devices(1000)[0]] + [cl.key for cl in store.list_clients()]
        values = asyncio.run(_nats_values(cluster.urls))
        assert len(values) > 10
        for secret in secrets:
            for form in (secret, secret.hex().encode(), secret.hex().upper().encode()):
                assert not any(form in v for v in values)

        # Hostile messages on a device's subject are dropped and counted, never answered; C serves on.
        fed = json.loads((a.home / "federation.json").read_text())["federation"]
        asyncio.run(_hostile(cluster.urls, f"ndne.{fed}.d.edge.c.1"))
        with _connect(a.home, c.address()) as on_c:
            counters = on_c.metrics()
            assert counters["federation"]["serve_dropped"] >= 4  # not a packet, or a vouched request forged
            assert counters["clients"]["drops"]["malformed"] >= 1  # a packet, relayed to the face, dropped there
            assert on_c.call("c/1/echo", {"ok": True}) == {"ok": True}

        # A durable subscription held by B survives B's loss: resumed through A from its last acknowledgement.
        async def durable(address: str, count: int) -> list:
            from ndn_edge.client.api import Client

            async with Client.connect(home=a.home, client="alice", gateway=address, timeout=10) as client:
                sub = client.subscribe("c/*/tick", durable="dash")
                got: list = []
                async with asyncio.timeout(30):
                    while len(got) < count:
                        got.append(await sub.next())
                return got
        on_b = asyncio.run(durable(b.address(), 4))
        assert on_b[0].retained and [m.seq for m in on_b[1:]] == list(range(on_b[1].seq, on_b[1].seq + 3))
        b.kill_gateway()
        on_a = asyncio.run(durable(a.address(), 3))
        assert not on_a[0].retained and on_a[0].seq <= on_b[-1].seq + 1, (on_b, on_a)
        assert [m.seq for m in on_a] == list(range(on_a[0].seq, on_a[0].seq + 3))

        # One NATS node killed: everything goes on.
        cluster.kill(1)
        with _connect(a.home, a.address()) as alice:
            value = wait_for(lambda: alice.call("c/1/counter", timeout=5), 20, "a call with a NATS node down")
            assert alice.call("c/1/counter") == value + 1
            a.ok("client", "add", "carol")
            a.ok("acl", "grant", "carol", "c/**")
        # carol reaches C once NATS's streams have new leaders (5-10 s after the kill here, more on a busy machine)
        with _connect(a.home, c.address(), client="carol") as carol:
            assert wait_for(lambda: carol.call("c/1/echo", {"c": 1}, timeout=2), 30, "carol on C") == {"c": 1}

    finally:
        for site in sites:
            site.close()
        cluster.close()


@pytest.mark.soak(seconds=20)
def test_failover_on_one_lan_and_a_gateway_partitioned_from_nats(tmp_path):
    cluster, lan, standby, b = _lan_with_standby(tmp_path)
    relay = None
    try:
        _enrolled(cluster, [lan, standby, b])
        lan.start_gateway()
        lan.start_sim(1, "a", "--tick", "0")
        with _connect(lan.home, lan.address()) as alice:
            wait_for(lambda: _online(alice, ["/edge/a/1"]), 30, "a/1 on A")
            wait_for(lambda: "/edge/a/1" in lan.state()["local"].get("served", ()), 10, "A serving a/1")
        standby.start_gateway("--http", "127.0.0.1:0")
        # alice reaches the standby's store with the federation's identities, a moment after it connects
        token = wait_for(lambda: _token(standby, "alice"), 15, "alice on the standby, to issue her a token")
        relay = Relay(cluster.ports[0])
        b.start_gateway("--federation", relay.url)
        b.start_sim(1, "b", "--tick", "0")

        def http_counter() -> int:
            """`a/1/counter` through the standby's HTTP API: vouched to A while A serves a/1."""
            url = json.loads((standby.home / "http.json").read_text())["url"]
            req = urllib.request.Request(f"{url}/api/v1/call/a/1/counter?timeout_ms=20000", data=b"{}",
                                         method="POST", headers={"Authorization": f"Bearer {token}",
                                                                 "Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read())["value"]
        wait_for(lambda: http_counter() > 0, 10, "the HTTP API on the standby")

        # Freeze A, then kill it: its standby takes a/1 over; every call, the relayed one and the vouched one in
        # flight to the frozen A included, runs exactly once, and none waits for its deadline.
        async def through_failover() -> tuple[list[int], float]:
            from ndn_edge.client.api import Client

            async with Client.connect(home=lan.home, client="alice", gateway=standby.address(),
                                      timeout=20) as client:
                # Two operations kept by A (started through the standby), mirrored before A dies: one ends
                # before the standby takes a/1 over (it learns the end from `_op_get`, or from the device's final
                # report sent again to the group), one after (its final report reaches the standby).
                ops = {2: await client.start("a/1/slow", {"seconds": 2}),
                       8: await client.start("a/1/slow", {"seconds": 8})}
                assert all(op.id.endswith(lan_tag) for op in ops.values())
                mirrored = time.monotonic() + 10  # mirrored within PUSH_S (0.25 s)
                while not {op.id for op in ops.values()} <= {o["op"] for o in await client.ops()
                                                            if o["state"] == "running"}:
                    assert time.monotonic() < mirrored, "A's operations are not listed by the standby"
                    await asyncio.sleep(0.05)
                values = [await client.call("a/1/counter") for _ in range(3)]  # relayed to A
                # One more, started a moment before A hangs: its handle is good on the standby all the same (A
                # mirrored it before answering), and the device's report of its end is taken there.
                ops[3] = await client.start("a/1/slow", {"seconds": 3})
                lan.gateway.send_signal(signal.SIGSTOP)  # what reaches A now gets no answer, and no "no responders"
                killed = time.monotonic()
                in_flight = asyncio.create_task(client.call("a/1/counter"))
                vouched = asyncio.create_task(asyncio.to_thread(http_counter))
                try:
                    values += sorted([await in_flight, await vouched])
                except Exception as err:  # say why (signing below A's numbers shows in `seqs_local_leases`)
                    fed = (await client.metrics()).get("federation", {})
                    shown = {k: v for k, v in fed.items() if k.startswith(("seqs_", "placement_", "remote_"))}
                    raise AssertionError(f"no answer through the standby after A froze: {err}; its federation "
                                         f"metrics: {shown}") from err
                recovered = time.monotonic() - killed
                lan.kill_gateway()
                values += [await client.call("a/1/counter") for _ in range(3)]
                # The standby took the operations over with the device, and finishes them with their results.
                for seconds, op in ops.items():
                    assert await (await client.operation(op.id)).result(timeout=20) == seconds
                finished = time.monotonic() - killed
                listed = {o["op"]: o for o in await client.ops()}
                assert all(listed[op.id]["state"] == "done" for op in ops.values()), listed
                return values, recovered, finished, {op.id for op in ops.values()}
        lan_tag = lan.state()["gateway"]
        values, recovered_s, finished_s, op_ids = asyncio.run(through_failover())
        assert values == list(range(values[0], values[0] + len(values))), values
        assert recovered_s < 10, f"the standby answered {recovered_s:.1f} s after A died"
        # The 8 s operation ends about 7 s after A died; its report comes again within 0.3 s, then 0.6 s...
        assert finished_s < 15, f"the adopted operations finished {finished_s:.1f} s after A died"
        wait_for(lambda: "/edge/a/1" in standby.state()["local"].get("served", ()), 5, "the standby serving a/1")
        assert "/edge/a/1" in standby.status()["local"]["served"]  # and `federation status` says so

        # Partition B from NATS: it says so, serves its LAN with the rules it has, and catches up after.
        with _connect(lan.home, b.address()) as on_b:
            wait_for(lambda: _online(on_b, ["/edge/b/1"]), 30, "b/1 on B")
            # B lists the operations the standby finished (the mirror, rewritten by their new keeper).
            wait_for(lambda: {o["op"] for o in on_b.ops() if o["state"] == "done"} >= op_ids, 5,
                     "the adopted operations listed done through B")
            wait_for(lambda: b.state()["local"].get("state") == "connected", 10, "B connected")
            relay.cut()
            wait_for(lambda: b.state()["local"].get("state") == "partitioned", 10, "B partitioned")
            assert b.status()["local"]["state"] == "partitioned"  # `federation status` says so
            assert on_b.call("b/1/echo", {"p": 1}) == {"p": 1}
            standby.ok("client", "add", "bob")
            standby.ok("acl", "grant", "bob", "b/**")
            relay.heal()
            wait_for(lambda: b.state()["local"].get("state") == "connected", 15, "B to reconnect")
        with _connect(standby.home, b.address(), client="bob") as bob:
            assert wait_for(lambda: bob.call("b/1/echo", {"bob": 1}, timeout=2), 15, "bob on B") == {"bob": 1}
    finally:
        if relay is not None:
            relay.close()
        for site in (lan, standby, b):
            site.close()
        cluster.close()


@pytest.mark.soak(seconds=22)
def test_publications_a_gateway_could_not_put_on_the_stream_reach_the_others_after_it_dies(tmp_path):
    """JetStream loses its quorum (two of three nodes stopped; core NATS goes on through the third): the gateway
    serving a publishing device processes its reports but cannot get them onto the stream, so it does not
    acknowledge them. It dies; JetStream comes back; its standby takes the device over and publishes what the device
    sends again: a subscriber on another gateway gets every message (docs/operations.md "Failover on one LAN")."""
    cluster, lan, standby, b = _lan_with_standby(tmp_path)
    try:
        _enrolled(cluster, [lan, standby, b])
        node0 = f"nats://127.0.0.1:{cluster.ports[0]}"  # the node that stays up
        lan.start_gateway("--federation", node0)
        lan.start_sim(1, "a", "--tick", "0")
        with _connect(lan.home, lan.address()) as alice:
            wait_for(lambda: _online(alice, ["/edge/a/1"]), 30, "a/1 on A")
            wait_for(lambda: "/edge/a/1" in lan.state()["local"].get("served", ()), 10, "A serving a/1")
        standby.start_gateway("--federation", node0)
        b.start_gateway("--federation", node0)

        async def scenario() -> tuple[int, list[int]]:
            from ndn_edge.client.api import Client
            from tests.support import until

            seqs: list[int] = []
            async with Client.connect(home=lan.home, client="alice", gateway=b.address(), timeout=10) as on_b, \
                    Client.connect(home=lan.home, client="alice", gateway=lan.address(), timeout=10) as on_a:
                async def follow() -> None:
                    async for msg in on_b.subscribe("a/1/burst", wait=1.0):
                        if not msg.retained:
                            seqs.append(msg.seq)
                follower = asyncio.create_task(follow())
                try:
                    async def warm() -> bool:  # B delivers A's publications (its subscription is made at its poll)
                        await on_a.call("a/1/burst", {"n": 1})
                        await asyncio.sleep(0.5)
                        return bool(seqs)
                    await until(warm, 30, "a publication of a/1 through B", interval_s=0.5)
                    last = max(seqs)
                    processed = (await on_a.metrics())["patterns"]["reports_processed"]
                    cluster.kill(1)
                    cluster.kill(2)
                    await on_a.call("a/1/burst", {"n": 10})
                    # A takes the burst's reports (eight: the device's window) and holds their acknowledgements.
                    await until(lambda: _processed(on_a, processed + 8), 20, "A processing the burst")
                    lan.kill_gateway()
                    cluster.start(1)
                    cluster.start(2)
                    await until(lambda: set(range(last + 1, last + 11)) <= set(seqs), 60,
                                "every message of the burst through B")
                finally:
                    follower.cancel()
                    await asyncio.gather(follower, return_exceptions=True)
            return last, seqs
        last, seqs = asyncio.run(scenario())
        assert set(range(last + 1, last + 11)) <= set(seqs), seqs
        assert len(seqs) == len(set(seqs)), f"a message came twice: {seqs}"
        # The standby followed on from the messages A had delivered: it took none of them for lost (after waiting
        # HOLD_S, 30 s, for them: a gap) and delivered none again (late).
        on_standby = _pubsub_metrics(standby, lan.home)
        assert on_standby["pubsub_gaps"] == 0 and on_standby["pubsub_late"] == 0, on_standby
    finally:
        for site in (lan, standby, b):
            site.close()
        cluster.close()


@pytest.mark.soak(seconds=15)
def test_a_device_provisioned_elsewhere_is_heard_as_soon_as_its_record_arrives(tmp_path):
    """A standby drops a device's announcements while the device's record has not reached its store (an unknown
    key). When the record arrives it asks the LAN's devices at once, instead of waiting for the device's renewal, a
    third of its lease later: in CI a standby whose sync came after its start-up queries did not know the device it
    had to take over (the failover test's "has not announced itself since it was provisioned")."""
    cluster, lan, standby, _ = _lan_with_standby(tmp_path)
    relay = Relay(cluster.ports[0])
    try:
        _enrolled(cluster, [lan, standby])
        lan.start_gateway()
        standby.start_gateway("--federation", relay.url)
        wait_for(lambda: _token(standby, "alice"), 15, "alice on the standby")

        def directory(name: str) -> int:
            with _connect(lan.home, standby.address()) as on_standby:
                return on_standby.metrics()["devices"][f"directory_{name}"]
        relay.cut()
        wait_for(lambda: standby.state()["local"].get("state") != "connected", 10, "the standby cut off")
        wait_for(lambda: directory("queries") >= 3, 10, "the standby's start-up queries (at 0, 1 and 3 s) sent")
        lan.start_sim(1, "a", "--tick", "0", "--lease-ms", "120000")  # its renewal comes 40 s after its boot
        with _connect(lan.home, lan.address()) as alice:
            wait_for(lambda: _online(alice, ["/edge/a/1"]), 30, "a/1 on A")
        wait_for(lambda: directory("unknown_key") > 0, 10, "the standby dropping a/1's announcement")
        heard = directory("announcements")
        relay.heal()
        wait_for(lambda: directory("announcements") > heard, 12, "the standby hearing a/1 after its record came")
        assert directory("queries") >= 4  # its start-up queries, and one when the record came
    finally:
        for site in (lan, standby):
            site.close()
        relay.close()
        cluster.close()


def _token(site: Site, client: str) -> str | None:
    done = site.cli("client", "token", client)
    return done.stdout.strip().split()[-1] if done.returncode == 0 else None


def _pubsub_metrics(site: Site, home) -> dict:
    with _connect(home, site.address()) as client:
        return client.metrics()["patterns"]


async def _processed(client, at_least: int) -> bool:
    return (await client.metrics())["patterns"]["reports_processed"] >= at_least


def _lan_with_standby(tmp_path) -> tuple[NatsCluster, Site, Site, Site]:
    """A cluster (not started), a LAN's gateway site `a`, its standby `a2` on the same multicast group (it hears the
    same devices) and a gateway site `b` on another."""
    lan = Site(tmp_path, "a")
    return NatsCluster(tmp_path / "nats"), lan, Site(tmp_path, "a2", port=lan.port), Site(tmp_path, "b")


def _enrolled(cluster: NatsCluster, sites: list[Site]) -> None:
    """Start the cluster, enrol the sites, add client alice allowed everything."""
    cluster.start()
    cluster.wait_ready()
    enrol(sites, cluster.urls)
    sites[0].ok("client", "add", "alice")
    sites[0].ok("acl", "grant", "alice", "**")
