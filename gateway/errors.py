"""Every exception the gateway and the client library raise, under one root, `GatewayError`.

Three families:
- `CallError` and its subclasses are the errors that cross the wire. Each class owns one wire code (the `code`
  field of a NACK reply, see docs/protocol.md) and one CLI exit code, renders itself with `to_wire()` and is
  rebuilt from a reply with `CallError.from_wire()`, so a device error, a gateway error and a client-side timeout
  all reach the application as the same class.
- `ConfigError`: a person's mistake about a home folder, a credentials file or a missing gateway. Its message says
  what to do next (a command to run), in the style of aiocoap's `HelpfulError`.
- `StoreError` and its subclasses: what the store refuses (duplicate names, unknown clients or devices, a store
  file written by a newer version).

Every class carries `exit_code`, so the CLI maps any of them to a process exit status without a lookup table.
Rejected: one class with a `code` field and no subclasses (callers could not `except NotFound`), and reusing
`OSError`/`KeyError` (callers could not catch "everything the gateway raises" in one clause).
"""
from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    """Root of every error raised by the gateway and the client library."""

    exit_code: int = 1


class CallError(GatewayError):
    """A failed call, as carried on the wire: a `code` string and a human `message`."""

    code: str = "INTERNAL"
    exit_code: int = 9
    trace: dict[str, Any] | None = None  # the gateway's timeline of the call, when the client asked for it

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" if self.message else self.code

    def to_wire(self) -> dict[str, Any]:
        """The NACK content map: `{"code": ..., "message": ...}` (and `"trace"`, when there is one)."""
        if self.trace is not None:
            return {"code": self.code, "message": self.message, "trace": self.trace}
        return {"code": self.code, "message": self.message}

    @staticmethod
    def from_wire(code: Any, message: Any) -> CallError:
        """The subclass for a wire `code`; an unknown code becomes `Internal` naming that code."""
        text = message if isinstance(message, str) else str(message)
        cls = _BY_CODE.get(code) if isinstance(code, str) else None
        if cls is None:
            return Internal(f"unknown error code {code!r}: {text}")
        return cls(text)


class InvalidArgument(CallError):
    """The arguments are not what the service takes."""

    code = "INVALID_ARGUMENT"
    exit_code = 3


class NotFound(CallError):
    """No such device, service or operation."""

    code = "NOT_FOUND"
    exit_code = 4


class PermissionDenied(CallError):
    """The caller's identity is not allowed to do this."""

    code = "PERMISSION_DENIED"
    exit_code = 5


class Unavailable(CallError):
    """The device or gateway cannot be reached now; retrying later may work."""

    code = "UNAVAILABLE"
    exit_code = 6


class DeadlineExceeded(CallError):
    """No answer within the deadline."""

    code = "DEADLINE_EXCEEDED"
    exit_code = 7


class ResourceExhausted(CallError):
    """The device is out of memory or too busy."""

    code = "RESOURCE_EXHAUSTED"
    exit_code = 8


class Internal(CallError):
    """The handler or the framework failed; the message says how."""

    code = "INTERNAL"
    exit_code = 9


_BY_CODE: dict[str, type[CallError]] = {
    cls.code: cls
    for cls in (InvalidArgument, NotFound, PermissionDenied, Unavailable, DeadlineExceeded, ResourceExhausted,
                Internal)
}


class ConfigError(GatewayError):
    """A mistake about the home folder, credentials or gateway record; the message says what to do."""

    exit_code = 2


class StoreError(GatewayError):
    """The store refused an operation or cannot be used."""


class DamagedStore(StoreError):
    """The store file is damaged, emptied or not this home's: restore the last good copy."""


class AlreadyExists(StoreError):
    """A device or client with that name is already in the store."""


class UnknownClient(StoreError):
    """No client with that name in the store."""

    exit_code = NotFound.exit_code


class UnknownDevice(StoreError):
    """No device with that name in the store."""

    exit_code = NotFound.exit_code
