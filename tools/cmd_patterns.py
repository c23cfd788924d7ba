"""The communication models on the command line (docs/models.md): `ndn-edge ops`, `ndn-edge sub`, and the
`call` variants `--all` (scatter/gather), `--notify`, `--start` (long-running) and `--persist` (queued).

Same conventions as `ndn_edge.tools.cmd_client` (whose client options these commands share): one client identity
(`--as`), the home's gateway, `--json` for scripts, one line on stderr and an error's exit code on failure.
`ndn-edge sub --json` prints one JSON object per line (JSON Lines), flushed as each message arrives, so another
program can read it as a stream.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from ndn_edge.tools.argtypes import checked
from ndn_edge.tools.cmd_client import client_options
from ndn_edge.tools.errors import EXIT_NO_MATCH, EXIT_USAGE, CommandError
from ndn_edge.tools.output import jsonable, print_json, print_table, value_text
from ndn_edge.tools.session import (
    DEFAULT_TIMEOUT_S,
    check,
    gather_pattern,
    parse_args_json,
    service_name,
    topic_pattern,
    with_client,
)

if TYPE_CHECKING:
    from ndn_edge.client.api import Client
    from ndn_edge.tools.cli import State


# -- argument builders


def args_ops(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("op", metavar="ID", nargs="?", default=None,
                        help="one operation to show (default: list them, newest first)")
    parser.add_argument("--wait", metavar="S", type=float, default=None,
                        help="with ID: wait up to S seconds for it to finish, then print its result")
    parser.add_argument("--cancel", action="store_true", help="with ID: cancel it")
    parser.add_argument("--page-size", metavar="N", type=int, default=50, help="operations per page (default 50)")
    parser.add_argument("--page-token", metavar="T", default=None, help="the next_page_token of a previous page")
    client_options(parser)
    parser.description = ("list the operations the gateway keeps (long-running operations and queued calls), or "
                          "show, wait for or cancel one")


def args_sub(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", metavar="PATTERN", type=checked(topic_pattern),
                        help="topics under the site, access-rule syntax: 'sim/*/tick', 'sim/**', '_members/**'")
    parser.add_argument("--durable", metavar="NAME", default=None,
                        help="a durable subscription: kept by the gateway while this command is not running; "
                             "messages missed meanwhile come first")
    parser.add_argument("--count", metavar="N", type=int, default=None, help="stop after N messages")
    parser.add_argument("--unsubscribe", action="store_true",
                        help="delete the durable subscription NAME (and the messages it holds), then exit")
    client_options(parser)
    parser.set_defaults(timeout=None)  # no deadline unless asked: a subscription waits as long as it takes
    parser.description = ("print messages published on topics matching PATTERN as they come (retained values "
                          "first); Ctrl-C stops, or --timeout S: at most S seconds without a message (then exit "
                          "status 7 if none came at all). --json prints one JSON object per line")


def add_call_pattern_args(parser: argparse.ArgumentParser) -> None:
    """The `call` options of the communication models (added to `ndn-edge call`)."""
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--all", action="store_true",
                     help="NAME is a pattern (e.g. 'sim/*/temperature'): call every matching device at once and "
                          "print each one's answer by the deadline (--timeout); no matching device is exit status "
                          f"{EXIT_NO_MATCH}")
    how.add_argument("--notify", action="store_true", help="send a notification: at most once, no reply")
    how.add_argument("--start", action="store_true",
                     help="start a long-running service; prints the operation (see `ndn-edge ops`)")
    how.add_argument("--persist", action="store_true",
                     help="queue the call in the gateway until the device is online (e.g. awake); prints the "
                          "operation")
    parser.add_argument("--ttl", metavar="S", type=float, default=None,
                        help="with --persist: give up after S seconds (default 300)")
    parser.add_argument("--wait", metavar="S", type=float, default=None,
                        help="with --start or --persist: wait up to S seconds for the result and print it")


# -- handlers


def do_ops(state: State, args: argparse.Namespace) -> int | None:
    """List operations, or show, wait for or cancel one."""
    if args.op is None:
        if args.wait is not None or args.cancel:
            raise CommandError("ops: --wait and --cancel need an operation ID", exit_code=EXIT_USAGE)
        page = with_client(state, args, lambda c: c.ops(args.page_size, args.page_token))
        if args.json:
            print_json({"items": list(page), "next_page_token": page.next_page_token})
            return None
        if not page:
            print("no operations", file=sys.stderr)
        else:
            print_ops(page)
        if page.next_page_token:
            print(f"more: {state.home.hint(f'ndn-edge ops --page-token {page.next_page_token}')}", file=sys.stderr)
        return None

    async def one(client: Client) -> Any:
        op = await client.operation(args.op)
        if args.cancel:
            await op.cancel()
        if args.wait is not None:
            await op.wait(args.wait)
        return op
    op = with_client(state, args, one)
    return _print_op(op.info, args.json, waited=args.wait is not None)


def do_sub(state: State, args: argparse.Namespace) -> None:
    """Print messages as they come."""
    if args.count is not None and args.count < 1:
        raise CommandError("sub: --count must be at least 1", exit_code=EXIT_USAGE)
    if args.unsubscribe:
        if args.durable is None:
            raise CommandError("sub: --unsubscribe needs --durable NAME", exit_code=EXIT_USAGE)
        with_client(state, args, lambda c: c.subscribe(args.pattern, durable=args.durable).unsubscribe())
        return

    # --timeout is the longest wait without a message; the requests to the gateway (subscribing, unsubscribing)
    # keep the default deadline: under load a subscribe answered in 1.2 s must not fail a `--timeout 1`.
    idle_s, args.timeout = args.timeout, DEFAULT_TIMEOUT_S

    async def run(client: Client) -> None:
        from ndn_edge.errors import DeadlineExceeded

        seen = 0
        async with client.subscribe(args.pattern, durable=args.durable) as sub:
            if not args.json and sub.created is False:
                print(f"# attached to durable subscription {args.durable!r}", file=sys.stderr, flush=True)
            if not args.json and sub.devices == 0:
                print(f"# no device the gateway knows publishes on {args.pattern!r} (yet): waiting for one; "
                      f"see {state.home.hint('ndn-edge devices')}", file=sys.stderr, flush=True)
            while args.count is None or seen < args.count:
                msg = await sub.next(idle_s)
                if msg is None:
                    if seen:
                        return
                    raise DeadlineExceeded(f"no message on {args.pattern!r} within {idle_s:g} s")
                print_message(msg, args.json)
                seen += 1

    with_client(state, args, run)


def do_call_pattern(state: State, args: argparse.Namespace) -> int | None:
    """`call` with --all, --notify, --start or --persist."""
    if getattr(args, "trace", False):
        raise CommandError("call: --trace goes with a plain call (not --all, --notify, --start or --persist)",
                           exit_code=EXIT_USAGE)
    if args.all:
        check("call", "NAME", gather_pattern, args.name)
    else:
        check("call", "NAME", service_name, args.name)
    call_args = parse_args_json(args.args)
    if args.ttl is not None and not args.persist:
        raise CommandError("call: --ttl goes with --persist", exit_code=EXIT_USAGE)
    if args.wait is not None and not (args.start or args.persist):
        raise CommandError("call: --wait goes with --start or --persist", exit_code=EXIT_USAGE)
    if args.all:
        results = with_client(state, args, lambda c: c.gather(args.name, call_args, deadline=args.timeout))
        return _print_gather(results, args.json, state.home.hint("ndn-edge devices"))
    if args.notify:
        with_client(state, args, lambda c: c.notify(args.name, call_args))
        if args.json:
            print_json({"sent": True})
        else:
            print("sent (a notification: no reply, at most once)")
        return None

    async def op(client: Client) -> Any:
        if args.start:
            handle = await client.start(args.name, call_args)
        else:
            handle = await client.call(args.name, call_args, persist=True, ttl=args.ttl)
        if args.wait is not None:
            await handle.wait(args.wait)
        return handle
    handle = with_client(state, args, op)
    return _print_op(handle.info, args.json, waited=args.wait is not None)


# -- output (shared with `ndn-edge up`'s tour)


def print_ops(items: list[dict[str, Any]]) -> None:
    rows = []
    for item in items:
        progress = item.get("progress")
        rows.append((str(item.get("op")), str(item.get("target")), _state_text(item),
                     f"{progress * 100:.0f}%" if isinstance(progress, (int, float)) else "-",
                     str(item.get("client")), time.strftime("%H:%M:%S", time.localtime(item.get("created") or 0)),
                     _outcome_text(item)))
    print_table(("OP", "TARGET", "STATE", "PROGRESS", "CLIENT", "CREATED", "RESULT"), rows)


def print_message(msg: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(msg.as_dict(), default=jsonable), flush=True)
        return
    flags = []
    if msg.retained:
        flags.append("retained")
    if msg.gap:
        flags.append(f"gap {msg.gap}")
    if msg.late:
        flags.append("late")
    stamp = time.strftime("%H:%M:%S", time.localtime(msg.time)) + f".{int(msg.time % 1 * 1000):03d}"
    print(f"{stamp}  {msg.topic}  {value_text(msg.value)}  [seq {msg.seq}" + "".join(f", {f}" for f in flags) + "]",
          flush=True)


def print_gather(results: dict[str, Any]) -> None:
    rows = []
    for device, outcome in results.items():
        if outcome.ok:
            where = " (cached)" if outcome.cached else ""
            rows.append((device, value_text(outcome.value) + where))
        else:
            rows.append((device, f"{outcome.error.code}: {outcome.error.message}"))
    print_table(("DEVICE", "RESULT"), rows)


def _print_gather(results: dict[str, Any], as_json: bool, devices_hint: str) -> int | None:
    if as_json:
        print_json({d: ({"value": o.value, "cached": o.cached, "age_ms": o.age_ms, "stale": o.stale} if o.ok
                         else {"error": o.error.to_wire()}) for d, o in results.items()})
    elif results:
        print_gather(results)
    if not results:  # the script asked for answers and got none: not a success
        print("ndn-edge: call: no matching device offers that service (or this client may call none of them); "
              f"see what it may call with: {devices_hint}", file=sys.stderr)
        return EXIT_NO_MATCH
    failed = [o for o in results.values() if not o.ok]
    return failed[0].error.exit_code if failed else None


def _print_op(info: dict[str, Any], as_json: bool, *, waited: bool) -> int | None:
    if as_json:
        print_json(info)
    elif waited and info.get("state") == "done":
        print(value_text(info.get("result")))
    else:
        print_ops([info])
    if info.get("state") == "failed" and isinstance(info.get("error"), dict):
        from ndn_edge.errors import CallError

        err = CallError.from_wire(info["error"].get("code"), info["error"].get("message", ""))
        if waited and not as_json:
            print(f"ndn-edge: {err}", file=sys.stderr)
        return err.exit_code
    if waited and info.get("state") not in ("done", "failed", "cancelled"):
        return 7  # DEADLINE_EXCEEDED: still running
    return None


def _state_text(item: dict[str, Any]) -> str:
    state = str(item.get("state"))
    if state == "queued" and item.get("expires"):
        return f"queued until {time.strftime('%H:%M:%S', time.localtime(item['expires']))}"
    return state


def _outcome_text(item: dict[str, Any]) -> str:
    if item.get("state") == "done":
        text = value_text(item.get("result"))
        return text if len(text) <= 40 else text[:37] + "..."
    err = item.get("error")
    if isinstance(err, dict):
        return f"{err.get('code')}: {err.get('message')}"[:60]
    return str(item.get("note") or "")
