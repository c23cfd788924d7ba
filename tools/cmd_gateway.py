"""`ndn-edge gateway`: run the gateway of a home in the foreground until Ctrl-C (or SIGTERM).

Logs are structured lines on stderr (`--log-format kv|json`); one human line on stdout says where it listens.
The site is `--site`, else the one the home's store recorded, else `edge`.
"""
from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import TYPE_CHECKING

from ndn_edge import __version__
from ndn_edge.tools.netargs import add_network_args, listen_arg

if TYPE_CHECKING:
    from ndn_edge.daemon import Gateway
    from ndn_edge.tools.cli import State



def args_gateway(parser: argparse.ArgumentParser) -> None:
    add_network_args(parser)
    parser.add_argument("--listen", metavar="HOST:PORT", type=listen_arg, default=("127.0.0.1", 0),
                        help="where clients reach the gateway (default 127.0.0.1:0, a free port; the address is "
                             "recorded in HOME/gateway.json)")
    parser.add_argument("--log-format", choices=("kv", "json"), default="kv",
                        help="log lines on stderr as key=value pairs (default) or JSON")
    parser.add_argument("-v", "--verbose", action="store_true", help="also log every dropped packet")
    parser.add_argument("--limit", metavar="NAME=VALUE", action="append", type=_limit, default=[],
                        help="a per-client quota or shared cap (repeatable): subscriptions_per_client (100), "
                             "operations_per_client (64), queued_calls_per_client (1000), requests_per_s (20000), "
                             "request_burst (40000), subscriptions (10000); see docs/operations.md")


def _limit(text: str) -> str:
    from ndn_edge.errors import ConfigError
    from ndn_edge.limits import Limits

    try:
        Limits.parse([text])
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def resolve_site(state: State, site: str | None) -> str:
    """The home's site: `site` if it is the one decided (or decides it), else the decided one, else the default."""
    return state.store.claim_site(site)


def do_gateway(state: State, args: argparse.Namespace) -> int:
    """Run the gateway in the foreground."""
    from ndn_edge import logs
    from ndn_edge.daemon import Gateway, run_loop
    from ndn_edge.limits import Limits

    site = resolve_site(state, args.site)
    state.close()  # the gateway opens its own connection to the store
    handler = logs.setup("debug" if args.verbose else "info", args.log_format)
    gateway = Gateway(state.home, iface=args.iface, group=args.group[0], port=args.group[1], listen=args.listen,
                      site=site, limits=Limits.parse(args.limit))
    try:
        run_loop(_serve(gateway))
    except asyncio.CancelledError:  # SIGTERM
        return 0
    finally:
        logs.teardown(handler)
    return 0


async def _serve(gateway: Gateway) -> None:
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if task is not None:
        try:
            loop.add_signal_handler(signal.SIGTERM, task.cancel)
        except (NotImplementedError, RuntimeError):  # not on this platform / not the main thread
            pass
    await gateway.start()
    try:
        host, port = gateway.address
        print(f"ndn-edge gateway {__version__}: home {gateway.home.path}, site /{gateway.site}, "
              f"clients on {host}:{port}, "
              f"devices on {gateway.group}:{gateway.port} via {gateway.iface}; Ctrl-C to stop", flush=True)
        await asyncio.Event().wait()
    finally:
        await gateway.stop()
        print("ndn-edge gateway: stopped", file=sys.stdout, flush=True)
