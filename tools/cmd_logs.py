"""`ndn-edge logs [DEVICE|PATTERN] [-f] [--since WHEN] [--level LEVEL] [--trace ID] [--json]`: the devices' log
entries (`dev.log` on the board, and the error of every handler that raised), as the gateway stored them.

Prints the newest `--lines` entries (or all since `--since`), oldest first; `-f` then follows, printing each entry
as it arrives, until Ctrl-C. A line is `TIME  DEVICE  LEVEL  MESSAGE  [trace ID]`; where a device's numbering
skips (entries it dropped while it could not reach the gateway, or over the gateway's rate for it) a line says
how many are missing. `--json` prints one JSON object per line (JSON Lines), flushed as each arrives. Only the
devices the client's rules reach are shown (as in `ndn-edge devices`).

Also `ndn-edge call NAME --trace` (in cmd_client), which prints the device's entries of that one call.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from typing import TYPE_CHECKING, Any

from ndn_edge.tools.argtypes import bounded, checked
from ndn_edge.tools.cmd_client import client_options
from ndn_edge.tools.output import jsonable
from ndn_edge.tools.session import topic_pattern, with_client

if TYPE_CHECKING:
    from ndn_edge.client.api import Client
    from ndn_edge.tools.cli import State

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
FOLLOW_WAIT_S = 15.0
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def since_arg(text: str) -> float:
    """`--since`: a duration back from now (`90s`, `10m`, `2h`, `1d`) or a local time (`2024-05-01T12:00[:SS]`,
    `12:00[:SS]` today); seconds since the epoch."""
    m = _DURATION.fullmatch(text.strip())
    if m:
        return time.time() - float(m.group(1)) * _UNITS[m.group(2)]
    for fmt in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"):
        try:
            return time.mktime(time.strptime(text.strip(), fmt))
        except ValueError:
            continue
    for fmt in ("%H:%M:%S", "%H:%M"):
        try:
            t = time.strptime(text.strip(), fmt)
        except ValueError:
            continue
        today = time.localtime()
        return time.mktime((today.tm_year, today.tm_mon, today.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, 0, 0, -1))
    raise ValueError(f"--since must be a duration such as 10m, 2h, 1d or a time such as 12:30 or "
                     f"2024-05-01T12:30, got {text!r}")


def trace_arg(text: str) -> str:
    """A trace id: 32 hex digits (a whole `traceparent` is accepted too)."""
    value = text.strip().lower()
    if value.startswith("00-") and len(value) == 55:
        value = value[3:35]
    if len(value) != 32 or value.strip("0123456789abcdef"):
        raise ValueError(f"a trace id is 32 hex digits, got {text!r}")
    return value


def args_logs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", metavar="DEVICE", nargs="?", default=None, type=checked(topic_pattern),
                        help="a device (sim/1) or a pattern of devices (sim/*, kitchen/**); default: every device "
                             "this client may reach")
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing entries as they arrive (Ctrl-C)")
    parser.add_argument("--since", metavar="WHEN", type=checked(since_arg), default=None,
                        help="entries from then on: 10m, 2h, 1d, 12:30 or 2024-05-01T12:30 (default: the newest "
                             "--lines)")
    parser.add_argument("--level", choices=tuple(LEVELS), default=None,
                        help="only entries at this level or above")
    parser.add_argument("--trace", metavar="ID", type=checked(trace_arg), default=None,
                        help="only the entries of one call (its trace id, as `ndn-edge call --trace` prints it)")
    parser.add_argument("-n", "--lines", metavar="N", type=bounded(int, 1, 500, "--lines must be from 1 to 500"),
                        default=50, help="how many of the newest entries to print (default 50)")
    client_options(parser)
    parser.description = ("print the devices' log entries (dev.log on the board, and the error of every handler "
                          "that raised), oldest first; -f follows")


def do_logs(state: State, args: argparse.Namespace) -> None:
    """Print log entries; with -f, follow."""
    query: dict[str, Any] = {"level": LEVELS[args.level] if args.level else None, "trace_id": args.trace}

    async def run(client: Client) -> None:
        if args.since is not None:
            page = await client.logs(args.pattern, since=args.since, limit=500, **query)
            while True:
                print_entries(page, args.json)
                if len(page) < 500:
                    break
                page = await client.logs(args.pattern, after=page.next, since=args.since, limit=500,
                                         **query)
        else:
            page = await client.logs(args.pattern, tail=True, limit=args.lines, **query)
            print_entries(page, args.json)
        after = page.next
        while args.follow:
            page = await client.logs(args.pattern, after=after, wait=FOLLOW_WAIT_S, limit=500, **query)
            print_entries(page, args.json)
            after = page.next

    with_client(state, args, run)


def print_entries(entries: list[dict[str, Any]], as_json: bool) -> None:
    for entry in entries:
        if as_json:
            print(json.dumps(entry, default=jsonable), flush=True)
            continue
        if entry.get("gap"):
            print(f"{'':23}  {entry.get('device')}  ... {entry['gap']} entr{'y' if entry['gap'] == 1 else 'ies'} "
                  "missing (dropped by the device, or over the gateway's rate for it)")
        print(entry_text(entry), flush=True)


def entry_text(entry: dict[str, Any]) -> str:
    """One entry as a line: time, device, level, message, trace id."""
    at = entry.get("time")
    stamp = "-"
    if isinstance(at, (int, float)):
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) + f".{int(at % 1 * 1000):03d}"
    message = str(entry.get("message", "")).replace("\n", " ")
    trace = f"  [trace {entry['trace_id']}]" if entry.get("trace_id") else ""
    return f"{stamp}  {entry.get('device')}  {str(entry.get('level', '?')).upper():7}  {message}{trace}"


def print_trace(traced: Any, entries: list[dict[str, Any]], out: Any = None) -> None:
    """What `ndn-edge call --trace` prints after the value: the trace id, both timelines, the device's entries."""
    out = out or sys.stdout
    print(f"trace {traced.trace_id}", file=out)
    rows = [(ms, "client", what, detail) for ms, what, detail in traced.client]
    rows += [(ms, "gateway", what, detail) for ms, what, detail in traced.gateway]
    for ms, who, what, detail in rows:
        print(f"  {ms:10.3f} ms  {who:7}  {what:15} {detail}".rstrip(), file=out)
    print("  (client times from its first send; gateway times from when it started the call)", file=out)
    if entries:
        print("device log entries of this call:", file=out)
        for entry in entries:
            print("  " + entry_text(entry), file=out)
    else:
        print("no device log entries of this call", file=out)
