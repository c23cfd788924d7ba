"""`ndn-edge gateway`: run the gateway of a home in the foreground until Ctrl-C (or SIGTERM).

Logs are structured lines (`--log-format kv|json`) on stderr, or in a file (`--log FILE`); one human line on
stdout says where it listens and where it logs. The site is `--site`, else the one the home's store recorded,
else `edge`.

Decisions:
- Started in the background of a terminal (`ndn-edge gateway &`: stderr is the terminal, but the process is not
  in its foreground process group), the gateway logs to `HOME/gateway.log`, so its lines do not run into the
  output of the commands typed next (the README's boards tour). Anywhere else stderr stays the default: a
  service manager (systemd, a container) collects stderr, and a redirect (`2>FILE`) is the user's choice.
  `--log -` is always stderr.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from ndn_edge import __version__
from ndn_edge.tools.netargs import add_network_args, listen_arg

if TYPE_CHECKING:
    from ndn_edge.daemon import Gateway
    from ndn_edge.federation.config import FederationConfig
    from ndn_edge.http.options import HttpOptions
    from ndn_edge.tools.cli import State

LOG_FILE = "gateway.log"


def args_gateway(parser: argparse.ArgumentParser) -> None:
    add_network_args(parser)
    parser.add_argument("--listen", metavar="HOST:PORT", type=listen_arg, default=("127.0.0.1", 0),
                        help="where clients reach the gateway (default 127.0.0.1:0, a free port; the address is "
                             "recorded in HOME/gateway.json)")
    parser.add_argument("--log", metavar="FILE", default=None,
                        help=f"append log lines to FILE ('-': stderr; default: stderr, or HOME/{LOG_FILE} when "
                             "started in the background of a terminal, as with `ndn-edge gateway &`)")
    parser.add_argument("--log-format", choices=("kv", "json"), default="kv",
                        help="log lines as key=value pairs (default) or JSON")
    parser.add_argument("-v", "--verbose", action="store_true", help="also log every dropped packet")
    parser.add_argument("--limit", metavar="NAME=VALUE", action="append", type=_limit, default=[],
                        help="a per-client quota or shared cap (repeatable): subscriptions_per_client (100), "
                             "operations_per_client (64), queued_calls_per_client (1000), requests_per_s (20000), "
                             "request_burst (40000), subscriptions (10000); see docs/operations.md")
    parser.add_argument("--http", metavar="HOST:PORT", type=listen_arg, default=None,
                        help="also serve the REST API and the dashboard there (docs/http.md), e.g. 127.0.0.1:8080; "
                             'default: "http" in HOME/config.json, else off')
    parser.add_argument("--http-cert", metavar="PEM", default=None, help="serve HTTPS with this certificate (chain)")
    parser.add_argument("--http-key", metavar="PEM", default=None,
                        help="the private key of --http-cert (default: in the certificate file)")
    parser.add_argument("--metrics", metavar="HOST:PORT", type=listen_arg, default=None,
                        help="serve Prometheus metrics (GET /metrics, no token) there, e.g. 127.0.0.1:9464; the HTTP "
                             "API serves them too, to a token allowed _gw/metrics (docs/operations.md)")
    parser.add_argument("--health-interval", metavar="S", type=_interval, default=60.0,
                        help="poll each online device's _health every S seconds for the metrics (default 60; 0 off)")
    parser.add_argument("--otlp", metavar="URL", default=None,
                        help="export spans of calls by OTLP over HTTP to URL (e.g. http://127.0.0.1:4318; needs "
                             "ndn-edge[otel]); default: $OTEL_EXPORTER_OTLP_ENDPOINT, else no spans")
    parser.add_argument("--federation", metavar="URL", default=None,
                        help="join the home's federation through these NATS addresses, nats://HOST:PORT[,...] "
                             "(default: those in HOME/federation.json; a home is enrolled with `ndn-edge federation "
                             "init|join`)")


def _limit(text: str) -> str:
    from ndn_edge.errors import ConfigError
    from ndn_edge.limits import Limits

    try:
        Limits.parse([text])
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 86400:
        raise argparse.ArgumentTypeError(f"must be seconds from 0 (off) to 86400, got {text!r}")
    return value


def resolve_site(state: State, site: str | None) -> str:
    """The home's site: `site` if it is the one decided (or decides it), else the decided one, else the default."""
    return state.store.claim_site(site)


def http_options(state: State, args: argparse.Namespace) -> HttpOptions | None:
    """Where to serve HTTP: --http (with --http-cert/--http-key), else the home's config.json, else None."""
    from ndn_edge.http.options import HttpOptions, options_from_config
    from ndn_edge.tools.errors import UsageError

    if args.http is None:
        if args.http_cert or args.http_key:
            raise UsageError("gateway: --http-cert and --http-key need --http HOST:PORT")
        return options_from_config(state.home.path)
    if args.http_key and not args.http_cert:
        raise UsageError("gateway: --http-key needs --http-cert")
    return HttpOptions(args.http, cert=args.http_cert, key=args.http_key)


def federation_config(state: State, urls: str | None) -> FederationConfig | None:
    """The home's enrolment (`ndn-edge federation init|join`), its NATS addresses replaced by `urls` when given;
    None for a home that is not enrolled (a single gateway: nothing of the federation is imported)."""
    from ndn_edge.federation.config import CONFIG_FILE, parse_urls, read_config
    from ndn_edge.tools.errors import UsageError

    if urls is None and not (state.home.path / CONFIG_FILE).exists():
        return None
    config = read_config(state.home.path)
    if config is None:
        raise UsageError(f"gateway: --federation needs an enrolled home; enrol {state.home.path} with `ndn-edge "
                         "federation init --nats URL` or `ndn-edge federation join TOKEN`")
    if urls is not None:
        try:
            config = config.with_nats(parse_urls(urls))
        except Exception as err:
            raise UsageError(f"gateway: --federation: {err}") from None
    return config


def do_gateway(state: State, args: argparse.Namespace) -> int:
    """Run the gateway in the foreground."""
    from ndn_edge import logs
    from ndn_edge.daemon import Gateway, run_loop
    from ndn_edge.limits import Limits
    from ndn_edge.observability.hub import ObservabilityOptions

    site = resolve_site(state, args.site)
    state.close()  # the gateway opens its own connection to the store
    http = http_options(state, args)
    federation = federation_config(state, args.federation)
    log_path = _log_path(args.log, state.home.path)
    with contextlib.ExitStack() as stack:
        stream: TextIO | None = None
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            # line-buffered: `tail -f` sees each line as it is logged
            stream = stack.enter_context(open(log_path, "a", buffering=1))
        handler = logs.setup("debug" if args.verbose else "info", args.log_format, stream)
        stack.callback(logs.teardown, handler)
        observe = ObservabilityOptions(health_interval_s=args.health_interval, otlp=args.otlp)
        gateway = Gateway(state.home, iface=args.iface, group=args.group[0], port=args.group[1], listen=args.listen,
                          site=site, limits=Limits.parse(args.limit), http=http, observe=observe,
                          metrics=args.metrics, federation=federation)
        try:
            run_loop(_serve(gateway, log_path))
        except asyncio.CancelledError:  # SIGTERM
            return 0
    return 0


def _log_path(option: str | None, home: Path) -> Path | None:
    """Where the log goes: None for stderr."""
    from ndn_edge.tools.output import in_background

    if option == "-":
        return None
    if option is not None:
        return Path(option).expanduser()
    return home / LOG_FILE if in_background(sys.stderr) else None


async def _serve(gateway: Gateway, log_path: Path | None = None) -> None:
    from ndn_edge.tools.procs import cancel_on_sigterm

    cancel_on_sigterm()
    await gateway.start()
    try:
        host, port = gateway.address
        where = f"; logs in {log_path}" if log_path is not None else ""
        print(f"ndn-edge gateway {__version__}: home {gateway.home.path}, site /{gateway.site}, "
              f"clients on {host}:{port}, "
              f"devices on {gateway.group}:{gateway.port} via {gateway.iface}{where}; Ctrl-C to stop", flush=True)
        if gateway.http is not None:
            print(f"ndn-edge gateway: REST API at {gateway.http.url}/api/v1, dashboard at {gateway.http.url}/",
                  flush=True)
        if gateway.metrics is not None:
            print(f"ndn-edge gateway: Prometheus metrics at {gateway.metrics.url}", flush=True)
        await asyncio.Event().wait()
    finally:
        await gateway.stop()
        print("ndn-edge gateway: stopped", file=sys.stdout, flush=True)
