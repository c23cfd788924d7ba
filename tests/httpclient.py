"""Test-side HTTP: a gateway with its HTTP face among real sim devices (`HttpCluster`), plain requests and a
Server-Sent Events reader on the standard library's `http.client` (so the tests do not lean on the server's own
framework to talk to it)."""
from __future__ import annotations

import http.client
import json
import time
import urllib.parse
from pathlib import Path
from typing import Any

from tests.support import Cluster, wait_until


class Reply:
    """A response: status, headers (lower-case names) and body, with `json()`."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.body[:300]!r})"


def request(url: str, method: str, path: str, *, token: str | None = None, body: Any = None,
            raw: bytes | None = None, headers: dict[str, str] | None = None, timeout_s: float = 15.0,
            context: Any = None) -> Reply:
    """One request on a fresh connection; `body` is sent as JSON, `raw` as it is."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(parts.hostname, parts.port,
                                                                       timeout=timeout_s, context=context)
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    if data is not None:
        sent.setdefault("Content-Type", "application/json")
    try:
        conn.request(method, path, body=data, headers=sent)
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


class EventStream:
    """`GET path` as Server-Sent Events: `next_event()` returns (event, id, data) or None at the deadline."""

    def __init__(self, url: str, path: str, token: str, headers: dict[str, str] | None = None) -> None:
        parts = urllib.parse.urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        self.conn.request("GET", path, headers={"Authorization": f"Bearer {token}", **(headers or {})})
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.headers = {k.lower(): v for k, v in self.resp.getheaders()}

    def next_event(self, timeout_s: float = 10.0) -> tuple[str, str | None, Any] | None:
        deadline = time.monotonic() + timeout_s
        name, ident, data = "message", None, ""
        while time.monotonic() < deadline:
            self.conn.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                line = self.resp.fp.readline()
            except TimeoutError:
                return None
            if not line:
                return None
            text = line.decode().rstrip("\n")
            if text == "":
                if data:
                    return name, ident, json.loads(data)
                name, ident, data = "message", None, ""
            elif text.startswith("event:"):
                name = text[6:].strip()
            elif text.startswith("id:"):
                ident = text[3:].strip()
            elif text.startswith("data:"):
                data += text[5:].strip()
        return None

    def until(self, predicate, timeout_s: float = 15.0, what: str = "an event") -> tuple[str, str | None, Any]:
        """The first event for which `predicate(event, id, data)` holds; fails at the deadline."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = self.next_event(deadline - time.monotonic())
            if got is not None and predicate(*got):
                return got
        raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")

    def close(self) -> None:
        self.conn.close()


class HttpCluster(Cluster):
    """A Cluster whose gateway also serves HTTP on 127.0.0.1 (a free port, read back from HOME/http.json)."""

    def __init__(self, tmp_path: Path, port: int) -> None:
        super().__init__(tmp_path, port)
        self.url = ""
        self.tokens: dict[str, str] = {}

    def token(self, client: str) -> str:
        code, out, err = self.cli("client", "token", client)
        assert code == 0, err
        self.tokens[client] = out.strip()
        return self.tokens[client]

    def start_http_gateway(self, *extra: str) -> str:
        from ndn_edge.http.server import read_record

        (self.home / "http.json").unlink(missing_ok=True)
        self.start_gateway("--http", "127.0.0.1:0", *extra)
        self.url = wait_until(lambda: read_record(self.home), 10, what="HOME/http.json")
        return self.url

    def get(self, path: str, client: str = "alice", **kw: Any) -> Reply:
        return request(self.url, "GET", path, token=self.tokens.get(client), **kw)

    def post(self, path: str, body: Any = None, client: str = "alice", **kw: Any) -> Reply:
        return request(self.url, "POST", path, token=self.tokens.get(client), body=body, **kw)
