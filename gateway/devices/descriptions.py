"""Service descriptions as devices publish them (`_desc`, docs/protocol.md "Service descriptions"): the defaults
of the keys a device leaves out, finding a service, and checking a call's arguments against what the service
declares, before anything is sent.

    svc = find_service(desc, "setpoint")
    check_args(svc, {"celsius": "hot"}, "kitchen/th1/setpoint")
    # InvalidArgument: argument 'celsius' of kitchen/th1/setpoint must be float, got str 'hot'

Decisions:
- The gateway checks what a service declares (`args`: names and schemas), so a caller learns which argument is
  wrong and what it must be, with the values, instead of an error from inside the handler; the device keeps its
  own cheap check (names only) for callers that reach it otherwise.
- A schema is a type name or a map with a `"type"` key (and optionally `"required": true`); a type this module
  does not know is not checked (a device may describe more than the gateway understands). An `int` is a
  `float` (JSON and CBOR writers blur them); `bool` is not an `int`.
- A service that declares no `args` takes anything: the description cannot say what.
"""
from __future__ import annotations

from typing import Any

from ndn_edge.errors import InvalidArgument

_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,), "float": (float, int), "number": (float, int), "str": (str,), "text": (str,), "string": (str,),
    "bytes": (bytes, bytearray), "bool": (bool,), "list": (list, tuple), "array": (list, tuple), "map": (dict,),
    "dict": (dict,), "object": (dict,),
}


def find_service(desc: Any, service: str) -> dict[str, Any] | None:
    """The entry of `service` in a device description (`_desc`), or None."""
    if not isinstance(desc, dict):
        return None
    for s in desc.get("services") or ():
        if isinstance(s, dict) and s.get("name") == service:
            return s
    return None


# What a service entry means by a key it leaves out: a device writes only the keys that differ from these, so
# that its _desc reply fits one datagram.
SERVICE_DEFAULTS: dict[str, Any] = {"doc": None, "args": None, "result": None, "cache_ms": None, "idempotent": True,
                                    "private": False, "long_running": False}


def with_defaults(desc: dict[str, Any]) -> dict[str, Any]:
    """The (valid) description with every service's left-out keys filled in with their defaults, as it is stored
    and shown: readers of a service entry never see a missing key."""
    return {**desc, "services": [{**SERVICE_DEFAULTS, **s} for s in desc["services"]]}


def valid_description(desc: Any) -> bool:
    """True if `desc` has the shape of a `_desc` result: a list of named services."""
    services = desc.get("services") if isinstance(desc, dict) else None
    return isinstance(services, list) and all(isinstance(s, dict) and isinstance(s.get("name"), str)
                                              for s in services)


def check_args(svc: dict[str, Any] | None, args: dict[str, Any] | None, target: str) -> None:
    """InvalidArgument, naming the argument and what it must be, unless `args` fit what `svc` declares."""
    spec = svc.get("args") if isinstance(svc, dict) else None
    if not isinstance(spec, dict):
        return
    given = args or {}
    for name, value in given.items():
        if name not in spec:
            takes = ", ".join(f"{n} ({type_of(s) or 'any'})" for n, s in spec.items()) or "no arguments"
            raise InvalidArgument(f"{target} takes no argument {name!r}; it takes: {takes}")
        wanted = type_of(spec[name])
        types = _TYPES.get(wanted or "")
        if types is not None and (not isinstance(value, types) or (wanted != "bool" and isinstance(value, bool))):
            raise InvalidArgument(f"argument {name!r} of {target} must be {wanted}, got "
                                  f"{type(value).__name__} {_short(value)}")
    for name, schema in spec.items():
        if isinstance(schema, dict) and schema.get("required") is True and name not in given:
            raise InvalidArgument(f"{target} needs argument {name!r} ({type_of(schema) or 'any'})")


def type_of(schema: Any) -> str | None:
    """The type an argument's schema in a service description names ("int", "bytes", ...), or None."""
    if isinstance(schema, str):
        return schema
    if isinstance(schema, dict) and isinstance(schema.get("type"), str):
        return schema["type"]
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
