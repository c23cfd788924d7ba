"""`python -m bench pubsub`: publish/subscribe fan-out through the gateway.

N simulated devices on MicroPython (`examples/sim_device.py`, default 10) each publish M messages (service `burst`
with `stamp`: each value is `[i, publish time in ms]`, paced by the device's outbox) to one gateway process
(`python -m tools gateway`), and S subscribers in this process (default 10, each its own client and socket) read
them through `Client.subscribe("sim/*/burst")`. Reported: messages per second published and delivered (first
publish to the last message read by the slowest subscriber), end-to-end latency from the device's publish to a
subscriber's receipt (p50, p99; one host, one clock), and what every subscriber got (missing, duplicated, out of
order per publisher), with the gateway's report counters (retransmissions recognised, acknowledgements sent).

    python -m bench pubsub [--devices 10] [--subscribers 10] [--messages 200] [--durable] [--json FILE]

The figure is for the whole path: device outbox pacing (at most 12 reports unacknowledged, one per 10 ms tick),
the multicast group shared by all devices (each device also reads every other device's reports), the gateway's
intake (one store transaction per batch), fan-out, and long-polling clients.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GROUP = "224.0.23.170"


@dataclass
class Options:
    devices: int = 10
    subscribers: int = 10
    messages: int = 200      # per device
    durable: bool = False
    heap: str = "96K"
    quiet_s: float = 15.0    # a subscriber stops after this long without a message
    boot_s: float = 60.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log(text: str) -> None:
    print(f"bench pubsub: {text}", file=sys.stderr, flush=True)


def run(opts: Options) -> dict[str, Any]:
    """Run the benchmark; the report (JSON-able)."""
    from ndn_edge.state.home import Home
    from ndn_edge.state.store import Store
    from ndn_edge.tools.cmd_sim import SimFleet

    with tempfile.TemporaryDirectory(prefix="ndn-edge-bench-pubsub-") as tmp:
        home = Home(Path(tmp) / "home").ensure()
        port = _free_port()
        store = Store(home.db_path)
        names = [f"sub{i}" for i in range(opts.subscribers)] + ["admin"]
        for name in names:
            key = secrets.token_bytes(32)
            store.add_client(name, key)
            home.write_client(name, key, "edge")
            store.grant(name, "**")
        fleet = SimFleet(home, count=opts.devices, port=port, heap=opts.heap)
        fleet.provision(store)
        store.close()
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        with open(Path(tmp) / "gateway.err", "wb") as err:
            gateway = subprocess.Popen([sys.executable, "-m", "ndn_edge.tools", "--home", str(home.path), "gateway",
                                        "--group", f"{GROUP}:{port}"], cwd=ROOT, env=env,
                                       stdout=subprocess.DEVNULL, stderr=err)
        try:
            _wait_record(home, gateway)
            how = fleet.start()
            log(f"{opts.devices} devices on {how}")
            result = asyncio.run(_measure(home, opts))
        finally:
            fleet.stop()
            gateway.send_signal(signal.SIGINT)
            try:
                gateway.wait(10)
            except subprocess.TimeoutExpired:
                gateway.kill()
                gateway.wait()
    result["options"] = asdict(opts)
    return result


def _wait_record(home: Any, gateway: subprocess.Popen) -> None:
    from ndn_edge.errors import ConfigError

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if gateway.poll() is not None:
            raise RuntimeError(f"the gateway exited with {gateway.returncode}")
        try:
            if home.read_gateway_record().pid == gateway.pid:
                return
        except ConfigError:
            pass
        time.sleep(0.05)
    raise RuntimeError("the gateway did not start within 20 s")


async def _measure(home: Any, opts: Options) -> dict[str, Any]:
    from ndn_edge.client.api import Client

    clients = [Client.from_home(home, client=f"sub{i}", timeout=10) for i in range(opts.subscribers)]
    admin = Client.from_home(home, client="admin", timeout=10)
    for c in (*clients, admin):
        await c.open()
    try:
        deadline = time.monotonic() + opts.boot_s
        while True:
            online = [d for d in await admin.devices(200) if d["state"] == "online" and d["services"]]
            if len(online) == opts.devices:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(online)} of {opts.devices} devices online after {opts.boot_s:.0f} s")
            await asyncio.sleep(0.2)
        subs = [c.subscribe("sim/*/burst", durable="bench" if opts.durable else None, batch=500) for c in clients]
        for sub in subs:
            await sub.open()
        total = opts.devices * opts.messages
        started = time.time()
        answers = await admin.gather("sim/*/burst", {"n": opts.messages, "stamp": True}, deadline=10)
        failed = {d: str(o.error) for d, o in answers.items() if not o.ok}
        if failed:
            raise RuntimeError(f"burst not started on {failed}")
        got = await asyncio.gather(*(_read(sub, total, opts.quiet_s) for sub in subs))
        for sub in subs:
            await sub.close()
        metrics = await admin.metrics()
        health = [await admin.call(f"{d['name']}/_health") for d in online]
    finally:
        for c in (*clients, admin):
            await c.close()
    latencies = sorted(lat for g in got for lat in g["latencies_ms"])
    to_gateway = sorted(lat for g in got for lat in g["to_gateway_ms"])
    last = max((g["last"] for g in got if g["last"]), default=started)
    duration = max(last - started, 1e-6)
    delivered = sum(g["count"] for g in got)
    models = metrics.get("models", {})
    return {
        "benchmark": "pubsub",
        "published": total,
        "subscribers": opts.subscribers,
        "duration_s": round(duration, 3),
        "messages_per_s": round(total / duration, 1),
        "deliveries_per_s": round(delivered / duration, 1),
        "latency_ms": {"p50": _pct(latencies, 50), "p99": _pct(latencies, 99),
                       "max": round(latencies[-1], 1) if latencies else None,
                       "device_to_gateway_p50": _pct(to_gateway, 50), "device_to_gateway_p99": _pct(to_gateway, 99)},
        "per_subscriber": [{k: v for k, v in g.items() if k not in ("latencies_ms", "to_gateway_ms", "last")}
                           for g in got],
        "gateway": {k: models.get(k) for k in ("reports_received", "reports_processed", "reports_duplicates",
                                               "reports_acks", "pubsub_held", "pubsub_gaps", "pubsub_late")},
        "devices": {"oversized_reads": sum(h["drops"].get("oversized", 0) for h in health),
                    "malformed": sum(h["drops"].get("malformed", 0) for h in health),
                    "reports_dropped": sum(h.get("reports_dropped", 0) for h in health),
                    "mem_free_min": min((h.get("mem_free") or 0) for h in health) if health else None},
    }


async def _read(sub: Any, total: int, quiet_s: float) -> dict[str, Any]:
    seen: dict[str, list[int]] = {}
    latencies: list[float] = []
    to_gateway: list[float] = []
    count = dups = disorder = 0
    last = 0.0
    while count < total:
        msg = await sub.next(quiet_s)
        if msg is None:
            break
        now = time.time()
        count += 1
        last = now
        i, sent_ms = msg.value
        latencies.append(now * 1000 - sent_ms)
        to_gateway.append(msg.time * 1000 - sent_ms)
        mine = seen.setdefault(msg.publisher, [])
        if i in mine[-50:]:
            dups += 1
        elif mine and i < mine[-1]:
            disorder += 1
        mine.append(i)
    distinct = sum(len(set(v)) for v in seen.values())
    return {"count": count, "missing": total - distinct, "duplicates": dups, "out_of_order": disorder,
            "lost_by_queue": sub.lost, "latencies_ms": latencies, "to_gateway_ms": to_gateway, "last": last}


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 1)
    return round(statistics.quantiles(values, n=100, method="inclusive")[min(98, max(0, int(p) - 1))], 1)


def table(report: dict[str, Any]) -> str:
    """The report as a person reads it."""
    lat = report["latency_ms"]
    subs = report["per_subscriber"]
    g = report["gateway"]
    rows = [
        ("devices x messages", f"{report['options']['devices']} x {report['options']['messages']} "
                               f"= {report['published']}"),
        ("subscribers", f"{report['subscribers']}" + (" (durable)" if report["options"]["durable"] else "")),
        ("messages/s published and delivered", f"{report['messages_per_s']:.0f}"),
        ("deliveries/s (messages x subscribers)", f"{report['deliveries_per_s']:.0f}"),
        ("latency p50 / p99 / max, ms", f"{lat['p50']} / {lat['p99']} / {lat['max']}"),
        ("  of which device to gateway p50 / p99", f"{lat['device_to_gateway_p50']} / "
                                                  f"{lat['device_to_gateway_p99']}"),
        ("missing / duplicated / out of order", f"{sum(s['missing'] for s in subs)} / "
                                                f"{sum(s['duplicates'] for s in subs)} / "
                                                f"{sum(s['out_of_order'] for s in subs)}"),
        ("reports received / duplicates / acks", f"{g['reports_received']} / {g['reports_duplicates']} / "
                                                 f"{g['reports_acks']}"),
        ("device reads truncated / reports dropped", f"{report['devices']['oversized_reads']} / "
                                                     f"{report['devices']['reports_dropped']}"),
    ]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


def main(argv: list[str]) -> int:
    d = Options()
    p = argparse.ArgumentParser(prog="python -m bench pubsub", description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=d.devices, help="publishing devices (default %(default)s)")
    p.add_argument("--subscribers", type=int, default=d.subscribers, help="subscribers (default %(default)s)")
    p.add_argument("--messages", type=int, default=d.messages, help="messages per device (default %(default)s)")
    p.add_argument("--durable", action="store_true", help="durable subscriptions (queues in the store)")
    p.add_argument("--heap", default=d.heap, help="MicroPython heap per device (default %(default)s)")
    p.add_argument("--json", metavar="FILE", help="also write the JSON report to FILE")
    args = p.parse_args(argv)
    opts = Options(devices=args.devices, subscribers=args.subscribers, messages=args.messages,
                   durable=args.durable, heap=args.heap)
    try:
        result = run(opts)
    except RuntimeError as err:
        print(f"bench pubsub: {err}", file=sys.stderr)
        return 2
    from bench.report import emit
    emit(result, table(result), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
