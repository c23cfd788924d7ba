"""ndn-edge on the host: the gateway, its client library and the command line, under one namespace.

    from ndn_edge import Client
    async with Client.connect(home=HOME, client="alice") as c:
        t = await c.call("kitchen/th1/temperature")

Importing `ndn_edge` stays cheap: only the exceptions are loaded here. Heavy parts (python-ndn, the store, the
daemon) live in submodules imported where they are used; the client library (`Client`, `BlockingClient`,
`CallResult`, the handles) is exported lazily by the module `__getattr__` below, so `from ndn_edge import Client`
pulls in python-ndn only when it is asked for (pinned by tests/test_cli_admin.py::test_cli_import_is_light).

The layout, top-down: `daemon` builds the gateway from `devices/` (the multicast side), `clients/` (the client
face and its verbs) and `patterns/` (the communication models), over `state/` (home and store); `client/` is the
library applications import; `tools/` the command line. `wire/`, `names`, `errors` and `logs` are the ground floor
every part uses.
"""
from ndn_edge.errors import (
    AlreadyExists,
    CallError,
    ConfigError,
    DamagedStore,
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

__version__ = "0.2.0"

_LAZY = {"Client": "ndn_edge.client.api", "BlockingClient": "ndn_edge.client.api",
         "CallResult": "ndn_edge.client.api", "Gateway": "ndn_edge.daemon",
         "Operation": "ndn_edge.client.handles", "Subscription": "ndn_edge.client.handles",
         "Message": "ndn_edge.client.handles", "Outcome": "ndn_edge.client.handles",
         "OperationCancelled": "ndn_edge.client.handles"}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ndn_edge' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "AlreadyExists",
    "BlockingClient",
    "CallError",
    "CallResult",
    "Client",
    "ConfigError",
    "DamagedStore",
    "DeadlineExceeded",
    "Gateway",
    "GatewayError",
    "Internal",
    "InvalidArgument",
    "Message",
    "NotFound",
    "Operation",
    "OperationCancelled",
    "Outcome",
    "PermissionDenied",
    "ResourceExhausted",
    "StoreError",
    "Subscription",
    "Unavailable",
    "UnknownClient",
    "UnknownDevice",
]
