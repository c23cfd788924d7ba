"""The ndn-edge host gateway and its client library.

Importing `gateway` stays cheap: only the exceptions are loaded here. Heavy parts (python-ndn, the store, the
daemon) live in submodules imported where they are used. When the client library lands, expose it lazily with a
module `__getattr__`, e.g.:

    def __getattr__(name):
        if name == "Client":
            from gateway.client import Client
            return Client
        raise AttributeError(f"module 'gateway' has no attribute {name!r}")
"""
from gateway.errors import (
    AlreadyExists,
    CallError,
    ConfigError,
    DeadlineExceeded,
    GatewayError,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    StoreError,
    Unavailable,
    UnknownClient,
    UnknownDevice,
)

__all__ = [
    "AlreadyExists", "CallError", "ConfigError", "DeadlineExceeded", "GatewayError", "Internal", "InvalidArgument",
    "NotFound", "PermissionDenied", "ResourceExhausted", "StoreError", "Unavailable", "UnknownClient",
    "UnknownDevice",
]
