"""The device benchmark: ndn-edge (frozen into the firmware and as .mpy files), Microdot and a bare asyncio UDP
echo side by side on MicroPython, on the 32-bit unix port (the word size of ESP32 and RP2040 boards, where the
targets are measured) and on the 64-bit one for comparison, all four interpreters built from one source.

For each subject, in one run (see bench/README.md for the method):
- throughput and heap allocated per call, from one app started with a generous heap;
- the smallest heap that serves N calls correctly, by bisection over app restarts;
- the heap its code holds once imported (per module for the runtime) and its mpy-cross compiled size.
"""
from __future__ import annotations

import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.calls import BadReply, StartFailed, plan
from bench.echo_client import EchoClient
from bench.http_client import HttpClient
from bench.mpy import ROOT, Env, ToolMissing
from bench.ndn_client import NdnClient

WARMUP_CALLS = 30
ROUNDS = 3  # timed runs per subject; the median is reported
MICRODOT_CORE = ("__init__.mpy", "microdot.mpy")  # what `from microdot import Microdot` loads


@dataclass
class Options:
    calls: int = 1000
    min_heap_kib: int = 8
    max_heap_kib: int = 128
    measure_heap_kib: int = 128
    ready_s: float = 3.0  # per start-up attempt
    call_timeout_s: float = 1.0  # per call
    run_s: float = 20.0  # per run of N calls
    budget_s: float = 480.0  # all heap searches together
    source: str | None = None  # MicroPython's source (archive or checkout) for the builds; None: ../shared/micropython
    words: tuple[int, ...] = (32, 64)  # word sizes to measure; the targets are the 32-bit figures


@dataclass
class Served:
    calls: int
    answered: int
    elapsed_s: float
    error: str | None


def log(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def serve(client, n: int, opts: Options) -> Served:
    """n calls one at a time, timed; then the replies are checked and the app must still be alive."""
    services = plan(n)
    requests = client.prepare(services)
    replies, error = [], None
    start = time.perf_counter()
    for request in requests:
        try:
            reply = client.exchange(request, opts.call_timeout_s)
        except OSError as err:
            reply, error = None, f"call {len(replies) + 1}: {err}"
        if reply is None:
            error = error or f"no reply to call {len(replies) + 1} within {opts.call_timeout_s:g} s"
            break
        replies.append(reply)
        if time.perf_counter() - start > opts.run_s:
            error = f"{len(replies)} calls took over {opts.run_s:g} s"
            break
    elapsed = time.perf_counter() - start
    if error is None:
        try:
            client.check(services, requests, replies)
        except BadReply as err:
            error = str(err)
    if error is not None or not client.app.alive():
        error = f"{error or 'app died'} ({client.app.failure()})"
    return Served(n, len(replies), elapsed, error)


def measure(env: Env, cls, opts: Options, label: str) -> dict:
    """Calls per second and heap allocated per call with opts.measure_heap_kib of heap: the median of
    ROUNDS runs of opts.calls calls in one app, after a warm-up."""
    log(f"{label}: {ROUNDS} x {opts.calls} calls with a {opts.measure_heap_kib} KiB heap")
    try:
        with cls.start(env, opts.measure_heap_kib, opts.ready_s) as client:
            warm = serve(client, WARMUP_CALLS, opts)
            if warm.error:
                return {"error": f"warm-up: {warm.error}"}
            readings = [client.memtotal() for _ in range(4)]
            memtotal_call = min(b - a for a, b in itertools.pairwise(readings))
            rounds = [timed_round(client, opts, memtotal_call) for _ in range(ROUNDS)]
            info = client.info()
    except (StartFailed, BadReply, OSError) as err:
        return {"error": str(err)}
    rates, allocs = zip(*rounds)
    return {"calls_per_s": round(statistics.median(rates), 1),
            "alloc_per_call_bytes": round(statistics.median(allocs), 1),
            "calls_per_s_rounds": [round(r, 1) for r in rates],
            "alloc_per_call_rounds": [round(a, 1) for a in allocs],
            "memtotal_call_bytes": memtotal_call, **info}


def timed_round(client, opts: Options, memtotal_call: int) -> tuple[float, float]:
    """(calls per second, bytes allocated per call) of one run of opts.calls calls.

    Between the two memtotal readings lie the N calls and exactly one whole memtotal call
    (the rest of the first, the start of the second), whose cost is taken off."""
    before = client.memtotal()
    run = serve(client, opts.calls, opts)
    after = client.memtotal()
    if run.error:
        raise BadReply(run.error)
    return run.calls / run.elapsed_s, (after - before - memtotal_call) / run.calls


def probe(env: Env, cls, heap_kib: int, opts: Options, label: str) -> dict:
    """Does the app start with heap_kib KiB and serve opts.calls calls correctly?"""
    began = time.perf_counter()
    try:
        with cls.start(env, heap_kib, opts.ready_s) as client:
            why = serve(client, opts.calls, opts).error
    except (StartFailed, OSError) as err:
        why = f"start: {err}"
    result = {"heap_kib": heap_kib, "ok": why is None, "seconds": round(time.perf_counter() - began, 2)}
    if why:
        result["why"] = why[:300]
    log(f"{label}: heap {heap_kib} KiB {'serves' if why is None else 'fails: ' + why[:120]}")
    return result


def search_heap(env: Env, cls, opts: Options, deadline: float, label: str) -> dict:
    """Smallest heap (1 KiB steps) in [min_heap_kib, max_heap_kib] that serves, by bisection.

    `exact` is False when the deadline cut the search short; min_heap_kib is then an upper bound.
    """
    probes = []

    def serves(heap_kib: int) -> bool:
        probes.append(probe(env, cls, heap_kib, opts, label))
        return probes[-1]["ok"]

    failing, passing = opts.min_heap_kib - 1, opts.max_heap_kib
    if not serves(passing):
        return {"min_heap_kib": None, "min_heap_exact": False, "heap_probes": probes}
    while passing - failing > 1 and time.monotonic() < deadline:
        mid = (failing + passing) // 2
        if serves(mid):
            passing = mid
        else:
            failing = mid
    return {"min_heap_kib": passing, "min_heap_exact": passing - failing <= 1, "heap_probes": probes}


# The subjects of one word size: (label, client, which interpreter: the stock one or the one with the runtime
# frozen in). The anchors run on the stock interpreter; both ndn-edge installations are measured.
FROZEN, MPY = "ndn-edge frozen", "ndn-edge .mpy"
SUBJECTS = ((FROZEN, NdnClient, "frozen"), (MPY, NdnClient, "stock"), (HttpClient.label, HttpClient, "stock"),
            (EchoClient.label, EchoClient, "stock"))

# What each subject's app imports before serving (the echo anchor's asyncio is frozen into the interpreter).
IMPORTS = {FROZEN: (NdnClient.lib, "from device import Device"), MPY: (NdnClient.lib, "from device import Device"),
           HttpClient.label: (HttpClient.lib, "from microdot import Microdot"),
           EchoClient.label: (None, "import asyncio, socket")}
# The runtime's modules in the order `from device import Device` loads them (package __init__ last).
RUNTIME_IMPORT_ORDER = ("errors", "port", "cbor", "tlv", "sign", "net", "replay", "runtime")


def code_size(env: Env, label: str) -> dict:
    if label in (FROZEN, MPY):
        ndn = env.sizes["ndn"]
        return {"mpy_bytes": sum(ndn.values()), "mpy_files": ndn}
    if label == HttpClient.label:
        microdot = env.sizes["microdot"]
        return {"mpy_bytes": sum(microdot[f] for f in MICRODOT_CORE),
                "mpy_files": {f: microdot[f] for f in MICRODOT_CORE}, "mpy_package_bytes": sum(microdot.values())}
    return {"mpy_bytes": None}


def import_heap(env: Env, lib_key: str | None, statement: str) -> int | None:
    """Bytes of heap still in use after `statement` (with a collection before and after): on the unix port
    imported .mpy code sits in the heap, so this is how much of the smallest heap is code; frozen code does not."""
    code = f"import gc\ngc.collect()\na = gc.mem_alloc()\n{statement}\ngc.collect()\nprint(gc.mem_alloc() - a)"
    done = subprocess.run([env.micropython, "-X", "heapsize=1M", "-c", code], capture_output=True, text=True,
                          timeout=30, env=dict(os.environ, MICROPYPATH=env.path(lib_key)), cwd=env.scratch)
    try:
        return int(done.stdout.strip())
    except ValueError:
        return None


def module_heaps(env: Env) -> dict[str, int]:
    """Heap each runtime module keeps once imported from .mpy, in import order (an empty package __init__
    stands in for the real one, which imports them all at once)."""
    import shutil
    lib = env.scratch / "lib-modules"
    pkg = lib / "device"
    pkg.mkdir(parents=True, exist_ok=True)
    for mpy in (env.libs["ndn"] / "device").glob("*.mpy"):
        if mpy.name != "__init__.mpy":
            shutil.copy(mpy, pkg / mpy.name)
    (pkg / "__init__.py").write_text("")
    code = (f"import gc\nimport device\nfor m in {RUNTIME_IMPORT_ORDER!r}:\n gc.collect()\n a = gc.mem_alloc()\n"
            " __import__('device.' + m)\n gc.collect()\n print(m, gc.mem_alloc() - a)")
    done = subprocess.run([env.micropython, "-X", "heapsize=1M", "-c", code], capture_output=True, text=True,
                          timeout=30, env=dict(os.environ, MICROPYPATH=f"{lib}:.frozen"), cwd=env.scratch)
    out = {}
    for line in done.stdout.splitlines():
        name, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            out[name] = int(value)
    return out


def find_source(opts: Options) -> Path:
    """MicroPython's source for the builds: opts.source, else the one archive in ../shared/micropython/."""
    if opts.source:
        return Path(opts.source)
    found = sorted((ROOT.parent / "shared" / "micropython").glob("micropython-*.tar.gz"))
    if len(found) != 1:
        raise ToolMissing("bench: MicroPython's source is needed to build the interpreters the device targets are "
                          "measured on; pass --source ARCHIVE_OR_CHECKOUT (found "
                          f"{len(found)} archives in {ROOT.parent / 'shared' / 'micropython'})")
    return found[0]


def interpreters(opts: Options) -> dict[int, dict[str, str]]:
    """Per word size, the stock unix port and the one with the runtime frozen in, built from one source
    (ndn_edge.tools.micropython.build_unix: cached, so only the first run or a changed runtime builds)."""
    from ndn_edge.tools import micropython as mp
    source = find_source(opts)
    out: dict[int, dict[str, str]] = {}
    for bits in opts.words:
        out[bits] = {}
        for kind in ("stock", "frozen"):
            out[bits][kind] = str(mp.build_unix(source, bits=bits, frozen=kind == "frozen", log=log))
    return out


def build_env(scratch: Path, micropython: str, frozen: bool) -> Env:
    import microdot
    env = Env(scratch, micropython)
    env.add_lib("ndn", ROOT / "device")
    env.add_lib("microdot", Path(microdot.__file__).resolve().parent)
    if frozen:
        env.use_frozen("ndn", "device")
    return env


def run_word(bits: int, builds: dict[str, str], scratch: Path, opts: Options, deadline: float) -> dict:
    """Every subject on the `bits`-bit interpreters."""
    envs = {kind: build_env(scratch / f"{bits}-{kind}", builds[kind], kind == "frozen") for kind in builds}
    subjects: dict[str, dict] = {}
    for label, _, kind in SUBJECTS:
        env = envs[kind]
        lib_key, statement = IMPORTS[label]
        subjects[label] = {**code_size(env, label), "import_heap_bytes": import_heap(env, lib_key, statement)}
    for label, cls, kind in SUBJECTS:
        subjects[label].update(measure(envs[kind], cls, opts, f"{label} {bits}-bit"))
    for i, (label, cls, kind) in enumerate(SUBJECTS):
        left = max(0.0, deadline - time.monotonic())
        until = time.monotonic() + left / (len(SUBJECTS) - i)
        subjects[label].update(search_heap(envs[kind], cls, opts, until, f"{label} {bits}-bit"))
    return {"micropython": {kind: envs[kind].version for kind in envs}, "subjects": subjects,
            "module_heap_bytes": module_heaps(envs["stock"])}


def run(opts: Options) -> dict:
    """The whole benchmark; returns the report (see bench.report for targets and the table)."""
    began = time.monotonic()
    builds = interpreters(opts)
    words: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="ndn-edge-bench-") as scratch:
        for i, bits in enumerate(opts.words):
            left = opts.budget_s - (time.monotonic() - began)
            deadline = time.monotonic() + left / (len(opts.words) - i)
            words[str(bits)] = run_word(bits, builds[bits], Path(scratch), opts, deadline)
    return {"benchmark": "device", "calls": opts.calls, "measure_heap_kib": opts.measure_heap_kib,
            "heap_search_kib": [opts.min_heap_kib, opts.max_heap_kib], "interpreters": builds,
            "seconds": round(time.monotonic() - began, 1), "words": words}
