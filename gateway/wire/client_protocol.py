"""The client<->gateway wire format (docs/gateway-protocol.md), shared by the client face (`ndn_edge.clients`)
and the client library (`ndn_edge.client`).

Owns: the framework names (`/<site>/_gw/<verb>/...`, `/<site>/_client/<name>/KEY/<key-id>`), the limits both
sides agree on, the time-based sequence numbers clients sign with, the check that decoded CBOR holds only plain
values (and that an integer parameter is in range), and reply encoding and reading. Requests are signed and
parsed by `ndn_edge.wire.packets`.

Decisions:
- A client's `SignatureSeqNum` is microseconds since the epoch, bumped to stay strictly increasing within a
  process (`SeqClock`). Clients then need no state on disk, several processes of one client interleave in
  roughly increasing order (the gateway tolerates a short reordering window), and a gateway that lost its
  in-memory high-water mark still rejects old numbers through the signed time. Rejected: a counter leased in the
  credentials file (the CLI would write a file on every call, and two processes would fight over it).
- Requests and replies are encoded by hand (`ndn_edge.wire.packets.InterestSigner`, `encode_reply`), not with
  python-ndn's generic encoder: each is a handful of fixed TLVs, and python-ndn's `make_interest`/`make_data`
  (with its PyCryptodome HMAC) cost about 350 us and 220 us per packet against about 10 us here; on a cached
  call they were most of the time on both sides. Tests pin the bytes to python-ndn's output for the same fields.
- Both sides read the usual layout by hand too (`ndn_edge.wire.packets.parse_signed_interest`, `read_reply`):
  bounds-checked reads, then the HMAC, nothing believed before it. Anything else goes to python-ndn's parser,
  and tests check that the two agree on every truncation and bit flip of a request.
"""
from __future__ import annotations

import functools
import hmac
import threading
import time
from typing import Any

import cbor2
from ndn.encoding import Component

from ndn_edge.answers import Answer
from ndn_edge.errors import InvalidArgument
from ndn_edge.wire.packets import encode_signed_interest as encode_request  # noqa: F401  (the client's requests)
from ndn_edge.wire.packets import encoded_name, key_name
from ndn_edge.wire.tlv import (
    CONTENT_NACK,
    DIGEST_BYTES,
    SIGNATURE_HMAC_SHA256,
    FramingError,
    T,
    read_tl,
    tlv,
    tlv_head,
)

GW = "_gw"
CLIENT = "_client"
VERB_CALL = "call"
VERB_DEVICES = "devices"
VERB_SERVICES = "services"
VERB_METRICS = "metrics"
# the communication models (gateway/patterns/hub.py, docs/models.md)
VERB_NOTIFY = "notify"
VERB_START = "start"
VERB_ENQUEUE = "enqueue"
VERB_OP_GET = "op_get"
VERB_OP_CANCEL = "op_cancel"
VERB_OPS = "ops"
VERB_GATHER = "gather"
VERB_SUBSCRIBE = "subscribe"
VERB_POLL = "poll"
VERB_UNSUBSCRIBE = "unsubscribe"
MODEL_VERBS = (VERB_NOTIFY, VERB_START, VERB_ENQUEUE, VERB_OP_GET, VERB_OP_CANCEL, VERB_OPS, VERB_GATHER,
               VERB_SUBSCRIBE, VERB_POLL, VERB_UNSUBSCRIBE)
VERB_LOGS = "logs"  # device logs (gateway/observability/devlogs.py)
VERBS = (VERB_CALL, VERB_DEVICES, VERB_SERVICES, VERB_METRICS, *MODEL_VERBS, VERB_LOGS)
METRICS_TARGET = (GW, VERB_METRICS)  # the ACL name a client needs to read the gateway's metrics


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
    return list(_components((site, GW, verb, *target)))


@functools.lru_cache(maxsize=1024)
def _components(parts: tuple[str, ...]) -> tuple[bytes, ...]:
    """Encoded name components, remembered: a client calls the same few names again and again."""
    return tuple(bytes(Component.from_str(part)) for part in parts)


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
    _components(parts)  # raises ValueError naming the bad character
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


class ReplySigner:
    """What signing replies for one client key needs: the key and its encoded SignatureInfo (made once)."""

    __slots__ = ("key", "signature_info")

    def __init__(self, key_name: str, key: bytes) -> None:
        self.key = key
        locator = tlv(T.KEY_LOCATOR, encoded_name(key_name))
        self.signature_info = tlv(T.SIGNATURE_INFO,
                                  tlv(T.SIGNATURE_TYPE, bytes([SIGNATURE_HMAC_SHA256])) + locator)


def encode_reply(name_tlv: bytes, content: bytes, signer: ReplySigner, *, nack: bool = False,
                 pit_token: bytes | None = None) -> bytes:
    """A signed reply Data: `name_tlv` (the request's encoded Name), MetaInfo only for a NACK, `content`;
    LP-wrapped with `pit_token` when the request came with one.

    Byte for byte what python-ndn's `make_data(name, None | MetaInfo(content_type=3), content, signer=
    HmacSha256Signer(...))` writes (pinned by a test), at a fraction of its cost: the reply is the hot path.
    """
    signed = b"".join((name_tlv, _NACK_META if nack else b"", tlv_head(T.CONTENT, len(content)), content,
                       signer.signature_info))
    mac = hmac.digest(signer.key, signed, "sha256")
    data = b"".join((tlv_head(T.DATA, len(signed) + len(_SIG_VALUE_HEAD) + len(mac)), signed, _SIG_VALUE_HEAD,
                     mac))
    if pit_token is None:
        return data
    return tlv(T.LP_PACKET, tlv(T.LP_PIT_TOKEN, pit_token) + tlv(T.LP_FRAGMENT, data))


_NACK_META = tlv(T.META_INFO, tlv(T.CONTENT_TYPE, bytes([CONTENT_NACK])))
_SIG_VALUE_HEAD = tlv_head(T.SIGNATURE_VALUE, 32)


def read_reply(data: bytes, name_tlv: bytes, signer: ReplySigner) -> tuple[bool, bytes] | None:
    """(is an error, content) of the reply to the request named `name_tlv` (its encoded Name) when `data` is laid
    out as `encode_reply` writes it, with `signer`'s SignatureInfo, and its HMAC verifies; None for anything else
    (the caller tries the general parser, which also tells a forgery from another layout).

    The client's hot path: a handful of byte comparisons against what it expects, then one HMAC."""
    try:
        t, i, end = read_tl(data, 0)
        if t != T.DATA or end != len(data) or not data.startswith(name_tlv, i):
            return None
        j = i + len(name_tlv)
        nack = data.startswith(_NACK_META, j)
        if nack:
            j += len(_NACK_META)
        t, cs, ce = read_tl(data, j, end)
        info = signer.signature_info
        if t != T.CONTENT or not data.startswith(info, ce):
            return None
        k = ce + len(info)
        if k + len(_SIG_VALUE_HEAD) + 32 != end or not data.startswith(_SIG_VALUE_HEAD, k):
            return None
        if not hmac.compare_digest(hmac.digest(signer.key, data[i:k], "sha256"), data[k + len(_SIG_VALUE_HEAD):]):
            return None
        return nack, data[cs:ce]
    except FramingError:
        return None


def reply_digest(data: bytes) -> bytes | None:
    """The last component of a bare Data's Name (the request's digest, type and length included), found in two
    reads; None for anything else."""
    try:
        t, i, end = read_tl(data, 0)
        if t != T.DATA:
            return None
        t, ns, ne = read_tl(data, i, end)
    except FramingError:
        return None
    if t != T.NAME or ne - ns < DIGEST_BYTES + 2:
        return None
    return data[ne - DIGEST_BYTES - 2:ne]


_CALL_RESULT_HEAD = b"\xa4" + cbor2.dumps("value")
_FRESH_RESULT_HEAD = b"\xa5" + cbor2.dumps("value")
_CACHED = cbor2.dumps("cached")
_AGE_MS = cbor2.dumps("age_ms")
_STALE = cbor2.dumps("stale")
FRESH_MS = cbor2.dumps("fresh_ms")  # the key of a call result whose value the gateway keeps
CALL_RESULT_HEADS = (_CALL_RESULT_HEAD, _FRESH_RESULT_HEAD)  # how a call result begins: the map's head, "value"
_BOOL = (b"\xf4", b"\xf5")


def encode_call_result(answer: Answer) -> bytes:
    """The content of a call's reply, `{"value", "cached", "age_ms", "stale"}` and `"fresh_ms"` when the gateway
    holds the value fresh (docs/gateway-protocol.md), with the device's CBOR of the value spliced in as it came: the
    cached hot path neither decodes nor encodes the value (a test pins the bytes to `cbor2.dumps` of the same map)."""
    tail = (_CACHED, _BOOL[bool(answer.cached)], _AGE_MS, cbor2.dumps(int(answer.age_ms)), _STALE,
            _BOOL[bool(answer.stale)])
    if answer.fresh_ms > 0:
        return b"".join((_FRESH_RESULT_HEAD, answer.cbor, *tail, FRESH_MS, cbor2.dumps(int(answer.fresh_ms))))
    return b"".join((_CALL_RESULT_HEAD, answer.cbor, *tail))


def int_param(params: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    """params[key] (`default` when absent or null) as an integer from `low` to `high`; InvalidArgument otherwise."""
    value = params.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidArgument(f"{key} must be an integer from {low} to {high}, got {value!r}")
    return value
