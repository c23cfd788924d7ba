"""`python -m bench device [--calls N] [--json FILE] ...`: run a benchmark, print its JSON report and a table."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench import device, report
from bench.mpy import BuildFailed, ToolMissing


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
    d.add_argument("--budget", type=float, default=defaults.budget_s, metavar="S",
                   help="seconds for all heap searches together (default %(default)s)")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    lo, hi = args.heap_range
    opts = device.Options(calls=args.calls, min_heap_kib=lo, max_heap_kib=hi,
                          measure_heap_kib=args.measure_heap, budget_s=args.budget)
    try:
        result = report.add_targets(device.run(opts))
    except (ToolMissing, BuildFailed) as err:
        print(f"bench: {err}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2)
    print(text)
    print()
    print(report.table(result))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
