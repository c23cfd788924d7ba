"""The gateway benchmark: the real gateway process beside an aiocoap server, in one run.

Four parts (see bench/README.md for the method):
1. `calls`: closed-loop load from this process at 1 and 64 in flight, for
   - `aiocoap`: NON GET of one resource of an aiocoap server process (no authentication);
   - `ndn-edge cached`: `sim/1/temperature` through `python -m tools gateway` with a `ndn_edge.client.api.Client`:
     signed by the client, authenticated, authorized, served from the gateway's cache;
   - `ndn-edge uncached`: `sim/1/echo` with a unique argument, through the gateway to a simulated device on
     MicroPython (`python -m tools sim`) and back.
   The rounds interleave the subjects, so that other load on the machine falls on all of them alike.
2. `discovery`: `ndn-edge sim --devices 200 --tick 0` first, at nice 19 (on a site each device is its own board:
   here they must not take the gateway's cores); once every device has announced itself, the gateway is
   started; seconds until a client lists all of them online (and with their services described).
3. `memory`: gateway RSS with no devices, then with N devices provisioned (with their descriptions) and present
   (signed announcements sent from here, as the devices would send them), per device and at 10,000 devices.
4. `path`: the gateway's own CPU per cached and per uncached call, in this process (bench/gateway_path.py): a
   figure the machine's other load barely moves, for comparing one version of the gateway with another.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2

from bench import fleet
from bench.calls import StartFailed
from bench.coap import CoapClient, CoapServer
from bench.echo import EchoClient, EchoServer
from bench.load import Sample, closed_loop, summarize

ECHO, COAP, CACHED, UNCACHED = "udp echo", "aiocoap", "ndn-edge cached", "ndn-edge uncached"
SUBJECTS = (ECHO, COAP, CACHED, UNCACHED)
PARTS = ("calls", "discovery", "memory", "path")
DEVICE = "sim/1"
DEVICE_NICENESS = 19  # discovery: the simulated devices yield the host's cores to the gateway
PI_DEVICES = 10_000


@dataclass
class Options:
    seconds: float = 2.0  # per timed run
    warmup_s: float = 0.3  # per run, before timing
    rounds: int = 5  # timed runs per subject and in-flight level; the median rate is reported
    inflight: tuple[int, ...] = (1, 64)
    timeout_s: float = 5.0  # per call
    heap: str = "96K"  # MicroPython heap of each simulated device
    discovery_devices: int = 200
    discovery_tick_s: float = 0.0  # the devices' `tick` publications in the discovery part (0: none)
    boot_s: float = 120.0  # for the simulated devices to announce themselves
    listed_s: float = 30.0  # for the gateway to list them
    memory_devices: int = 10_000
    announce_per_s: float = 4000.0
    path_calls: int = 6400  # per path in part `path`
    parts: tuple[str, ...] = PARTS


def log(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


# -- part 1: calls


async def _online(client: Any) -> dict[str, dict]:
    """Every device the client may see, by name."""
    return {d["name"]: d async for d in client.iter_devices(page_size=200)}


async def _wait_online(home: Path, names: set[str], timeout_s: float, procs: list, *,
                       described: bool = True) -> None:
    from ndn_edge.client.api import Client

    deadline = time.monotonic() + timeout_s
    async with Client.connect(home=home, client=fleet.CLIENT, timeout=5) as c:
        while True:
            seen = await _online(c)
            if all(n in seen and seen[n]["state"] == "online" and (seen[n]["services"] or not described)
                   for n in names):
                return
            for p in procs:
                if not p.alive():
                    raise StartFailed(p.failure())
            if time.monotonic() > deadline:
                raise StartFailed(f"devices not online after {timeout_s:g} s: {sorted(names - set(seen))[:5]}")
            await asyncio.sleep(0.1)


async def _reply_size(home: Path) -> int:
    """Bytes of the reply content of a cached `temperature` call, as the gateway encodes it."""
    from ndn_edge.client.api import Client

    async with Client.connect(home=home, client=fleet.CLIENT, timeout=5) as c:
        await c.call(f"{DEVICE}/temperature")
        r = await c.call_ex(f"{DEVICE}/temperature")
    return len(cbor2.dumps({"value": r.value, "cached": r.cached, "age_ms": r.age_ms, "stale": r.stale}))


async def _request_size(home: Path) -> int:
    """Bytes of a signed `temperature` request as the client sends it (the echo anchor's datagram size)."""
    from ndn_edge.wire import client_protocol as cp

    names = cp.request_name(fleet.SITE, cp.VERB_CALL, tuple(f"{DEVICE}/temperature".split("/")))
    body = cbor2.dumps({"args": None, "timeout_ms": 4750})
    packet, _ = cp.encode_request(names, body, bytes(32), cp.encoded_name(cp.client_key_name(fleet.SITE, "bench",
                                                                                           bytes(32))),
                                  1 << 50, time_ms=1 << 40, signature_nonce=bytes(8), nonce=bytes(4),
                                  lifetime_ms=5000)
    return len(packet)


def _gateway_loop() -> str:
    """The event loop the gateway runs on (ndn_edge.daemon.run_loop): the echo anchor runs on the same."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


GATEWAY_LOOP = _gateway_loop()


async def _timed(call: Any, inflight: int, opts: Options, pids: dict[str, int]) -> tuple[Sample, dict]:
    """The timed closed-loop run, and the CPU seconds each process spent during it."""
    before = {role: fleet.cpu_s(pid) for role, pid in pids.items()}
    sample = await closed_loop(call, inflight, opts.seconds, opts.timeout_s)
    return sample, {role: fleet.cpu_s(pid) - before[role] for role, pid in pids.items()}


def add_sample(samples: dict, cpu_totals: dict, extras: dict, subject: str, n: int, sample: Any,
               extra: dict[str, Any]) -> None:
    """One timed run's sample into the round's collections: CPU seconds summed per role, counters summed, other
    figures kept (bench/http.py uses it too)."""
    samples[(subject, n)].append(sample)
    cpu = cpu_totals.setdefault((subject, n), {})
    for role, seconds in extra.pop("cpu_s").items():
        cpu[role] = cpu.get(role, 0.0) + seconds
    for k, v in extra.items():
        extras[subject][k] = extras[subject].get(k, 0) + v if isinstance(v, int) else v


async def _run(subject: str, inflight: int, opts: Options, home: Path, coap: CoapServer, echo: EchoServer | None,
               echo_size: int, tag: int, pids: dict[str, int]) -> tuple[Sample, dict]:
    """One warm-up and one timed closed-loop run of `subject`; (the sample, extra facts).

    `pids` are the processes whose CPU time is counted: "client" (this one), "gateway", "device", "coap",
    "echo".
    """
    from ndn_edge.client.api import Client

    extra: dict[str, Any] = {}
    if subject == ECHO:
        assert echo is not None, "the echo subject needs the echo server"
        roles = {k: v for k, v in pids.items() if k in ("client", "echo")}
        client = await EchoClient.open(echo.port, echo_size)
        try:
            await closed_loop(client.call, inflight, opts.warmup_s, opts.timeout_s)
            sample, extra["cpu_s"] = await _timed(client.call, inflight, opts, roles)
        finally:
            client.close()
        return sample, extra
    if subject == COAP:
        roles = {k: v for k, v in pids.items() if k in ("client", "coap")}
        async with CoapClient(coap.uri, coap.payload_bytes) as client:
            await closed_loop(client.call, inflight, opts.warmup_s, opts.timeout_s)
            sample, extra["cpu_s"] = await _timed(client.call, inflight, opts, roles)
            extra["response_types"] = sorted(client.response_types)
        return sample, extra
    roles = {k: v for k, v in pids.items() if k in ("client", "gateway", "device")}
    async with Client.connect(home=home, client=fleet.CLIENT, timeout=opts.timeout_s) as c:
        if subject == CACHED:
            hits = [0, 0]

            async def call(i: int) -> bool:
                r = await c.call_ex(f"{DEVICE}/temperature")
                hits[0] += r.cached
                hits[1] += 1
                return isinstance(r.value, float)
        else:
            async def call(i: int) -> bool:
                args = {"run": tag, "i": i}
                return await c.call(f"{DEVICE}/echo", args) == args
        await closed_loop(call, inflight, opts.warmup_s, opts.timeout_s)
        if subject == CACHED:
            hits[:] = [0, 0]
        sample, extra["cpu_s"] = await _timed(call, inflight, opts, roles)
        if subject == CACHED:
            extra["cache_hits"], extra["cache_lookups"] = hits
    return sample, extra


def measure_calls(opts: Options, scratch: Path) -> dict:
    home = fleet.make_home(scratch / "calls-home")
    port = fleet.group_port()
    gateway = fleet.GatewayProcess(home, port, scratch / "calls-gateway.log")
    procs: list[Any] = [gateway]
    coap = echo = None
    try:
        gateway.wait_ready()
        procs.append(fleet.SimProcess(home, port, 1, opts.heap, scratch / "calls-sim.log"))
        asyncio.run(_wait_online(home, {f"/{fleet.SITE}/{DEVICE}"}, 30, procs))
        payload = asyncio.run(_reply_size(home))
        coap = CoapServer(payload, scratch)
        coap.wait_ready()
        echo = EchoServer(GATEWAY_LOOP, scratch)
        echo.wait_ready()
        echo_size = asyncio.run(_request_size(home))
        pids = {"client": os.getpid(), "gateway": gateway.pid, "device": procs[1].child_pid(),
                "coap": coap.proc.pid, "echo": echo.proc.pid}
        samples: dict[tuple[str, int], list[Sample]] = {(s, n): [] for s in SUBJECTS for n in opts.inflight}
        extras: dict[str, dict] = {s: {} for s in SUBJECTS}
        cpu_totals: dict[tuple[str, int], dict[str, float]] = {}
        for r in range(opts.rounds):
            for subject in SUBJECTS:
                for n in opts.inflight:
                    log(f"round {r + 1}/{opts.rounds}: {subject}, {n} in flight")
                    sample, extra = asyncio.run(_run(subject, n, opts, home, coap, echo, echo_size, r * 1000 + n,
                                                     pids))
                    add_sample(samples, cpu_totals, extras, subject, n, sample, extra)
            for p in procs:
                if not p.alive():
                    raise StartFailed(p.failure())
        out: dict[str, Any] = {"payload_bytes": payload, "echo_bytes": echo_size, "echo_loop": GATEWAY_LOOP,
                               "subjects": {}}
        for subject in SUBJECTS:
            out["subjects"][subject] = {str(n): summarize(samples[(subject, n)]) for n in opts.inflight}
            for n in opts.inflight:
                calls = sum(x.completed for x in samples[(subject, n)])
                out["subjects"][subject][str(n)]["cpu_ms_per_call"] = {
                    role: round(1000 * seconds / calls, 3) if calls else None
                    for role, seconds in cpu_totals[(subject, n)].items()}
            out["subjects"][subject].update(extras[subject])
        out["gateway_after_load"] = fleet.rss_kib(gateway.pid)
        return out
    finally:
        if coap is not None:
            coap.stop()
        if echo is not None:
            echo.stop()
        for p in reversed(procs):
            p.stop()


# -- part 2: discovery


async def _time_listing(home: Path, names: set[str], started: float, timeout_s: float) -> dict:
    """Seconds after `started` until the client lists every device online, then also described."""
    from ndn_edge.client.api import Client

    times: dict[str, float | None] = {"listed_online_s": None, "listed_described_s": None}
    polls = 0
    seen: dict[str, dict] = {}
    async with Client.connect(home=home, client=fleet.CLIENT, timeout=5) as c:
        while time.monotonic() - started < timeout_s:
            seen = await _online(c)
            polls += 1
            now = time.monotonic() - started
            online = {n for n, d in seen.items() if d["state"] == "online"}
            if times["listed_online_s"] is None and names <= online:
                times["listed_online_s"] = round(now, 3)
            if names <= {n for n in online if seen[n]["services"]}:
                times["listed_described_s"] = round(now, 3)
                break
            await asyncio.sleep(0.05)
        times["online_at_end"] = len({n for n, d in seen.items() if d["state"] == "online"} & names)
    times["polls"] = polls
    return times


def measure_discovery(opts: Options, scratch: Path) -> dict:
    n = opts.discovery_devices
    home = fleet.make_home(scratch / "discovery-home")
    port = fleet.group_port()
    names = {f"/{fleet.SITE}/sim/{i}" for i in range(1, n + 1)}
    listener = fleet.group_listener(port)
    procs: list[Any] = []
    try:
        began = time.monotonic()
        sim = fleet.SimProcess(home, port, n, opts.heap, scratch / "discovery-sim.log", opts.discovery_tick_s,
                               niceness=DEVICE_NICENESS)
        procs.append(sim)
        heard: set[str] = set()
        listener.settimeout(0.2)
        while len(heard) < n:
            if time.monotonic() - began > opts.boot_s:
                raise StartFailed(f"only {len(heard)} of {n} devices announced themselves in {opts.boot_s:g} s")
            if not sim.alive():
                raise StartFailed(f"sim exited: {sim.failure()}")
            try:
                key = fleet.announcer_of(listener.recv(2048))
            except TimeoutError:
                continue
            if key is not None and key.rsplit("/KEY/", 1)[0] in names:
                heard.add(key)
        boot_s = time.monotonic() - began
        listener.close()
        log(f"discovery: {n} devices booted in {boot_s:.1f} s; starting the gateway")
        started = time.monotonic()
        gateway = fleet.GatewayProcess(home, port, scratch / "discovery-gateway.log")
        procs.append(gateway)
        ready_s = gateway.wait_ready()
        times = asyncio.run(_time_listing(home, names, started, opts.listed_s))
        return {"devices": n, "heap": opts.heap, "tick_s": opts.discovery_tick_s,
                "device_niceness": DEVICE_NICENESS, "cpus": os.cpu_count(),
                "devices_booted_s": round(boot_s, 1), "gateway_ready_s": round(ready_s, 3), **times,
                "how": "sim started first, at nice device_niceness (each device publishing topic `tick` every "
                       "tick_s seconds, 0: never); "
                       "once every device's boot announcement was heard on the group, the gateway process was "
                       "started; times from its start (Popen) until one client listing (page_size 200, polled "
                       "every 50 ms) showed every device online, then also described"}
    finally:
        listener.close()
        for p in reversed(procs):
            p.stop()


# -- part 3: memory


def _description(name: str) -> dict:
    """Service descriptions shaped like a simulated device's `_desc` (three services)."""
    return {"name": name, "services": [
        {"name": "counter", "doc": "Increments and returns a counter (runs once per call, even when retried)",
         "args": None, "result": "int", "cache_ms": None, "idempotent": False, "private": False},
        {"name": "echo", "doc": "Returns its arguments", "args": None, "result": None, "cache_ms": None,
         "idempotent": True, "private": False},
        {"name": "temperature", "doc": "Temperature in degrees Celsius; drifts over a minute", "args": None,
         "result": "float", "cache_ms": 2000, "idempotent": True, "private": False}]}


def _provision(home: Path, n: int) -> list[tuple[str, bytes, str]]:
    """n devices in the home's store with keys and descriptions; (name, key, description hash) each."""
    from ndn_edge.state.store import Store

    devices = []
    with Store(home / "gateway.db") as store:
        for i in range(1, n + 1):
            name = f"/{fleet.SITE}/mem/{i}"
            key = secrets.token_bytes(32)
            store.add_device(name, key, fleet.SITE)
            desc = _description(name)
            desc_hash = hashlib.sha256(cbor2.dumps(desc)).digest()[:8].hex()
            store.set_description(name, desc_hash, desc)
            devices.append((name, key, desc_hash))
    return devices


async def _count_online(home: Path) -> set[str]:
    from ndn_edge.client.api import Client

    async with Client.connect(home=home, client=fleet.CLIENT, timeout=10) as c:
        return {name for name, d in (await _online(c)).items() if d["state"] == "online"}


def _announce(devices: list, port: int, opts: Options, home: Path, seq: dict[str, int]) -> tuple[int, float]:
    """Announce `devices` until the gateway lists them online (3 tries); (announcements sent, seconds)."""
    sender = fleet.group_sender()
    sent, began = 0, time.monotonic()
    batch = max(1, int(opts.announce_per_s / 50))
    try:
        missing = list(devices)
        for _ in range(3):
            for k in range(0, len(missing), batch):
                for name, key, desc_hash in missing[k:k + batch]:
                    seq[name] = seq.get(name, 0) + 1
                    sender.sendto(fleet.announcement(name, key, seq[name], desc_hash, 3_600_000),
                                  (fleet.GROUP, port))
                    sent += 1
                time.sleep(0.02)
            wanted = {name for name, _, _ in missing}
            online: set[str] = set()
            for _ in range(20):  # the gateway may still be working through its queue
                time.sleep(0.25)
                online = asyncio.run(_count_online(home))
                if wanted <= online:
                    return sent, time.monotonic() - began
            missing = [d for d in missing if d[0] not in online]
            log(f"memory: {len(missing)} announcements to send again")
    finally:
        sender.close()
    raise StartFailed(f"{len(missing)} devices still not online after 3 rounds of announcements")


def _settled_rss(pid: int, settle_s: float = 1.0) -> dict[str, int]:
    time.sleep(settle_s)
    return fleet.rss_kib(pid)


def measure_memory(opts: Options, scratch: Path) -> dict:
    n = opts.memory_devices
    out: dict[str, Any] = {"devices": n}
    home0 = fleet.make_home(scratch / "memory-0-home")
    gateway = fleet.GatewayProcess(home0, fleet.group_port(), scratch / "memory-0-gateway.log")
    try:
        gateway.wait_ready()
        asyncio.run(_count_online(home0))  # the same client requests as below, on an empty directory
        out["rss_0_devices"] = _settled_rss(gateway.pid)
    finally:
        gateway.stop()
    home = fleet.make_home(scratch / "memory-n-home")
    began = time.monotonic()
    devices = _provision(home, n)
    out["provision_s"] = round(time.monotonic() - began, 1)
    out["store_bytes"] = sum(p.stat().st_size for p in home.glob("gateway.db*"))
    port = fleet.group_port()
    gateway = fleet.GatewayProcess(home, port, scratch / "memory-n-gateway.log")
    try:
        gateway.wait_ready()
        asyncio.run(_count_online(home))
        out["rss_provisioned_only"] = _settled_rss(gateway.pid)
        seq: dict[str, int] = {}
        checkpoints = []
        done = 0
        for upto in (n // 2, n):
            sent, seconds = _announce(devices[done:upto], port, opts, home, seq)
            done = upto
            checkpoints.append({"devices_online": upto, "announcements_sent": sent,
                                "seconds_to_online": round(seconds, 1), **_settled_rss(gateway.pid)})
            log(f"memory: {upto} devices online, gateway RSS {checkpoints[-1]['rss_kib']:,} KiB")
        out["checkpoints"] = checkpoints
    finally:
        gateway.stop()
    rss0 = out["rss_0_devices"]["rss_kib"]
    rss_n = out["checkpoints"][-1]["rss_kib"]
    per_device = (rss_n - rss0) / n
    out["kib_per_device"] = round(per_device, 3)
    half = out["checkpoints"][0]
    out["kib_per_device_second_half"] = round((rss_n - half["rss_kib"]) / (n - half["devices_online"]), 3)
    out["rss_at_10000_devices_mib"] = round((rss0 + per_device * PI_DEVICES) / 1024, 1)
    return out


# -- the whole benchmark


def run(opts: Options) -> dict:
    """Every part in `opts.parts`; returns the report (targets and table: bench.gateway_report)."""
    import importlib.util

    from bench.mpy import ToolMissing, find_tool, version

    if importlib.util.find_spec("aiocoap") is None:
        raise ToolMissing("aiocoap is not installed (pip install aiocoap, or the `bench` extra)")

    micropython = find_tool("micropython")
    began = time.monotonic()
    report: dict[str, Any] = {"benchmark": "gateway", "micropython": version(micropython),
                              "python": sys.version.split()[0], "aiocoap": _aiocoap_version(),
                              "seconds_per_run": opts.seconds, "rounds": opts.rounds,
                              "inflight": list(opts.inflight), "device_heap": opts.heap}
    with tempfile.TemporaryDirectory(prefix="ndn-edge-bench-gw-") as tmp:
        scratch = Path(tmp)
        for part, measure in (("calls", measure_calls), ("discovery", measure_discovery),
                              ("memory", measure_memory), ("path", measure_path)):
            if part not in opts.parts:
                continue
            log(f"{part} ...")
            t0 = time.monotonic()
            try:
                report[part] = measure(opts, scratch)
            except (StartFailed, OSError) as err:
                report[part] = {"error": str(err)[:1000]}
            report[part]["seconds"] = round(time.monotonic() - t0, 1)
    report["seconds"] = round(time.monotonic() - began, 1)
    return report


def measure_path(opts: Options, scratch: Path) -> dict:
    from bench.gateway_path import measure_path as measure

    return measure(opts.path_calls, scratch, GATEWAY_LOOP)


def _aiocoap_version() -> str:
    try:
        from importlib.metadata import version
        return version("aiocoap")
    except Exception:  # metadata missing: the module still works
        return "unknown"
