"""What the commands that talk to a gateway share: the client options (`--as`, `--timeout`, `--gateway`,
`--json`), running work with an open client, `--args` JSON, checking names and patterns before anything is sent,
and the home's default client (`HOME/default-client`).

Exit codes: whatever is wrong before a request is sent is a usage error (exit status 2, `UsageError`): a bad
`--args` JSON, a name that is not DEVICE/SERVICE, a pattern that does not parse. Only what the gateway or a
device answered gets the exit code of a wire error (3..9), so a script can tell "I typed it wrong" from "the
service refused it".
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ndn_edge.state.home import Home, validate_client_name
from ndn_edge.tools.argtypes import bounded, checked
from ndn_edge.tools.errors import UsageError

if TYPE_CHECKING:
    from ndn_edge.client.api import Client
    from ndn_edge.tools.cli import State

T = TypeVar("T")
_NO_SITE = "\0"  # a site no name starts with: names are checked as written, a leading /SITE/ included

seconds = bounded(float, 0, 3600, "timeout must be seconds between 0 and 3600", low_open=True)


DEFAULT_TIMEOUT_S = 5.0  # a request's deadline when --timeout is not given


def add_client_options(parser: argparse.ArgumentParser, exit_codes_help: str) -> None:
    """`--as`, `--timeout`, `--gateway` and `--json`, with the exit codes in the help's epilog."""
    parser.add_argument("--as", dest="as_client", metavar="CLIENT", type=checked(validate_client_name), default=None,
                        help="client identity to sign with (default: $NDN_EDGE_CLIENT, else the home's only client)")
    parser.add_argument("--timeout", metavar="S", type=seconds, default=DEFAULT_TIMEOUT_S,
                        help=f"deadline in seconds (default {DEFAULT_TIMEOUT_S:g})")
    parser.add_argument("--gateway", metavar="HOST:PORT", default=None,
                        help="gateway address (default: the one recorded in HOME/gateway.json)")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = exit_codes_help


def with_client(state: State, args: argparse.Namespace, work: Callable[[Client], Awaitable[T]]) -> T:
    """Run `work` with a client of the home's gateway, opened and closed around it."""
    from ndn_edge.client.api import Client

    client = Client.from_home(state.home, client=args.as_client, timeout=args.timeout, gateway=args.gateway)

    async def run() -> T:
        async with client:
            return await work(client)

    return asyncio.run(run())


def parse_args_json(text: str | None, verb: str = "call") -> dict[str, Any] | None:
    """The `--args` object, or None; UsageError saying how to write it."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"{verb}: --args is not valid JSON ({err.msg} at character {err.pos}); write an object "
                         'such as \'{"celsius": 21.5}\'') from None
    if not isinstance(value, dict):
        raise UsageError(f"{verb}: --args must be a JSON object such as '{{\"celsius\": 21.5}}', got "
                         f"{type(value).__name__}")
    return value


# -- names and patterns, checked before anything is sent


def service_name(text: str) -> str:
    """`text` if it is DEVICE/SERVICE under the site (or /SITE/DEVICE/SERVICE); ValueError saying what is wrong."""
    from ndn_edge.wire.client_protocol import split_target

    if len(split_target(text, _NO_SITE)) < 2:
        raise ValueError(f"name {text!r} is not like DEVICE/SERVICE (e.g. kitchen/th1/temperature)")
    return text


def device_name(text: str) -> str:
    """`text` if it is a device name under the site; ValueError saying what is wrong."""
    from ndn_edge.wire.client_protocol import split_target

    split_target(text, _NO_SITE)
    return text


def topic_pattern(text: str) -> str:
    """`text` if it parses as a pattern (access-rule syntax); ValueError saying what is wrong."""
    from ndn_edge.names import parse_pattern

    parse_pattern(text)
    return text


def gather_pattern(text: str) -> str:
    """`text` if it is a pattern of devices followed by one service name (`sim/*/temperature`); ValueError."""
    from ndn_edge.names import ANY, ONE, parse_pattern

    parts = parse_pattern(text)
    if len(parts) < 2 or parts[-1] in (ONE, ANY) or parts[-1].startswith("_"):
        raise ValueError(f"pattern {text!r} must end with a service name, e.g. 'sim/*/temperature'")
    return text


def check(verb: str, what: str, validate: Callable[[str], str], text: str) -> str:
    """`validate(text)`, or a UsageError "verb: what: why" (for values argparse could not check on its own)."""
    try:
        return validate(text)
    except ValueError as err:
        raise UsageError(f"{verb}: {what}: {err} (see ndn-edge {verb} --help)") from None


# -- the home's default client


def write_default_client(home: Home, name: str) -> bool:
    """Name `name` the home's default client unless the home already names one; True if written."""
    from ndn_edge.client.api import DEFAULT_CLIENT_FILE

    path = home.path / DEFAULT_CLIENT_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(validate_client_name(name) + "\n")
    return True


def clear_default_client(home: Home, name: str) -> bool:
    """Forget the home's default client if it is `name`; True if it was."""
    from ndn_edge.client.api import DEFAULT_CLIENT_FILE

    path = home.path / DEFAULT_CLIENT_FILE
    try:
        if path.read_text().strip() != name:
            return False
        path.unlink()
    except (OSError, UnicodeDecodeError):
        return False
    return True
