"""The HTTP face as a listener: HTTPS with a certificate made here, the home's config.json, the per-client
request rate (429 with Retry-After), hostile and slow clients (the gateway keeps serving the others), the
warning for a listener beyond loopback without TLS, and the values and problem mapping at its edges."""
from __future__ import annotations

import asyncio
import json
import logging
import shutil
import socket
import ssl
import subprocess
import time
import urllib.parse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ndn_edge.errors import DeadlineExceeded, Internal, InvalidArgument, ResourceExhausted, Unavailable
from tests.httpclient import EventStream, HttpCluster, request
from tests.support import free_udp_port, wait_until


def _raw(url: str, data: bytes, timeout_s: float = 5.0) -> bytes:
    """Send bytes on a fresh connection; what comes back until the server closes or goes quiet."""
    parts = urllib.parse.urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout_s) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


def test_https_with_a_self_signed_certificate(tmp_path):
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is missing: apt-get install -y openssl (.ci/run does)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    cluster = HttpCluster(tmp_path, free_udp_port())
    try:
        cluster.clients(alice="sim/**")
        token = cluster.token("alice")
        url = cluster.start_http_gateway("--http-cert", str(cert), "--http-key", str(key))
        assert url.startswith("https://127.0.0.1:")
        context = ssl.create_default_context(cafile=str(cert))
        reply = request(url, "GET", "/api/v1/devices", token=token, context=context)
        assert reply.status == 200 and reply.json() == {"items": [], "next_page_token": None}
        assert request(url, "GET", "/api/v1/devices", context=context).status == 401
        with pytest.raises(ssl.SSLError):  # a client that does not trust the certificate is refused
            request(url, "GET", "/api/v1/devices", token=token, context=ssl.create_default_context())
        assert "http_without_tls" not in cluster.log("gateway", "err")
        assert f"REST API at {url}/api/v1" in cluster.log("gateway")
    finally:
        cluster.close()
    assert not (cluster.home / "http.json").exists()  # removed at a clean stop


def test_config_rate_limit_and_hostile_clients(tmp_path):
    cluster = HttpCluster(tmp_path, free_udp_port())
    try:
        cluster.clients(alice="sim/**", bob="sim/**")
        alice, bob = cluster.token("alice"), cluster.token("bob")
        cluster.home.mkdir(exist_ok=True)
        (cluster.home / "config.json").write_text(json.dumps({"http": {"listen": "127.0.0.1:0"}}))
        from ndn_edge.http.server import read_record

        cluster.start_gateway("--limit", "requests_per_s=2", "--limit", "request_burst=5")
        url = cluster.url = wait_until(lambda: read_record(cluster.home), 10, what="HOME/http.json from config.json")

        # the per-client request rate: alice's burst runs out, bob is unaffected
        statuses = [request(url, "GET", "/api/v1/devices", token=alice) for _ in range(8)]
        limited = [r for r in statuses if r.status == 429]
        assert limited and statuses[0].status == 200, statuses
        assert int(limited[0].headers["retry-after"]) >= 1
        assert limited[0].json()["code"] == "RESOURCE_EXHAUSTED" and "alice" in limited[0].json()["detail"]
        assert request(url, "GET", "/api/v1/devices", token=bob).status == 200

        # hostile bytes: a bad request line, a bad Content-Length, a huge URL, a null byte: 4xx, never a crash
        for junk in (b"NOT HTTP AT ALL\r\n\r\n", b"GET / HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
                     b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                     b"GET /api/v1/devices HTTP/1.1\r\nHost: x\r\nX-Evil: a\x00b\r\n\r\n",
                     b"GET /api/v1/devices HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(500)) + b"\r\n"):
            answer = _raw(url, junk)
            assert answer[:10] in (b"HTTP/1.1 4", b"HTTP/1.0 4") or answer == b"", answer[:200]
        assert b"Traceback" not in _raw(url, b"POST /api/v1/gather HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                                             b"Authorization: Bearer " + bob.encode() + b"\r\n\r\n{{{")
        # ... and a flood of them does not fill the gateway's log: counted, one line a minute, no traceback
        for _ in range(50):
            _raw(url, b"NOT HTTP AT ALL\r\n\r\n")
        gateway_log = cluster.log("gateway", "err")
        assert "Traceback" not in gateway_log and gateway_log.count("http_request_malformed") == 1, gateway_log[-2000:]

        # slow clients: one trickling its headers, one holding a stream it never reads; the others are served
        slow = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])))
        slow.sendall(b"GET /api/v1/devices HTTP/1.1\r\nHost: x\r\n")
        stream = EventStream(url, "/api/v1/events?members=true", bob)
        assert stream.status == 200
        time.sleep(1.5)  # let bob's bucket refill a little: this part is about slowness, not the rate
        started = time.monotonic()
        replies = [request(url, "GET", "/api/v1/devices", token=bob, timeout_s=5) for _ in range(2)]
        assert all(r.status == 200 for r in replies) and time.monotonic() - started < 3
        slow.sendall(b"Authorization: Bearer " + bob.encode() + b"\r\n\r\n")
        slow.settimeout(5)
        assert slow.recv(100).startswith(b"HTTP/1.1 ")
        slow.close()
        stream.close()
    finally:
        cluster.close()


def test_the_dashboard_is_served_without_a_token(tmp_path):
    cluster = HttpCluster(tmp_path, free_udp_port())
    try:
        url = cluster.start_http_gateway()
        page = request(url, "GET", "/")
        assert page.status == 200 and page.headers["content-type"].startswith("text/html")
        assert page.headers["server"] == "ndn-edge", page.headers  # no Python or aiohttp version
        assert b"/static/app.js" in page.body and b"http://" not in page.body and b"https://" not in page.body
        for name, kind in (("app.js", "javascript"), ("app.css", "text/css")):
            asset = request(url, "GET", f"/static/{name}")
            assert asset.status == 200 and kind in asset.headers["content-type"]
            assert b"http://" not in asset.body and b"https://" not in asset.body and b"//cdn" not in asset.body
        missing = request(url, "GET", "/static/nope.js")
        assert missing.status == 404 and missing.headers["content-type"].startswith("application/problem+json")
    finally:
        cluster.close()


def test_beyond_loopback_without_tls_warns(tmp_path, monkeypatch, caplog):
    """The warning, on a listener the face takes for non-loopback (the test binds 127.0.0.1 only)."""
    from ndn_edge.http import server
    from ndn_edge.http.options import HttpOptions
    from ndn_edge.state.store import Store
    from tests.fakes import FakeDevices

    assert server.is_loopback("127.0.0.1") and server.is_loopback("::1") and server.is_loopback("localhost")
    assert not server.is_loopback("0.0.0.0") and not server.is_loopback("203.0.113.7")
    monkeypatch.setattr(server, "is_loopback", lambda host: False)

    async def scenario() -> None:
        store = Store(tmp_path / "gateway.db")
        face = server.HttpFace.build(store, FakeDevices(), None, site="edge",
                                     options=HttpOptions(("127.0.0.1", 0)))
        try:
            await face.start()
        finally:
            await face.stop()
            store.close()

    with caplog.at_level(logging.WARNING, logger="ndn_edge.http"):
        asyncio.run(scenario())
    assert any(r.getMessage() == "http_without_tls" for r in caplog.records)


def test_wire_codes_map_to_statuses():
    from ndn_edge.http import problems

    cases = {InvalidArgument("x"): 400, ResourceExhausted("x"): 429, Internal("x"): 500, Unavailable("x"): 503,
             DeadlineExceeded("x"): 504}
    for err, status in cases.items():
        response = problems.of_error(err)
        assert response.status == status and response.content_type == "application/problem+json"
        body = json.loads(response.body)
        assert body["code"] == err.code and body["detail"] == "x" and body["type"] == "about:blank"
    assert problems.of_error(ResourceExhausted("x"), 2.2).headers["Retry-After"] == "3"


def test_query_arguments_are_typed_by_the_description():
    from multidict import MultiDict

    from ndn_edge.http import values

    svc = {"args": {"celsius": "float", "n": {"type": "int"}, "on": "bool", "name": "str", "raw": "bytes",
                    "tags": "list"}}
    query = MultiDict(celsius="21.5", n="3", on="true", name="kitchen", raw="AAE=", tags='["a"]', timeout_ms="9")
    assert values.query_args(query, svc, "t") == {"celsius": 21.5, "n": 3, "on": True, "name": "kitchen",
                                                  "raw": b"\x00\x01", "tags": ["a"]}
    for bad in ({"n": "three"}, {"celsius": "nan"}, {"on": "maybe"}, {"raw": "***"}, {"nope": "1"}):
        with pytest.raises(InvalidArgument):
            values.query_args(MultiDict(bad), svc, "t")
    with pytest.raises(InvalidArgument, match="given 2 times"):
        values.query_args(MultiDict([("n", "1"), ("n", "2")]), svc, "t")
    assert values.to_json({"b": b"\x01", 1: float("nan"), "t": (1, 2)}) == b'{"b":"AQ==","1":null,"t":[1,2]}'


@given(st.text(alphabet="ab_*/", max_size=12))
def test_the_documented_gather_pattern_is_what_gather_accepts(text):
    # The document's GatherRequest says what split_pattern takes, so that a tool generating requests from it
    # (Schemathesis) sends gathers the gateway runs, not 400s.
    import re

    from ndn_edge.http.openapi import _GATHER_PATTERN
    from ndn_edge.patterns.gather import split_pattern

    try:
        split_pattern(text)
        accepted = True
    except InvalidArgument:
        accepted = False
    assert (re.search(_GATHER_PATTERN, text) is not None) == accepted, text


def test_the_framework_routes_name_what_the_caller_sees():
    from ndn_edge.http import openapi

    doc = openapi.document([("sim/2", [{"name": "note"}, {"name": "_desc"}]), ("sim/1", [{"name": "temperature"}])],
                           version="0", site="edge", client="bob")
    device = doc["paths"]["/devices/{device}/health"]["get"]["parameters"][0]
    name = doc["paths"]["/notify/{name}"]["post"]["parameters"][0]
    assert device["schema"]["enum"] == ["sim/1", "sim/2"]
    assert name["schema"]["enum"] == ["sim/1/temperature", "sim/2/note"]
    nothing = openapi.document([], version="0", site="edge", client="eve")  # sees nothing: any name, 403 or 404
    assert "enum" not in nothing["paths"]["/notify/{name}"]["post"]["parameters"][0]["schema"]
