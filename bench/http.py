"""`python -m bench http`: calls per second through the gateway's HTTP API (`ndn_edge.http`), beside the same
calls through the Python client and aiocoap's NON GET, in one run.

Subjects, each at 1 and 64 in flight (closed loop, `bench.load`), rounds interleaved so that other load on the
machine falls on all of them alike:
- `aiocoap`: NON GET of one resource of an aiocoap server process (no authentication), as `bench gateway` runs it;
- `http cached`: `GET /api/v1/call/sim/1/temperature` with a bearer token, served from the gateway's cache;
- `http uncached`: `POST /api/v1/call/sim/1/echo` with a unique JSON argument, through the gateway to a simulated
  device on MicroPython and back;
- `ndn-edge cached` and `ndn-edge uncached`: the same two calls through `ndn_edge.client.api.Client` (signed NDN
  over UDP), as `bench gateway` measures them.

The HTTP load comes from this process over persistent HTTP/1.1 connections, one per call in flight (keep-alive,
no pipelining), each request prebuilt and each response read by Content-Length on a bare asyncio protocol: the
client's own cost stays small beside the server's, as aiocoap's and the Python client's do in their runs.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import socket
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

from bench import fleet, report
from bench.calls import StartFailed
from bench.coap import CoapServer
from bench.gateway import CACHED, COAP, DEVICE, UNCACHED, Options, _reply_size, _timed, _wait_online, add_sample
from bench.gateway import _run as run_anchor
from bench.load import closed_loop, summarize

HTTP_CACHED, HTTP_UNCACHED = "http cached", "http uncached"
SUBJECTS = (COAP, HTTP_CACHED, HTTP_UNCACHED, CACHED, UNCACHED)
_LENGTH = b"\r\ncontent-length:"


def log(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: `exchange(request)` sends it and returns (status, body)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None:
            return
        head = bytes(self.buffer[:end]).lower()
        at = head.find(_LENGTH)
        length = 0
        if at >= 0:
            stop = head.find(b"\r\n", at + len(_LENGTH))
            length = int(head[at + len(_LENGTH):stop if stop >= 0 else len(head)])
        total = end + 4 + length
        if len(self.buffer) < total:
            return
        body = bytes(self.buffer[end + 4:total])
        del self.buffer[:total]
        waiter, self.waiter = self.waiter, None
        waiter.set_result((int(head[9:12]), body))

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"the server closed the connection ({exc})"))

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.waiter


class HttpLoad:
    """`size` keep-alive connections to the gateway's HTTP face, lent one per call."""

    def __init__(self, url: str, token: str, size: int) -> None:
        parts = urllib.parse.urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.token = token
        self.size = size
        self.idle: list[_Connection] = []

    async def __aenter__(self) -> HttpLoad:
        loop = asyncio.get_running_loop()
        for _ in range(self.size):
            _, conn = await loop.create_connection(_Connection, self.host, self.port)
            self.idle.append(conn)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()

    def request(self, method: str, path: str, body: bytes = b"") -> bytes:
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}", f"Authorization: Bearer {self.token}"]
        if body:
            head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        return ("\r\n".join(head) + "\r\n\r\n").encode() + body

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        conn = self.idle.pop()
        try:
            return await conn.exchange(request)
        finally:
            self.idle.append(conn)


async def _run_http(subject: str, inflight: int, opts: Options, url: str, token: str, tag: int,
                    pids: dict[str, int]) -> tuple[Any, dict]:
    extra: dict[str, Any] = {}
    roles = {k: v for k, v in pids.items() if k in ("client", "gateway", "device")}
    async with HttpLoad(url, token, inflight) as load:
        if subject == HTTP_CACHED:
            request = load.request("GET", f"/api/v1/call/{DEVICE}/temperature")
            hits = [0, 0]

            async def call(i: int) -> bool:
                status, body = await load.exchange(request)
                if status != 200:
                    raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
                result = json.loads(body)
                hits[0] += result["cached"]
                hits[1] += 1
                return isinstance(result["value"], float)
        else:
            async def call(i: int) -> bool:
                args = {"run": tag, "i": i}
                status, body = await load.exchange(load.request("POST", f"/api/v1/call/{DEVICE}/echo",
                                                                json.dumps(args).encode()))
                if status != 200:
                    raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
                return json.loads(body)["value"] == args
        await closed_loop(call, inflight, opts.warmup_s, opts.timeout_s)
        if subject == HTTP_CACHED:
            hits[:] = [0, 0]
        sample, extra["cpu_s"] = await _timed(call, inflight, opts, roles)
        if subject == HTTP_CACHED:
            extra["cache_hits"], extra["cache_lookups"] = hits
    return sample, extra


def _token(home: Path) -> str:
    from ndn_edge.tools.cli import main as cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli(["--home", str(home), "client", "token", fleet.CLIENT])
    if code:
        raise StartFailed(f"ndn-edge client token failed ({code}): {err.getvalue().strip()}")
    return out.getvalue().strip()


class HttpGatewayProcess(fleet.GatewayProcess):
    """The gateway process, also serving HTTP on 127.0.0.1 (a free port, recorded in HOME/http.json)."""

    def __init__(self, home: Path, port: int, log_path: Path) -> None:
        self.home = home
        fleet.Proc.__init__(self, ["--home", str(home), "gateway", "--group", f"{fleet.GROUP}:{port}",
                                   "--http", "127.0.0.1:0"], log_path)

    def url(self, timeout_s: float = 10.0) -> str:
        from ndn_edge.http.server import read_record

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            url = read_record(self.home)
            if url:
                return url
            time.sleep(0.01)
        raise StartFailed(f"the gateway recorded no HTTP address: {self.failure()}")


def measure(opts: Options, scratch: Path) -> dict:
    home = fleet.make_home(scratch / "home")
    token = _token(home)
    port = fleet.group_port()
    gateway = HttpGatewayProcess(home, port, scratch / "gateway.log")
    procs: list[Any] = [gateway]
    coap = None
    try:
        gateway.wait_ready()
        url = gateway.url()
        procs.append(fleet.SimProcess(home, port, 1, opts.heap, scratch / "sim.log"))
        asyncio.run(_wait_online(home, {f"/{fleet.SITE}/{DEVICE}"}, 30, procs))
        payload = asyncio.run(_reply_size(home))
        coap = CoapServer(payload, scratch)
        coap.wait_ready()
        pids = {"client": os.getpid(), "gateway": gateway.pid, "device": procs[1].child_pid(),
                "coap": coap.proc.pid}
        samples: dict[tuple[str, int], list] = {(s, n): [] for s in SUBJECTS for n in opts.inflight}
        extras: dict[str, dict] = {s: {} for s in SUBJECTS}
        cpu_totals: dict[tuple[str, int], dict[str, float]] = {}
        for r in range(opts.rounds):
            for subject in SUBJECTS:
                for n in opts.inflight:
                    log(f"round {r + 1}/{opts.rounds}: {subject}, {n} in flight")
                    tag = r * 1000 + n
                    if subject in (HTTP_CACHED, HTTP_UNCACHED):
                        sample, extra = asyncio.run(_run_http(subject, n, opts, url, token, tag, pids))
                    else:
                        sample, extra = asyncio.run(run_anchor(subject, n, opts, home, coap, None, 0, tag, pids))
                    add_sample(samples, cpu_totals, extras, subject, n, sample, extra)
            for p in procs:
                if not p.alive():
                    raise StartFailed(p.failure())
        out: dict[str, Any] = {"payload_bytes": payload, "subjects": {}}
        for subject in SUBJECTS:
            out["subjects"][subject] = {str(n): summarize(samples[(subject, n)]) for n in opts.inflight}
            for n in opts.inflight:
                calls = sum(x.completed for x in samples[(subject, n)])
                out["subjects"][subject][str(n)]["cpu_ms_per_call"] = {
                    role: round(1000 * seconds / calls, 3) if calls else None
                    for role, seconds in cpu_totals[(subject, n)].items()}
            out["subjects"][subject].update(extras[subject])
        return out
    finally:
        if coap is not None:
            coap.stop()
        for p in reversed(procs):
            p.stop()


def _rate(result: dict, subject: str, inflight: int) -> float:
    return result["calls"]["subjects"][subject][str(inflight)]["calls_per_s"]


TARGETS = (
    ("http_cached_64_vs_coap", "HTTP cached call, 64 in flight, x aiocoap NON GET", ">= 1x",
     lambda r: round(_rate(r, HTTP_CACHED, 64) / _rate(r, COAP, 64), 2), lambda v: v >= 1),
)


def run(opts: Options) -> dict:
    import importlib.util

    from bench.gateway import _aiocoap_version
    from bench.mpy import ToolMissing, find_tool, version

    if importlib.util.find_spec("aiocoap") is None:
        raise ToolMissing("aiocoap is not installed (pip install aiocoap, or the `bench` extra)")
    began = time.monotonic()
    result: dict[str, Any] = {"benchmark": "http", "micropython": version(find_tool("micropython")),
                              "python": sys.version.split()[0], "aiocoap": _aiocoap_version(),
                              "seconds_per_run": opts.seconds, "rounds": opts.rounds,
                              "inflight": list(opts.inflight), "device_heap": opts.heap}
    with tempfile.TemporaryDirectory(prefix="ndn-edge-bench-http-") as tmp:
        try:
            result["calls"] = measure(opts, Path(tmp))
        except (StartFailed, OSError) as err:
            result["calls"] = {"error": str(err)[:1000]}
    result["seconds"] = round(time.monotonic() - began, 1)
    targets = []
    for key, _, target, value, passes in TARGETS:
        try:
            v = value(result)
            ok = passes(v)
        except (KeyError, TypeError, ZeroDivisionError):
            v, ok = None, None
        targets.append({"metric": key, "target": target, "value": v, "pass": ok})
    result["targets"] = targets
    return result


def table(result: dict) -> str:
    from bench.gateway_report import _columns, _cpu, _fmt

    out: list[str] = []
    calls = result.get("calls", {})
    if "subjects" in calls:
        rows = [("subject", "in flight", "calls/s", "x aiocoap", "p50 ms", "p99 ms", "errors", "CPU ms per call")]
        for subject in SUBJECTS:
            for n in result["inflight"]:
                s = calls["subjects"][subject][str(n)]
                ratio = s["calls_per_s"] / calls["subjects"][COAP][str(n)]["calls_per_s"] \
                    if calls["subjects"][COAP][str(n)]["calls_per_s"] else 0
                rows.append((subject, str(n), _fmt(s["calls_per_s"]), f"{ratio:.2f}", _fmt(s["p50_ms"], 2),
                             _fmt(s["p99_ms"], 2), str(s["errors"]), _cpu(s.get("cpu_ms_per_call") or {})))
        out += [*_columns(rows, range(1, 7)), ""]
        for subject in SUBJECTS:
            for n in result["inflight"]:
                err = calls["subjects"][subject][str(n)].get("first_error")
                if err:
                    out.append(f"{subject}, {n} in flight: first error: {err}")
    elif "error" in calls:
        out.append(f"calls: failed: {calls['error']}")
    rows = [("target", "value", "target", "result")]
    for (_, title, target, _, _), verdict in zip(TARGETS, result["targets"]):
        shown = "-" if verdict["value"] is None else f"x{verdict['value']:g}"
        rows.append((title, shown, target, {True: "PASS", False: "FAIL", None: "?"}[verdict["pass"]]))
    out += _columns(rows, range(1, 2))
    out.append("")
    out.append(f"{result['micropython']}; Python {result['python']}; aiocoap {result['aiocoap']}; "
               f"{result['rounds']} rounds of {result['seconds_per_run']:g} s per subject and level (median rate); "
               f"whole run {result['seconds']} s.")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    from bench.mpy import BuildFailed, ToolMissing

    defaults = Options(rounds=3)
    p = argparse.ArgumentParser(prog="python -m bench http", description=__doc__.splitlines()[0])
    p.add_argument("--json", metavar="FILE", help="also write the JSON report to FILE")
    p.add_argument("--seconds", type=float, default=defaults.seconds,
                   help="length of each timed run (default %(default)s)")
    p.add_argument("--rounds", type=int, default=defaults.rounds,
                   help="timed runs per subject and level (default %(default)s)")
    p.add_argument("--heap", default=defaults.heap,
                   help="MicroPython heap of the simulated device (default %(default)s)")
    args = p.parse_args(argv)
    opts = Options(seconds=args.seconds, rounds=args.rounds, heap=args.heap)
    try:
        result = run(opts)
    except (ToolMissing, BuildFailed) as err:
        print(f"bench: {err}", file=sys.stderr)
        return 2
    report.emit(result, table(result), args.json)
    return 0
