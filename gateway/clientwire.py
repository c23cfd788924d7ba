"""The client<->gateway wire format (docs/gateway-protocol.md), shared by `gateway.server` and `gateway.client`.

Owns: the framework names (`/<site>/_gw/<verb>/...`, `/<site>/_client/<name>/KEY/<key-id>`), the limits both
sides agree on, the time-based sequence numbers clients sign with, the check that decoded CBOR holds only plain
values, and reply encoding. Packet parsing and signing ride on python-ndn and `gateway.wire`.

Decisions:
- A client's `SignatureSeqNum` is microseconds since the epoch, bumped to stay strictly increasing within a
  process (`SeqClock`). Clients then need no state on disk, several processes of one client interleave in
  roughly increasing order (the gateway tolerates a short reordering window), and a gateway that lost its
  in-memory high-water mark still rejects old numbers through the signed time. Rejected: a counter leased in the
  credentials file (the CLI would write a file on every call, and two processes would fight over it).
- Reply signing uses the stdlib `hmac` rather than python-ndn's PyCryptodome HMAC object: same bytes, about
  a third of the cost per reply.
"""
from __future__ import annotations

import hashlib
import hmac
import threading
import time
from typing import Any

from ndn.encoding import Component, MetaInfo, make_data
from ndn.encoding.ndnlp_v2 import LpPacket, LpPacketValue
from ndn.security.signer.sha256_hmac_signer import HmacSha256Signer

from gateway.wire import CONTENT_NACK, key_name

GW = "_gw"
CLIENT = "_client"
VERB_CALL = "call"
VERB_DEVICES = "devices"
VERB_SERVICES = "services"
VERB_METRICS = "metrics"
VERBS = (VERB_CALL, VERB_DEVICES, VERB_SERVICES, VERB_METRICS)
METRICS_TARGET = (GW, VERB_METRICS)  # the ACL name a client needs to read the gateway's metrics

TYPE_INTEREST = 0x05
TYPE_DATA = 0x06
TYPE_LP_PACKET = 0x64
TYPE_DIGEST_COMPONENT = 0x02

MAX_PACKET_BYTES = 8800          # NDN's customary maximum; bigger client datagrams are dropped unread
MAX_REPLY_BYTES = 60000          # a reply must fit one UDP datagram
TIME_WINDOW_MS = 60_000          # SignatureTime must be within this of the gateway clock
REORDER_WINDOW_US = 2_000_000    # numbers this far below the high-water mark may still arrive (unseen ones)
DEFAULT_TIMEOUT_MS = 5000
MAX_TIMEOUT_MS = 120_000
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
MAX_CBOR_DEPTH = 32


def client_owner(site: str, client: str) -> str:
    """The name the client's key hangs under: `/<site>/_client/<client>`."""
    return f"/{site}/{CLIENT}/{client}"


def client_key_name(site: str, client: str, key: bytes) -> str:
    """The KeyLocator name of a client key: `/<site>/_client/<client>/KEY/<key-id>`."""
    return key_name(client_owner(site, client), key)


def request_name(site: str, verb: str, target: tuple[str, ...] = ()) -> list[bytes]:
    """`/<site>/_gw/<verb>/<target...>` as components (ValueError for a component that is not legal)."""
    return [Component.from_str(part) for part in (site, GW, verb, *target)]


def split_target(text: str, site: str) -> tuple[str, ...]:
    """Components of a name relative to the site: `kitchen/th1/temperature`; a leading `/<site>/` is removed."""
    if not isinstance(text, str):
        raise ValueError(f"name must be text, got {type(text).__name__}")
    body = text
    prefix = f"/{site}/"
    if body.startswith(prefix):
        body = body[len(prefix):]
    body = body.strip("/")
    parts = tuple(body.split("/")) if body else ()
    if not parts or "" in parts:
        raise ValueError(f"name {text!r} is not like DEVICE/SERVICE (e.g. kitchen/th1/temperature)")
    for part in parts:
        Component.from_str(part)  # raises ValueError naming the bad character
    return parts


class SeqClock:
    """Strictly increasing numbers from the clock: microseconds since the epoch (thread-safe)."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            now = time.time_ns() // 1000
            self._last = now if now > self._last else self._last + 1
            return self._last


SEQ = SeqClock()  # one per process: every Client in the process signs from it


def is_plain(value: Any, depth: int = 0) -> bool:
    """True if `value` is made only of CBOR's plain types (what devices accept), within the depth limit."""
    if depth > MAX_CBOR_DEPTH:
        return False
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return True
    if isinstance(value, list):
        return all(is_plain(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_plain(v, depth + 1) for k, v in value.items())
    return False


class FastHmacSigner(HmacSha256Signer):
    """python-ndn's HMAC-SHA256 Data signer computing the MAC with the stdlib (identical output)."""

    def write_signature_value(self, wire, contents) -> int:
        mac = hmac.new(self.key_bytes, digestmod=hashlib.sha256)
        for block in contents:
            mac.update(block)
        wire[:] = mac.digest()
        return 32


def encode_reply(name: list, content: bytes, signer: HmacSha256Signer, *, nack: bool = False,
                 pit_token: bytes | None = None) -> bytes:
    """A signed reply Data for `name`; NACK content type when `nack`; LP-wrapped when a PIT token came in."""
    meta = MetaInfo(content_type=CONTENT_NACK) if nack else MetaInfo()
    data = bytes(make_data(name, meta, content, signer=signer))
    if pit_token is None:
        return data
    packet = LpPacket()
    packet.lp_packet = LpPacketValue()
    packet.lp_packet.pit_token = pit_token
    packet.lp_packet.fragment = data
    return bytes(packet.encode())
