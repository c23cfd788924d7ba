"""Observability (issue 14): device logs from the board to `ndn-edge logs`, W3C trace context end to end with
OpenTelemetry spans, and Prometheus metrics scraped by a real Prometheus.

In process: the trace context and the call statistics; the device log intake over a real store (bounds, rate,
malformed reports, gaps, the gateway's own log); spans of a call, a cache hit, a retried call and a gather, with
the SDK's in-memory exporter, against a board on the real MicroPython unix port. On MicroPython: the board's log
ring, its reports and the automatic entry of a handler that raised. End to end: a gateway process and a sim
device, a real Prometheus (Debian's `prometheus`) scraping it, and a failed call whose device log line and trace
id reach the CLI, the HTTP API and the gateway's log.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import urllib.parse

import cbor2
import pytest

from ndn_edge.observability import trace as tracing
from ndn_edge.observability.stats import OTHER, CallStats
from tests.httpclient import HttpCluster, request
from tests.intake import SentFace, drain, store_with_alice
from tests.support import ROOT, free_tcp_port, free_udp_port, start_board, until, wait_until

PROMETHEUS = os.environ.get("NDN_EDGE_PROMETHEUS", "prometheus")
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"


# -- trace context and call statistics


def test_traceparent_is_parsed_strictly_and_becomes_24_bytes_before_the_arguments():
    good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    ctx = tracing.parse(good)
    assert ctx == ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", 1) and ctx.header() == good
    for bad in (None, 42, "", good.upper(), good + "x", "01" + good[2:], good.replace("4bf9", "zzzz"),
                f"00-{'0' * 32}-00f067aa0ba902b7-01", f"00-4bf92f3577b34da6a3ce929d0e0e4736-{'0' * 16}-01"):
        assert tracing.parse(bad) is None, bad
    head = tracing.device_prefix(ctx.trace_id, ctx.span_id)
    assert head[:2] == b"\x58\x18" and cbor2.loads(head) == bytes.fromhex(ctx.trace_id + ctx.span_id)
    fresh = tracing.new()
    assert tracing.parse(fresh.header()) == fresh and fresh.child().trace_id == fresh.trace_id


def test_call_statistics_label_only_provisioned_names():
    known = {("/edge/sim/1", "echo"), ("/edge/sim/1", "_health")}
    stats = CallStats(known=lambda device, service: (device, service) in known, max_series=3)
    stats.record("/edge/sim/1", "echo", "OK", 0.0002)
    stats.record("/edge/sim/1", "echo", "INTERNAL", 0.003)
    for i in range(100):  # made-up names (a client allowed `**`): one series, never a hundred
        stats.record(f"/edge/nobody/{i}", f"svc{i}", "NOT_FOUND", 0.0001)
    assert stats.counts == {("/edge/sim/1", "echo", "OK"): 1, ("/edge/sim/1", "echo", "INTERNAL"): 1,
                            (OTHER, OTHER, "NOT_FOUND"): 100}
    assert set(stats.durations.series) == {("/edge/sim/1", "echo"), (OTHER, OTHER)}
    (_, buckets, total), = [h for h in stats.durations.cumulative() if h[0] == ("/edge/sim/1", "echo")]
    assert buckets[-1] == ("+Inf", 2) and dict(buckets)["0.00025"] == 1 and total == pytest.approx(0.0032)


# -- device logs on the host


def log_report(key: bytes, seq: int, entries: list, *, boot: str = "b00710ad", dropped: int = 0,
               params: object = None, device: str = "/edge/sim/1") -> bytes:
    """A log report as the device sends it: /edge/_log/<digest>, signed with the device key and counter `seq`."""
    from ndn.encoding import InterestParam, make_interest

    from ndn_edge.wire import packets as wire

    body = cbor2.dumps(params if params is not None else {"boot": boot, "dropped": dropped, "entries": entries})
    signer = wire.SeqSigner(wire.key_name(device, key), key, seq)
    return bytes(make_interest("/edge/_log", InterestParam(lifetime=1000), body, signer=signer))


def test_device_logs_are_stored_bounded_rate_limited_with_gaps_and_sent_to_the_gateway_log(tmp_path, caplog,
                                                                                            monkeypatch):
    from ndn_edge.devices import reports
    from ndn_edge.observability import devlogs

    monkeypatch.setattr(devlogs, "KEEP_PER_DEVICE", 40)
    monkeypatch.setattr(devlogs, "PRUNE_EVERY", 10)
    monkeypatch.setattr(devlogs, "BURST", 60)
    monkeypatch.setattr(devlogs, "RATE_PER_S", 0.001)
    key = os.urandom(32)
    trace = bytes(range(24))

    async def scenario() -> None:
        store = store_with_alice(tmp_path / "store.db", key)
        store.add_device("/edge/other/1", os.urandom(32), "edge")
        face = SentFace()
        intake = reports.ReportIntake(store, face, "edge")
        logs = devlogs.DeviceLogs(store, site="edge", intake=intake)
        logs.start()
        intake.handlers[reports.LOG] = logs.on_report
        await intake.start()
        caplog.set_level(logging.INFO, logger="ndn_edge.devicelog")
        intake.on_interest(log_report(key, 10, [[1, 5, 20, "booted"], [2, 0, 40, "boom", trace]]))
        intake.on_interest(log_report(key, 11, [[5, 0, 30, "after a gap\nwith a newline"]]))  # 3 and 4 lost
        intake.on_interest(log_report(key, 12, [], params={"boot": 7, "entries": "x"}))  # malformed: acked
        intake.on_interest(log_report(key, 13, [[6, 0, 20, "ok"], ["bad"], [7, -1, 20, "bad age"],
                                                [8, 0, 20, "bad trace", b"short"]]))
        await drain(intake)
        entries, cursor = logs.query(visible=lambda rel: True)
        assert [(e["seq"], e["level"], e.get("gap")) for e in entries] == [(1, "info", None), (2, "error", None),
                                                                             (5, "warning", 2), (6, "info", None)]
        assert entries[1]["trace_id"] == trace[:16].hex() and entries[1]["span_id"] == trace[16:].hex()
        assert entries[0]["device"] == "sim/1" and entries[0]["time"] <= entries[1]["time"]
        assert logs.counters["malformed"] == 4 and logs.counters["lost"] == 2 and intake.counters["acks"] >= 4
        # every report was acknowledged, the malformed one too: resending it would not make it valid
        assert len(set(face.sent)) == 4
        # the gateway's own log: one event per entry, at the device's level, the message quoted
        lines = [r for r in caplog.records if r.getMessage() == "device_log"]
        assert [r.levelno for r in lines] == [logging.INFO, logging.ERROR, logging.WARNING, logging.INFO]
        assert lines[1].fields["trace_id"] == trace[:16].hex() and lines[2].fields["gap"] == 2
        from ndn_edge.logs import KeyValueFormatter

        assert "\n" not in KeyValueFormatter().format(lines[2])  # a device cannot forge a log line

        # a flood: the bucket (60 at once, then next to nothing) stores 56 more; the rest is counted, and acked
        flood = [[9 + i, 0, 20, f"line {i}"] for i in range(64)]
        intake.on_interest(log_report(key, 14, flood))
        intake.on_interest(log_report(key, 15, [[73 + i, 0, 20, "more"] for i in range(64)]))
        intake.on_interest(log_report(key, 16, [[0, 0, 20, "x"]] * 65))  # more entries than a report may hold
        await drain(intake)
        assert logs.counters["rate_limited"] == 128 - 56 and logs.counters["malformed"] == 5
        stored = store.query("SELECT COUNT(*) FROM device_logs")[0][0]
        assert stored <= 40 + 10  # pruned to the newest KEEP_PER_DEVICE (checked every PRUNE_EVERY)

        # reading: after a cursor, the tail, by level, by trace, only devices the caller may reach
        tail, newest = logs.query(visible=lambda rel: True, tail=True, limit=3)
        assert [e["seq"] for e in tail] == [62, 63, 64] and newest == tail[-1]["id"]
        later, _ = logs.query(visible=lambda rel: True, after=cursor, limit=2)  # the oldest kept, in order
        assert [e["seq"] for e in later] == [later[0]["seq"], later[0]["seq"] + 1] and later[0]["seq"] > 9
        assert logs.query(visible=lambda rel: True, trace_id=trace[:16].hex())[0] == []  # pruned by now
        assert logs.query(visible=lambda rel: rel[0] == "other")[0] == []
        assert logs.query(visible=lambda rel: True, pattern=("other", "*"))[0] == []
        await intake.stop()
        store.close()

    asyncio.run(asyncio.wait_for(scenario(), 20))


# -- device logs on the board (real MicroPython)


BOARD_LOGS = """
import time
from device import Device

class Face:  # records what is sent; the outbox's report socket opens on 127.0.0.1 but sends nothing
    iface = "127.0.0.1"
    def __init__(self, face):
        self.buf, self.mv, self.sock, self.sent = face.buf, face.mv, 1, []
    def read(self):
        return 0
    def send(self, data):
        self.sent.append(bytes(data))
        return True
    def send_from(self, sock, data, to=None):
        return self.send(data)

dev = Device("/edge/t/1", "00" * 32, state_dir=".", log_bytes=%(size)d)
import sys
print("loaded" if "device.log" in sys.modules else "not loaded")
dev.setup()
dev._face = face = Face(dev._face)
dev.log("info", "first")  # nothing in flight: sent at once
ob = dev._outbox
print(len(ob.items), len(face.sent))
for i in range(40):  # in flight: kept, the oldest dropped once the ring is full
    dev.log(20, "line %%d %%s" %% (i, "\\u00e9" * 60))
lg = dev._logs
print(lg.seq, lg.dropped, len(ob.items))
ob.items.clear()  # as if acknowledged
lg.next_ms = time.ticks_ms()
lg.tick(time.ticks_ms())
print(len(ob.items), lg.used)

@dev.service("boom")
def boom():
    dev.log("warning", "about to fail")
    raise RuntimeError("kaput")

dev._calling = True
dev._cur_svc = dev._svc[b"boom"]
dev._cur_name, dev._cur_pit = b"\x08\x01x", None
dev._pkt.next = 0
dev._face.buf[100:124] = bytes(range(24))
dev._tp = 100
try:
    boom()
except Exception as e:
    dev._fault(e)
print(lg.seq, dev.errors)
dev.log_print(True)
print("captured")
dev.log_print(False)
print(lg.seq)
dev._logs.capture(False)
"""


def test_the_board_keeps_its_newest_entries_and_sends_them_one_report_at_a_time(run_mp):
    out = run_mp(BOARD_LOGS % {"size": 600}).splitlines()
    assert out[0] == "not loaded"  # no code, no buffer until the first entry
    assert out[1] == "1 1"  # the first entry went out at once, in one report
    seq, dropped, pending = map(int, out[2].split())
    assert seq == 41 and dropped > 20 and pending == 1  # ring full: oldest dropped, still one report in flight
    sent_after_ack, used = map(int, out[3].split())
    assert sent_after_ack == 1 and used > 0  # the next report, a batch; what did not fit waits
    assert out[4:] == ["43 1", "captured", "44"]  # logged, the error logged, then print() captured


def test_a_handler_that_raised_is_logged_with_its_calls_trace_over_the_air(make_board, peer):
    """The board app on MicroPython, a call to `fail` with a trace context: the error reply, then the `_log`
    report with the entry `fail: INTERNAL: RuntimeError: boom` and the trace id and span id the call carried."""
    from ndn_edge.wire import packets as wire
    from tests.support import is_data_for, report_of

    board = make_board()
    board.start(peer)
    trace = bytes(range(1, 25))
    signer = wire.InterestSigner(board.key, wire.encoded_name(wire.key_name(board.name, board.key)))
    packet = wire.call_interest(signer, b"".join(wire.name_components(f"{board.name}/fail")), b"\xa0", 1,
                                trace=tracing.DEVICE_HEAD + trace)
    from ndn.encoding import Name, parse_interest

    final = parse_interest(packet, with_tl=True)[0]
    peer.send(packet)
    reply = peer.recv_until(is_data_for(final), 5.0)
    assert reply is not None and wire.parse_reply(reply, board.key).code == "INTERNAL"
    got = peer.recv_until(report_of(board, "_log"), 5.0)
    assert got is not None, "no log report"
    _, params, _ = got
    (seq, age_ms, level, text, tp), = params["entries"]
    assert (seq, level, text, tp) == (1, 40, "fail: INTERNAL: RuntimeError: boom", trace) and age_ms >= 0
    assert isinstance(params["boot"], str) and params["dropped"] == 0
    # a call with a trace context and arguments: the arguments are the map after it
    packet = wire.call_interest(signer, b"".join(wire.name_components(f"{board.name}/add")),
                                cbor2.dumps({"a": 2, "b": 3}), 2, trace=tracing.DEVICE_HEAD + trace)
    peer.send(packet)
    reply = peer.recv_until(is_data_for(parse_interest(packet, with_tl=True)[0]), 5.0)
    assert reply is not None and wire.parse_reply(reply, board.key).value == 5
    assert Name.to_str(final[:-1]) == f"{board.name}/fail"


# -- traces (OpenTelemetry SDK, in-memory exporter)


CLIENT_SPAN = "00f067aa0ba902b7"


def test_spans_of_a_call_a_cache_hit_a_retried_call_a_failed_call_and_a_gather(make_board, peer, store, mcast_port):
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from ndn_edge import names
    from ndn_edge.clients.verbs import Caller, Verbs
    from ndn_edge.devices.side import DeviceSide
    from ndn_edge.observability.hub import Observability, ObservabilityOptions
    from ndn_edge.patterns.hub import Patterns

    board = make_board()
    exporter = InMemorySpanExporter()
    caller = Caller("alice", (names.parse_pattern("**"),))

    def traceparent() -> str:
        return f"00-{os.urandom(16).hex()}-{CLIENT_SPAN}-01"

    def spans(trace_id: str) -> dict[str, list]:
        out: dict[str, list] = {}
        for span in exporter.get_finished_spans():
            if f"{span.context.trace_id:032x}" == trace_id:
                out.setdefault(span.name, []).append(span)
        return out

    async def scenario() -> None:
        side = DeviceSide(store, port=mcast_port)
        await side.start()
        patterns = Patterns(store, side, site="edge")
        await patterns.start()
        obs = Observability(store, side, patterns, site="edge",
                            options=ObservabilityOptions(health_interval_s=0, span_exporter=exporter))
        await obs.start()
        verbs = Verbs(side, patterns, site="edge", obs=obs)
        try:
            await start_board(board, peer)
            await until(lambda: side.is_online(board.name) and side.services(board.name), 10, "the board")

            async def call(service: str, tp: str, args: dict | None = None) -> object:
                result = verbs.run(caller, "call", ("lab", "b1", service), {"args": args, "timeout_ms": 3000,
                                                                            "traceparent": tp})
                return await result if asyncio.iscoroutine(result) else result

            # a call: client request -> cache decision, device request -> one attempt
            tp = traceparent()
            await call("echo", tp, {"x": 1})
            got = spans(tp[3:35])
            (root,), (cache,), (request,), (attempt,) = (got["ndn_edge.call"], got["ndn_edge.cache"],
                                                         got["ndn_edge.device_request"], got["ndn_edge.attempt"])
            assert f"{root.parent.span_id:016x}" == CLIENT_SPAN and root.parent.is_remote
            assert cache.parent.span_id == root.context.span_id == request.parent.span_id
            assert attempt.parent.span_id == request.context.span_id
            assert root.attributes["ndn_edge.device"] == board.name and root.attributes["ndn_edge.service"] == "echo"
            assert root.attributes["ndn_edge.code"] == "OK" and root.attributes["ndn_edge.client"] == "alice"
            assert cache.attributes["ndn_edge.cache.result"] == "miss"
            assert attempt.attributes["ndn_edge.attempt"] == 1 and attempt.attributes["ndn_edge.outcome"] == "reply"

            # a cache hit: the decision only, no device request
            await call("temperature", traceparent())
            tp = traceparent()
            await call("temperature", tp)
            got = spans(tp[3:35])
            assert got["ndn_edge.cache"][0].attributes["ndn_edge.cache.result"] == "hit"
            assert "ndn_edge.device_request" not in got and got["ndn_edge.call"][0].attributes["ndn_edge.cached"]

            # a retried call under loss: the first transmission is lost on the way, the second answered
            send, lost = side.face.send, []

            def lossy(data: bytes) -> None:
                if not lost and data[:1] == b"\x05" and b"counter" in data[:80]:
                    lost.append(data)
                    return
                send(data)
            side.face.send = lossy  # type: ignore[method-assign]
            tp = traceparent()
            assert await call("counter", tp) == cbor2.dumps({"value": 1, "cached": False, "age_ms": 0,
                                                             "stale": False})
            side.face.send = send  # type: ignore[method-assign]
            got = spans(tp[3:35])
            attempts = sorted(got["ndn_edge.attempt"], key=lambda s: s.attributes["ndn_edge.attempt"])
            assert [(a.attributes["ndn_edge.attempt"], a.attributes["ndn_edge.outcome"]) for a in attempts] == [
                (1, "no_reply"), (2, "reply")] and lost
            assert all(a.parent.span_id == got["ndn_edge.device_request"][0].context.span_id for a in attempts)
            assert attempts[0].end_time <= attempts[1].start_time

            # a call that failed on the device: an error span, and the device's log entry names its span
            tp = traceparent()
            with pytest.raises(Exception, match="boom"):
                await call("fail", tp)
            got = spans(tp[3:35])
            root = got["ndn_edge.call"][0]
            assert root.attributes["ndn_edge.code"] == "INTERNAL" and not root.status.is_ok
            entries = await until(lambda: obs.logs.query(visible=lambda rel: True, trace_id=tp[3:35])[0], 5,
                                  "the device's log entry")
            assert entries[0]["message"] == "fail: INTERNAL: RuntimeError: boom"
            assert entries[0]["span_id"] == f"{got['ndn_edge.device_request'][0].context.span_id:016x}"

            # a gather: one span for it, one call under it per device
            tp = traceparent()
            result = await verbs.run(caller, "gather", (), {"pattern": "lab/*/echo", "args": {"g": 1},
                                                            "timeout_ms": 3000, "traceparent": tp})
            assert result["results"][0]["value"] == {"g": 1}
            got = spans(tp[3:35])
            (gather,), (child,) = got["ndn_edge.gather"], got["ndn_edge.call"]
            assert f"{gather.parent.span_id:016x}" == CLIENT_SPAN and child.parent.span_id == gather.context.span_id
            assert child.attributes["ndn_edge.device"] == board.name and child.attributes["ndn_edge.code"] == "OK"
            assert got["ndn_edge.device_request"][0].parent.span_id == child.context.span_id
        finally:
            await obs.stop()
            await patterns.stop()
            await side.stop()

    asyncio.run(asyncio.wait_for(scenario(), 40))


# -- end to end: a gateway process, a sim device on MicroPython, a real Prometheus


def _prometheus_or_skip() -> str:
    """Debian's `prometheus`; a missing one fails in CI (`.ci/run` installs it) and skips elsewhere."""
    path = shutil.which(PROMETHEUS)
    if path is None:
        if os.environ.get("CI") or os.environ.get("NDN_EDGE_REQUIRE_MICROPYTHON"):
            pytest.fail(f"{PROMETHEUS} is missing: apt-get install -y prometheus (.ci/run does)")
        pytest.skip(f"{PROMETHEUS} is missing")
    return path


def _metric_names(exposition: str) -> set[str]:
    return {line.split("{")[0].split(" ")[0] for line in exposition.splitlines() if line and line[0] != "#"}


@pytest.fixture
def http_cluster(tmp_path, micropython):
    cluster = HttpCluster(tmp_path, free_udp_port())
    yield cluster
    cluster.close()


@pytest.mark.long
def test_a_real_prometheus_scrapes_the_gateway_and_finds_the_calls(http_cluster, tmp_path):
    prometheus = _prometheus_or_skip()
    cluster = http_cluster
    cluster.clients(alice="sim/**", ops="_gw/metrics")
    ops = cluster.token("ops")
    cluster.token("alice")
    cluster.start_http_gateway("--metrics", "127.0.0.1:0", "--health-interval", "1")
    cluster.start_sim(1, "--tick", "0")
    metrics_url = wait_until(lambda: json.loads((cluster.home / "metrics.json").read_text())["url"]
                             if (cluster.home / "metrics.json").exists() else None, 10, what="HOME/metrics.json")
    with cluster.connect("alice") as client:
        cluster.wait_online(client, ["/edge/sim/1"])
        for i in range(7):
            assert client.call("sim/1/echo", {"i": i}) == {"i": i}
        for _ in range(2):
            with pytest.raises(Exception, match="failed on purpose"):
                client.call("sim/1/fail")

    # /metrics on the HTTP API: a token whose client may read metrics, nothing for anyone else
    assert cluster.get("/metrics", client="nobody").status == 401
    assert cluster.get("/metrics", client="alice").status == 403
    page = cluster.get("/metrics", client="ops")
    assert page.status == 200 and page.headers["content-type"].startswith("text/plain")
    text = page.body.decode()
    assert 'ndn_edge_calls_total{code="OK",device="sim/1",service="echo"} 7.0' in text
    assert 'ndn_edge_calls_total{code="INTERNAL",device="sim/1",service="fail"} 2.0' in text
    # every family the Grafana dashboard uses is served
    served = _metric_names(wait_until(lambda: (lambda t: t if "ndn_edge_board_oom_total{" in t else None)(
        request(metrics_url.rsplit("/", 1)[0], "GET", "/metrics").body.decode()), 10, what="health metrics"))
    used = set(re.findall(r"ndn_edge_[a-z_]+", DASHBOARD.read_text()))
    assert used and used <= served, used - served

    # a real Prometheus, two jobs: the metrics listener (no token) and the HTTP API (bearer token)
    web = free_tcp_port()
    host_port = urllib.parse.urlsplit(metrics_url).netloc
    api_port = urllib.parse.urlsplit(cluster.url).netloc
    config = tmp_path / "prometheus.yml"
    config.write_text(f"""global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: gateway
    static_configs: [{{targets: ['{host_port}']}}]
  - job_name: gateway-api
    authorization: {{credentials: '{ops}'}}
    static_configs: [{{targets: ['{api_port}']}}]
""")
    with open(tmp_path / "prometheus.log", "wb") as out:
        proc = subprocess.Popen([prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{web}"], stdout=out, stderr=subprocess.STDOUT)
    try:
        def query(expr: str) -> list:
            reply = request(f"http://127.0.0.1:{web}", "GET",
                            "/api/v1/query?" + urllib.parse.urlencode({"query": expr}), timeout_s=5)
            return reply.json()["data"]["result"] if reply.status == 200 else []

        def scraped() -> list | None:
            if proc.poll() is not None:
                raise AssertionError((tmp_path / "prometheus.log").read_text()[-2000:])
            try:
                got = query('ndn_edge_calls_total{device="sim/1",service="echo",code="OK"}')
            except OSError:  # not listening yet
                return None
            return got if {r["metric"]["job"] for r in got} == {"gateway", "gateway-api"} else None

        found = wait_until(scraped, 40, interval_s=0.25, what="Prometheus scraping both jobs")
        assert all(r["value"][1] == "7" for r in found)
        failed = query('ndn_edge_calls_total{job="gateway",service="fail"}')
        assert [(r["metric"]["code"], r["value"][1]) for r in failed] == [("INTERNAL", "2")]
        assert query('ndn_edge_devices{job="gateway",state="online"}')[0]["value"][1] == "1"
        assert float(query('ndn_edge_board_mem_free_bytes{job="gateway",device="sim/1"}')[0]["value"][1]) > 0
        p99 = query('histogram_quantile(0.99, sum by (le) (ndn_edge_device_round_trip_seconds_bucket{job="gateway"}))')
        assert 0 < float(p99[0]["value"][1]) < 5
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_failed_calls_device_log_and_trace_id_reach_the_host(http_cluster):
    cluster = http_cluster
    cluster.clients(alice="sim/**")
    token = cluster.token("alice")
    cluster.start_http_gateway()
    cluster.start_sim(1, "--tick", "0")
    with cluster.connect("alice") as client:
        cluster.wait_online(client, ["/edge/sim/1"])

    # the CLI: the error, the trace id, the timelines, the device's entry of that call
    code, out, err = cluster.cli("call", "sim/1/fail", "--trace", "--as", "alice")
    assert code == 9 and "INTERNAL: RuntimeError: failed on purpose" in err
    trace_id = re.search(r"^trace ([0-9a-f]{32})$", out, re.M).group(1)
    assert re.search(r"gateway\s+attempt\s+1", out) and re.search(r"client\s+reply", out)
    assert re.search(rf"sim/1  ERROR\s+fail: INTERNAL: RuntimeError: failed on purpose  \[trace {trace_id}\]", out)
    code, out, _ = cluster.cli("logs", "sim/1", "--json", "--level", "error", "--as", "alice")
    entries = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [(e["trace_id"], e["level"]) for e in entries] == [(trace_id, "error")]
    # ... and the gateway's own log, with the device's name and the trace id
    wait_until(lambda: re.search(rf"event=device_log device=sim/1 .*trace_id={trace_id}",
                                 cluster.log("gateway", "err")), 5, what="the device_log line in the gateway's log")

    # the HTTP API: the caller's traceparent is the call's, the entry is found by its trace id
    tp = "00-" + os.urandom(16).hex() + "-" + os.urandom(8).hex() + "-01"
    reply = cluster.post("/api/v1/call/sim/1/fail", {"why": "over http"}, headers={"traceparent": tp})
    assert reply.status == 500 and reply.headers["traceresponse"] == tp
    page = cluster.get(f"/api/v1/logs?device=sim/*&trace={tp[3:35]}&wait=5").json()
    assert [e["message"] for e in page["entries"]] == ["fail: INTERNAL: RuntimeError: failed over http"]
    assert cluster.get("/api/v1/logs?device=nope/*&level=bogus").status == 400

    # following: `ndn-edge logs -f` and the event stream see the next entries as they come
    follow = subprocess.Popen([sys.executable, "-m", "ndn_edge.tools", "--home", str(cluster.home), "logs", "-f",
                               "sim/1", "--as", "alice"], cwd=ROOT, env=cluster.env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    from tests.httpclient import EventStream

    stream = EventStream(cluster.url, "/api/v1/events?logs=sim/**&members=false", token)
    try:
        assert stream.status == 200
        with cluster.connect("alice") as client:
            wait_until(lambda: follow.poll() is None and _printed(follow, "failed over http"), 10,
                       what="logs -f printing the stored entries")
            assert client.call("sim/1/counter") == 1
        event = stream.until(lambda name, _id, data: name == "log", 10, "a log event")
        assert event[2]["message"] == "counter now 1" and event[2]["device"] == "sim/1"
        assert wait_until(lambda: _printed(follow, "counter now 1"), 10, what="logs -f printing the new entry")
    finally:
        stream.close()
        follow.terminate()
        follow.communicate(timeout=10)


_seen_output: dict[int, str] = {}


def _printed(proc: subprocess.Popen, text: str) -> bool:
    """True once `proc` printed `text` (reads what its pipe holds, without blocking)."""
    import selectors

    fd = proc.stdout.fileno()
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while sel.select(0.05):
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            _seen_output[proc.pid] = _seen_output.get(proc.pid, "") + chunk.decode(errors="replace")
    return text in _seen_output.get(proc.pid, "")


def test_bad_usage_of_logs_and_trace_is_one_line_and_exit_2(tmp_path, capsys):
    from ndn_edge.tools.cli import main

    home = str(tmp_path / "home")
    for argv in (["logs", "--since", "last tuesday"], ["logs", "--trace", "zz"], ["logs", "sim/**/x/**"],
                 ["logs", "--level", "loud"], ["logs", "--lines", "0"], ["call", "sim/1/echo", "--trace", "--all"]):
        code = main(["--home", home, *argv])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("ndn-edge: "), (argv, err)
    assert not os.path.exists(home)  # nothing was created or sent
