"""Publications leaving a gateway for the federation's stream, over a real nats-server with JetStream on
127.0.0.1, in one process: the report intake and pub/sub of tests/intake.py wired to a `bridge.Bridge` on a real
`NatsLink`. A device's report is acknowledged only once its publication is in the stream, and a publication
exported by two gateways (a takeover) is stored once (docs/operations.md "Failover on one LAN")."""
from __future__ import annotations

import asyncio
import os
import subprocess

import pytest

from ndn_edge.federation import bridge as bridge_mod
from tests.federation import nats_server
from tests.intake import SentFace, intake_and_pubsub, publication, store_with_alice
from tests.support import free_tcp_port, run_scenario, stop_process, until

DEVICE = "/edge/sim/1"


class Placement:
    def __init__(self) -> None:
        self.served = {DEVICE}

    def hears(self, device: str) -> bool:
        return device == DEVICE


@pytest.fixture
def jetstream_url(tmp_path):
    port = free_tcp_port()
    proc = subprocess.Popen([nats_server(), "-js", "-sd", str(tmp_path / "js"), "-a", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield f"nats://127.0.0.1:{port}"
    finally:
        stop_process(proc)


def test_a_report_is_acknowledged_only_once_its_publication_is_in_the_stream(tmp_path, jetstream_url, monkeypatch):
    from ndn_edge.federation.config import FederationConfig
    from ndn_edge.federation.keys import FederationKey
    from ndn_edge.federation.link import NatsLink

    monkeypatch.setattr(bridge_mod, "ACK_WAIT_S", 0.2)
    monkeypatch.setattr(bridge_mod, "CHECK_S", 0.05)
    fed_key = os.urandom(32)
    device_key = os.urandom(32)

    async def scenario() -> None:
        links = [NatsLink(FederationConfig("0a1b2c3d", "edge", (jetstream_url,), fed_key, tag)) for tag in
                 ("aaaa", "bbbb")]
        store = store_with_alice(tmp_path / "a.db", device_key)
        face = SentFace()
        intake, pubsub = await intake_and_pubsub(store, face)
        bridges = []
        try:
            for link in links:
                await link.start()
                assert await link.wait_connected(20)
            bridges = [bridge_mod.Bridge(links[0], FederationKey(fed_key), pubsub, Placement(), tag="aaaa",
                                         site="edge", intake=intake)]
            await bridges[0].start()
            js = links[0].js
            stream = links[0].config.stream

            async def stored() -> int:
                return int((await js.stream_info(stream)).state.messages)

            # No stream to take the publication (JetStream refuses it): the report is processed (delivered here)
            # but not acknowledged, and its resend is not acknowledged either.
            await js.delete_stream(stream)
            report = publication(device_key, 1, 1)
            intake.on_interest(report)
            await until(lambda: bridges[0].counters["export_retries"] >= 2, 10, "the publication sent again")
            intake.on_interest(report)  # the device's resend
            await until(lambda: intake.counters["duplicates"] == 1, 5, "the resend taken")
            assert face.sent == [] and intake.counters["processed"] == 1
            # The stream back: the next try is confirmed, then (and only then) the device gets one acknowledgement.
            await links[0]._ensure_stream()
            await until(lambda: face.sent, 10, "the acknowledgement")
            assert await stored() == 1
            assert len(set(face.sent)) == 1  # one acknowledgement (sent twice: the resend counts as a lost one)
            assert bridges[0].counters["exported"] == 1

            # A standby that took the device over exports the same publication (the device sent it again): the
            # stream keeps one copy.
            standby = bridge_mod.Bridge(links[1], FederationKey(fed_key), _Exporter(), Placement(), tag="bbbb",
                                        site="edge")
            bridges.append(standby)
            await standby.start()
            msg = {"topic": "sim/1/t", "publisher": "sim/1", "value": 1, "seq": 1, "boot": "b00710ad",
                   "time": 0.0}
            standby._export(msg, True)
            gate = standby.gate()
            assert gate is not None and await asyncio.wait_for(gate, 10) is True
            assert await stored() == 1
            standby._export(dict(msg, seq=2, value=2), True)
            assert await asyncio.wait_for(standby.gate(), 10) is True  # type: ignore[arg-type]
            assert await stored() == 2
        finally:
            for b in bridges:
                await b.stop()
            await pubsub.stop()
            await intake.stop()
            for link in links:
                await link.stop()
            store.close()
    run_scenario(scenario, timeout_s=60)


class _Exporter:
    """A pub/sub stand-in for a bridge that only exports (its `exporter` is set and unset by the bridge)."""

    exporter = None

    def deliver(self, message, retain) -> None:
        pass
