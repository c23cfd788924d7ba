"""The communication models end to end (docs/models.md): a real gateway process and simulated devices on the
MicroPython unix port, on loopback, driven through `ndn_edge.client.api` and the CLI.

Notification, long-running operations (progress, result, cancel, a gateway restart), pub/sub (retained values
first, access rules, membership, a durable subscriber that was away, across a gateway restart), scatter/gather
with a dead device, calls queued for a sleeping device (delivered when it wakes, expired when it does not), and,
under 30 % datagram loss on the device, exactly-once calls and a thousand publications with none lost and none
duplicated. Each test has its own home and multicast port; every wait has a deadline.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from typing import Any

import pytest

from ndn_edge.client.api import BlockingClient, Client
from ndn_edge.client.handles import OperationCancelled
from ndn_edge.errors import DeadlineExceeded, InvalidArgument, NotFound, PermissionDenied, Unavailable
from tests.intake import (
    GroupFace,
    SentFace,
    alice_and_pubsub,
    drain,
    intake_and_pubsub,
    publication,
    reporting_device,
    store_with_alice,
)
from tests.support import Cluster, wait_until
from tests.support import run_scenario as run


@pytest.fixture
def fleet(tmp_path, mcast_port, micropython):
    f = Cluster(tmp_path, mcast_port)
    yield f
    f.close()




# -- in process: the report intake and pub/sub ordering, over a real store


def test_reports_are_verified_processed_once_and_reordered(tmp_path):
    from ndn.encoding import Name, parse_data, parse_interest

    key = os.urandom(32)

    async def scenario() -> None:
        store = store_with_alice(tmp_path / "store.db", key)
        face = SentFace()
        intake, pubsub = await intake_and_pubsub(store, face)
        sub = pubsub.subscribe("alice", "sim/1/*")["sub"]

        first = publication(key, 10, 1)
        intake.on_interest(first)
        intake.on_interest(first)  # the same report twice in one batch: processed once, acknowledged twice
        intake.on_interest(publication(key, 12, 3))  # ahead of 2: held back
        intake.on_interest(publication(key, 13, 4, sign_key=os.urandom(32)))  # forged: dropped
        intake.on_interest(publication(key, 14, 4, device="/edge/sim/9"))  # unknown key: dropped
        await drain(intake)
        page = await pubsub.poll("alice", sub, wait_ms=0)
        assert [(m["value"], m.get("gap", 0)) for m in page["messages"]] == [(1, 0)]
        intake.on_interest(publication(key, 11, 2))
        intake.on_interest(first)  # a retransmission of an acknowledged report: acknowledged again
        await drain(intake)
        page = await pubsub.poll("alice", sub, wait_ms=0)
        assert [m["value"] for m in page["messages"]] == [1, 2, 3]
        assert intake.counters["processed"] == 3 and intake.counters["duplicates"] == 2
        assert intake.counters["bad_signature"] == 1 and intake.counters["unknown_key"] == 1
        acked = [Name.to_str(parse_data(d, with_tl=True)[0]) for d in face.sent]
        first_name = Name.to_str(parse_interest(first, with_tl=True)[0])
        # each of the three receipts of `first` acknowledged (duplicates raise the device's ack-loss estimate,
        # so timed extra copies may follow on a slow run); reports 1, 2, 3 (each name is unique)
        assert acked.count(first_name) >= 3 and len(set(acked)) == 3
        await pubsub.stop()
        await intake.stop()

        # a new intake on the same store (a gateway restart): the retransmission is still recognised
        face2 = SentFace()
        intake2, pubsub2 = await intake_and_pubsub(store, face2)
        sub2 = pubsub2.subscribe("alice", "sim/1/*")["sub"]
        retained = (await pubsub2.poll("alice", sub2, wait_ms=0))["messages"]
        assert [(m["value"], m["retained"]) for m in retained] == [(3, True)]
        intake2.on_interest(first)
        intake2.on_interest(publication(key, 15, 5))  # 4 never comes
        await drain(intake2)
        assert intake2.counters["duplicates"] == 1 and len(face2.sent) >= 2
        page = await pubsub2.poll("alice", sub2, ack=retained[-1]["pos"], wait_ms=0)
        assert page["messages"] == []  # 5 waits for 4
        stream = pubsub2._streams["/edge/sim/1"]
        pubsub2._release_held([("/edge/sim/1", stream)])  # what the sweeper does once the hold has lasted HOLD_S
        page = await pubsub2.poll("alice", sub2, wait_ms=0)
        assert [(m["value"], m.get("gap")) for m in page["messages"]] == [(5, 1)]
        await pubsub2.stop()
        await intake2.stop()
        store.close()
    run(scenario, timeout_s=20)


def test_a_standby_follows_on_from_what_another_gateway_delivered(tmp_path):
    # A standby hears none of the reports the gateway serving the device had acknowledged; it sees their messages
    # come through the federation (`deliver`). Taking the device over, it used to wait HOLD_S (30 s) for numbers
    # 1-2 before delivering 3, and delivered again, as `late`, a resent report the other gateway had delivered.
    key = os.urandom(32)

    async def scenario() -> None:
        async with alice_and_pubsub(tmp_path / "store.db", key, SentFace()) as (intake, pubsub):
            sub = pubsub.subscribe("alice", "sim/1/*")["sub"]
            for n in (1, 2):  # through the federation, as the bridge hands them over
                pubsub.deliver({"topic": "sim/1/t", "publisher": "sim/1", "value": n, "seq": n, "boot": "b00710ad",
                                "time": 0.0}, True)
            intake.on_interest(publication(key, 10, 2))  # resent: the other gateway died before it saw the ack go
            intake.on_interest(publication(key, 11, 3))
            await drain(intake)
            page = await pubsub.poll("alice", sub, wait_ms=0)
            assert [(m["value"], m.get("gap", 0), m.get("late", False)) for m in page["messages"]] == [
                (1, 0, False), (2, 0, False), (3, 0, False)]
            assert pubsub.counters["delivered_elsewhere"] == 1 and pubsub.counters["held"] == 0
            # Malformed messages from the stream move nothing.
            for bad in ({"publisher": 7, "seq": 9, "boot": "b00710ad"}, {"publisher": "sim/1", "seq": True},
                        {"publisher": "sim/1", "seq": 9, "boot": None}, {"publisher": "sim/1", "seq": -1, "boot": "x"}):
                pubsub.deliver({"topic": "sim/1/t", "value": 0, "time": 0.0, **bad}, False)
            assert (pubsub._streams["/edge/sim/1"].boot, pubsub._streams["/edge/sim/1"].last) == ("b00710ad", 3)
    run(scenario, timeout_s=20)


def test_a_new_boot_met_mid_stream_starts_there_and_a_small_number_waits(tmp_path):
    # One publication of another boot, between two of the publisher's own, used to leave the stream at 0 when
    # the publisher's boot came back: everything after it was held back for HOLD_S.
    key = os.urandom(32)

    async def scenario() -> None:
        async with alice_and_pubsub(tmp_path / "store.db", key) as (intake, pubsub):
            sub = pubsub.subscribe("alice", "sim/1/*")["sub"]
            intake.on_interest(publication(key, 10, 1, boot="aaaa0001"))
            intake.on_interest(publication(key, 11, 2, boot="aaaa0001"))
            intake.on_interest(publication(key, 12, 5, boot="bbbb0002"))  # restarted: 1..4 of this boot may come
            await drain(intake)
            page = await pubsub.poll("alice", sub, wait_ms=0)
            assert [m["value"] for m in page["messages"]] == [1, 2]
            intake.on_interest(publication(key, 13, 40, boot="cccc0003"))  # a new boot met at 40: starts there
            await drain(intake)
            page = await pubsub.poll("alice", sub, ack=page["messages"][-1]["pos"], wait_ms=0)
            assert [(m["value"], m["boot"], m.get("gap")) for m in page["messages"]] == [
                (5, "bbbb0002", 4), (40, "cccc0003", 39)]
            intake.on_interest(publication(key, 14, 41, boot="cccc0003"))
            intake.on_interest(publication(key, 15, 6, boot="bbbb0002"))  # late, of a boot met before: where it was
            intake.on_interest(publication(key, 16, 3, boot="aaaa0001"))
            intake.on_interest(publication(key, 17, 42, boot="cccc0003"))
            await drain(intake)
            page = await pubsub.poll("alice", sub, ack=page["messages"][-1]["pos"], wait_ms=0)
            assert [(m["value"], m.get("gap")) for m in page["messages"]] == [(41, None), (6, None), (3, None),
                                                                             (42, None)]
    run(scenario, timeout_s=20)


def test_a_removed_clients_durable_subscription_goes_with_it(tmp_path):
    # `client remove` runs in another process: it deletes the client's durable subscriptions from the store, the
    # running gateway stops queueing for them at once and forgets them, and a new client of the same name
    # starts with nothing of the old one's.
    from ndn_edge.state.store import Store

    key = os.urandom(32)

    async def scenario() -> None:
        store = store_with_alice(tmp_path / "store.db", key)
        intake, pubsub = await intake_and_pubsub(store)
        old = pubsub.subscribe("alice", "sim/1/*", durable="dash")
        intake.on_interest(publication(key, 10, 1))
        await drain(intake)
        assert [m["value"] for m in (await pubsub.poll("alice", old["sub"]))["messages"]] == [1]

        admin = Store(tmp_path / "store.db")  # the CLI's own connection
        admin.remove_client("alice")
        admin.add_client("alice", os.urandom(32))
        admin.grant("alice", "sim/**")
        admin.close()
        intake.on_interest(publication(key, 11, 2))  # queued for nobody: the old subscription's row is gone
        await drain(intake)
        assert intake.counters["processed"] == 2 and intake.counters["errors"] == 0
        assert store.query("SELECT COUNT(*) FROM sub_queue")[0][0] == 0

        for _ in range(50):  # the sweeper (every second) forgets the removed subscription; bounded wait
            if pubsub.subscriptions() == 0:
                break
            await asyncio.sleep(0.1)
        assert pubsub.subscriptions() == 0
        with pytest.raises(NotFound):
            await pubsub.poll("alice", old["sub"])
        new = pubsub.subscribe("alice", "sim/1/*", durable="dash")
        assert new["created"] is True
        got = (await pubsub.poll("alice", new["sub"]))["messages"]
        assert [(m["value"], m.get("retained")) for m in got] == [(2, True)]  # only the retained value
        await pubsub.stop()
        await intake.stop()
        store.close()

    run(scenario)


def test_reports_are_acknowledged_to_where_they_came_from(tmp_path):
    # gateway/devices/reports.py: a report that came from a device's own report socket (any port but the group's)
    # is acknowledged there alone, over the intake's unicast socket, also when it came in on the group; one from
    # the group's port (a device's group socket, which cannot receive unicast) is acknowledged to the group.
    from ndn_edge.devices import reports
    from ndn_edge.wire import client_protocol as cw
    from ndn_edge.wire.framing import name_tlv

    key = os.urandom(32)
    group_port = 56999  # (never bound: the face is a stand-in)
    face = GroupFace(group_port)

    async def scenario() -> None:
        async with reporting_device(tmp_path / "store.db", key, face) as (store, intake, pubsub, device):
            loop = asyncio.get_running_loop()
            assert intake.address is not None and intake.address[0] == "127.0.0.1"
            first = publication(key, 10, 1)
            device.sendto(first, intake.address)  # straight to the gateway
            ack = await asyncio.wait_for(loop.sock_recv(device, 2048), 5)
            signer = cw.ReplySigner(store.device("/edge/sim/1").key_name, key)
            assert ack == cw.encode_reply(name_tlv(first), reports.ACK_CONTENT, signer)
            face.last_addr = device.getsockname()  # in on the group, from the device's report socket
            intake.on_interest(publication(key, 11, 2))
            ack = await asyncio.wait_for(loop.sock_recv(device, 2048), 5)
            assert ack[0] == 0x06 and face.sent == []
            face.last_addr = ("127.0.0.1", group_port)  # from a device's group socket
            intake.on_interest(publication(key, 12, 3))
            await drain(intake)
            assert len(face.sent) == 1 and intake.counters["acks_unicast"] == 2
            page = await pubsub.poll("alice", pubsub.subscribe("alice", "sim/1/*")["sub"], wait_ms=0)
            assert [(m["value"], m.get("retained")) for m in page["messages"]] == [(3, True)]

    run(scenario)


def test_a_batchs_acknowledgements_to_one_report_socket_travel_back_to_back(tmp_path):
    # gateway/devices/reports.py: the acknowledgements of one batch for the same report socket go in as few
    # datagrams as ACK_DATAGRAM_MAX allows, each the packets back to back, in the reports' order.
    from ndn_edge.devices import reports
    from ndn_edge.wire import client_protocol as cw
    from ndn_edge.wire.framing import name_tlv

    key = os.urandom(32)
    face = GroupFace()

    async def scenario() -> None:
        async with reporting_device(tmp_path / "store.db", key, face) as (store, intake, _, device):
            loop = asyncio.get_running_loop()
            face.last_addr = device.getsockname()
            sent = [publication(key, 20 + i, i + 1) for i in range(6)]
            for packet in sent:  # queued before the intake's task runs: one batch
                intake.on_interest(packet)
            signer = cw.ReplySigner(store.device("/edge/sim/1").key_name, key)
            acks = [cw.encode_reply(name_tlv(p), reports.ACK_CONTENT, signer) for p in sent]
            per = reports.ACK_DATAGRAM_MAX // len(acks[0])
            assert 2 <= per < len(acks)
            got: list[bytes] = []
            while sum(len(d) for d in got) < sum(len(a) for a in acks):  # bounded by the wait_for below
                got.append(await asyncio.wait_for(loop.sock_recv(device, 2048), 5))
            assert got == [b"".join(acks[k:k + per]) for k in range(0, len(acks), per)]
            assert all(len(d) <= reports.ACK_DATAGRAM_MAX for d in got) and face.sent == []
            assert intake.counters["acks"] == intake.counters["acks_unicast"] == 6
            assert intake.counters["ack_datagrams"] == len(got) and intake.counters["batches"] == 1

    run(scenario)


def test_pipelined_polls_share_messages_out_once_and_a_new_start_silences_the_waiting_ones(tmp_path):
    # gateway/patterns/pubsub.py `poll(after=...)`: two polls waiting at once are answered with different
    # messages, each saying where its messages start (`from`); a poll without `after` (a client starting again)
    # answers from the acknowledged position, and pipelined polls waiting since then get nothing when they wake.
    key = os.urandom(32)

    async def scenario() -> None:
        async with alice_and_pubsub(tmp_path / "store.db", key) as (intake, pubsub):
            sub = pubsub.subscribe("alice", "sim/1/*")["sub"]

            def pipelined(after: int) -> asyncio.Task:
                return asyncio.create_task(pubsub.poll("alice", sub, after=after, wait_ms=5000))

            async def waiting(*tasks: asyncio.Task) -> None:
                for _ in range(100):  # until each waits at the gateway (bounded)
                    if pubsub._subs[("alice", sub)].waiting == len(tasks):
                        return
                    await asyncio.sleep(0)
                raise AssertionError("the polls are not waiting")

            a, b = pipelined(0), pipelined(0)
            await waiting(a, b)
            intake.on_interest(publication(key, 10, 1))
            page = await asyncio.wait_for(a, 5)
            assert [m["value"] for m in page["messages"]] == [1] and page["from"] == 0
            assert not b.done()  # woken too, with nothing new for it: waiting on
            intake.on_interest(publication(key, 11, 2))
            page = await asyncio.wait_for(b, 5)
            assert [m["value"] for m in page["messages"]] == [2] and page["from"] == 1
            c = pipelined(2)
            await waiting(c)
            again = await pubsub.poll("alice", sub, ack=1, wait_ms=0)  # starts again after the acknowledged 1
            assert [m["value"] for m in again["messages"]] == [2] and "from" not in again
            intake.on_interest(publication(key, 12, 3))
            assert (await asyncio.wait_for(c, 5))["messages"] == []  # of the epoch before: silent
            page = await pubsub.poll("alice", sub, after=2, wait_ms=5000)
            assert [m["value"] for m in page["messages"]] == [3] and page["from"] == 2

    run(scenario)


def test_an_answered_poll_takes_pushes_at_each_commit_until_they_run_out_or_a_new_start(tmp_path):
    # gateway/patterns/pubsub.py `poll(push=n, more=...)`: a poll answered with messages takes up to n more
    # answers, each sent by `more` right after the commit that brought messages, saying where they start
    # (`from`); a waiting pipelined poll then gets none of them; a poll without `after` ends the pushes.
    key = os.urandom(32)

    async def scenario() -> None:
        async with alice_and_pubsub(tmp_path / "store.db", key) as (intake, pubsub):
            sub = pubsub.subscribe("alice", "sim/1/*")["sub"]
            pushed: list[dict] = []
            intake.on_interest(publication(key, 10, 1))
            await drain(intake)
            page = await pubsub.poll("alice", sub, wait_ms=5000, push=2, more=lambda c: pushed.append(c) or True)
            assert [m["value"] for m in page["messages"]] == [1] and page["push"] == 2
            waiting = asyncio.create_task(pubsub.poll("alice", sub, after=1, wait_ms=5000))
            for seq in (2, 3, 4):
                intake.on_interest(publication(key, 10 + seq, seq))
                await drain(intake)
            assert [([m["value"] for m in c["messages"]], c["from"]) for c in pushed] == [([2], 1), ([3], 2)]
            page = await asyncio.wait_for(waiting, 5)  # the pushes ran out: the waiting poll takes what came next
            assert [m["value"] for m in page["messages"]] == [4] and page["from"] == 3
            page = await pubsub.poll("alice", sub, wait_ms=5000, push=8, more=lambda c: pushed.append(c) or True)
            again = await pubsub.poll("alice", sub, ack=4, wait_ms=0)  # a new start: no more pushes to that one
            assert again["messages"] == [] and not pubsub._subs[("alice", sub)].streams
            intake.on_interest(publication(key, 15, 5))
            await drain(intake)
            assert len(pushed) == 2 and pubsub.counters["pushed"] == 2

    run(scenario)


def _wire_message(pos: int) -> dict:
    """A message as the gateway's poll answers carry it, at position `pos`."""
    return {"topic": "sim/1/t", "publisher": "sim/1", "value": pos, "seq": pos, "boot": "b", "time": 0.0, "pos": pos}


class _PollingGateway:
    """The client side of the gateway for a Subscription: records each poll (its parameters, the future that answers
    it, and its `more`, which pushes further answers) and answers it when the test says."""

    timeout = 5.0

    def __init__(self) -> None:
        self.polls: list[tuple[dict, asyncio.Future, Any]] = []

    async def request(self, verb: str, target: tuple, params: dict, timeout_s: float, *, more: Any = None) -> dict:
        from ndn_edge.wire import client_protocol as cw

        if verb == cw.VERB_SUBSCRIBE:
            return {"sub": "m:1", "created": True}
        fut = asyncio.get_running_loop().create_future()
        self.polls.append((params, fut, more))
        return await fut

    async def wait_polls(self, n: int, timeout_s: float = 2.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.polls) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.polls)} polls, {n} expected")
            await asyncio.sleep(0.005)


def test_a_subscription_keeps_two_polls_in_flight_and_puts_replies_back_in_order(tmp_path):
    # gateway/client/handles.py: once a poll succeeded, two are in flight, the second saying how far the client
    # got (`after`); a reply that overtakes the one before it (its `from` not reached yet) is held until that one
    # is in, so messages come out in order, each once.
    from ndn_edge.client.handles import Subscription

    msg = _wire_message

    async def scenario() -> None:
        gw = _PollingGateway()
        sub = Subscription(gw, "sim/1/*")
        reader = asyncio.create_task(sub.next(5))
        await gw.wait_polls(1)
        assert "after" not in gw.polls[0][0]  # alone and from the acknowledged position
        gw.polls[0][1].set_result({"messages": [msg(1)], "lost": 0})
        assert (await reader).value == 1
        reader = asyncio.create_task(sub.next(5))
        await gw.wait_polls(3)
        (p2, f2, _), (p3, f3, _) = gw.polls[1:3]
        assert p2["after"] == p3["after"] == 1  # (started as 1 came in: fetched ahead, acknowledged by the next)
        f3.set_result({"messages": [msg(4)], "lost": 0, "from": 3})  # overtook the reply with 2 and 3
        for _ in range(5):
            await asyncio.sleep(0)
        assert not reader.done()
        f2.set_result({"messages": [msg(2), msg(3)], "lost": 0, "from": 1})
        got = [(await reader).value, (await sub.next(5)).value, (await sub.next(5)).value]
        assert got == [2, 3, 4]
        await sub._stop_polls()

    run(scenario)


def test_pushed_answers_are_taken_in_order_and_a_lost_one_starts_the_subscription_again(monkeypatch):
    # gateway/client/handles.py: an answered poll takes the gateway's pushes (more answers to it); one real poll
    # stays waiting besides; an answer lost on the way leaves a hole (`from` beyond what came), and after GAP_S
    # the subscription starts again from the acknowledged position: nothing lost, nothing twice.
    from ndn_edge.client import handles
    from ndn_edge.client.handles import Subscription

    monkeypatch.setattr(handles, "GAP_S", 0.1)
    msg = _wire_message

    async def scenario() -> None:
        gw = _PollingGateway()
        sub = Subscription(gw, "sim/1/*")
        reader = asyncio.create_task(sub.next(5))
        await gw.wait_polls(1)
        first, fut, push = gw.polls[0]
        assert first["push"] == handles.PUSH and first["wait_ms"] <= handles.LIVE_S * 1000
        fut.set_result({"messages": [msg(1)], "lost": 0, "push": handles.PUSH})
        assert (await reader).value == 1
        await gw.wait_polls(2)
        assert not gw.polls[1][1].done()  # one real poll waits besides the pushes
        push({"messages": [msg(2), msg(3)], "lost": 0, "from": 1})
        assert [(await sub.next(5)).value, (await sub.next(5)).value] == [2, 3]
        push({"messages": [msg(6)], "lost": 0, "from": 5})  # 4 and 5 were lost on the way
        reader = asyncio.create_task(sub.next(5))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not reader.done()  # 6 is held: it must not come before 4 and 5
        await gw.wait_polls(3)  # after GAP_S: again from the acknowledged position
        again, fut, _ = gw.polls[-1]
        assert "after" not in again and again["ack"] == 3
        fut.set_result({"messages": [msg(4), msg(5), msg(6)], "lost": 0, "push": handles.PUSH})
        assert [(await reader).value, (await sub.next(5)).value, (await sub.next(5)).value] == [4, 5, 6]
        push({"messages": [msg(7)], "lost": 0, "from": 6})  # a push to a poll of the earlier start: ignored
        assert await sub.next(0.05) is None
        await sub._stop_polls()

    run(scenario)


def test_polls_a_restarted_gateway_dropped_start_the_subscription_again_once_before_an_error():
    # gateway/client/handles.py: a restarted gateway drops the polls that were waiting at the one that died (their
    # retransmissions are replays there), so they all end DEADLINE_EXCEEDED together. That is one failure: the
    # subscription starts again without raising; only a poll sent since that fails too is raised.
    from ndn_edge.client.handles import Subscription
    from ndn_edge.errors import DeadlineExceeded

    async def scenario() -> None:
        gw = _PollingGateway()
        sub = Subscription(gw, "sim/1/*")
        reader = asyncio.create_task(sub.next(5))
        await gw.wait_polls(1)
        gw.polls[0][1].set_result({"messages": [_wire_message(1)], "lost": 0})
        assert (await reader).value == 1
        reader = asyncio.create_task(sub.next(5))
        await gw.wait_polls(3)
        for _, fut, _ in gw.polls[1:3]:  # both in flight when the gateway died
            fut.set_exception(DeadlineExceeded("no reply"))
        await gw.wait_polls(4)  # started again, from the acknowledged position
        again, fut, _ = gw.polls[3]
        assert "after" not in again and not reader.done()
        fut.set_exception(DeadlineExceeded("no reply"))  # and that one fails too: said
        with pytest.raises(DeadlineExceeded):
            await reader
        await sub._stop_polls()

    run(scenario)


# -- notification, long-running operations, scatter/gather, the CLI


@pytest.mark.long(seconds=8)
def test_notify_operations_gather_and_cli(fleet):
    fleet.clients(alice="sim/**", bob="sim/2/**")
    home = fleet.start_gateway()
    fleet.start_sim(3)
    names = ["/edge/sim/1", "/edge/sim/2", "/edge/sim/3"]
    with fleet.connect("alice") as alice, fleet.connect("bob") as bob:
        fleet.wait_online(alice, names)

        # notification: at most once, no reply; the handler ran once
        alice.notify("sim/1/note", {"n": 1})
        assert wait_until(lambda: alice.call("sim/1/notes"), 5, what="the note") == [{"n": 1}]
        with pytest.raises(NotFound):
            alice.notify("sim/1/nope")
        with pytest.raises(PermissionDenied):
            bob.notify("sim/1/note", {"n": 2})
        assert alice.call("sim/1/notes") == [{"n": 1}]

        # long-running: a handle at once, progress, the result reported by the device
        op = alice.start("sim/2/slow", {"seconds": 1.5})
        assert op.state == "running" and not op.done and op.kind == "op" and op.target == "sim/2/slow"
        op.refresh(wait=5)
        assert op.progress is not None and 0 < op.progress <= 1
        assert op.result(timeout=10) == 1.5 and op.done and op.progress == 1.0
        assert bob.operation(op.id).result(timeout=1) == 1.5  # another client allowed sim/2/slow sees it
        with pytest.raises(PermissionDenied):
            bob.start("sim/1/slow")
        with pytest.raises(InvalidArgument, match="not a long-running service"):
            alice.start("sim/2/echo")
        long_op = alice.start("sim/3/slow", {"seconds": 20})
        long_op.cancel()
        with pytest.raises(OperationCancelled):
            long_op.result(timeout=5)
        assert long_op.state == "cancelled"

        # scatter/gather: every device at once; a dead one is reported by the deadline, the others answer
        results = alice.gather("sim/*/temperature", deadline=3)
        assert list(results) == ["sim/1", "sim/2", "sim/3"] and all(r.ok for r in results.values())
        assert list(bob.gather("sim/*/temperature", deadline=3)) == ["sim/2"]  # rules apply
        os.kill(fleet.device_pid(3), signal.SIGKILL)  # no leave announcement: its lease still holds
        t0 = time.monotonic()
        results = alice.gather("sim/*/echo", {"k": 1}, deadline=1.5)
        elapsed = time.monotonic() - t0
        assert results["sim/1"].value == {"k": 1} and results["sim/2"].value == {"k": 1}
        assert isinstance(results["sim/3"].error, DeadlineExceeded)
        assert 1.2 < elapsed < 3.0

    # the CLI: call --all / --notify / --start --wait / --persist, ops paginated, sub --count
    # (3 s: at 1.5 s the gateway's answer, due 0.15 s before the command's deadline, missed it on a loaded machine)
    code, out, err = fleet.cli("call", "--all", "sim/*/echo", "--args", '{"a": 2}', "--json", "--as", "alice",
                               "--timeout", "3")
    assert out, f"no JSON (exit {code}): {err}"
    got = json.loads(out)
    assert code == 7 and got["sim/1"]["value"] == {"a": 2} and got["sim/3"]["error"]["code"] == "DEADLINE_EXCEEDED"
    assert fleet.cli("call", "--notify", "sim/2/note", "--args", '{"cli": 1}', "--as", "alice")[0] == 0
    code, out, err = fleet.cli("call", "--start", "sim/1/slow", "--args", '{"seconds": 0.5}', "--wait", "10",
                               "--as", "alice")
    assert (code, out) == (0, "0.5\n"), err
    code, out, err = fleet.cli("ops", "--json", "--page-size", "2", "--as", "alice")
    page = json.loads(out)
    assert code == 0 and len(page["items"]) == 2 and page["next_page_token"]
    assert [(i["target"], i["state"]) for i in page["items"]] == [("sim/1/slow", "done"), ("sim/3/slow", "cancelled")]
    code, out, _ = fleet.cli("ops", "--json", "--page-token", page["next_page_token"], "--as", "alice")
    assert code == 0 and [i["target"] for i in json.loads(out)["items"]] == ["sim/2/slow"]
    code, out, _ = fleet.cli("ops", "--as", "bob")
    assert code == 0 and "sim/2/slow" in out and "sim/1/slow" not in out  # bob sees only what he may call
    code, out, err = fleet.cli("sub", "sim/1/tick", "--count", "2", "--json", "--as", "alice")
    ticks = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(ticks) == 2 and ticks[0]["retained"] and ticks[1]["seq"] > ticks[0]["seq"]
    # issue 15 item 6: a pattern no known device publishes on says so, and --timeout bounds the wait
    started = time.monotonic()
    code, out, err = fleet.cli("sub", "sim/9/**", "--timeout", "1", "--as", "alice")
    assert (code, out) == (7, "") and time.monotonic() - started < 15, err
    note, error = err.strip().splitlines()
    assert "no device the gateway knows publishes on 'sim/9/**' (yet)" in note
    assert "no message on 'sim/9/**' within 1 s" in error
    code, out, err = fleet.cli("sub", "sim/1/**", "--as", "bob")  # bob may see only sim/2: denied at once
    assert (code, out) == (5, "") and "may not see any topic matching 'sim/1/**'" in err
    with fleet.connect("alice") as alice:
        assert wait_until(lambda: alice.call("sim/2/notes"), 5, what="the CLI's note") == [{"cli": 1}]
    assert home.read_gateway_record().pid == fleet.gateway.pid


def test_long_running_operation_survives_a_gateway_restart(fleet):
    fleet.clients(alice="sim/**")
    home = fleet.start_gateway()
    fleet.start_sim(1)
    with fleet.connect("alice") as alice:
        fleet.wait_online(alice, ["/edge/sim/1"])
        op = alice.start("sim/1/slow", {"seconds": 3})
        op_id = op.id
    assert fleet.stop(fleet.gateway) == 130  # the device finishes while no gateway listens
    home = fleet.start_gateway()
    with fleet.connect("alice") as alice:  # a new client process could do the same: only the id is needed
        again = alice.operation(op_id)
        assert again.target == "sim/1/slow" and again.state in ("running", "done")
        assert again.result(timeout=30) == 3
    assert home.read_gateway_record().pid == fleet.gateway.pid


# -- publish/subscribe


@pytest.mark.long(seconds=8)
def test_pubsub_retained_first_acl_membership_and_a_durable_subscriber_that_was_away(fleet):
    fleet.clients(alice="sim/**", bob="sim/2/**")
    fleet.start_gateway()
    # a tick every 0.5 s, not 1: most of this test waits for ticks. The gateway's restart below must stay well
    # within what a device holds unacknowledged (16 reports, 8 s at this pace)
    fleet.start_sim(2, "--tick", "0.5")
    with fleet.connect("alice") as alice, fleet.connect("bob") as bob:
        fleet.wait_online(alice, ["/edge/sim/1", "/edge/sim/2"])
        wait_until(lambda: alice.call("sim/1/echo") == {} and _ticked(alice, 2), 10, what="ticks")

        # retained values first, then live, in order
        with alice.subscribe("sim/*/tick") as sub:
            first = [sub.next(5) for _ in range(2)]
            assert all(m.retained for m in first) and {m.topic for m in first} == {"sim/1/tick", "sim/2/tick"}
            live = [sub.next(5) for _ in range(4)]
            assert not any(m.retained for m in live)
            for topic in ("sim/1/tick", "sim/2/tick"):
                seqs = [m.seq for m in first + live if m.topic == topic]
                assert seqs == sorted(set(seqs)) and len(seqs) >= 2  # retained, then the following ones
                values = [m.value for m in first + live if m.topic == topic]
                assert values == list(range(values[0], values[0] + len(values)))

        # access rules filter what a subscription sees; membership is a topic
        with bob.subscribe("**") as sub:
            seen = [sub.next(5) for _ in range(4)]
        assert {m.topic for m in seen} <= {"sim/2/tick", "_members/sim/2"} and "_members/sim/2" in {
            m.topic for m in seen}
        with alice.subscribe("_members/**") as sub:
            members = [sub.next(5) for _ in range(2)]
            began = time.monotonic()  # polls are in flight now, each waiting up to 20 s at the gateway
            assert sub.next(0.3) is None and time.monotonic() - began < 2  # next() keeps its own timeout
        assert {(m.value["device"], m.value["event"]) for m in members} == {("sim/1", "join"), ("sim/2", "join")}
        assert all(m.retained and m.publisher == "_gw" for m in members)

        # a durable subscriber reads, goes away, comes back: what it missed, once each, in order per publisher
        got = []
        with alice.subscribe("sim/*/tick", durable="dash") as sub:
            got += [sub.next(5) for _ in range(4)]
        away_until = time.monotonic() + 1.25  # ticks keep coming meanwhile (two or three of each device)
        wait_until(lambda: time.monotonic() > away_until, 5, what="time away")
    assert fleet.stop(fleet.gateway) == 130  # and the gateway restarts while the subscriber is away
    fleet.start_gateway()
    with fleet.connect("alice") as alice:
        with alice.subscribe("sim/*/tick", durable="dash") as sub:
            assert sub.created is False
            got += [sub.next(10) for _ in range(8)]
        with pytest.raises(InvalidArgument, match="exists with pattern"):
            alice.subscribe("sim/**", durable="dash").open()
    assert not any(m is None for m in got)
    for topic in ("sim/1/tick", "sim/2/tick"):
        mine = [m for m in got if m.topic == topic]
        seqs = [m.seq for m in mine]
        assert len(seqs) >= 3 and seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs  # no loss, no repeat
        assert not any(m.gap or m.late for m in mine[1:])
    positions = [m.pos for m in got]
    assert positions == sorted(set(positions))


@contextlib.contextmanager
def _querying(port: int, every_s: float = 1.0):
    """Discovery queries (`/edge/_sd/query`, as a gateway sends at its start, at 0, 1 and 3 s) on the group every
    `every_s` while the block runs: under loss, a device whose boot announcement and answers to those queries were
    all dropped is otherwise first heard at its renewal, a third of its lease later (10 s of a 30 s lease)."""
    import threading

    from ndn.encoding import InterestParam, make_interest

    from tests.support import McastPeer

    peer, done = McastPeer(port), threading.Event()

    def query() -> None:
        for _ in range(120):  # a query a second for two minutes at most
            peer.send(bytes(make_interest("/edge/_sd/query", InterestParam(lifetime=1000))))
            if done.wait(every_s):
                return
    thread = threading.Thread(target=query, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(5)
        peer.close()


def _ticked(client: BlockingClient, n: int) -> bool:
    with client.subscribe("sim/*/tick") as sub:
        return all(sub.next(3) is not None for _ in range(n))


# -- sleeping devices



@pytest.mark.parametrize("tick, reports", [("0", 0), ("0.25", 4)])
def test_sim_tick_sets_how_often_the_devices_publish(fleet, peer, tick, reports):
    """`ndn-edge sim --tick S`: a publication every S seconds (no gateway runs, so none is acknowledged and each
    one is sent again: count distinct ones); `--tick 0` publishes nothing, announcements still go out."""
    fleet.start_sim(1, "--tick", tick)

    def announcement(d: bytes) -> bool:
        return d[:1] == b"\x05" and b"\x08\x03_sd\x08\x03ann" in d[:40]
    assert peer.recv_until(announcement, 20.0), fleet.log("sim")
    seen: set[bytes] = set()

    def report(d: bytes) -> bool:
        if d[:1] == b"\x05" and b"\x08\x04_pub" in d[:40]:
            seen.add(d[:60])  # the name, with its parameters digest
        return len(seen) >= max(reports, 1)
    # At the 1 s default, 4 distinct publications take more than 3 s; at 0.25 s they take about 1 s.
    peer.recv_until(report, 3.0 if reports else 2.0)
    assert len(seen) >= reports if reports else not seen

@pytest.mark.long(seconds=9)
def test_calls_queued_for_a_sleeping_device_are_delivered_when_it_wakes_or_expire(fleet):
    fleet.clients(alice="sim/**")
    fleet.start_gateway()
    fleet.start_sim(1, "--sleepy", "3")
    with fleet.connect("alice") as alice:
        fleet.wait_online(alice, ["/edge/sim/1"])

        def asleep():
            d = alice.devices()[0]
            return d if d["state"] == "asleep" else None
        device = wait_until(asleep, 10, interval_s=0.05, what="the device asleep")
        assert device["sleep_until"] > time.time() + 1
        code, out, _ = fleet.cli("devices", "--as", "alice")
        assert code == 0 and "asleep until" in out
        with pytest.raises(Unavailable, match="asleep until"):
            alice.call("sim/1/echo", {"now": 1})
        kept = alice.call("sim/1/echo", {"queued": 1}, persist=True, ttl=20)
        counted = alice.call("sim/1/counter", persist=True)
        expiring = alice.call("sim/1/echo", {"late": 1}, persist=True, ttl=0.5)
        assert kept.state == "queued" and counted.state == "queued"
        assert kept.result(timeout=15) == {"queued": 1}
        assert counted.result(timeout=5) == 1
        with pytest.raises(DeadlineExceeded, match="expired after its ttl"):
            expiring.result(timeout=5)
        assert alice.call("sim/1/counter", persist=True).result(timeout=15) == 2  # queued calls ran once each


# -- exactly once under loss


@pytest.mark.soak(seconds=22)
def test_under_loss_calls_run_once_and_publications_arrive_once_in_order(fleet):
    """`--loss 0.3` on the device (seeded: the same drops on every run): 60 `counter` calls run exactly 60 times,
    while 200 messages published in a burst reach a durable subscriber (away for a while in the middle) all, once
    each, in order. (`python -m bench pubsub` runs the longer loads.)"""
    calls, burst = 60, 200
    fleet.clients(alice="sim/**", admin="**")
    fleet.start_gateway()
    # A 30 s lease: renewals every 10 s make up for a lost boot announcement. Two lost in a row (p = 0.09) let
    # the lease lapse for a moment; a call then fails fast with UNAVAILABLE, which means nothing was sent to the
    # device, so the callers below retry it.
    fleet.start_sim(1, "--loss", "0.3", "--seed", "1", "--lease-ms", "30000")
    with fleet.connect("alice", timeout=20) as alice, _querying(fleet.port):
        fleet.wait_online(alice, ["/edge/sim/1"], timeout_s=40)
        with alice.subscribe("sim/1/burst", durable="all") as sub:
            assert sub.next(0.5) is None  # created before the burst: nothing retained yet

    async def scenario() -> tuple[list[list[int]], list, int]:
        calls_done = asyncio.Event()

        async def call(c: Client, name: str, args: dict | None = None) -> object:
            for _ in range(100):
                try:
                    return await c.call(name, args)
                except Unavailable:  # failed fast: the device was not called
                    await asyncio.sleep(0.2)
            raise AssertionError(f"{name} unavailable for 20 s")

        async def subscriber() -> list:
            got = []
            async with Client.connect(home=fleet.home, client="alice", timeout=20) as c:
                async with c.subscribe("sim/1/burst", durable="all") as sub:
                    while len(got) < burst // 2:
                        got.append(await sub.next(30))
            await calls_done.wait()  # away while the calls run; the gateway keeps its messages
            async with Client.connect(home=fleet.home, client="alice", timeout=20) as c:
                async with c.subscribe("sim/1/burst", durable="all") as sub:
                    while len(got) < burst and got[-1] is not None:
                        got.append(await sub.next(30))
                    assert await sub.next(1.0) is None  # nothing more: no duplicate after acknowledgement
            return got

        # 30 % loss each way: a call needs room for many retransmissions (a deadline would end the run, as a
        # call cannot be retried without maybe running twice), also when the machine is busy
        async with Client.connect(home=fleet.home, client="alice", timeout=45) as c:
            assert await call(c, "sim/1/burst", {"n": burst}) == burst
            reader = asyncio.create_task(subscriber())

            async def worker() -> list[int]:
                return [await call(c, "sim/1/counter") for _ in range(calls // 4)]
            try:
                runs = await asyncio.gather(*(worker() for _ in range(4)))
            finally:
                calls_done.set()
            got = await reader
            after = await call(c, "sim/1/counter")
        return runs, got, after

    runs, got, after = run(scenario, timeout_s=150)
    assert sorted(v for r in runs for v in r) == list(range(1, calls + 1))  # each value once: each call ran once
    assert after == calls + 1  # the device's counter stood at exactly `calls`
    assert [m.value for m in got] == list(range(1, burst + 1)), [(m.value, m.seq, m.gap, m.late,
                                                                  m.pos) for m in got[:8]]
    assert not any(m.gap or m.late for m in got[1:])
    with fleet.connect("admin") as admin:
        models = admin.metrics()["patterns"]
    assert models["reports_duplicates"] > 0  # acknowledgements were lost, and the retransmissions recognised
    assert models["pubsub_pushed"] > 0  # the subscriber took messages pushed to its answered polls
    assert "simulating 3000/10000 datagram loss, seed 1" in (fleet.home / "sim" / "1" / "device.log").read_text()
