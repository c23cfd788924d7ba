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
- Requests and replies are encoded here (`encode_request`, `encode_reply`), not with python-ndn's generic
  encoder: each is a handful of fixed TLVs, and python-ndn's `make_interest`/`make_data` (with its PyCryptodome
  HMAC) cost about 350 us and 220 us per packet against about 15 us here; on a cached call they were most of the
  time on both sides. Tests pin the bytes to python-ndn's output for the same fields. Packets are still *parsed*
  with python-ndn, whose parser is the one exercised against hostile input.
"""
from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Sequence
from typing import Any

from ndn.encoding import Component, Name

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
TYPE_NAME = 0x07
TYPE_GENERIC_COMPONENT = 0x08
TYPE_DIGEST_COMPONENT = 0x02
TYPE_META_INFO = 0x14
TYPE_CONTENT = 0x15
TYPE_SIGNATURE_INFO = 0x16
TYPE_SIGNATURE_VALUE = 0x17
TYPE_CONTENT_TYPE = 0x18
TYPE_SIGNATURE_TYPE = 0x1B
TYPE_KEY_LOCATOR = 0x1C
TYPE_MUST_BE_FRESH = 0x12
TYPE_NONCE = 0x0A
TYPE_INTEREST_LIFETIME = 0x0C
TYPE_APPLICATION_PARAMETERS = 0x24
TYPE_INTEREST_SIGNATURE_INFO = 0x2C
TYPE_INTEREST_SIGNATURE_VALUE = 0x2E
TYPE_SIGNATURE_NONCE = 0x26
TYPE_SIGNATURE_TIME = 0x28
TYPE_SIGNATURE_SEQ_NUM = 0x2A
TYPE_LP_PACKET = 0x64
TYPE_LP_FRAGMENT = 0x50
TYPE_PIT_TOKEN = 0x62
SIGNATURE_HMAC_SHA256 = 4

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


def encode_request(components: Sequence[bytes], params: bytes, key: bytes, key_name_tlv: bytes, seq: int, *,
                   time_ms: int, signature_nonce: bytes, nonce: bytes, lifetime_ms: int) -> tuple[bytes, bytes]:
    """A signed request Interest (docs/protocol.md "Signed Interests"): `components` are the encoded name
    components before the digest, `params` the CBOR parameters; returns (wire, encoded digest component).

    Byte for byte what python-ndn's `make_interest` writes for the same fields (pinned by a test).
    """
    params_tlv = tlv(TYPE_APPLICATION_PARAMETERS, params)
    info = tlv(TYPE_INTEREST_SIGNATURE_INFO, b"".join((
        tlv(TYPE_SIGNATURE_TYPE, bytes([SIGNATURE_HMAC_SHA256])), tlv(TYPE_KEY_LOCATOR, key_name_tlv),
        tlv(TYPE_SIGNATURE_NONCE, signature_nonce), tlv(TYPE_SIGNATURE_TIME, _nni(time_ms)),
        tlv(TYPE_SIGNATURE_SEQ_NUM, _nni(seq)))))
    comps = b"".join(components)
    mac = hmac.new(key, comps + params_tlv + info, hashlib.sha256).digest()
    value = tlv(TYPE_INTEREST_SIGNATURE_VALUE, mac)
    digest = tlv(TYPE_DIGEST_COMPONENT, hashlib.sha256(params_tlv + info + value).digest())
    body = b"".join((tlv(TYPE_NAME, comps + digest), _MUST_BE_FRESH, tlv(TYPE_NONCE, nonce),
                     tlv(TYPE_INTEREST_LIFETIME, _nni(lifetime_ms)), params_tlv, info, value))
    return tlv(TYPE_INTEREST, body), digest


def encoded_name(uri: str) -> bytes:
    """The Name TLV of a URI."""
    return bytes(Name.to_bytes(Name.from_str(uri)))


class ReplySigner:
    """What signing replies for one client key needs: the key and its encoded SignatureInfo (made once)."""

    __slots__ = ("key", "signature_info")

    def __init__(self, key_name: str, key: bytes) -> None:
        self.key = key
        locator = tlv(TYPE_KEY_LOCATOR, encoded_name(key_name))
        self.signature_info = tlv(TYPE_SIGNATURE_INFO, tlv(TYPE_SIGNATURE_TYPE, bytes([SIGNATURE_HMAC_SHA256])) + locator)


def encode_reply(name_tlv: bytes, content: bytes, signer: ReplySigner, *, nack: bool = False,
                 pit_token: bytes | None = None) -> bytes:
    """A signed reply Data: `name_tlv` (the request's encoded Name), MetaInfo only for a NACK, `content`;
    LP-wrapped with `pit_token` when the request came with one.

    Byte for byte what python-ndn's `make_data(name, None | MetaInfo(content_type=3), content, signer=
    HmacSha256Signer(...))` writes (pinned by a test), at a fraction of its cost: the reply is the hot path.
    """
    signed = b"".join((name_tlv, _NACK_META if nack else b"", tlv_head(TYPE_CONTENT, len(content)), content,
                       signer.signature_info))
    mac = hmac.new(signer.key, signed, hashlib.sha256).digest()
    data = b"".join((tlv_head(TYPE_DATA, len(signed) + len(_SIG_VALUE_HEAD) + len(mac)), signed, _SIG_VALUE_HEAD,
                     mac))
    if pit_token is None:
        return data
    return tlv(TYPE_LP_PACKET, tlv(TYPE_PIT_TOKEN, pit_token) + tlv(TYPE_LP_FRAGMENT, data))


def tlv_head(typ: int, length: int) -> bytes:
    """TLV-TYPE and TLV-LENGTH as NDN variable-size numbers."""
    return _var_num(typ) + _var_num(length)


def tlv(typ: int, value: bytes) -> bytes:
    """One TLV element."""
    return tlv_head(typ, len(value)) + value


def _var_num(n: int) -> bytes:
    if n < 253:
        return bytes((n,))
    if n <= 0xFFFF:
        return b"\xfd" + n.to_bytes(2, "big")
    if n <= 0xFFFFFFFF:
        return b"\xfe" + n.to_bytes(4, "big")
    return b"\xff" + n.to_bytes(8, "big")


def _nni(n: int) -> bytes:
    """A NonNegativeInteger in the fewest of 1, 2, 4 or 8 bytes."""
    for width in (1, 2, 4, 8):
        if n < 1 << (8 * width):
            return n.to_bytes(width, "big")
    raise OverflowError(f"{n} does not fit a NonNegativeInteger")


_MUST_BE_FRESH = tlv(TYPE_MUST_BE_FRESH, b"")
_NACK_META = tlv(TYPE_META_INFO, tlv(TYPE_CONTENT_TYPE, bytes([CONTENT_NACK])))
_SIG_VALUE_HEAD = tlv_head(TYPE_SIGNATURE_VALUE, 32)
