"""The OpenAPI 3.1 document of the HTTP API, generated per caller from the devices' own service descriptions.

    doc = document(devices=[("sim/1", [svc, ...]), ...], version="0.2.0", site="edge")
    etag = etag_of(doc)

One operation per service the caller may call: `POST /call/<device>/<service>` (and `GET` for idempotent
services, its arguments as typed query parameters), or `POST /start/<device>/<service>` for a long-running one;
its request schema from the description's `args`, its response schema from `result`, its `doc` as the
description. Then the framework's routes (devices, services, health, notifications, queued calls, operations,
gather, events), whose device and DEVICE/SERVICE parameters list the caller's devices and services.

Decisions:
- Built from what the caller's rules let it see (the `devices` and `services` verbs, as any client lists them),
  so a token's document names nothing it may not call. The ETag is a hash of the document itself: it changes
  exactly when what the caller sees changes (a device joins, leaves or changes its services, a rule changes).
- The description's types map to JSON Schema: `int` integer, `float`/`number` number, `str` string, `bool`
  boolean, `bytes` string (base64), `list` array, `map` object, anything else (`any`) unconstrained. A service
  that declares no `args` takes any object; one that does takes only those names (`additionalProperties:
  false`), `required` where the schema says so.
- Every operation documents the problem responses it may give (400, 401, 403, 404, 429, 500, 503, 504, and
  `default`), so a client generated from the document knows the error shape.
"""
from __future__ import annotations

import hashlib
import json
import re
from typing import Any

API_BASE = "/api/v1"
_TYPES = {"int": {"type": "integer"}, "float": {"type": "number"}, "number": {"type": "number"},
          "str": {"type": "string"}, "text": {"type": "string"}, "string": {"type": "string"},
          "bool": {"type": "boolean"}, "bytes": {"type": "string", "contentEncoding": "base64"},
          "list": {"type": "array"}, "array": {"type": "array"}, "map": {"type": "object"},
          "dict": {"type": "object"}, "object": {"type": "object"}}
_ERRORS = {"400": "The request is malformed, or the arguments are not what the service takes (INVALID_ARGUMENT)",
           "401": "No token, or a wrong or revoked one (UNAUTHENTICATED)",
           "403": "The token's client may not do this (PERMISSION_DENIED)",
           "404": "No such device, service, operation or route (NOT_FOUND)",
           "429": "Over the client's request rate or a quota (RESOURCE_EXHAUSTED); see Retry-After",
           "500": "The service or the gateway failed (INTERNAL)",
           "503": "The device cannot be reached now (UNAVAILABLE)",
           "504": "No answer within the deadline (DEADLINE_EXCEEDED)"}
_NULLABLE_NUMBER = {"type": ["number", "null"]}
# A gather's pattern (ndn_edge.patterns.gather.split_pattern): components joined by single slashes, each `*`, `**` or
# a name without `*`; at least two, the last a service's name (not starting with `_`).
_GATHER_PATTERN = r"^/?(\*\*?|[^/*]+)(/(\*\*?|[^/*]+))*/[^/*_][^/*]*$"


def schema_of(spec: Any) -> dict[str, Any]:
    """The JSON Schema of a description's type (a name, or a map with "type")."""
    name = spec.get("type") if isinstance(spec, dict) else spec
    return dict(_TYPES.get(name, {})) if isinstance(name, str) else {}


def args_schema(svc: dict[str, Any]) -> dict[str, Any]:
    """The request body schema of a service: its declared arguments, or any object."""
    spec = svc.get("args")
    if not isinstance(spec, dict):
        return {"type": "object", "description": "any arguments (the service declares none)"}
    required = [n for n, s in spec.items() if isinstance(s, dict) and s.get("required") is True]
    out: dict[str, Any] = {"type": "object", "properties": {n: schema_of(s) for n, s in spec.items()},
                           "additionalProperties": False}
    if required:
        out["required"] = required
    return out


_FRESH_MS = {"type": "integer", "minimum": 1,
             "description": "how much longer the gateway serves this value from its cache (absent: not kept)"}


def call_result_schema(svc: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": ["value", "cached", "age_ms", "stale"],
            "properties": {"value": schema_of(svc.get("result")), "cached": {"type": "boolean"},
                           "age_ms": {"type": "integer", "minimum": 0}, "stale": {"type": "boolean"},
                           "fresh_ms": _FRESH_MS}}


def etag_of(doc: dict[str, Any]) -> str:
    """A strong ETag for the document: a hash of its canonical JSON."""
    return '"' + hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32] + '"'


def _op_id(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", "_".join(parts))


def _responses(ok: str, description: str, schema: dict[str, Any] | str, *, content: str = "application/json",
               headers: dict[str, Any] | None = None) -> dict[str, Any]:
    body = {"$ref": f"#/components/schemas/{schema}"} if isinstance(schema, str) else schema
    success: dict[str, Any] = {"description": description, "content": {content: {"schema": body}}}
    if headers:
        success["headers"] = headers
    out: dict[str, Any] = {ok: success}
    for status in _ERRORS:
        out[status] = {"$ref": f"#/components/responses/E{status}"}
    out["default"] = {"$ref": "#/components/responses/Problem"}
    return out


def _query(name: str, schema: dict[str, Any], description: str, *, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}


def _path(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1},
            "description": description}


_TIMEOUT = _query("timeout_ms", {"type": "integer", "minimum": 1, "maximum": 120000},
                  "the gateway's deadline for the call, retries included (default 5000)")
_PAGE = [_query("page_size", {"type": "integer", "minimum": 1, "maximum": 200}, "items per page (default 50)"),
         _query("page_token", {"type": "string"}, "the next_page_token of the previous page, unchanged")]
_LOCATION = {"Location": {"description": "the operation's URL", "schema": {"type": "string"}}}


def _service_ops(device: str, svc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The path items of one service: /call/... (POST, and GET when idempotent) or /start/..."""
    name = str(svc.get("name"))
    target = f"{device}/{name}"
    doc = str(svc.get("doc") or f"{name} on {device}")
    flags = [f"cacheable for {svc['cache_ms']} ms"] if svc.get("cache_ms") else []
    if svc.get("idempotent") is False:
        flags.append("not idempotent: runs once per call, retries included")
    if svc.get("private"):
        flags.append("private: arguments and result encrypted between gateway and device")
    description = doc + ("\n\n" + "; ".join(flags) + "." if flags else "")
    body = {"required": False, "content": {"application/json": {"schema": args_schema(svc)}}}
    if svc.get("long_running"):
        return {f"/start/{target}": {"post": {
            "operationId": _op_id("start", device, name), "summary": f"start {target} (long-running)",
            "description": description, "tags": [device], "parameters": [_TIMEOUT], "requestBody": body,
            "responses": _responses("202", "the operation, started", "Operation", headers=_LOCATION)}}}
    item: dict[str, Any] = {"post": {
        "operationId": _op_id("call", device, name), "summary": f"call {target}", "description": description,
        "tags": [device], "parameters": [_TIMEOUT], "requestBody": body,
        "responses": _responses("200", "the service's value", call_result_schema(svc))}}
    if svc.get("idempotent") is not False:
        spec = svc.get("args")
        params = [_TIMEOUT]
        if isinstance(spec, dict):
            params += [_query(n, schema_of(s) or {"type": "string"}, f"argument {n}",
                              required=isinstance(s, dict) and s.get("required") is True)
                       for n, s in spec.items() if n != "timeout_ms"]
        item["get"] = {"operationId": _op_id("get", device, name), "summary": f"call {target} (idempotent)",
                       "description": description + "\n\nArguments as query parameters, typed by the service.",
                       "tags": [device], "parameters": params,
                       "responses": _responses("200", "the service's value", call_result_schema(svc))}
    return {f"/call/{target}": item}


def document(devices: list[tuple[str, list[dict[str, Any]]]], *, version: str, site: str,
             client: str) -> dict[str, Any]:
    """The document for a caller who sees `devices`: (device name under the site, its service descriptions)."""
    paths: dict[str, Any] = {}
    for device, services in sorted(devices):
        for svc in sorted(services, key=lambda s: str(s.get("name"))):
            if _documented(svc):
                paths.update(_service_ops(device, svc))
    paths.update(_framework_paths(devices))
    return {
        "openapi": "3.1.0",
        "info": {"title": f"ndn-edge gateway, site /{site}", "version": version,
                 "description": f"The devices and services client '{client}' may use, and the framework's routes. "
                                "Errors are application/problem+json (RFC 9457) with the wire code in `code`."},
        "servers": [{"url": API_BASE}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": _components(),
    }


def _documented(svc: dict[str, Any]) -> bool:
    """A service of the device's own (framework services, `_desc`, `_health`..., have routes of their own)."""
    return isinstance(svc.get("name"), str) and not svc["name"].startswith("_")


def _framework_paths(devices: list[tuple[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """The framework's routes; their `device` and `name` parameters list what the caller sees (`enum`), so that a
    client generated from the document offers those, and a tool that generates requests from it sends those."""
    name = _path("name", "DEVICE/SERVICE under the site, e.g. sim/1/note")
    device = _path("device", "a device name under the site, e.g. sim/1")
    names = sorted({f"{d}/{svc['name']}" for d, services in devices for svc in services if _documented(svc)})
    if names:
        name["schema"] = {"type": "string", "enum": names}
    if devices:
        device["schema"] = {"type": "string", "enum": sorted({d for d, _ in devices})}
    any_args = {"required": False, "content": {"application/json": {"schema": {"type": "object"}}}}
    return {
        "/devices": {"get": {"operationId": "devices", "summary": "list the devices the caller may reach",
                             "parameters": _PAGE, "responses": _responses("200", "one page", "DeviceList")}},
        "/devices/{device}/services": {"get": {
            "operationId": "services", "summary": "the service descriptions of a device",
            "parameters": [device], "responses": _responses("200", "its services", "ServiceList")}},
        "/devices/{device}/health": {"get": {
            "operationId": "health", "summary": "the device's own health counters (its `_health` service)",
            "parameters": [device, _TIMEOUT], "responses": _responses("200", "the counters", "CallResult")}},
        "/notify/{name}": {"post": {
            "operationId": "notify", "summary": "send a notification (at most once, no reply)",
            "parameters": [name], "requestBody": any_args,
            "responses": _responses("202", "sent", "Notification")}},
        "/enqueue/{name}": {"post": {
            "operationId": "enqueue", "summary": "queue a call for a device that sleeps or is away",
            "description": "The body is the arguments, those the named service takes (its `args` in "
                           "/devices/{device}/services; checked when the call is queued).",
            "parameters": [name, _query("ttl_s", {"type": "number", "minimum": 0.001, "maximum": 604800},
                                        "seconds the call may wait (default 300)")],
            "requestBody": any_args,
            "responses": _responses("202", "the queued call", "Operation", headers=_LOCATION)}},
        "/operations": {"get": {"operationId": "operations", "summary": "operations and queued calls, newest first",
                                "parameters": _PAGE, "responses": _responses("200", "one page", "OperationList")}},
        "/operations/{op}": {
            "get": {"operationId": "operation", "summary": "one operation; with wait, after its next change",
                    "parameters": [_path("op", "the operation id"),
                                   _query("wait", {"type": "number", "minimum": 0, "maximum": 120},
                                          "seconds to wait for a change (0: at once)")],
                    "responses": _responses("200", "the operation", "Operation")},
            "delete": {"operationId": "cancel", "summary": "cancel an operation or a queued call",
                       "parameters": [_path("op", "the operation id"), _TIMEOUT],
                       "responses": _responses("200", "the operation", "Operation")}},
        "/gather": {"post": {
            "operationId": "gather", "summary": "call a service on every matching device, within a deadline",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "$ref": "#/components/schemas/GatherRequest"}}}},
            "responses": _responses("200", "every device's outcome", "GatherResult")}},
        "/events": {"get": {
            "operationId": "events",
            "summary": "publications and membership events as Server-Sent Events",
            "description": "Event `message`: a publication on a topic the patterns match; event `member`: a "
                           "device joined, left, went offline or to sleep. With `durable`, events carry ids and "
                           "`Last-Event-ID` resumes after one.",
            "parameters": [
                {"name": "topic", "in": "query", "required": False, "style": "form", "explode": True,
                 "schema": {"type": "array", "items": {"type": "string"}, "maxItems": 8},
                 "description": "topic patterns, e.g. sim/*/tick (repeatable)"},
                _query("members", {"type": "boolean"}, "also membership events (default true)"),
                _query("durable", {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
                       "a durable subscription's name: kept while away, resumed with Last-Event-ID"),
                {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"}}],
            "responses": _responses("200", "the stream", {"type": "string"}, content="text/event-stream")}},
        "/openapi.json": {"get": {"operationId": "openapi", "summary": "this document (per token; ETag)",
                                  "responses": _responses("200", "the document", {"type": "object"})}},
    }


def _components() -> dict[str, Any]:
    problem = {"type": "object", "required": ["type", "title", "status", "detail", "code"],
               "properties": {"type": {"type": "string"}, "title": {"type": "string"},
                              "status": {"type": "integer"}, "detail": {"type": "string"},
                              "code": {"type": "string"}}}
    error_response = {"content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}
    responses: dict[str, Any] = {f"E{status}": {"description": text, **error_response}
                                 for status, text in _ERRORS.items()}
    responses["Problem"] = {"description": "a problem (RFC 9457)", **error_response}
    operation = {"type": "object", "required": ["op", "kind", "target", "state"],
                 "properties": {"op": {"type": "string"}, "kind": {"type": "string", "enum": ["op", "call"]},
                                "target": {"type": "string"}, "client": {"type": "string"},
                                "state": {"type": "string", "enum": ["queued", "starting", "running", "done",
                                                                     "failed", "cancelled"]},
                                "progress": _NULLABLE_NUMBER, "created": {"type": "number"},
                                "updated": {"type": "number"}, "result": {},
                                "error": {"type": "object"}, "note": {"type": ["string", "null"]},
                                "expires": _NULLABLE_NUMBER}}
    page_token = {"type": ["string", "null"]}
    return {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                       "description": "a token from `ndn-edge client token NAME`"}},
        "responses": responses,
        "schemas": {
            "Problem": problem,
            "CallResult": {"type": "object", "required": ["value", "cached", "age_ms", "stale"],
                           "properties": {"value": {}, "cached": {"type": "boolean"},
                                          "age_ms": {"type": "integer"}, "stale": {"type": "boolean"},
                                          "fresh_ms": _FRESH_MS}},
            "Device": {"type": "object", "required": ["name", "state"],
                       "properties": {"name": {"type": "string"},
                                      "state": {"type": "string", "enum": ["unknown", "online", "offline",
                                                                           "asleep", "left"]},
                                      "last_seen": _NULLABLE_NUMBER, "lease_until": _NULLABLE_NUMBER,
                                      "sleep_until": _NULLABLE_NUMBER, "services": {"type": "integer"}}},
            "DeviceList": {"type": "object", "required": ["items", "next_page_token"],
                           "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Device"}},
                                          "next_page_token": page_token}},
            "ServiceList": {"type": "object", "required": ["device", "items"],
                            "properties": {"device": {"type": "string"},
                                           "items": {"type": "array", "items": {"type": "object"}}}},
            "Notification": {"type": "object", "required": ["sent"],
                             "properties": {"device": {"type": "string"}, "service": {"type": "string"},
                                            "sent": {"type": "boolean"}}},
            "Operation": operation,
            "OperationList": {"type": "object", "required": ["items", "next_page_token"],
                              "properties": {"items": {"type": "array",
                                                       "items": {"$ref": "#/components/schemas/Operation"}},
                                             "next_page_token": page_token}},
            "GatherRequest": {"type": "object", "required": ["pattern"], "additionalProperties": False,
                              "properties": {"pattern": {"type": "string", "pattern": _GATHER_PATTERN,
                                                         "description": "devices, then one service: e.g. "
                                                                        "sim/*/temperature"},
                                             "args": {"type": ["object", "null"]},
                                             "deadline_s": {"type": "number", "exclusiveMinimum": 0,
                                                            "maximum": 120}}},
            "GatherResult": {"type": "object", "required": ["results"],
                             "properties": {"results": {"type": "array", "items": {"type": "object"}}}},
        },
    }
