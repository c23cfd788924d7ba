"""Values between JSON (the HTTP API) and CBOR (devices): request bodies and query strings in, results out.

    args = body_args(await request.read())                  # a JSON object -> dict, or InvalidArgument
    args = query_args(request.query, service_description)   # ?celsius=21.5 typed by the service's `args`
    data = to_json({"value": b"\x01", ...})                # bytes as base64 text

Decisions:
- JSON has no bytes: results carry bytes as base64 text (RFC 4648, with padding); an argument the service
  declares `bytes` is taken as base64 text and decoded. CBOR tags and other non-JSON values are rendered as
  text; map keys that are not text become text; NaN and infinities become null (JSON has none).
- Query arguments (GET calls) are typed by the service description: `int`, `float`, `bool` (`true`/`false`,
  `1`/`0`), `str`, `bytes` (base64), and JSON text for `list`, `map` and `any`. A name given twice, or one the
  service does not declare, is INVALID_ARGUMENT.
- Integers must fit CBOR's native range (-2^64 .. 2^64-1): beyond it they would need a bignum tag, which devices
  refuse; such a request is INVALID_ARGUMENT here rather than an error from the device.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping
from typing import Any

from ndn_edge.devices.descriptions import type_of
from ndn_edge.errors import InvalidArgument
from ndn_edge.wire.client_protocol import MAX_CBOR_DEPTH

INT_LOW, INT_HIGH = -(1 << 64), (1 << 64) - 1
RESERVED_QUERY = frozenset({"timeout_ms"})


def parse_json(raw: bytes, what: str) -> Any:
    """The JSON value of `raw`; InvalidArgument saying where it is wrong."""
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise InvalidArgument(f"{what} is not UTF-8 text: {err}") from None
    except RecursionError:
        raise InvalidArgument(f"{what} is nested too deeply (at most {MAX_CBOR_DEPTH} levels)") from None
    except ValueError as err:
        raise InvalidArgument(f"{what} is not valid JSON: {err}") from None


def body_object(raw: bytes, what: str = "the request body") -> dict[str, Any]:
    """A JSON object from a request body (empty: {}); InvalidArgument otherwise."""
    if not raw.strip():
        return {}
    value = parse_json(raw, what)
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} must be a JSON object, got {_json_type(value)}")
    check_plain(value, what)
    return value


def check_plain(value: Any, what: str, depth: int = 0) -> None:
    """InvalidArgument unless `value` is nested at most MAX_CBOR_DEPTH deep with integers in CBOR's range."""
    if depth > MAX_CBOR_DEPTH:
        raise InvalidArgument(f"{what} is nested too deeply (at most {MAX_CBOR_DEPTH} levels)")
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int):
        if not INT_LOW <= value <= INT_HIGH:
            raise InvalidArgument(f"{what} holds the integer {str(value)[:30]}, outside -2^64 .. 2^64-1")
    elif isinstance(value, list):
        for item in value:
            check_plain(item, what, depth + 1)
    elif isinstance(value, dict):
        for item in value.values():
            check_plain(item, what, depth + 1)


def decode_bytes_args(args: dict[str, Any] | None, svc: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """`args` with the arguments the service declares `bytes` decoded from base64 text."""
    spec = svc.get("args") if svc else None
    if not args or not isinstance(spec, dict):
        return args
    out = dict(args)
    for name, value in args.items():
        if type_of(spec.get(name)) == "bytes" and isinstance(value, str):
            out[name] = _b64(value, name)
    return out


def query_args(query: Mapping[str, str], svc: Mapping[str, Any] | None, target: str) -> dict[str, Any] | None:
    """The arguments of a GET call from its query string, typed by the service's description."""
    spec = svc.get("args") if svc else None
    names = [k for k in query if k not in RESERVED_QUERY]
    if not names:
        return None
    out: dict[str, Any] = {}
    for name in names:
        values = query.getall(name) if hasattr(query, "getall") else [query[name]]
        if len(values) != 1 or name in out:
            raise InvalidArgument(f"query argument {name!r} of {target} is given {len(values)} times; give it once")
        wanted = type_of(spec.get(name)) if isinstance(spec, dict) else "any"
        if isinstance(spec, dict) and name not in spec:
            takes = ", ".join(spec) or "no arguments"
            raise InvalidArgument(f"{target} takes no argument {name!r}; it takes: {takes}")
        out[name] = _typed(values[0], wanted or "any", name, target)
    check_plain(out, "the query arguments")
    return out


def _typed(text: str, wanted: str, name: str, target: str) -> Any:
    def bad(expected: str) -> InvalidArgument:
        return InvalidArgument(f"query argument {name!r} of {target} must be {expected}, got {text[:40]!r}")

    if wanted == "int":
        try:
            return int(text, 10)
        except ValueError:
            raise bad("an integer") from None
    if wanted in ("float", "number"):
        try:
            value = float(text)
        except ValueError:
            raise bad("a number") from None
        if not math.isfinite(value):
            raise bad("a finite number")
        return value
    if wanted == "bool":
        lowered = text.lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
        raise bad("true or false")
    if wanted in ("str", "text", "string"):
        return text
    if wanted == "bytes":
        return _b64(text, name)
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        if wanted == "any":
            return text  # plain text, as a form would send it
        raise bad(f"{wanted} as JSON text") from None


def _b64(text: str, name: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise InvalidArgument(f"argument {name!r} is declared bytes: give it as base64 text") from None


def _json_type(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number",
            type(None): "null"}.get(type(value), type(value).__name__)


def jsonable(value: Any, depth: int = 0) -> Any:
    """`value` with what JSON cannot hold made into what it can (see the module's decisions)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if depth > 64:
        return None
    if isinstance(value, (list, tuple)):
        return [jsonable(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(k): jsonable(v, depth + 1) for k, v in value.items()}
    return str(value)


def to_json(value: Any) -> bytes:
    """`value` as compact JSON bytes."""
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError):
        return json.dumps(jsonable(value), separators=(",", ":"), allow_nan=False).encode()


def log_level(text: str) -> int:
    """A `level=` query value: debug, info, warning, error, or a number from 0 to 100."""
    names = {"debug": 10, "info": 20, "warning": 30, "warn": 30, "error": 40}
    lowered = text.strip().lower()
    if lowered in names:
        return names[lowered]
    try:
        value = int(lowered, 10)
    except ValueError:
        value = -1
    if not 0 <= value <= 100:
        raise InvalidArgument(f"level must be debug, info, warning, error or a number from 0 to 100, got "
                              f"{text[:40]!r}")
    return value
