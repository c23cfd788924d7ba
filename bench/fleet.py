"""The ndn-edge side of the gateway benchmark: homes, the real `ndn-edge gateway` and `ndn-edge sim` processes,
process memory, and signed announcements sent on the multicast group in place of running devices.

Everything runs on 127.0.0.1: the gateway listens for clients on 127.0.0.1 and joins the group on 127.0.0.1;
the group sockets here join and send on 127.0.0.1 only (`IP_MULTICAST_IF`, TTL 1).
"""
from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from bench.calls import StartFailed, free_port
from bench.mpy import ROOT

GROUP = "224.0.23.170"
LOOPBACK = "127.0.0.1"
CLIENT = "bench"
SITE = "edge"
_STOP_S = 10.0


def make_home(path: Path, client: str = CLIENT) -> Path:
    """A fresh home with a client `client` allowed everything (through the real CLI, in this process)."""
    from ndn_edge.tools.cli import main as cli

    for args in (("client", "add", client), ("acl", "grant", client, "**")):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = cli(["--home", str(path), *args])
        if code:
            raise StartFailed(f"ndn-edge {' '.join(args)} failed ({code}): {out.getvalue().strip()}")
    return path


class Proc:
    """A `python -m tools ...` child with its output in a log file; SIGINT to stop, SIGKILL after a grace."""

    def __init__(self, args: list[str], log: Path, niceness: int = 0) -> None:
        self.log = log
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        env.pop("NDN_EDGE_CLIENT", None)
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "ndn_edge.tools", *args], cwd=ROOT, env=env,
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         preexec_fn=(lambda: os.nice(niceness)) if niceness else None)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def failure(self) -> str:
        tail = self.log.read_text(errors="replace")[-400:] if self.log.exists() else ""
        return f"exit code {self.proc.returncode}; {self.log}: {tail}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(_STOP_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(_STOP_S)


class GatewayProcess(Proc):
    """`ndn-edge --home HOME gateway --group 224.0.23.170:PORT` (clients on 127.0.0.1, a free port)."""

    def __init__(self, home: Path, port: int, log: Path) -> None:
        self.home = home
        super().__init__(["--home", str(home), "gateway", "--group", f"{GROUP}:{port}"], log)

    def wait_ready(self, timeout_s: float = 30.0) -> float:
        """Seconds until the gateway has written its address record (it then serves clients)."""
        from ndn_edge.errors import ConfigError
        from ndn_edge.state.home import Home

        started = time.monotonic()
        home = Home(self.home)
        while time.monotonic() - started < timeout_s:
            if not self.alive():
                raise StartFailed(f"gateway exited: {self.failure()}")
            try:
                if home.read_gateway_record().pid == self.pid:
                    return time.monotonic() - started
            except ConfigError:
                pass
            time.sleep(0.005)
        raise StartFailed(f"gateway not ready after {timeout_s:g} s: {self.failure()}")


class SimProcess(Proc):
    """`ndn-edge --home HOME sim --devices N --group 224.0.23.170:PORT --heap HEAP --tick S`: devices on
    MicroPython, each publishing topic `tick` every S seconds (0: never)."""

    def __init__(self, home: Path, port: int, devices: int, heap: str, log: Path, tick_s: float = 1.0,
                 niceness: int = 0) -> None:
        super().__init__(["--home", str(home), "sim", "--devices", str(devices), "--group", f"{GROUP}:{port}",
                          "--heap", heap, "--tick", f"{tick_s:g}"], log, niceness)

    def child_pid(self) -> int:
        """The first device process (Linux)."""
        with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
            return int(f.read().split()[0])


def rss_kib(pid: int) -> dict[str, int]:
    """Resident set size now and at its peak (VmRSS, VmHWM) of a Linux process, in KiB."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])
    return {"rss_kib": fields["VmRSS"], "peak_rss_kib": fields["VmHWM"]}


def cpu_s(pid: int) -> float:
    """User plus system CPU seconds a Linux process has used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def group_port() -> int:
    """A UDP port for the benchmark's own multicast group (free on 127.0.0.1 a moment ago)."""
    return free_port()


def group_listener(port: int) -> socket.socket:
    """A socket joined to the group on 127.0.0.1 only, receiving everything sent to it."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
    s.bind((GROUP, port))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(GROUP) + socket.inet_aton(LOOPBACK))
    return s


def group_sender() -> socket.socket:
    """A socket sending to the group through 127.0.0.1 only (IP_MULTICAST_IF), TTL 1."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(LOOPBACK))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    return s


def announcer_of(datagram: bytes) -> str | None:
    """The key name that signed an `up` announcement, or None for any other datagram."""
    import cbor2
    from ndn.encoding import Name, parse_interest

    if not datagram or datagram[0] != 0x05 or b"\x08\x03_sd\x08\x03ann" not in datagram[:64]:
        return None  # (a byte test first: with 200 devices publishing, parsing everything falls behind)
    try:
        name, _, params, sig = parse_interest(datagram, with_tl=True)
        if Name.to_str(name[:3]) != f"/{SITE}/_sd/ann" or cbor2.loads(bytes(params)).get("state") != "up":
            return None
        return Name.to_str(sig.signature_info.key_locator.name)
    except Exception:  # other traffic on the group
        return None


def announcement(device: str, key: bytes, seq: int, desc_hash: str, lease_ms: int) -> bytes:
    """A device's signed `up` announcement (docs/protocol.md "Discovery"), as the runtime sends it."""
    import cbor2
    from ndn.encoding import InterestParam, make_interest

    from ndn_edge.wire import packets as wire

    params = cbor2.dumps({"state": "up", "lease_ms": lease_ms, "rx_floor": 1, "desc": desc_hash,
                          "uptime_ms": 1000 + seq})
    signer = wire.SeqSigner(wire.key_name(device, key), key, seq)
    return bytes(make_interest(f"/{SITE}/_sd/ann", InterestParam(lifetime=1000), params, signer=signer))
