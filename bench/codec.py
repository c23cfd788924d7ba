"""The CBOR codecs side by side on MicroPython: the runtime's own (device/cbor.py) and micropython-lib's cbor2
(python-ecosys/cbor2 in MicroPython's source), on the 32-bit unix port, both compiled with mpy-cross as a board
carries them.

    python -m bench codec [--source SRC] [--json FILE]

Per codec: heap after importing it; heap allocated and round trips per second over the values a call carries
(a float result, the benchmark's echo arguments, an error map, a mixed array); and correctness on the vectors of
tests/test_cbor.py (RFC 8949 Appendix A both ways, half and single floats, non-preferred forms decoded, malformed
items rejected). The runtime's codec is measured as the runtime uses it (encode into a preallocated buffer, decode
from a memoryview) and through dumps/loads, which is all cbor2 offers.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import cbor2

from bench.mpy import ROOT, compile_package

ROUNDS = 300
CBOR2_IN_SOURCE = ("lib", "micropython-lib", "python-ecosys", "cbor2", "cbor2")

SNIPPET = """
import gc, sys, time, micropython
gc.collect()
a = gc.mem_alloc()
%(import)s
gc.collect()
imported = gc.mem_alloc() - a
from device import cbor as ours
VALUES = [21.5, {"room": "kitchen", "level": 3, "on": True}, {"code": "NOT_FOUND", "message": "no service x"},
          [1, 2.5, None, b"\\x00\\xff", "text", -7]]
ENCODED = [memoryview(ours.dumps(v)) for v in VALUES]
BUF = bytearray(256)
def round_trip():
    for v, e in zip(VALUES, ENCODED):
        %(encode)s
        %(decode)s
round_trip()
before = micropython.mem_total()
for _ in range(%(rounds)d):
    round_trip()
per = (micropython.mem_total() - before) / (%(rounds)d * len(VALUES))
t = time.ticks_us()
for _ in range(%(rounds)d):
    round_trip()
rate = %(rounds)d * len(VALUES) * 1000000 / max(1, time.ticks_diff(time.ticks_us(), t))
print("FIGURES", imported, per, rate)
for line in sys.stdin:
    kind, hexed = line.split()
    data = bytes.fromhex(hexed) if hexed != "-" else b""
    try:
        if kind == "enc":
            out = %(dumps)s(ours.loads(data))
        else:
            out = ours.dumps(%(loads)s(data))
        print("OK", bytes(out).hex() or "-")
    except Exception as e:
        print("ERR", type(e).__name__)
"""

CODECS = {
    "device/cbor.py (encode into a buffer, decode a memoryview)": {
        "import": "from device import cbor as C", "encode": "C.encode(BUF, 0, v)", "decode": "C.loads(e)",
        "dumps": "C.dumps", "loads": "C.loads"},
    "device/cbor.py (dumps, loads)": {
        "import": "from device import cbor as C", "encode": "C.dumps(v)", "decode": "C.loads(e)",
        "dumps": "C.dumps", "loads": "C.loads"},
    "micropython-lib cbor2 (dumps, loads)": {
        "import": "import cbor2 as C", "encode": "C.dumps(v)", "decode": "C.loads(e)", "dumps": "C.dumps",
        "loads": "C.loads"},
}


def vectors() -> tuple[list[tuple[str, str, object]], list[str]]:
    """(kind, hex, expected) to check and the malformed items, from tests/test_cbor.py."""
    sys.path.insert(0, str(ROOT))
    from tests import test_cbor as t
    checks = [("enc", h, v) for h, v in t.RFC_BOTH] + [("dec", h, v) for h, v in t.RFC_BOTH]
    checks += [("dec", h, v) for h, v in t.RFC_DECODE_FLOATS + t.NON_PREFERRED]
    return checks, list(t.MALFORMED.values())


def canon(v):
    """tests/test_cbor.py's type-strict form, with map entries in a fixed order (MicroPython's dicts keep none)."""
    from tests.test_cbor import norm
    if isinstance(v, dict):
        return ("map", sorted(((canon(k), canon(x)) for k, x in v.items()), key=repr))
    if isinstance(v, (list, tuple)):
        return ("list", [canon(x) for x in v])
    return norm(v)


def run_codec(micropython: str, path: str, codec: dict, checks, malformed) -> dict:
    script = SNIPPET % {**codec, "rounds": ROUNDS}
    lines = [f"{kind} {h or '-'}" for kind, h, _ in checks] + [f"dec {h or '-'}" for h in malformed]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "codec.py").write_text(script)
        done = subprocess.run([micropython, "-X", "heapsize=1M", "codec.py"], input="\n".join(lines) + "\n",
                              capture_output=True, text=True, timeout=120, cwd=tmp,
                              env=dict(os.environ, MICROPYPATH=path))
    out = done.stdout.splitlines()
    if not out or not out[0].startswith("FIGURES"):
        return {"error": (done.stdout + done.stderr).strip()[-300:]}
    _, imported, per, rate = out[0].split()
    answers = out[1:]
    wrong = []
    for (kind, h, want), answer in zip(checks, answers):
        status, _, got = answer.partition(" ")
        if status != "OK":
            wrong.append(f"{kind} {h}: {got}")
            continue
        decoded = canon(cbor2.loads(bytes.fromhex(got if got != "-" else "")))
        ok = decoded == canon(want) and (kind == "dec" or len(got) == len(h))  # encodings: same size too
        if not ok:
            wrong.append(f"{kind} {h}: got {got}")
    accepted = [h for h, answer in zip(malformed, answers[len(checks):]) if not answer.startswith("ERR")]
    return {"import_heap_bytes": int(imported), "alloc_per_round_trip_bytes": round(float(per), 1),
            "round_trips_per_s": round(float(rate)), "vectors": len(checks), "wrong": wrong,
            "malformed": len(malformed), "malformed_accepted": accepted}


def main(argv: list[str]) -> int:
    import argparse

    from bench.device import Options, find_source
    from ndn_edge.tools import micropython as mp
    p = argparse.ArgumentParser(prog="python -m bench codec", description=__doc__.split("\n\n")[0])
    p.add_argument("--source", metavar="SRC", help="MicroPython's source (default: ../shared/micropython/)")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    source = find_source(Options(source=args.source))
    micropython = str(mp.build_unix(source, bits=32, frozen=False))
    tree = mp.source_tree(source)
    checks, malformed = vectors()
    with tempfile.TemporaryDirectory() as tmp:
        lib = Path(tmp) / "lib"
        mpy_cross = mp.require("mpy-cross", "bench codec")
        compile_package(mpy_cross, ROOT / "device", lib)
        for other in (lib / "device").glob("*.mpy"):  # the codec alone: device/__init__ would import the runtime
            if other.stem not in ("cbor", "errors"):
                other.unlink()
        (lib / "device" / "__init__.py").write_text("")
        compile_package(mpy_cross, tree.joinpath(*CBOR2_IN_SOURCE), lib)
        report = {"benchmark": "codec", "micropython": micropython, "rounds": ROUNDS,
                  "codecs": {name: run_codec(micropython, f"{lib}:.frozen", codec, checks, malformed)
                             for name, codec in CODECS.items()}}
    print(json.dumps(report, indent=2))
    print()
    rows = [("codec", "import heap, B", "alloc per round trip, B", "round trips/s", "vectors wrong",
             "rejected by the runtime, accepted")]
    for name, r in report["codecs"].items():
        if "error" in r:
            rows.append((name, "error: " + r["error"][:60], "", "", "", ""))
            continue
        rows.append((name, f"{r['import_heap_bytes']:,}", f"{r['alloc_per_round_trip_bytes']:,.0f}",
                     f"{r['round_trips_per_s']:,}", f"{len(r['wrong'])}/{r['vectors']}",
                     f"{len(r['malformed_accepted'])}/{r['malformed']}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0
