"""The ndn-edge host gateway and its client library.

Importing `gateway` stays cheap: only the exceptions are loaded here. Heavy parts (python-ndn, the store, the
daemon) live in submodules imported where they are used; the client library (`Client`, `BlockingClient`,
`CallResult`) is exported lazily by the module `__getattr__` below, so `from gateway import Client` pulls in
python-ndn only when it is asked for (pinned by tests/test_cli_admin.py::test_cli_import_is_light).
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

_LAZY = {"Client": "gateway.client", "BlockingClient": "gateway.client", "CallResult": "gateway.client",
         "Gateway": "gateway.daemon", "Operation": "gateway.client_models", "Subscription": "gateway.client_models",
         "Message": "gateway.client_models", "Outcome": "gateway.client_models",
         "OperationCancelled": "gateway.client_models"}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gateway' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "BlockingClient", "CallResult", "Client", "Gateway", "Message", "Operation", "OperationCancelled", "Outcome",
    "Subscription",
    "AlreadyExists", "CallError", "ConfigError", "DeadlineExceeded", "GatewayError", "Internal", "InvalidArgument",
    "NotFound", "PermissionDenied", "ResourceExhausted", "StoreError", "Unavailable", "UnknownClient",
    "UnknownDevice",
]
