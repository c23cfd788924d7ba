"""`python -m bench federation`: a call through another gateway of a federation beside a local call, and pub/sub
fan-out across three gateways, in one run.

Parts (real processes: a three-node nats-server cluster with JetStream on 127.0.0.1, three gateways of enrolled
homes on three multicast groups, one simulated MicroPython device behind gateways A and C):
- calls, each subject at 1 and 64 in flight (closed loop, `bench.load`), rounds interleaved, all through a
  `ndn_edge.client.api.Client` connected to gateway A:
  `local cached` (`a/1/temperature`, served from A's cache), `cross cached` (`c/1/temperature`: A relays the
  client's signed request to C over NATS, C answers from its cache, its signed reply passes back unchanged and
  says how long C holds the value fresh; A keeps it that long and answers the calls after it itself,
  ndn_edge.federation.results),
  `local uncached` and `cross uncached` (`echo` with a unique argument, through the gateway to the device).
  Target (SPEC): cross cached >= 50 % of local cached.
- fan-out: C's device publishes `--messages` on topic `burst`; one subscriber on each of A, B and C; messages
  per second delivered at each, and the latency from C's receipt of a publication to its delivery at A and B.
Each call subject also reports the CPU each process spent per call (`cpu_us_per_call`: the bench's client,
gateways A and C, the three NATS nodes together), summed over its rounds: the machine's load does not change
it much, so it is the figure to judge a change of the relay by.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import report
from bench.load import closed_loop, percentile, summarize

ROOT = Path(__file__).resolve().parent.parent
GROUP = "224.0.23.170"
SUBJECTS = ("local cached", "cross cached", "local uncached", "cross uncached")
TARGETS = {"local cached": "a/1/temperature", "cross cached": "c/1/temperature",
           "local uncached": "a/1/echo", "cross uncached": "c/1/echo"}


def log(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


@dataclass
class Options:
    seconds: float = 3.0
    rounds: int = 3
    inflight: tuple[int, ...] = (1, 64)
    messages: int = 200
    subjects: tuple[str, ...] = SUBJECTS


def _port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Cluster:
    def __init__(self, folder: Path) -> None:
        binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        if not os.path.exists(binary):
            raise SystemExit("bench: nats-server is not installed (apt-get install nats-server)")
        self.ports = [_port() for _ in range(3)]
        routes = [_port() for _ in range(3)]
        self.procs = []
        for n in range(3):
            data = folder / f"n{n}"
            data.mkdir(parents=True)
            others = ", ".join(f"nats-route://127.0.0.1:{r}" for j, r in enumerate(routes) if j != n)
            (data / "nats.conf").write_text(
                f"server_name: n{n}\nlisten: 127.0.0.1:{self.ports[n]}\n"
                f'jetstream {{ store_dir: "{data}", max_mem: 64MB, max_file: 1GB }}\n'
                f"cluster {{ name: bench, listen: 127.0.0.1:{routes[n]}, no_advertise: true, routes: [{others}] }}\n")
            self.procs.append(subprocess.Popen([binary, "-c", str(data / "nats.conf")], stdout=subprocess.DEVNULL,
                                               stderr=subprocess.DEVNULL))

    @property
    def urls(self) -> str:
        return ",".join(f"nats://127.0.0.1:{p}" for p in self.ports)

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()


class _Site:
    def __init__(self, folder: Path, name: str) -> None:
        self.name, self.home, self.folder = name, folder / name, folder
        self.port = _port(socket.SOCK_DGRAM)
        self.procs: list[subprocess.Popen] = []
        self.env = dict(os.environ, PYTHONPATH=str(ROOT))

    def cli(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "ndn_edge.tools", "--home", str(self.home), *args], cwd=ROOT,
                              env=self.env, capture_output=True, text=True, timeout=60)
        if done.returncode:
            raise SystemExit(f"bench: ndn-edge {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def spawn(self, *args: str) -> None:
        log_file = open(self.folder / f"{self.name}.{args[0]}.log", "ab")
        self.procs.append(subprocess.Popen(
            [sys.executable, "-m", "ndn_edge.tools", "--home", str(self.home), *args, "--group",
             f"{GROUP}:{self.port}"], cwd=ROOT, env=self.env, stdout=log_file, stderr=subprocess.STDOUT))

    def address(self) -> str:
        from ndn_edge.state.home import Home

        record = Home(self.home).read_gateway_record()
        return f"{record.host}:{record.port}"

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


async def _until(predicate: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = await predicate()
            if value:
                return value
        except Exception:  # not ready yet
            pass
        await asyncio.sleep(0.2)
    raise SystemExit(f"bench: timed out waiting for {what}")


def _cpu_s(pid: int) -> float:
    from bench.fleet import cpu_s

    try:
        return cpu_s(pid)
    except OSError:  # gone
        return 0.0


async def _calls(opts: Options, a: _Site, home: Path, roles: dict[str, list[int]]) -> dict[str, Any]:
    from ndn_edge.client.api import Client

    samples: dict[str, dict[int, list[Any]]] = {s: {n: [] for n in opts.inflight} for s in opts.subjects}
    cpu: dict[str, dict[int, dict[str, float]]] = {s: {n: {} for n in opts.inflight} for s in opts.subjects}
    async with Client.connect(home=home, client="bench", gateway=a.address(), timeout=10) as client:
        for name in (TARGETS[s] for s in opts.subjects):
            await _until(lambda name=name: client.call(name, {"warm": 1} if "echo" in name else None), 60,
                         f"a first answer from {name}")
        for _ in range(opts.rounds):
            for inflight in opts.inflight:
                for subject in opts.subjects:
                    target = TARGETS[subject]
                    uncached = "echo" in target

                    async def call(i: int, target: str = target, uncached: bool = uncached) -> bool:
                        if uncached:
                            return (await client.call(target, {"i": i}, timeout=5)) == {"i": i}
                        return isinstance(await client.call(target, timeout=5), float)
                    before = {role: sum(map(_cpu_s, pids)) for role, pids in roles.items()}
                    sample = await closed_loop(call, inflight, opts.seconds, 10.0)
                    samples[subject][inflight].append(sample)
                    spent = cpu[subject][inflight]
                    for role, pids in roles.items():
                        spent[role] = spent.get(role, 0.0) + sum(map(_cpu_s, pids)) - before[role]
                    spent["calls"] = spent.get("calls", 0) + sample.completed
        metrics = await client.metrics()
    out: dict[str, Any] = {s: {str(n): summarize(v) for n, v in per.items()} for s, per in samples.items()}
    for subject, per in cpu.items():
        for n, spent in per.items():
            calls = spent.pop("calls", 0) or 1
            out[subject][str(n)]["cpu_us_per_call"] = {role: round(sec / calls * 1e6, 1)
                                                       for role, sec in spent.items()}
    out["relay"] = {k: v for k, v in metrics.get("federation", {}).items() if k.startswith(("relay", "remote_"))}
    return out


async def _fanout(opts: Options, sites: list[_Site], home: Path) -> dict[str, Any]:
    from ndn_edge.client.api import Client

    clients = [await Client.connect(home=home, client="bench", gateway=s.address(), timeout=10) for s in sites]
    try:
        results: dict[str, Any] = {}

        async def drain(client: Any, where: str, ready: asyncio.Event) -> None:
            got, lat = 0, []
            first = last = None
            sub = client.subscribe("c/1/burst", batch=500, wait=2.0)
            ready.set()
            async with asyncio.timeout(60):
                async for msg in sub:
                    if msg.retained:
                        continue
                    now = time.time()
                    first = first or now
                    last = now
                    got += 1
                    lat.append(now - msg.time)
                    if got >= opts.messages:
                        break
            lat.sort()
            span = (last - first) if first and last and last > first else None
            results[where] = {"delivered": got, "messages_per_s": round(got / span, 1) if span else None,
                              "p50_ms": round(percentile(lat, 0.5) * 1000, 2) if lat else None,
                              "p99_ms": round(percentile(lat, 0.99) * 1000, 2) if lat else None}

        readies = [asyncio.Event() for _ in sites]
        tasks = [asyncio.create_task(drain(c, s.name, r)) for c, s, r in zip(clients, sites, readies)]
        for r in readies:
            await r.wait()
        await asyncio.sleep(1.0)  # the subscriptions are made at their first poll
        await clients[0].call("c/1/burst", {"n": opts.messages, "stamp": False}, timeout=10)
        await asyncio.gather(*tasks)
        return results
    finally:
        for client in clients:
            await client.close()


def _server(site: _Site) -> str | None:
    """The NATS node a gateway is connected to (as its state file says): when A's and C's differ, every relayed
    request and reply also crosses a route between two nodes, which costs the machine more CPU."""
    from ndn_edge.federation.config import read_state

    state = read_state(site.home) or {}
    return state.get("server")


def run(opts: Options) -> dict[str, Any]:
    scratch = Path(tempfile.mkdtemp(prefix="ndn-edge-bench-fed-"))
    cluster = _Cluster(scratch / "nats")
    sites = [_Site(scratch, name) for name in ("a", "b", "c")]
    try:
        a, b, c = sites
        token = None
        deadline = time.monotonic() + 30
        while token is None:
            try:
                token = json.loads(a.cli("federation", "init", "--nats", cluster.urls, "--json"))["token"]
            except SystemExit:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        for site in (b, c):
            site.cli("federation", "join", token)
        a.cli("client", "add", "bench")
        a.cli("acl", "grant", "bench", "**")
        for site in sites:
            site.spawn("gateway")
        a.spawn("sim", "--devices", "1", "--prefix", "a", "--tick", "0")
        c.spawn("sim", "--devices", "1", "--prefix", "c", "--tick", "0")
        from ndn_edge.client.api import Client

        async def listed() -> bool:
            async with Client.connect(home=a.home, client="bench", gateway=a.address(), timeout=5) as client:
                items = await client.devices()
                return {"/edge/a/1", "/edge/c/1"} <= {d["name"] for d in items if d["state"] == "online"
                                                      and d["services"]}
        asyncio.run(_until(listed, 60, "both devices online on A"))
        log("calls")
        roles = {"client": [os.getpid()], "gateway a": [a.procs[0].pid], "gateway c": [c.procs[0].pid],
                 "nats": [p.pid for p in cluster.procs]}
        calls = asyncio.run(_calls(opts, a, a.home, roles))
        servers = {site.name: _server(site) for site in (a, c)}
        fanout: dict[str, Any] = {}
        if opts.messages:
            log("fan-out")
            fanout = asyncio.run(_fanout(opts, sites, a.home))
    finally:
        for site in sites:
            site.close()
        cluster.close()
        shutil.rmtree(scratch, ignore_errors=True)
    out: dict[str, Any] = {"benchmark": "federation", "seconds": opts.seconds, "rounds": opts.rounds,
                           "calls": calls, "fanout": fanout, "nats_servers": servers,
                           "relay_crosses_a_route": servers["a"] != servers["c"]}
    out["targets"] = {}
    if "64" not in calls.get("local cached", {}) or "64" not in calls.get("cross cached", {}):
        return out
    local = calls["local cached"]["64"]["calls_per_s"]
    cross = calls["cross cached"]["64"]["calls_per_s"]
    out["targets"] = {"cross cached >= 50% of local cached (64 in flight)": {
        "ratio": round(cross / local, 3) if local else None, "met": bool(local and cross >= 0.5 * local)}}
    return out


def table(result: dict[str, Any]) -> str:
    lines = [f"{'subject':<16}{'in flight':>10}{'calls/s':>10}{'p50 ms':>9}{'p99 ms':>9}   CPU us per call"]
    for subject in SUBJECTS:
        for n, s in result["calls"].get(subject, {}).items():
            cpu = " ".join(f"{role.split()[-1]} {us:g}" for role, us in s.get("cpu_us_per_call", {}).items())
            lines.append(f"{subject:<16}{n:>10}{s['calls_per_s']:>10}{s['p50_ms']!s:>9}{s['p99_ms']!s:>9}   {cpu}")
    lines.append("")
    lines.append(f"{'fan-out at':<16}{'delivered':>10}{'msg/s':>10}{'p50 ms':>9}{'p99 ms':>9}")
    for where, f in result["fanout"].items():
        lines.append(f"{where:<16}{f['delivered']:>10}{f['messages_per_s']!s:>10}{f['p50_ms']!s:>9}"
                     f"{f['p99_ms']!s:>9}")
    lines.append(f"NATS nodes: A on {result['nats_servers'].get('a')}, C on {result['nats_servers'].get('c')}"
                 + (" (relays cross a route)" if result["relay_crosses_a_route"] else " (the same node)"))
    for name, t in result["targets"].items():
        lines.append(f"target: {name}: ratio {t['ratio']} ({'met' if t['met'] else 'NOT met'})")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench federation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = Options()
    p.add_argument("--seconds", type=float, default=d.seconds, help="length of each timed run (%(default)s)")
    p.add_argument("--rounds", type=int, default=d.rounds, help="timed runs per subject and level (%(default)s)")
    p.add_argument("--messages", type=int, default=d.messages,
                   help="publications in the fan-out; 0: no fan-out (%(default)s)")
    p.add_argument("--subjects", default=",".join(d.subjects),
                   help="call subjects, comma-separated (%(default)s)")
    p.add_argument("--inflight", default=",".join(map(str, d.inflight)),
                   help="calls in flight, comma-separated (%(default)s)")
    p.add_argument("--json", metavar="FILE", help="also write the JSON report to FILE")
    args = p.parse_args(argv)
    subjects = tuple(s.strip() for s in args.subjects.split(",") if s.strip())
    unknown = [s for s in subjects if s not in TARGETS]
    if unknown:
        p.error(f"unknown subject {unknown[0]!r}; choose from {', '.join(SUBJECTS)}")
    try:
        inflight = tuple(int(n) for n in args.inflight.split(","))
    except ValueError:
        p.error(f"--inflight takes numbers separated by commas, got {args.inflight!r}")
    result = run(Options(seconds=args.seconds, rounds=args.rounds, messages=args.messages, subjects=subjects,
                         inflight=inflight))
    report.emit(result, table(result), args.json)
    return 0
