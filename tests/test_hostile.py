"""Hostile input on every face (issue 11): nothing anyone sends, with or without a key, ends a task, fills a log
or exhausts a shared resource. Each packet of `tests/hostile.py` is sent to a running gateway part; afterwards
the part must still do its job with real MicroPython boards, and each packet must have been counted.
"""
from __future__ import annotations

import asyncio
import logging
import os

from ndn_edge.devices.side import DeviceSide
from ndn_edge.patterns.hub import Models
from tests import hostile
from tests.support import online_with_services, start_board, until
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
        models = Models(store, side, site="edge")
        await models.start()
        try:
            corpus = list(hostile.device_side_corpus())
            for _, datagram in corpus:
                peer.send(datagram)
            await until(lambda: side.directory.counters["malformed"] + side.face.malformed >= 3 and
                        models.intake.counters["malformed"] >= 6, 5.0, "the hostile packets counted")
            tasks = [t for t in side.directory._tasks + [models.intake._task] if t.done()]
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
    from ndn_edge.clients.face import ClientServer
    from ndn_edge.state.store import Store

    store = Store(tmp_path / "gw.db")
    store.add_client("alice", os.urandom(32))

    class NoDevices:
        pass

    async def scenario():
        server = ClientServer(store, NoDevices(), site="edge")
        host, port = await server.start()
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=(host, port))
        try:
            corpus = list(hostile.client_face_corpus())
            for _ in range(200):
                for _, datagram in corpus:
                    transport.sendto(datagram)
            total = 200 * len(corpus)
            await until(lambda: server.stats["received"] >= total and server._inbox.empty(), 10.0, "all read")
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
