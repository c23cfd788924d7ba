"""Targets from SPEC.md "Performance targets" (gateway) and the human-readable table of a gateway report.

The memory target has no number in SPEC.md ("small enough for 10,000 devices on a Raspberry Pi"); this benchmark
reads it as: the gateway's resident memory with 10,000 devices at most 128 MiB, a quarter of the RAM of the
smallest current Raspberry Pi that runs Raspberry Pi OS comfortably (Zero 2 W, 512 MB).
"""
from __future__ import annotations

from collections.abc import Callable

from bench.gateway import CACHED, COAP, ECHO, SUBJECTS, UNCACHED

PI_RSS_BUDGET_MIB = 128
DISCOVERY_BUDGET_S = 3.0


def _rate(report: dict, subject: str, inflight: int) -> float:
    return report["calls"]["subjects"][subject][str(inflight)]["calls_per_s"]


def _ratio(report: dict, subject: str, inflight: int, anchor: str = COAP) -> float:
    return round(_rate(report, subject, inflight) / _rate(report, anchor, inflight), 2)


# (key, title, target text, value(report), pass(value))
TARGETS: tuple[tuple[str, str, str, Callable[[dict], float], Callable[[float], bool]], ...] = (
    ("cached_64_vs_coap", "cached call, 64 in flight, x aiocoap NON GET", ">= 5x",
     lambda r: _ratio(r, CACHED, 64), lambda v: v >= 5),
    ("cached_64_vs_echo", "cached call, 64 in flight, x bare UDP echo", ">= 0.5x",
     lambda r: _ratio(r, CACHED, 64, ECHO), lambda v: v >= 0.5),
    ("uncached_1_vs_coap", "uncached call via device, 1 in flight, x aiocoap", ">= 1.2x",
     lambda r: _ratio(r, UNCACHED, 1), lambda v: v >= 1.2),
    ("uncached_64_vs_coap", "uncached call via device, 64 in flight, x aiocoap", ">= 2x",
     lambda r: _ratio(r, UNCACHED, 64), lambda v: v >= 2),
    ("discovery_listed_s", "200 devices listed online after gateway start, s", f"<= {DISCOVERY_BUDGET_S:g}",
     lambda r: r["discovery"]["listed_online_s"], lambda v: v <= DISCOVERY_BUDGET_S),
    ("rss_at_10000_devices_mib", "gateway RSS with 10,000 devices, MiB", f"<= {PI_RSS_BUDGET_MIB}",
     lambda r: r["memory"]["rss_at_10000_devices_mib"], lambda v: v <= PI_RSS_BUDGET_MIB),
)


def add_targets(report: dict) -> dict:
    """Adds report["targets"]: per target its value and pass (None: not measured, or the part failed)."""
    targets = []
    for key, _, target, value, passes in TARGETS:
        try:
            v = value(report)
            ok = None if v is None else passes(v)
        except (KeyError, TypeError, ZeroDivisionError):  # the part was skipped or failed
            v, ok = None, None
        targets.append({"metric": key, "target": target, "value": v, "pass": ok})
    report["targets"] = targets
    return report


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:,.{digits}f}"


def _cpu(per_role: dict) -> str:
    """"client 0.41, gateway 0.52, device 0.20"."""
    return ", ".join(f"{role} {ms:.2f}" for role, ms in per_role.items() if ms is not None)


def _columns(rows: list[tuple[str, ...]], numeric: range) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
             .rstrip() for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return lines


def table(report: dict) -> str:
    out: list[str] = []
    calls = report.get("calls", {})
    if "subjects" in calls:
        rows = [("subject", "in flight", "calls/s", "p50 ms", "p99 ms", "errors", "CPU ms per call")]
        for subject in SUBJECTS:
            for n in report["inflight"]:
                s = calls["subjects"][subject][str(n)]
                rows.append((subject, str(n), _fmt(s["calls_per_s"]), _fmt(s["p50_ms"], 2), _fmt(s["p99_ms"], 2),
                             str(s["errors"]), _cpu(s.get("cpu_ms_per_call") or {})))
        out += [*_columns(rows, range(1, 6)), ""]
    rows = [("target", "value", "target", "result")]
    for (key, title, target, _, _), verdict in zip(TARGETS, report["targets"]):
        result = {True: "PASS", False: "FAIL", None: "?"}[verdict["pass"]]
        value = verdict["value"]
        shown = "-" if value is None else (f"x{value:g}" if "_vs_" in key else f"{value:g}")
        rows.append((title, shown, target, result))
    out += _columns(rows, range(1, 2))
    return "\n".join(out + notes(report))


def notes(report: dict) -> list[str]:
    out = ["", f"{report['micropython']}; Python {report['python']}; aiocoap {report['aiocoap']}; "
               f"whole run {report['seconds']} s."]
    calls = report.get("calls", {})
    if "subjects" in calls:
        cached = calls["subjects"][CACHED]
        out.append(f"calls: {report['rounds']} rounds of {report['seconds_per_run']:g} s per subject and level "
                   f"(median rate; p50/p99 over all rounds); payload {calls['payload_bytes']} B both ways of "
                   f"comparison, {calls.get('echo_bytes', '?')} B echoed ({calls.get('echo_loop', '?')}); cache "
                   f"hits {cached.get('cache_hits', 0):,} of {cached.get('cache_lookups', 0):,} cached calls; "
                   f"aiocoap responses {', '.join(calls['subjects'][COAP].get('response_types', []))}.")
        for subject in SUBJECTS:
            for n in report["inflight"]:
                err = calls["subjects"][subject][str(n)].get("first_error")
                if err:
                    out.append(f"{subject}, {n} in flight: first error: {err}")
    d = report.get("discovery", {})
    if "listed_online_s" in d:
        out.append(f"discovery: {d['devices']} devices (heap {d['heap']}) booted in {d['devices_booted_s']} s; "
                   f"gateway ready (address recorded) {d['gateway_ready_s']} s after start, all listed online at "
                   f"{d['listed_online_s']} s, all described at {d['listed_described_s']} s.")
    m = report.get("memory", {})
    if "checkpoints" in m:
        out.append(f"memory: RSS {m['rss_0_devices']['rss_kib']:,} KiB with no devices, "
                   + ", ".join(f"{c['rss_kib']:,} KiB with {c['devices_online']:,} online"
                               for c in m["checkpoints"])
                   + f"; {m['kib_per_device']} KiB per device ({m['kib_per_device_second_half']} over the second "
                     f"half); store {m['store_bytes'] / 1e6:.1f} MB.")
    p = report.get("path", {})
    if "uncached_us_per_call" in p:
        out.append(f"path: the gateway's own CPU per call, in one process on {p['loop']}: cached "
                   f"{p['cached_us_per_call']} us, uncached {p['uncached_us_per_call']} us (device answers in "
                   f"process, not counted; {p['calls']:,} calls each, {p['batch']} at a time).")
    for part in ("calls", "discovery", "memory", "path"):
        if "error" in report.get(part, {}):
            out.append(f"{part}: failed: {report[part]['error']}")
    return out
