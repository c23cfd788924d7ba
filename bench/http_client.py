"""Microdot client for the device benchmark: HTTP/1.1 requests to 127.0.0.1, built before timing.

After start-up the client asks for a persistent connection once and watches whether the server keeps
it open. If it does, every call reuses one keep-alive connection; if not (Microdot 2.x answers
HTTP/1.0 and closes), every call opens a new connection and reads the reply to end of stream.
"""
from __future__ import annotations

import json
import socket
import time

from bench.calls import ECHO_ARGS, MEMTOTAL, BadReply, Client, check_values, free_port, wait_for

HOST = "127.0.0.1"
ROUTES = {"temperature": ("GET", None), "echo": ("POST", ECHO_ARGS), "counter": ("POST", None),
          MEMTOTAL: ("GET", None)}


def build_request(service: str, keep_alive: bool) -> bytes:
    method, body = ROUTES[service]
    payload = b"" if body is None else json.dumps(body).encode()
    head = [f"{method} /{service} HTTP/1.1", f"Host: {HOST}",
            f"Connection: {'keep-alive' if keep_alive else 'close'}"]
    if method == "POST":
        head += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + payload


def read_response(sock: socket.socket, deadline: float) -> bytes | None:
    """One response (head and Content-Length body) from sock, or None on end of stream or deadline."""
    data = bytearray()
    end = length = -1
    while end < 0 or len(data) < end + 4 + length:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        sock.settimeout(left)
        chunk = sock.recv(4096)
        if not chunk:
            return None
        data += chunk
        if end < 0 and (end := data.find(b"\r\n\r\n")) >= 0:
            length = content_length(bytes(data[:end]))
    return bytes(data)


def content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def parse_response(response: bytes):
    """The JSON body of a 200 response; BadReply otherwise."""
    head, _, body = response.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if status.split(b" ")[1:2] != [b"200"]:
        raise BadReply(f"HTTP status {status.decode(errors='replace')!r}: {body[:80]!r}")
    try:
        return json.loads(body)
    except ValueError as err:
        raise BadReply(f"body is not JSON: {body[:80]!r}") from err


class HttpClient(Client):
    label = "microdot"
    lib = "microdot"

    def __init__(self, app, port: int):
        super().__init__(app)
        self.port = port
        self.keep_alive = False
        self.conn: socket.socket | None = None

    @classmethod
    def launch(cls, env, heap_kib: int) -> HttpClient:
        port = free_port(socket.SOCK_STREAM)
        return cls(env.launch("microdot_three.py", [str(port)], heap_kib, cls.lib), port)

    def wait_ready(self, timeout_s: float) -> None:
        def answers():
            try:
                return self.exchange(build_request(MEMTOTAL, False), 1.0)
            except ConnectionRefusedError:
                return None

        wait_for(answers, self.app, timeout_s)
        self.keep_alive = self._server_keeps_alive()

    def _server_keeps_alive(self) -> bool:
        """Ask for keep-alive once; True if the connection is still open after the response."""
        with socket.create_connection((HOST, self.port), timeout=1.0) as s:
            s.sendall(build_request(MEMTOTAL, True))
            if read_response(s, time.monotonic() + 1.0) is None:
                return False
            s.settimeout(0.3)
            try:
                return s.recv(1) != b""
            except TimeoutError:
                return True  # still open: the server waits for the next request

    def prepare(self, services: list[str]) -> list[bytes]:
        return [build_request(service, self.keep_alive) for service in services]

    def exchange(self, request: bytes, timeout_s: float):
        deadline = time.monotonic() + timeout_s
        sock = self.conn or socket.create_connection((HOST, self.port), timeout=timeout_s)
        try:
            sock.sendall(request)
            response = read_response(sock, deadline)
        except (TimeoutError, ConnectionResetError, BrokenPipeError):
            response = None
        if self.keep_alive and response is not None:
            self.conn = sock
            return response
        self._finish(sock, deadline)
        return response

    def _finish(self, sock: socket.socket, deadline: float) -> None:
        """Read to end of stream, so the server closes first (no TIME_WAIT piles up on our side)."""
        self.conn = None
        try:
            while time.monotonic() < deadline and sock.recv(4096):
                pass
        except OSError:
            pass
        sock.close()

    def check(self, services, requests, replies) -> None:
        check_values(services, [parse_response(r) for r in replies])

    def decode_memtotal(self, reply) -> int:
        return parse_response(reply)

    def info(self) -> dict:
        mode = "one keep-alive connection" if self.keep_alive else "a new TCP connection per request"
        return {"transport": f"HTTP/1.1 requests on 127.0.0.1, 1 in flight, {mode}", "keep_alive": self.keep_alive}

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        super().close()
