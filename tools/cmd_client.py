"""`ndn-edge devices`, `services` and `call`: the client library (`ndn_edge.client.api`) on the command line.

Each command signs as one client (`--as NAME`, else $NDN_EDGE_CLIENT, else the home's only client) and talks to
the home's running gateway (`HOME/gateway.json`, or `--gateway HOST:PORT`). `--json` prints what scripts need;
failures are one line on stderr and an exit code naming the error (see EXIT_CODES_HELP). Light to import: the
client library loads when a command runs.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any, TypeVar

from ndn_edge.tools.argtypes import checked
from ndn_edge.tools.errors import EXIT_CODES_HELP, CommandError
from ndn_edge.tools.output import ago, print_json, print_table, value_text
from ndn_edge.tools.session import add_client_options, check, device_name, parse_args_json, service_name, with_client

if TYPE_CHECKING:
    from ndn_edge.client.api import Client
    from ndn_edge.tools.cli import State

T = TypeVar("T")


# -- argument builders


def client_options(parser: argparse.ArgumentParser) -> None:
    add_client_options(parser, EXIT_CODES_HELP)


def args_devices(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--page-size", metavar="N", type=int, default=50, help="devices per page (default 50)")
    parser.add_argument("--page-token", metavar="T", default=None, help="the next_page_token of a previous page")
    parser.add_argument("--path", metavar="DEVICE=MODE", action="append", default=[],
                        help="how the gateway reaches DEVICE: auto (the group, unicast once multicast goes "
                             "unanswered; the default), multicast or unicast; applies within a second")
    client_options(parser)


def args_services(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("device", metavar="DEVICE", nargs="?", default=None, type=checked(device_name),
                        help="device name under the site, e.g. kitchen/th1 (default: every device)")
    client_options(parser)


def args_call(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="DEVICE/SERVICE under the site, e.g. kitchen/th1/temperature "
                                                     "(with --all a pattern: sim/*/temperature)")
    parser.add_argument("--args", metavar="JSON", default=None,
                        help='arguments as a JSON object, e.g. \'{"celsius": 21.5}\'')
    parser.add_argument("--trace", action="store_true",
                        help="also print the call's trace id, its timeline (client and gateway) and the device's "
                             "log entries of it")
    from ndn_edge.tools.cmd_patterns import add_call_pattern_args

    add_call_pattern_args(parser)
    client_options(parser)
    parser.description = ("call a device service through the gateway; prints the value (--json: "
                          '{"value", "cached", "age_ms", "stale"}); --all, --notify, --start and --persist call '
                          "it the other ways of docs/models.md")


# -- handlers


def do_devices(state: State, args: argparse.Namespace) -> None:
    """List the devices this client may call (after setting the paths given with --path)."""
    for setting in args.path:
        _set_path(state, setting)
    page = with_client(state, args, lambda c: c.devices(args.page_size, args.page_token))
    if args.json:
        print_json({"items": list(page), "next_page_token": page.next_page_token})
        return
    if not page:
        print("no devices" + ("" if page.next_page_token else " (start some with: "
                              f"{state.home.hint('ndn-edge sim')})"), file=sys.stderr)
    else:
        print_devices(page)
    if page.next_page_token:
        print(f"more: {state.home.hint(f'ndn-edge devices --page-token {page.next_page_token}')}", file=sys.stderr)


def do_services(state: State, args: argparse.Namespace) -> None:
    """List the services of one device, or of every device, that this client may call."""
    async def collect(client: Client) -> list[dict[str, Any]]:
        if args.device is not None:
            from ndn_edge.wire.client_protocol import split_target

            try:
                full = "/" + "/".join((client.site, *split_target(args.device, client.site)))
            except ValueError:
                full = args.device  # the client raises InvalidArgument for it below
            return [{"device": full, "services": await client.services(args.device)}]
        from ndn_edge.errors import NotFound, PermissionDenied

        found = []
        async for device in client.iter_devices():
            try:
                found.append({"device": device["name"], "services": await client.services(device["name"])})
            except (NotFound, PermissionDenied):
                continue  # it left, or the rules changed, between the two requests
        return found

    rows = with_client(state, args, collect)
    if args.json:
        print_json(rows)
    elif not any(row["services"] for row in rows):
        print("no services", file=sys.stderr)
    else:
        print_services(rows)


def do_call(state: State, args: argparse.Namespace) -> int | None:
    """Call one service and print its value."""
    if getattr(args, "all", False) or getattr(args, "notify", False) or getattr(args, "start", False) \
            or getattr(args, "persist", False) or getattr(args, "ttl", None) is not None \
            or getattr(args, "wait", None) is not None:
        from ndn_edge.tools.cmd_patterns import do_call_pattern

        return do_call_pattern(state, args)
    check("call", "NAME", service_name, args.name)
    call_args = parse_args_json(args.args)
    if args.trace:
        return _call_traced(state, args, call_args)
    result = with_client(state, args, lambda c: c.call_ex(args.name, call_args))
    if args.json:
        print_json({"value": result.value, "cached": result.cached, "age_ms": result.age_ms,
                    "stale": result.stale})
        return None
    print(value_text(result.value))
    if result.stale:
        print(f"ndn-edge: call: warning: stale value, {result.age_ms} ms old (the device did not answer)",
              file=sys.stderr)
    return None


# How long `call --trace` waits for the device's log entries of the call (they come in a report after the reply).
TRACE_LOGS_WAIT_S = 1.0


def _call_traced(state: State, args: argparse.Namespace, call_args: dict[str, Any] | None) -> int | None:
    from ndn_edge.tools.cmd_logs import print_trace

    async def run(client: Client) -> Any:
        traced = await client.trace_call(args.name, call_args)
        # A handler that raised is logged by the device: wait a moment for that entry; others come if they are in.
        wait = TRACE_LOGS_WAIT_S if traced.error is not None and traced.error.code in DEVICE_CODES else 0.3
        entries = list(await client.logs(trace_id=traced.trace_id, wait=wait, limit=100))
        if entries:
            entries += await client.logs(trace_id=traced.trace_id, after=entries[-1]["id"], wait=0.2, limit=100)
        return traced, entries

    traced, entries = with_client(state, args, run)
    if args.json:
        print_json({"value": traced.result.value if traced.result else None,
                    "error": traced.error.to_wire() if traced.error else None, "trace_id": traced.trace_id,
                    "client": traced.client, "gateway": traced.gateway, "device_logs": entries})
    else:
        if traced.result is not None:
            print(value_text(traced.result.value))
        print_trace(traced, entries)
    if traced.error is not None:
        print(f"ndn-edge: call: {traced.error}", file=sys.stderr)
        return traced.error.exit_code
    return None


DEVICE_CODES = frozenset({"INTERNAL", "INVALID_ARGUMENT", "PERMISSION_DENIED", "NOT_FOUND", "RESOURCE_EXHAUSTED"})


# -- shared with `ndn-edge up`


def _set_path(state: State, setting: str) -> None:
    """`--path DEVICE=MODE`: written to the home's store, where the gateway reads it (ndn_edge.devices.paths)."""
    from ndn_edge.devices import paths
    from ndn_edge.errors import ConfigError
    from ndn_edge.tools.cmd_provision import device_name as full_name
    from ndn_edge.wire.protocol import DEFAULT_SITE

    device, _, mode = setting.partition("=")
    if mode not in paths.MODES:
        raise CommandError(f"devices: --path takes DEVICE=MODE with MODE one of {', '.join(paths.MODES)}, "
                           f"got {setting!r}", exit_code=2)
    try:
        site = state.home.read_gateway_record().site
    except ConfigError:
        site = DEFAULT_SITE
    try:
        name = full_name(device, site)
    except ValueError as err:
        raise CommandError(f"devices: --path {setting!r}: {err}", exit_code=2) from None
    if state.store.device(name) is None:
        raise CommandError(f"devices: --path: no device {name}; `ndn-edge devices` lists the known ones", exit_code=2)
    paths.set_mode(state.store, name, mode)
    print(f"devices: {name} is reached by {mode}" + (" (multicast, and unicast once multicast goes unanswered)"
                                                       if mode == paths.AUTO else ""), file=sys.stderr)


def print_devices(items: list[dict[str, Any]]) -> None:
    now = time.time()
    rows = []
    for item in items:
        services = item.get("services")
        if isinstance(services, list):
            summary = " ".join(s.get("name", "?") if isinstance(s, dict) else str(s) for s in services)
        else:
            summary = str(services) if services is not None else ""
        state = str(item.get("state", "?"))
        if state == "asleep" and item.get("sleep_until"):
            state = f"asleep until {time.strftime('%H:%M:%S', time.localtime(item['sleep_until']))}"
        if item.get("warning"):
            state += " (!)"
        path = str(item.get("path") or "-")
        if item.get("path_mode") not in (None, "auto"):
            path += " (set)"
        rows.append((str(item.get("name", "?")), state, ago(item.get("last_seen"), now), path, summary or "-"))
    print_table(("NAME", "STATE", "LAST SEEN", "PATH", "SERVICES"), rows)
    for item in items:
        if item.get("warning"):
            print(f"(!) {item.get('name', '?')}: {item['warning']}", file=sys.stderr)


def print_services(rows: list[dict[str, Any]]) -> None:
    table = []
    for row in rows:
        for svc in row["services"]:
            args = svc.get("args")
            arg_text = ", ".join(f"{k}: {_schema(v)}" for k, v in args.items()) if isinstance(args, dict) else "-"
            flags = []
            if svc.get("cache_ms"):
                flags.append(f"cache {svc['cache_ms']} ms")
            if svc.get("idempotent") is False:
                flags.append("not idempotent")
            if svc.get("private"):
                flags.append("private")
            table.append((str(row["device"]), str(svc.get("name", "?")), arg_text or "-", ", ".join(flags) or "-",
                          str(svc.get("doc") or "")))
    print_table(("DEVICE", "SERVICE", "ARGS", "NOTES", "DOC"), table)


def _schema(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("type", "any"))
    return str(value)
