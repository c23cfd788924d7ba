"""Test-side peers: a multicast endpoint on loopback and board processes on the real interpreters."""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cbor2

from ndn_edge.wire import packets as wire

ROOT = Path(__file__).resolve().parent.parent
GROUP = "224.0.23.170"
LOOPBACK = "127.0.0.1"
BOARD_APP = ROOT / "tests" / "apps" / "board.py"


class McastPeer:
    """A UDP socket joined to the group on 127.0.0.1 only (IP_MULTICAST_IF set), like a gateway's face."""

    def __init__(self, port: int):
        self.port = port
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((GROUP, port))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                     socket.inet_aton(GROUP) + socket.inet_aton(LOOPBACK))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(LOOPBACK))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        self.sock = s

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, (GROUP, self.port))

    def recv_until(self, predicate, timeout_s: float = 5.0):
        """Datagrams until predicate(datagram) is truthy; returns its value, or None at the deadline."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return None
            value = predicate(data)
            if value:
                return value

    def close(self) -> None:
        self.sock.close()


def send_unicast(data: bytes, port: int, host: str = LOOPBACK) -> None:
    """One datagram to host:port by unicast (a device listens on its port: the fallback where multicast fails)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(data, (host, port))


def is_data_for(final_name):
    """Predicate: a Data (maybe LP-wrapped) whose name is final_name; returns the datagram."""
    from ndn.encoding import parse_data
    from ndn.encoding.ndnlp_v2 import parse_lp_packet_v2

    def check(data: bytes):
        try:
            if data[0] == 0x64:
                frag = parse_lp_packet_v2(data, with_tl=True).fragment
                if frag is None:
                    return None
                inner = bytes(frag)
            else:
                inner = data
            if inner[0] != 0x06:
                return None
            name, _, _, _ = parse_data(inner, with_tl=True)
        except Exception:  # other traffic on the group
            return None
        return data if name == final_name else None
    return check


def parsed_interest(data: bytes):
    """(name, params, signature) of an Interest, or None for anything else on the group."""
    from ndn.encoding import parse_interest

    if not data or data[0] != 0x05:
        return None
    try:
        name, _, params, sig = parse_interest(data, with_tl=True)
    except Exception:
        return None
    return name, params, sig


def is_announcement(site: str = "edge"):
    from ndn.encoding import Name

    prefix = Name.from_str(f"/{site}/_sd/ann")

    def check(data: bytes):
        got = parsed_interest(data)
        return data if got is not None and got[0][:3] == prefix else None
    return check


def report_of(board: Board, kind: str):
    """Predicate: a report /edge/<kind> signed by the board's key; returns (name, params, wire)."""
    from ndn.encoding import Name

    def check(data):
        got = parsed_interest(data)
        if got is None or Name.to_str(got[0][:2]) != f"/edge/{kind}":
            return None
        name, params, sig = got
        mac = hmac.new(board.key, digestmod=hashlib.sha256)
        for part in sig.signature_covered_part:
            mac.update(part)
        assert mac.digest() == bytes(sig.signature_value_buf), "report with a bad signature"
        return name, cbor2.loads(bytes(params)), data
    return check


class Board:
    """A board app in its own process: MicroPython (default) or CPython, on 127.0.0.1 only."""

    def __init__(self, interpreter: str, port: int, state_dir: Path, *, name: str = "/edge/lab/b1",
                 key: bytes | None = None, heap: str = "256K", app: Path = BOARD_APP, lease_ms: int = 60000,
                 gateway: str | None = None, micropypath: str | None = None):
        self.name = name
        self.key = key or secrets.token_bytes(32)
        self.port = port
        self.state_dir = state_dir
        self.interpreter = interpreter
        self.heap = heap
        self.app = app
        self.lease_ms = lease_ms
        self.gateway = gateway  # "host:port" the board also sends to (the unicast fallback), or None
        self.micropypath = micropypath  # where its runtime comes from, instead of the tests' (mp_env)
        self.proc = None
        self.seq = 0

    def start(self, peer: McastPeer, timeout_s: float = 15.0) -> bytes:
        """Start and wait for the boot announcement; returns it."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONPATH=str(ROOT),
                   MICROPYPATH=self.micropypath or os.environ.get("NDN_EDGE_MICROPYPATH", f"{ROOT}:.frozen"))
        cmd = [self.interpreter]
        if self.interpreter.endswith("micropython"):
            cmd += ["-X", f"heapsize={self.heap}"]
        cmd += [str(self.app), self.name, self.key.hex(), str(self.port), str(self.state_dir), str(self.lease_ms)]
        if self.gateway:
            cmd.append(self.gateway)
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ann = peer.recv_until(self._my_announcement(), timeout_s)
        if ann is None:
            self.proc.kill()
            out, err = self.proc.communicate(timeout=5)
            raise AssertionError(f"board did not announce within {timeout_s}s\n{out}\n{err}")
        return ann

    def _my_announcement(self):
        from ndn.encoding import Name, parse_interest
        check = is_announcement(self.name.split("/")[1])
        want = wire.key_name(self.name, self.key)

        def mine(data):
            if not check(data):
                return None
            _, _, params, sig = parse_interest(data, with_tl=True)
            try:
                if Name.to_str(sig.signature_info.key_locator.name) != want:
                    return None
            except ValueError:  # someone else's malformed packet on the group (tests/hostile.py)
                return None
            return data if cbor2.loads(bytes(params)).get("state") == "up" else None
        return mine

    def call(self, peer: McastPeer, service: str, args=None, *, seq: int | None = None, key: bytes | None = None,
             timeout_s: float = 5.0, private: bool = False):
        """Signed invocation; returns the verified Reply, or None when nothing came back."""
        if seq is None:
            self.seq += 1
            seq = self.seq
        w, final = wire.make_call(f"{self.name}/{service}", args, key or self.key, seq,
                                  signer_owner=self.name, private=private)
        peer.send(w)
        got = peer.recv_until(is_data_for(final), timeout_s)
        return None if got is None else wire.parse_reply(got, self.key, private=private)

    def stop(self, timeout_s: float = 10.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout_s)
        self.proc.stdout.close()
        self.proc.stderr.close()
        return self.proc.returncode

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def cpython() -> str:
    return sys.executable


def lp_wrap(token: bytes, inner: bytes) -> bytes:
    """NDNLPv2 LpPacket{PitToken(token), Fragment(inner)}, written by hand."""
    def tl(t, v):
        assert len(v) < 253
        return bytes([t, len(v)]) + v
    frag = bytes([0x50, 0xFD]) + len(inner).to_bytes(2, "big") + inner
    body = tl(0x62, token) + frag
    return bytes([0x64, 0xFD]) + len(body).to_bytes(2, "big") + body


def run_scenario(scenario, timeout_s: float = 30.0):
    """Run an async scenario in a fresh loop with a deadline; fail if it leaves a task behind."""
    import asyncio

    async def main():
        result = await asyncio.wait_for(scenario(), timeout_s)
        left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
        assert not left, f"tasks left behind: {left}"
        return result
    return asyncio.run(main())


async def until(predicate, timeout_s: float, what: str, interval_s: float = 0.02):
    """Poll `predicate()` (plain or async) on the running loop until it is truthy; fail after `timeout_s`."""
    import asyncio
    import inspect
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(interval_s)


async def start_board(board: Board, peer: McastPeer) -> bytes:
    """Start a board from inside the loop; its boot announcement."""
    import asyncio
    return await asyncio.to_thread(board.start, peer)


async def health(side, board: Board) -> dict:
    """The board's `_health`, called through a device side."""
    return (await side.call(board.name, "_health")).value


async def online_with_services(side, board: Board, timeout_s: float = 5.0) -> None:
    await until(lambda: side.is_online(board.name) and side.services(board.name), timeout_s,
                f"{board.name} online with its services")


def find_micropython():
    """Path of the MicroPython unix port ($MICROPYTHON, PATH, or beside this interpreter), or None."""
    from ndn_edge.tools import micropython as mp
    return mp.find("micropython")


def micropython_required():
    from ndn_edge.tools import micropython as mp
    return mp.required()


def find_mpy_cross():
    from ndn_edge.tools import micropython as mp
    return mp.find("mpy-cross")


def compile_runtime(out_dir: Path):
    """The runtime compiled to .mpy under out_dir/device, as a board carries it (None without mpy-cross)."""
    from ndn_edge.tools import micropython as mp
    mpy_cross = mp.find("mpy-cross")
    return None if mpy_cross is None else mp.compile_runtime(out_dir, mpy_cross)


_FEATURES: dict[str, dict] = {}


def mp_features(micropython: str) -> dict:
    """What the interpreter is: {"bits": its word size (32 or 64), "cryptolib": whether it has AES, "frozen":
    whether it carries the runtime frozen in}. A 32-bit build's objects and GC blocks are half the size, so heaps
    sized to run out of memory on 64 bits are halved; unix ports built without an SSL library (CI's 32-bit ones)
    have no cryptolib, which private services need; a frozen runtime's code is not in the heap."""
    if micropython not in _FEATURES:
        code = ("import sys\ntry:\n import cryptolib\n c = 1\nexcept ImportError:\n c = 0\n"
                "try:\n import device\n f = 1\nexcept ImportError:\n f = 0\n"
                "print(64 if sys.maxsize > 2**32 else 32, c, f)")
        done = subprocess.run([micropython, "-c", code], capture_output=True, text=True, timeout=30,
                              env=dict(os.environ, MICROPYPATH=".frozen"), cwd="/")
        bits, crypto, frozen = done.stdout.split()
        _FEATURES[micropython] = {"bits": int(bits), "cryptolib": crypto == "1", "frozen": frozen == "1"}
    return _FEATURES[micropython]


def scaled_heap(micropython: str, kib_64: int) -> str:
    """A heap of kib_64 KiB on a 64-bit interpreter, half that on a 32-bit one (the same number of objects)."""
    return f"{kib_64 if mp_features(micropython)['bits'] == 64 else kib_64 // 2}K"


def mp_env():
    """Environment for a MicroPython child: the compiled runtime, then the project root."""
    env = dict(os.environ)
    env["MICROPYPATH"] = os.environ.get("NDN_EDGE_MICROPYPATH", f"{ROOT}:.frozen")
    return env


_PORT_LOCKS = Path(tempfile.gettempdir()) / "ndn-edge-test-ports"
_reserved: list = []  # lock files held until this process exits


# Ports the tests bind later (a multicast group's, a nats-server's) come from below the kernel's ephemeral range
# (ip_local_port_range, 32768-60999 by default), which connect() and bind(0) draw from: a port picked there while
# free can be handed to another process's outgoing socket before the test binds it.
_PORT_RANGE = (20000, 32000)


def reserve_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A port of `kind` (UDP or TCP) on 127.0.0.1 that is free now and that no other test process holds: a lock
    file per port keeps xdist workers and concurrent runs apart until this process exits (every socket on a
    multicast group shares its port with SO_REUSEADDR, so the OS cannot keep two tests apart)."""
    import fcntl
    import random

    _PORT_LOCKS.mkdir(exist_ok=True)
    rng = random.Random(os.getpid() * 1_000_003 + time.monotonic_ns())
    for _ in range(1000):
        port = rng.randrange(*_PORT_RANGE)
        lock = open(_PORT_LOCKS / str(port), "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # another test process holds it
            lock.close()
            continue
        try:
            with socket.socket(socket.AF_INET, kind) as s:
                s.bind(("127.0.0.1", port))
        except OSError:  # something else uses it
            lock.close()
            continue
        _reserved.append(lock)
        return port
    raise AssertionError(f"no free port in {_PORT_RANGE} after 1,000 tries")


def free_udp_port() -> int:
    """A UDP port of this test's own: see `reserve_port`."""
    return reserve_port(socket.SOCK_DGRAM)


def free_tcp_port() -> int:
    """A TCP port of this test's own, for a server the test starts later: see `reserve_port`."""
    return reserve_port(socket.SOCK_STREAM)


def wait_until(predicate, timeout_s=10.0, interval_s=0.02, what="condition"):
    """Poll `predicate` until it returns a truthy value or the deadline passes (then fail)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


def stop_process(proc: subprocess.Popen | None, timeout_s: float = 10) -> int | None:
    """Ctrl-C, then kill after `timeout_s`; the exit code (None for no process)."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout_s)
    return proc.returncode


class Cluster:
    """A home with a gateway process and one `ndn-edge sim` process (simulated devices on MicroPython), on its
    own multicast port; the CLI in this process or as a child."""

    def __init__(self, tmp_path: Path, port: int) -> None:
        self.home = tmp_path / "home"
        self.port = port
        self.logs = tmp_path
        self.gateway: subprocess.Popen | None = None
        self.sim: subprocess.Popen | None = None
        self.env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.env.pop("NDN_EDGE_CLIENT", None)

    def cli(self, *args: str) -> tuple[int, str, str]:
        """`ndn-edge --home HOME ARGS...` in this process; returns (exit code, stdout, stderr)."""
        from ndn_edge.tools.cli import main as cli_main
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli_main(["--home", str(self.home), *args])
        return code, out.getvalue(), err.getvalue()

    def cli_process(self, *args: str, timeout_s: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ndn_edge.tools", "--home", str(self.home), *args], cwd=ROOT,
                              env=self.env, capture_output=True, text=True, timeout=timeout_s)

    def clients(self, **rules: str) -> None:
        """Add each client and grant it its pattern: clients(alice="sim/**")."""
        for name, pattern in rules.items():
            assert self.cli("client", "add", name)[0] == 0
            assert self.cli("acl", "grant", name, pattern)[0] == 0

    def start_gateway(self, *extra: str):
        """Start `ndn-edge gateway` (stdout to gateway.log, structured logs to gateway.err); wait for its record."""
        from ndn_edge.errors import ConfigError
        from ndn_edge.state.home import Home
        with open(self.logs / "gateway.log", "ab") as out, open(self.logs / "gateway.err", "ab") as err:
            self.gateway = subprocess.Popen(
                [sys.executable, "-m", "ndn_edge.tools", "--home", str(self.home), "gateway", "--group",
                 f"{GROUP}:{self.port}", *extra], cwd=ROOT, env=self.env, stdout=out, stderr=err)
        home = Home(self.home)

        def ready() -> bool:
            if self.gateway.poll() is not None:
                raise AssertionError(f"gateway exited with {self.gateway.returncode}:\n{self.log('gateway')}"
                                     f"{self.log('gateway', 'err')}")
            try:
                return home.read_gateway_record().pid == self.gateway.pid
            except ConfigError:
                return False
        wait_until(ready, 20, what="the gateway's record")
        return home

    def start_sim(self, count: int, *extra: str) -> None:
        with open(self.logs / "sim.log", "ab") as log:
            self.sim = subprocess.Popen(
                [sys.executable, "-m", "ndn_edge.tools", "--home", str(self.home), "sim", "--devices", str(count),
                 "--group",
                 f"{GROUP}:{self.port}", *extra], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def connect(self, client: str, timeout: float = 5.0):
        from ndn_edge.client.api import Client
        return Client.connect_sync(home=self.home, client=client, timeout=timeout)

    def wait_online(self, client, names: list[str], timeout_s: float = 30) -> None:
        """Until `client` lists every device in `names` online and described."""

        def online() -> bool:
            if self.sim is not None and self.sim.poll() is not None:
                raise AssertionError(f"sim exited with {self.sim.returncode}:\n{self.log('sim')}")
            seen = {d["name"] for d in client.devices() if d["state"] == "online" and d["services"]}
            return set(names) <= seen
        wait_until(online, timeout_s, interval_s=0.05, what=f"devices {names} online")

    def device_pid(self, number: int) -> int:
        """The pid of sim device `number` (its process runs in HOME/sim/<number>)."""
        folder = str((self.home / "sim" / str(number)).resolve())
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if os.readlink(entry / "cwd") == folder:
                        return int(entry.name)
        raise AssertionError(f"no process for sim device {number}")

    def log(self, which: str, ext: str = "log") -> str:
        path = self.logs / f"{which}.{ext}"
        return path.read_text(errors="replace") if path.exists() else ""

    @staticmethod
    def stop(proc: subprocess.Popen | None, timeout_s: float = 10) -> int | None:
        return stop_process(proc, timeout_s)

    def close(self) -> None:
        self.stop(self.sim)
        self.stop(self.gateway)
