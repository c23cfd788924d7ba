"""Floor anchor client for the device benchmark: datagrams to a bare asyncio UDP echo on 127.0.0.1.

A call is one datagram of about an Interest's size, answered when the same bytes come back.
"""
from __future__ import annotations

import socket

from bench.calls import MEMTOTAL, BadReply, Client, free_port, wait_for

HOST = "127.0.0.1"
PAYLOAD_BYTES = 160
MEMTOTAL_PROBE = b"?"


class EchoClient(Client):
    label = "udp-echo"

    def __init__(self, app, sock: socket.socket, port: int):
        super().__init__(app)
        self.sock = sock
        self.dest = (HOST, port)

    @classmethod
    def launch(cls, env, heap_kib: int) -> EchoClient:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((HOST, 0))
        port = free_port()
        app = env.launch("udp_echo.py", [str(port), str(sock.getsockname()[1])], heap_kib)
        return cls(app, sock, port)

    def wait_ready(self, timeout_s: float) -> None:
        wait_for(lambda: self.exchange(MEMTOTAL_PROBE, 0.1), self.app, timeout_s, interval_s=0)
        self._drain()

    def _drain(self) -> None:
        """Drop late answers to the readiness probes."""
        self.sock.setblocking(False)
        try:
            while self.sock.recv(2048):
                pass
        except BlockingIOError:
            pass

    def prepare(self, services: list[str]) -> list[bytes]:
        return [MEMTOTAL_PROBE if service == MEMTOTAL else f"{i} {service} ".encode().ljust(PAYLOAD_BYTES, b".")
                for i, service in enumerate(services)]

    def exchange(self, request: bytes, timeout_s: float):
        self.sock.sendto(request, self.dest)
        self.sock.settimeout(timeout_s)
        try:
            return self.sock.recv(2048)
        except TimeoutError:
            return None

    def check(self, services, requests, replies) -> None:
        for i, (request, reply) in enumerate(zip(requests, replies)):
            if reply != request:
                raise BadReply(f"datagram {i + 1} came back as {reply[:40]!r}")

    def decode_memtotal(self, reply) -> int:
        try:
            return int(reply)
        except ValueError as err:
            raise BadReply(f"memtotal reply {reply[:40]!r}") from err

    def info(self) -> dict:
        return {"transport": f"{PAYLOAD_BYTES}-byte UDP datagrams echoed on 127.0.0.1, 1 in flight"}

    def close(self) -> None:
        super().close()
        self.sock.close()
