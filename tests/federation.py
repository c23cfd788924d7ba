"""Test-side parts for federations: a real nats-server cluster with JetStream on 127.0.0.1, gateway processes of
enrolled homes, simulated devices behind each, and a TCP relay that can cut a gateway off from NATS."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support import GROUP, ROOT, free_tcp_port, free_udp_port, stop_process, wait_until


def nats_server() -> str:
    """Debian's nats-server; a failure where the environment requires the real parts (CI), else a skip."""
    found = shutil.which("nats-server") or (os.path.exists("/usr/sbin/nats-server") and "/usr/sbin/nats-server")
    if not found:
        if os.environ.get("CI") or os.environ.get("NDN_EDGE_REQUIRE_MICROPYTHON"):
            pytest.fail("nats-server is required (apt-get install nats-server; .ci/run installs it)")
        pytest.skip("nats-server is not installed")
    return str(found)


class NatsCluster:
    """Three nats-server nodes with JetStream, each with its own ports and data folder, routes between them;
    `no_advertise`, so that clients reach only the addresses they were given (a relay can cut one off)."""

    def __init__(self, folder: Path, nodes: int = 3) -> None:
        self.folder = folder
        self.binary = nats_server()
        self.ports = [free_tcp_port() for _ in range(nodes)]
        self.routes = [free_tcp_port() for _ in range(nodes)]
        self.procs: list[subprocess.Popen | None] = [None] * nodes

    @property
    def urls(self) -> str:
        return ",".join(f"nats://127.0.0.1:{p}" for p in self.ports)

    def start(self, i: int | None = None) -> None:
        for n in range(len(self.ports)) if i is None else [i]:
            data = self.folder / f"n{n}"
            data.mkdir(parents=True, exist_ok=True)
            routes = ", ".join(f"nats-route://127.0.0.1:{r}" for j, r in enumerate(self.routes) if j != n)
            conf = data / "nats.conf"
            conf.write_text(
                f"server_name: n{n}\nlisten: 127.0.0.1:{self.ports[n]}\n"
                f'jetstream {{ store_dir: "{data}", max_mem: 64MB, max_file: 1GB }}\n'
                f"cluster {{ name: ndne, listen: 127.0.0.1:{self.routes[n]}, no_advertise: true, "
                f"routes: [{routes}] }}\n")
            with open(data / "log", "ab") as log:
                self.procs[n] = subprocess.Popen([self.binary, "-c", str(conf)], stdout=log, stderr=log)

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        if proc is not None:
            proc.kill()
            proc.wait(10)
            self.procs[i] = None

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Until JetStream places a three-replica bucket (the cluster has its meta leader and every peer). Each try's
        JetStream request waits 1 s, not nats-py's 5: one sent before the cluster has elected its meta leader gets no
        answer, and under load that cost 5 s every time; a bucket a timed-out try made is found by the next."""
        import asyncio

        import nats

        async def ready() -> bool:
            try:
                nc = await nats.connect(self.urls.split(","), connect_timeout=1, max_reconnect_attempts=0,
                                        allow_reconnect=False)
            except Exception:
                return False
            try:
                from nats.js.api import KeyValueConfig

                kv = await nc.jetstream(timeout=1.0).create_key_value(KeyValueConfig(bucket="ready", replicas=3))
                await kv.put("k", b"v")
                return True
            except Exception:
                return False
            finally:
                await nc.close()

        wait_until(lambda: asyncio.run(ready()), timeout_s, interval_s=0.3, what="the NATS cluster's JetStream")

    def close(self) -> None:
        for n in range(len(self.procs)):
            self.kill(n)


class Relay:
    """A TCP relay in front of one NATS node: `cut()` closes every connection through it and refuses new ones
    (a gateway partitioned from NATS), `heal()` lets them through again."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.open = True
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            if not self.open:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=2)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        self.open = False
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass

    def heal(self) -> None:
        self.open = True

    def close(self) -> None:
        self.cut()
        self.sock.close()


class Site:
    """One enrolled home: its gateway process on its own multicast group ("LAN"), and simulated devices."""

    def __init__(self, folder: Path, name: str, port: int | None = None) -> None:
        self.name = name
        self.home = folder / name
        self.logs = folder
        self.port = port or free_udp_port()
        self.gateway: subprocess.Popen | None = None
        self.sim: subprocess.Popen | None = None
        self.env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.env.pop("NDN_EDGE_CLIENT", None)

    def cli(self, *args: str, timeout_s: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ndn_edge.tools", "--home", str(self.home), *args], cwd=ROOT,
                              env=self.env, capture_output=True, text=True, timeout=timeout_s)

    def ok(self, *args: str) -> str:
        done = self.cli(*args)
        assert done.returncode == 0, f"{self.name}: ndn-edge {' '.join(args)}: {done.stderr}"
        return done.stdout

    def start_gateway(self, *extra: str) -> None:
        from ndn_edge.errors import ConfigError
        from ndn_edge.state.home import Home

        with open(self.logs / f"{self.name}.gw.log", "ab") as log:
            self.gateway = subprocess.Popen(
                [sys.executable, "-m", "ndn_edge.tools", "--home", str(self.home), "gateway", "--group",
                 f"{GROUP}:{self.port}", "--log", str(self.logs / f"{self.name}.gw.err"), *extra], cwd=ROOT,
                env=self.env, stdout=log, stderr=subprocess.STDOUT)
        home = Home(self.home)

        def ready() -> bool:
            if self.gateway is not None and self.gateway.poll() is not None:
                raise AssertionError(f"gateway {self.name} exited with {self.gateway.returncode}:\n{self.log()}")
            try:
                return home.read_gateway_record().pid == self.gateway.pid  # type: ignore[union-attr]
            except ConfigError:
                return False
        wait_until(ready, 20, what=f"gateway {self.name}'s record")

    def start_sim(self, count: int, prefix: str, *extra: str) -> None:
        with open(self.logs / f"{self.name}.sim.log", "ab") as log:
            self.sim = subprocess.Popen(
                [sys.executable, "-m", "ndn_edge.tools", "--home", str(self.home), "sim", "--devices", str(count),
                 "--prefix", prefix, "--group", f"{GROUP}:{self.port}", *extra], cwd=ROOT, env=self.env,
                stdout=log, stderr=subprocess.STDOUT)

    def address(self) -> str:
        from ndn_edge.state.home import Home

        record = Home(self.home).read_gateway_record()
        return f"{record.host}:{record.port}"

    def state(self) -> dict:
        """The part of `status()` that is this home's own, read here: its gateway's tag (`gateway`) and what its
        running gateway last wrote of itself (`local`, HOME/federation.state.json: state, devices served). The
        command reads the same file; polled in a wait, a command a poll cost a process start, and NATS reads."""
        from ndn_edge.federation.config import read_config, read_state

        config = read_config(self.home)
        return {"gateway": config.gateway if config is not None else None, "local": read_state(self.home) or {}}

    def status(self) -> dict:
        """`ndn-edge federation status --json`."""
        return json.loads(self.ok("federation", "status", "--json", "--timeout", "1"))

    def kill_gateway(self) -> None:
        if self.gateway is not None:
            self.gateway.send_signal(signal.SIGKILL)
            self.gateway.wait(10)

    def log(self) -> str:
        out = ""
        for suffix in ("gw.log", "gw.err"):
            path = self.logs / f"{self.name}.{suffix}"
            if path.exists():
                out += path.read_text(errors="replace")[-4000:]
        return out

    def close(self) -> None:
        stop_process(self.sim)
        stop_process(self.gateway)


def enrol(sites: list[Site], urls: str) -> str:
    """`federation init` in the first home, `federation join` in the others; the token."""
    token = json.loads(sites[0].ok("federation", "init", "--nats", urls, "--json"))["token"]
    for site in sites[1:]:
        sites[1].home.parent.mkdir(parents=True, exist_ok=True)
        site.ok("federation", "join", token)
    return token


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.05):
    """`wait_until` that also ends on a deadline when the predicate raises a call error (the gateway answered
    UNAVAILABLE while a device is taken over, say): retried until the deadline."""
    from ndn_edge.errors import GatewayError

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except GatewayError as err:
            last = err
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}" + (f" (last: {last})" if last else ""))
