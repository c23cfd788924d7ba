"""Errors of the HTTP API as RFC 9457 problem details (`application/problem+json`), with the wire code.

    problem(404, "NOT_FOUND", "no device sim/9")  # a web.Response
    of_error(PermissionDenied("..."))             # 403, the same body shape

Decisions:
- The wire codes (gateway/errors.py) map to one status each: INVALID_ARGUMENT 400, PERMISSION_DENIED 403,
  NOT_FOUND 404, RESOURCE_EXHAUSTED 429 (with `Retry-After`), INTERNAL 500, UNAVAILABLE 503, DEADLINE_EXCEEDED
  504. What only HTTP has gets a code of its own: UNAUTHENTICATED 401 (with `WWW-Authenticate: Bearer`),
  METHOD_NOT_ALLOWED 405, PAYLOAD_TOO_LARGE 413, UNSUPPORTED_MEDIA_TYPE 415.
- The body is `{"type": "about:blank", "title": <status phrase>, "status", "detail": <message>, "code"}`:
  `about:blank` because the status says what kind of problem it is; `code` is the extension member that says
  which wire error it was, so a client tells a device's INVALID_ARGUMENT from a bad page token by `detail`
  only, as over NDN.
- No traceback ever leaves the gateway: an unexpected exception is logged and answered INTERNAL.
"""
from __future__ import annotations

import json
from http import HTTPStatus

from aiohttp import web

from ndn_edge.errors import CallError

CONTENT_TYPE = "application/problem+json"
STATUS_OF_CODE = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "METHOD_NOT_ALLOWED": 405,
    "PAYLOAD_TOO_LARGE": 413,
    "UNSUPPORTED_MEDIA_TYPE": 415,
    "RESOURCE_EXHAUSTED": 429,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
CODE_OF_STATUS = {status: code for code, status in STATUS_OF_CODE.items()}
RETRY_AFTER_S = 1


def problem(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    """A problem+json response."""
    body = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status, "detail": detail,
            "code": code}
    return web.Response(status=status, body=json.dumps(body).encode(), content_type=CONTENT_TYPE,
                        headers=headers)


def of_error(err: CallError, retry_after_s: float = RETRY_AFTER_S) -> web.Response:
    """The response for a wire error."""
    status = STATUS_OF_CODE.get(err.code, 500)
    headers = {"Retry-After": str(max(1, int(retry_after_s + 0.999)))} if status in (429, 503) else None
    return problem(status, err.code if err.code in STATUS_OF_CODE else "INTERNAL", err.message or err.code, headers)


def unauthenticated(detail: str) -> web.Response:
    """401 with the challenge RFC 6750 asks for."""
    return problem(401, "UNAUTHENTICATED", detail, {"WWW-Authenticate": 'Bearer realm="ndn-edge"'})
