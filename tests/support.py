"""Test-side peers: a multicast endpoint on loopback and board processes on the real interpreters."""
from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cbor2

from gateway import wire

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
            except socket.timeout:
                return None
            value = predicate(data)
            if value:
                return value

    def close(self) -> None:
        self.sock.close()


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


def is_announcement(site: str = "edge"):
    from ndn.encoding import Name, parse_interest

    prefix = Name.from_str(f"/{site}/_sd/ann")

    def check(data: bytes):
        if not data or data[0] != 0x05:
            return None
        try:
            name, _, params, sig = parse_interest(data, with_tl=True)
        except Exception:
            return None
        if name[:3] == prefix:
            return data
        return None
    return check


class Board:
    """A board app in its own process: MicroPython (default) or CPython, on 127.0.0.1 only."""

    def __init__(self, interpreter: str, port: int, state_dir: Path, *, name: str = "/edge/lab/b1",
                 key: bytes | None = None, heap: str = "256K", app: Path = BOARD_APP, lease_ms: int = 60000):
        self.name = name
        self.key = key or secrets.token_bytes(32)
        self.port = port
        self.state_dir = state_dir
        self.interpreter = interpreter
        self.heap = heap
        self.app = app
        self.lease_ms = lease_ms
        self.proc = None
        self.seq = 0

    def start(self, peer: McastPeer, timeout_s: float = 15.0) -> bytes:
        """Start and wait for the boot announcement; returns it."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONPATH=str(ROOT),
                   MICROPYPATH=os.environ.get("NDN_EDGE_MICROPYPATH", f"{ROOT}:.frozen"))
        cmd = [self.interpreter]
        if self.interpreter.endswith("micropython"):
            cmd += ["-X", f"heapsize={self.heap}"]
        cmd += [str(self.app), self.name, self.key.hex(), str(self.port), str(self.state_dir), str(self.lease_ms)]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ann = peer.recv_until(self._my_announcement(), timeout_s)
        if ann is None:
            self.proc.kill()
            out, err = self.proc.communicate(timeout=5)
            raise AssertionError(f"board did not announce within {timeout_s}s\n{out}\n{err}")
        return ann

    def _my_announcement(self):
        from ndn.encoding import parse_interest
        from ndn.encoding import Name
        check = is_announcement(self.name.split("/")[1])
        want = wire.key_name(self.name, self.key)

        def mine(data):
            if not check(data):
                return None
            _, _, params, sig = parse_interest(data, with_tl=True)
            if Name.to_str(sig.signature_info.key_locator.name) != want:
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
