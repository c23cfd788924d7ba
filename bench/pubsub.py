"""`python -m bench pubsub`: reliable publish/subscribe through the gateway, beside MQTT in the same run.

Subjects, each the same shape (N MicroPython publishers x M messages; S subscribers, each its own client and
socket, in up to 10 worker processes run alike for both subjects (bench/subscriber.py); QoS 1 / acknowledged
delivery; values carrying the publisher's send time):
- `ndn-edge`: a gateway process (`python -m ndn_edge.tools gateway`), N simulated devices on MicroPython
  (`examples/sim_device.py`), each asked by one `gather` to publish a burst of M messages on topic `burst`
  (service `burst` with `stamp`: each value is `[i, send time in ms]`, as fast as the device's outbox window
  allows), and S subscribers (`ndn_edge.client.api.Client.subscribe('sim/*/burst')`).
- `mqtt` and `mqtt-stock` (bench/mqtt.py): Mosquitto with umqtt.simple publishers and paho-mqtt subscribers,
  tuned (TCP_NODELAY, `max_queued_messages 0`) and as shipped.

Scenarios: `base` (S subscribers), `durable` (the same with durable subscriptions: queued and acknowledged in the
store; MQTT: persistent sessions) and `fanout` (`--fanout` subscribers). Rounds interleave the subjects, so that
other load on the machine falls on each alike. Reported per subject and scenario: messages per second from the
first send to the last delivery, deliveries per second (messages x subscribers), end-to-end latency p50/p99 (send
to receipt; one host, one clock), missing, duplicated and out-of-order deliveries per publisher (all must be 0),
and the CPU time each role spent per message (server: gateway or broker; publishers; subscribers: the workers).
SPEC.md's target: ndn-edge's delivered rate at least tuned MQTT's in the same run, nothing lost, duplicated or out
of order, p99 <= 25 ms. `bench/publish.py` adds the device's heap per published message.

    python -m bench pubsub [--devices 10] [--messages 200] [--subscribers 10] [--fanout 100] [--rounds 1]
                           [--scenarios base,durable,fanout] [--subjects ndn-edge,mqtt,mqtt-stock] [--durable]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GROUP = "224.0.23.170"
NDN = "ndn-edge"
SUBJECTS = (NDN, "mqtt", "mqtt-stock")
SCENARIOS = ("base", "durable", "fanout")
WORKERS = 10  # subscriber processes at most (bench/subscriber.py); 100 subscribers: 10 each
START_DELAY_S = 1.0  # the devices' bursts start this long after they are asked
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

Record = tuple[str, int, float, float]  # publisher, i, send time (ms since the epoch), receipt time (s)


@dataclass
class Options:
    devices: int = 10
    subscribers: int = 10
    fanout: int = 100
    messages: int = 200      # per device
    # ndn-edge: reports a device keeps unacknowledged while bursting (its outbox allows max_reports - 4 = 12;
    # umqtt.simple waits for each PUBACK: 1). 3 measured on 2 cores: 2 gives about tuned MQTT's rate with p99 21-24
    # ms, 3 about 1.2 times it with p99 17-26 ms, 4 more throughput at p99 27-37 ms (bench/README.md)
    window: int = 3
    rounds: int = 1
    scenarios: tuple[str, ...] = SCENARIOS
    subjects: tuple[str, ...] = SUBJECTS
    heap: str = "96K"
    quiet_s: float = 10.0    # a run ends this long after the last delivery, if not every message came
    boot_s: float = 60.0
    micropython_src: str | None = None
    publish_cost: bool = True
    runs: list[dict[str, Any]] = field(default_factory=list)

    def fan(self, scenario: str) -> int:
        return self.fanout if scenario == "fanout" else self.subscribers


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log(text: str) -> None:
    print(f"bench pubsub: {text}", file=sys.stderr, flush=True)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def cpu_sample(server: int, publishers: list[int]) -> tuple[float, float]:
    """(server, publishers) CPU seconds so far."""
    return cpu_s(server), sum(cpu_s(p) for p in publishers)


class Subscribers:
    """The subscribers of one run in worker processes (bench/subscriber.py), every one subscribed on return."""

    def __init__(self, subject: str, count: int, cfg: dict[str, Any], workdir: Path, ready_s: float = 60.0) -> None:
        workers = min(count, WORKERS)
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.errs: list[Path] = []
        first = 0
        for w in range(workers):
            share = count // workers + (w < count % workers)
            err = workdir / f"subscriber-{subject}-{w}.err"
            self.errs.append(err)
            with open(err, "wb") as err_file:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "bench.subscriber", subject, json.dumps(dict(cfg, subs=[first, share]))],
                    cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err_file))
            first += share
        try:
            self._lines(ready_s, expect="ready")
        except BaseException:
            self.stop()
            raise

    def results(self, timeout_s: float) -> dict[str, Any]:
        """Every worker's deliveries, CPU and extras, merged (RuntimeError when one fails or is late)."""
        merged: dict[str, Any] = {"records": [], "cpu_s": 0.0, "to_gateway_ms": [], "lost_by_queue": 0}
        for line in self._lines(timeout_s):
            part = json.loads(line)
            merged["records"] += part["records"]
            merged["cpu_s"] += part["cpu_s"]
            merged["to_gateway_ms"] += part.get("to_gateway_ms", [])
            merged["lost_by_queue"] += part.get("lost_by_queue", 0)
        return merged

    def _lines(self, timeout_s: float, expect: str | None = None) -> list[str]:
        """The next line of every worker (each `expect`, when given), within `timeout_s` together."""
        import select

        deadline = time.monotonic() + timeout_s
        waiting = {p.stdout.fileno(): p for p in self.procs if p.stdout is not None}
        lines: dict[int, str] = {}
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{len(waiting)} subscriber worker(s) silent after {timeout_s:g} s ({self._why()})")
            readable, _, _ = select.select(list(waiting), [], [], left)
            for fd in readable:
                line = waiting.pop(fd).stdout.readline().decode().strip()  # type: ignore[union-attr]
                if not line or (expect is not None and line != expect):
                    raise RuntimeError(f"a subscriber worker failed ({self._why()})")
                lines[fd] = line
        return list(lines.values())

    def _why(self) -> str:
        tails = [e.read_text(errors="replace").strip().splitlines()[-1:] for e in self.errs if e.exists()]
        return "; ".join(t[0] for t in tails if t) or "no error output"

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            if p.stdout is not None:
                p.stdout.close()


# -- ndn-edge


class NdnSubject:
    """A gateway and a fleet of simulated devices in a fresh home, kept for every ndn-edge run of the benchmark."""

    def __init__(self, opts: Options, tmp: Path) -> None:
        from ndn_edge.state.home import Home
        from ndn_edge.state.store import Store
        from ndn_edge.tools.cmd_sim import SimFleet

        self.opts = opts
        self.home = Home(tmp / "home").ensure()
        port = _free_port()
        store = Store(self.home.db_path)
        self.clients = max(opts.fan(s) for s in opts.scenarios)
        for name in [f"sub{i}" for i in range(self.clients)] + ["admin"]:
            key = secrets.token_bytes(32)
            store.add_client(name, key)
            self.home.write_client(name, key, "edge")
            store.grant(name, "**")
        self.fleet = SimFleet(self.home, count=opts.devices, port=port, heap=opts.heap, tick=0)
        self.fleet.provision(store)
        store.close()
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.err = tmp / "gateway.err"
        with open(self.err, "wb") as err:
            self.gateway = subprocess.Popen([sys.executable, "-m", "ndn_edge.tools", "--home", str(self.home.path),
                                             "gateway", "--group", f"{GROUP}:{port}"], cwd=ROOT, env=env,
                                            stdout=subprocess.DEVNULL, stderr=err)
        try:
            self._wait_record()
            log(f"{opts.devices} devices on {self.fleet.start()}")
            self.health: list[dict[str, Any]] = []
        except BaseException:
            self.close()
            raise

    def _wait_record(self) -> None:
        from ndn_edge.errors import ConfigError

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.gateway.poll() is not None:
                raise RuntimeError(f"the gateway exited with {self.gateway.returncode} (see {self.err})")
            try:
                if self.home.read_gateway_record().pid == self.gateway.pid:
                    return
            except ConfigError:
                pass
            time.sleep(0.05)
        raise RuntimeError("the gateway did not start within 20 s")

    def run(self, subscribers: int, durable: bool, tag: str, workdir: Path) -> dict[str, Any]:
        return asyncio.run(self._measure(subscribers, durable, tag, workdir))

    async def _measure(self, count: int, durable: bool, tag: str, workdir: Path) -> dict[str, Any]:
        from ndn_edge.client.api import Client

        opts = self.opts
        total = opts.devices * opts.messages
        async with Client.from_home(self.home, client="admin", timeout=10) as admin:
            online = await self._online(admin)
            subs = Subscribers(NDN, count, {"home": str(self.home.path), "total": total, "quiet_s": opts.quiet_s,
                                            "durable": f"bench-{tag}" if durable else None}, workdir)
            try:
                start = await admin.metrics()
                counted, counted_clients = start.get("patterns", {}), start.get("clients", {})
                pids = [p.pid for p in self.fleet.procs.values()]
                before = cpu_sample(self.gateway.pid, pids)
                # Every device starts at the same moment, as the MQTT publishers do on "go": the gather's calls
                # reach the devices over a few hundred ms (ten Interests at once overflow a device's read).
                at = int(time.time() * 1000 + START_DELAY_S * 1000)
                answers = await admin.gather("sim/*/burst", {"n": opts.messages, "stamp": True, "at": at,
                                                             "window": opts.window}, deadline=10)
                failed = {d: str(o.error) for d, o in answers.items() if not o.ok}
                if failed:
                    raise RuntimeError(f"burst not started on {failed}")
                got = await asyncio.get_running_loop().run_in_executor(
                    None, subs.results, max(60.0, total / 50) + opts.quiet_s)
                after = cpu_sample(self.gateway.pid, pids)
            finally:
                subs.stop()
            metrics = await admin.metrics()
            self.health = [await admin.call(f"{d['name']}/_health") for d in online]
        patterns = metrics.get("patterns", {})
        extra = {
            "device_to_gateway_ms": _percentiles(sorted(got["to_gateway_ms"])),
            "gateway": {k: patterns.get(k, 0) - counted.get(k, 0)
                        for k in ("reports_received", "reports_processed", "reports_duplicates", "reports_acks",
                                  "reports_acks_unicast", "reports_ack_datagrams", "reports_batches", "pubsub_held",
                                  "pubsub_gaps", "pubsub_late")},
            "client_face": {k: metrics.get("clients", {}).get(k, 0) - counted_clients.get(k, 0)
                            for k in ("received", "replies")},
            "devices": {"oversized_reads": sum(h["drops"].get("oversized", 0) for h in self.health),
                        "reports_dropped": sum(h.get("reports_dropped", 0) for h in self.health),
                        "oom": sum(h.get("oom", 0) for h in self.health),
                        "mem_free_min": min((h.get("mem_free", 0) for h in self.health), default=0)},
            "lost_by_queue": got["lost_by_queue"],
        }
        return {"records": got["records"], "cpu": (before, after, got["cpu_s"]), "extra": extra}

    async def _online(self, admin: Any) -> list[dict[str, Any]]:
        deadline = time.monotonic() + self.opts.boot_s
        while True:
            online = [d for d in await admin.devices(200) if d["state"] == "online" and d["services"]]
            if len(online) == self.opts.devices:
                return online
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(online)} of {self.opts.devices} devices online after "
                                   f"{self.opts.boot_s:.0f} s")
            await asyncio.sleep(0.2)

    def close(self) -> None:
        self.fleet.stop()
        self.gateway.send_signal(signal.SIGINT)
        try:
            self.gateway.wait(10)
        except subprocess.TimeoutExpired:
            self.gateway.kill()
            self.gateway.wait()


# -- figures


def _percentiles(values: list[float]) -> dict[str, float | None]:
    def pct(p: int) -> float | None:
        if not values:
            return None
        if len(values) == 1:
            return round(values[0], 1)
        return round(statistics.quantiles(values, n=100, method="inclusive")[p - 1], 1)
    return {"p50": pct(50), "p99": pct(99), "max": round(values[-1], 1) if values else None}


def summarize(records: list[list[Record]], devices: int, messages: int,
              cpu: tuple[tuple[float, float], tuple[float, float], float]) -> dict[str, Any]:
    """Rates, latency and what every subscriber got, from the deliveries of one run."""
    published = devices * messages
    flat = [r for sub in records for r in sub]
    missing = dups = disorder = 0
    for sub in records:
        seen: dict[str, set[int]] = {}
        top: dict[str, int] = {}
        for publisher, i, _, _ in sub:
            mine = seen.setdefault(publisher, set())
            if i in mine:
                dups += 1
                continue
            if i < top.get(publisher, 0):
                disorder += 1
            mine.add(i)
            top[publisher] = max(top.get(publisher, 0), i)
        missing += published - sum(len(v) for v in seen.values())
    if flat:
        first = min(r[2] for r in flat) / 1000
        duration = max(max(r[3] for r in flat) - first, 1e-6)
    else:
        duration = float("inf")
    latencies = sorted(r[3] * 1000 - r[2] for r in flat)
    before, after, subscribers = cpu
    per_msg = {"server": round((after[0] - before[0]) * 1000 / published, 3),
               "publishers": round((after[1] - before[1]) * 1000 / published, 3),
               "subscribers": round(subscribers * 1000 / published, 3)}
    return {"messages_per_s": round(published / duration, 1), "deliveries_per_s": round(len(flat) / duration, 1),
            "duration_s": round(duration, 3), "latency_ms": _percentiles(latencies), "missing": missing,
            "duplicates": dups, "out_of_order": disorder, "cpu_ms_per_message": per_msg}


# -- the run


def run(opts: Options) -> dict[str, Any]:
    """Run every (scenario, subject) `rounds` times, interleaved; the report (JSON-able)."""
    from bench import mqtt
    from bench.mpy import find_tool

    anchors = [s for s in opts.subjects if s != NDN]
    with tempfile.TemporaryDirectory(prefix="ndn-edge-bench-pubsub-") as tmp_name:
        tmp = Path(tmp_name)
        micropython = find_tool("micropython")
        lib = tmp / "lib-umqtt"
        if anchors:
            mosquitto = mqtt.find_mosquitto()
            mqtt.compile_umqtt(find_tool("mpy-cross"), mqtt.umqtt_source(opts.micropython_src), lib)
        device_cost = None
        if opts.publish_cost:
            from bench import publish
            device_cost = publish.run(tmp / "publish")
        ndn = NdnSubject(opts, tmp) if NDN in opts.subjects else None
        runs: list[dict[str, Any]] = []
        try:
            for rnd in range(opts.rounds):
                for scenario in opts.scenarios:
                    for subject in opts.subjects:
                        if subject == "mqtt-stock" and scenario != "base":
                            continue  # the stock row is the base scenario's only
                        fan = opts.fan(scenario)
                        log(f"round {rnd + 1}: {subject}, {scenario} ({opts.devices} x {opts.messages} -> {fan})")
                        work = tmp / f"{subject}-{scenario}-{rnd}"
                        work.mkdir()
                        if subject == NDN:
                            assert ndn is not None
                            raw = ndn.run(fan, scenario == "durable", f"{rnd}", work)
                        else:
                            raw = mqtt.run(mqtt.VARIANTS[subject], mosquitto=mosquitto, micropython=micropython,
                                           lib=lib, devices=opts.devices, messages=opts.messages, subscribers=fan,
                                           durable=scenario == "durable", heap=opts.heap, quiet_s=opts.quiet_s,
                                           workdir=work, cpu=cpu_sample)
                        result = summarize(raw["records"], opts.devices, opts.messages, raw["cpu"])
                        result.update(subject=subject, scenario=scenario, subscribers=fan, round=rnd + 1,
                                      **raw.get("extra", {}))
                        runs.append(result)
        finally:
            if ndn is not None:
                ndn.close()
    report: dict[str, Any] = {"benchmark": "pubsub", "options": {k: v for k, v in asdict(opts).items()
                                                                 if k != "runs"},
                              "load_average": os.getloadavg(), "runs": runs, "rows": _rows(runs, opts)}
    if device_cost is not None:
        report["device"] = device_cost
    return report


def _rows(runs: list[dict[str, Any]], opts: Options) -> list[dict[str, Any]]:
    """One row per (scenario, subject): median rate over the rounds, worst latency and totals of the rest."""
    rows = []
    for scenario in opts.scenarios:
        anchor = None
        for subject in opts.subjects:
            mine = [r for r in runs if r["scenario"] == scenario and r["subject"] == subject]
            if not mine:
                continue
            rate = statistics.median(r["messages_per_s"] for r in mine)
            row = {"scenario": scenario, "subject": subject, "subscribers": mine[0]["subscribers"],
                   "messages_per_s": rate,
                   "deliveries_per_s": statistics.median(r["deliveries_per_s"] for r in mine),
                   "p50_ms": statistics.median(r["latency_ms"]["p50"] or 0 for r in mine),
                   "p99_ms": max(r["latency_ms"]["p99"] or 0 for r in mine),
                   "missing": sum(r["missing"] for r in mine), "duplicates": sum(r["duplicates"] for r in mine),
                   "out_of_order": sum(r["out_of_order"] for r in mine),
                   "cpu_ms_per_message": {k: statistics.median(r["cpu_ms_per_message"][k] for r in mine)
                                          for k in ("server", "publishers", "subscribers")}}
            if subject == "mqtt":
                anchor = rate
            rows.append(row)
        for row in rows:
            if row["scenario"] == scenario and anchor:
                row["vs_mqtt"] = round(row["messages_per_s"] / anchor, 2)
    return rows


TITLES = {NDN: "ndn-edge", "mqtt": "MQTT tuned", "mqtt-stock": "MQTT stock umqtt"}


def table(report: dict[str, Any]) -> str:
    """The report as a person reads it."""
    opts = report["options"]
    head = ("scenario", "subject", "msg/s", "x MQTT", "deliveries/s", "p50 / p99 ms", "lost/dup/ooo",
            "CPU ms/msg srv/pub/sub")
    lines = [head]
    for r in report["rows"]:
        scenario = {"base": f"{r['subscribers']} subs", "durable": f"{r['subscribers']} durable",
                    "fanout": f"{r['subscribers']} subs"}[r["scenario"]]
        cpu = r["cpu_ms_per_message"]
        lines.append((scenario, TITLES[r["subject"]], f"{r['messages_per_s']:,.0f}",
                      f"{r['vs_mqtt']:.2f}" if "vs_mqtt" in r else "-", f"{r['deliveries_per_s']:,.0f}",
                      f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f}",
                      f"{r['missing']}/{r['duplicates']}/{r['out_of_order']}",
                      f"{cpu['server']:.2f} / {cpu['publishers']:.2f} / {cpu['subscribers']:.2f}"))
    widths = [max(len(str(line[k])) for line in lines) for k in range(len(head))]
    text = [f"{opts['devices']} publishers x {opts['messages']} messages, {opts['rounds']} round(s), "
            f"load average {report['load_average'][0]:.1f}"]
    text += ["  ".join(str(v).ljust(w) for v, w in zip(line, widths)).rstrip() for line in lines]
    base = {r["subject"]: r for r in report["rows"] if r["scenario"] == "base"}
    if NDN in base and "mqtt" in base:
        ok = (base[NDN]["messages_per_s"] >= base["mqtt"]["messages_per_s"] and base[NDN]["p99_ms"] <= 25
              and not (base[NDN]["missing"] or base[NDN]["duplicates"] or base[NDN]["out_of_order"]))
        text.append(f"target (SPEC.md): ndn-edge >= MQTT tuned, nothing lost/duplicated/reordered, p99 <= 25 ms: "
                    f"{'PASS' if ok else 'FAIL'}")
    if "device" in report:
        from bench import publish
        text.append(publish.table(report["device"]))
    return "\n".join(text)


def main(argv: list[str]) -> int:
    d = Options()
    p = argparse.ArgumentParser(prog="python -m bench pubsub", description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=d.devices, help="publishers (default %(default)s)")
    p.add_argument("--messages", type=int, default=d.messages, help="messages per publisher (default %(default)s)")
    p.add_argument("--subscribers", type=int, default=d.subscribers,
                   help="subscribers in the base and durable scenarios (default %(default)s)")
    p.add_argument("--fanout", type=int, default=d.fanout, help="subscribers in the fanout scenario "
                                                                 "(default %(default)s)")
    p.add_argument("--window", type=int, default=d.window,
                   help="ndn-edge: unacknowledged reports per publishing device (default %(default)s; an umqtt "
                        "publisher waits for each PUBACK: 1)")
    p.add_argument("--rounds", type=int, default=d.rounds, help="runs of each row, interleaved (default %(default)s)")
    p.add_argument("--scenarios", default=",".join(d.scenarios), help="comma-separated: base, durable, fanout "
                                                                      "(default all)")
    p.add_argument("--subjects", default=",".join(d.subjects), help="comma-separated: ndn-edge, mqtt, mqtt-stock "
                                                                    "(default all)")
    p.add_argument("--durable", action="store_true", help="the durable scenario only (--scenarios durable)")
    p.add_argument("--heap", default=d.heap, help="MicroPython heap per publisher (default %(default)s)")
    p.add_argument("--micropython-src", metavar="PATH", help="MicroPython source with micropython-lib (a tree or "
                   "its .tar.gz), for umqtt.simple (default: ../shared/micropython/)")
    p.add_argument("--no-device", action="store_true", help="leave out the device's heap per message")
    p.add_argument("--json", metavar="FILE", help="also write the JSON report to FILE")
    args = p.parse_args(argv)
    scenarios = ("durable",) if args.durable else tuple(s.strip() for s in args.scenarios.split(",") if s.strip())
    subjects = tuple(s.strip() for s in args.subjects.split(",") if s.strip())
    bad = [s for s in scenarios if s not in SCENARIOS] + [s for s in subjects if s not in SUBJECTS]
    if bad or not scenarios or not subjects or min(args.devices, args.messages, args.subscribers, args.fanout,
                                                   args.rounds, args.window) < 1:
        p.error(f"unknown or missing scenarios/subjects {bad}; counts must be at least 1")
    opts = Options(devices=args.devices, subscribers=args.subscribers, fanout=args.fanout, messages=args.messages,
                   window=args.window, rounds=args.rounds, scenarios=scenarios, subjects=subjects, heap=args.heap,
                   micropython_src=args.micropython_src, publish_cost=not args.no_device)
    from bench.mpy import BuildFailed, ToolMissing
    try:
        result = run(opts)
    except (RuntimeError, ToolMissing, BuildFailed) as err:
        print(f"bench pubsub: {err}", file=sys.stderr)
        return 2
    except ImportError as err:
        print(f"bench pubsub: {err}; install the bench extra (pip install -e '.[bench]')", file=sys.stderr)
        return 2
    from bench.report import emit
    emit(result, table(result), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
