"""`python -m bench device|gateway|pubsub|http|federation [--json FILE] ...`: run a benchmark, print its JSON
report and a table."""
from __future__ import annotations

import argparse
import sys

from bench import device, report
from bench.mpy import BuildFailed, ToolMissing
from ndn_edge.tools.errors import ToolsError


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = p.add_subparsers(dest="benchmark", required=True)
    d = sub.add_parser("device", help="ndn-edge vs Microdot vs a bare UDP echo on MicroPython")
    defaults = device.Options()
    d.add_argument("--calls", type=positive, default=defaults.calls, help="calls per run (default %(default)s)")
    d.add_argument("--json", metavar="FILE", help="also write the JSON report to FILE")
    d.add_argument("--heap-range", type=positive, nargs=2, metavar=("LO", "HI"),
                   default=[defaults.min_heap_kib, defaults.max_heap_kib],
                   help=f"heap search range in KiB (default {defaults.min_heap_kib} {defaults.max_heap_kib})")
    d.add_argument("--measure-heap", type=positive, default=defaults.measure_heap_kib, metavar="KIB",
                   help="heap for throughput and allocation (default %(default)s)")
    d.add_argument("--source", metavar="SRC",
                   help="MicroPython's source (a checkout or its .tar.gz) to build the interpreters from "
                        "(default: the archive in ../shared/micropython/)")
    d.add_argument("--words", default="32,64", metavar="BITS",
                   help="word sizes to measure, comma-separated (default 32,64; the targets are the 32-bit figures)")
    d.add_argument("--budget", type=float, default=defaults.budget_s, metavar="S",
                   help="seconds for all heap searches together (default %(default)s)")
    g = sub.add_parser("gateway", help="the gateway (cached and uncached calls, discovery, memory) vs aiocoap")
    gd = _gateway_options()
    g.add_argument("--json", metavar="FILE", help="also write the JSON report to FILE")
    g.add_argument("--seconds", type=positive_float, default=gd.seconds,
                   help="length of each timed run (default %(default)s)")
    g.add_argument("--rounds", type=positive, default=gd.rounds,
                   help="timed runs per subject and in-flight level (default %(default)s)")
    g.add_argument("--discovery-devices", type=positive, default=gd.discovery_devices, metavar="N",
                   help="simulated MicroPython devices to discover (default %(default)s)")
    g.add_argument("--discovery-tick", type=nonnegative_float, default=gd.discovery_tick_s, metavar="S",
                   help="in the discovery part, each device publishes topic `tick` every S seconds; 0 never "
                        "(default %(default)s: every device hears every other's traffic, N*N receptions)")
    g.add_argument("--memory-devices", type=positive, default=gd.memory_devices, metavar="N",
                   help="devices provisioned and announced for the memory figure (default %(default)s)")
    g.add_argument("--heap", default=gd.heap, help="MicroPython heap per simulated device (default %(default)s)")
    g.add_argument("--parts", default=",".join(gd.parts),
                   help="which parts, comma-separated: calls, discovery, memory, path (default all)")
    return p.parse_args(argv)


def nonnegative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _gateway_options():
    from bench.gateway import Options

    return Options()


def main_gateway(args: argparse.Namespace) -> dict:
    from bench import gateway, gateway_report

    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    unknown = set(parts) - set(gateway.PARTS)
    if unknown:
        raise SystemExit(f"bench: unknown part(s) {', '.join(sorted(unknown))}; the parts are "
                         f"{', '.join(gateway.PARTS)}")
    opts = gateway.Options(seconds=args.seconds, rounds=args.rounds, discovery_devices=args.discovery_devices,
                           discovery_tick_s=args.discovery_tick,
                           memory_devices=args.memory_devices, heap=args.heap, parts=parts)
    return gateway_report.add_targets(gateway.run(opts))


def main(argv: list[str]) -> int:
    if argv[:1] == ["codec"]:  # the runtime's CBOR codec against micropython-lib's cbor2 (bench/codec.py)
        from bench import codec

        return codec.main(argv[1:])
    if argv[:1] == ["pubsub"]:  # pub/sub fan-out: its own options (bench/pubsub.py)
        from bench import pubsub

        return pubsub.main(argv[1:])
    if argv[:1] == ["federation"]:  # calls through another gateway, fan-out across three (bench/federation.py)
        from bench import federation

        return federation.main(argv[1:])
    if argv[:1] == ["http"]:  # the HTTP API beside the Python client and aiocoap (bench/http.py)
        from bench import http

        return http.main(argv[1:])
    args = parse_args(argv)
    try:
        if args.benchmark == "gateway":
            from bench import gateway_report as table_of

            result = main_gateway(args)
        else:
            table_of = report
            lo, hi = args.heap_range
            words = tuple(int(w) for w in args.words.split(",") if w.strip())
            if not words or set(words) - {32, 64}:
                raise SystemExit(f"bench: --words takes 32 and/or 64, got {args.words!r}")
            opts = device.Options(calls=args.calls, min_heap_kib=lo, max_heap_kib=hi,
                                  measure_heap_kib=args.measure_heap, budget_s=args.budget, source=args.source,
                                  words=words)
            result = report.add_targets(device.run(opts))
    except (ToolMissing, BuildFailed, ToolsError) as err:
        print(f"bench: {err}", file=sys.stderr)
        return 2
    except ImportError as err:
        print(f"bench: {err}; install the bench extra (pip install -e '.[bench]')", file=sys.stderr)
        return 2
    report.emit(result, table_of.table(result), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
