"""What the commands that talk to a gateway share: the client options (`--as`, `--timeout`, `--gateway`,
`--json`), running work with an open client, and `--args` JSON."""
from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ndn_edge.state.home import validate_client_name
from ndn_edge.tools.argtypes import bounded, checked
from ndn_edge.tools.errors import CommandError

if TYPE_CHECKING:
    from ndn_edge.client.api import Client
    from ndn_edge.tools.cli import State

T = TypeVar("T")
EXIT_INVALID_ARGUMENT = 3

seconds = bounded(float, 0, 3600, "timeout must be seconds between 0 and 3600", low_open=True)


def add_client_options(parser: argparse.ArgumentParser, exit_codes_help: str) -> None:
    """`--as`, `--timeout`, `--gateway` and `--json`, with the exit codes in the help's epilog."""
    parser.add_argument("--as", dest="as_client", metavar="CLIENT", type=checked(validate_client_name), default=None,
                        help="client identity to sign with (default: $NDN_EDGE_CLIENT, else the home's only client)")
    parser.add_argument("--timeout", metavar="S", type=seconds, default=5.0, help="deadline in seconds (default 5)")
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
    """The `--args` object, or None; CommandError saying how to write it."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise CommandError(f"{verb}: --args is not valid JSON ({err.msg} at character {err.pos}); write an object "
                           'such as \'{"celsius": 21.5}\'', exit_code=EXIT_INVALID_ARGUMENT) from None
    if not isinstance(value, dict):
        raise CommandError(f"{verb}: --args must be a JSON object such as '{{\"celsius\": 21.5}}', got "
                           f"{type(value).__name__}", exit_code=EXIT_INVALID_ARGUMENT)
    return value
