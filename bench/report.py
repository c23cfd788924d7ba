"""Targets from SPEC.md "Performance targets" and the human-readable table of a device benchmark report."""
from __future__ import annotations

NDN, MICRODOT, ECHO = "ndn-edge", "microdot", "udp-echo"
COLUMNS = (NDN, MICRODOT, ECHO)

# (metric key, row title, target text, does ndn-edge's value pass given all subjects)
METRICS = (
    ("min_heap_kib", "smallest heap, KiB", "<= 24",
     lambda s: heap_within(s[NDN], 24)),
    ("alloc_per_call_bytes", "heap allocated per call, B", "<= 2048",
     lambda s: s[NDN]["alloc_per_call_bytes"] <= 2048),
    ("calls_per_s", "calls per second", ">= 2x microdot",
     lambda s: s[NDN]["calls_per_s"] >= 2 * s[MICRODOT]["calls_per_s"]),
    ("mpy_bytes", "compiled .mpy, B", "<= 20480",
     lambda s: s[NDN]["mpy_bytes"] <= 20480),
)


# Rows without a target: what explains the figures above.
INFO = (
    ("import_heap_bytes", "heap after importing the code, B"),
)


def heap_within(subject: dict, kib: int) -> bool | None:
    """Is the smallest heap at most kib? None when a search cut short leaves it open."""
    value = subject["min_heap_kib"]
    if value is None:  # nothing in the searched range served
        return False
    if value > kib and not subject["min_heap_exact"]:
        return None
    return value <= kib


def add_targets(report: dict) -> dict:
    """Adds report["targets"]: one entry per metric with ndn-edge's value and pass (None: not measured)."""
    subjects = report["subjects"]
    targets = []
    for key, _, target, passes in METRICS:
        try:
            ok = passes(subjects)
        except (KeyError, TypeError):  # a value is missing: the subject failed to run
            ok = None
        targets.append({"metric": key, "target": target, "value": subjects[NDN].get(key), "pass": ok})
    report["targets"] = targets
    return report


def cell(subject: dict, key: str, report: dict) -> str:
    value = subject.get(key)
    if key == "min_heap_kib" and key in subject:
        if value is None:
            return f">{report['heap_search_kib'][1]}"
        if not subject["min_heap_exact"]:
            return f"<={value}"
    if value is None:
        return "-" if key not in subject else "n/a"
    return f"{value:,.0f}" if isinstance(value, float) and value >= 100 else f"{value:,}"


def table(report: dict) -> str:
    subjects = report["subjects"]
    header = ("metric", *COLUMNS, "ndn-edge target", "result")
    rows = [header]
    for (key, title, target, _), verdict in zip(METRICS, report["targets"]):
        result = {True: "PASS", False: "FAIL", None: "?"}[verdict["pass"]]
        rows.append((title, *(cell(subjects[c], key, report) for c in COLUMNS), target, result))
    for key, title in INFO:
        rows.append((title, *(cell(subjects[c], key, report) for c in COLUMNS), "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    numeric = range(1, 1 + len(COLUMNS))
    lines = ["  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
             .rstrip() for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines + notes(report))


def notes(report: dict) -> list[str]:
    subjects = report["subjects"]
    out = ["", f"{report['micropython']}; {report['calls']} calls per run; throughput and allocation measured "
               f"with a {report['measure_heap_kib']} KiB heap; whole run {report['seconds']} s.",
           f"ndn-edge runtime {report.get('ndn_runtime', 'imported from .mpy files')}."]
    for name in COLUMNS:
        s = subjects[name]
        if s.get("transport"):
            out.append(f"{name}: {s['transport']}.")
        if s.get("error"):
            out.append(f"{name}: measuring failed: {s['error']}")
        if s.get("min_heap_kib") is None and "heap_probes" in s:
            out.append(f"{name}: no heap up to {report['heap_search_kib'][1]} KiB served: "
                       f"{s['heap_probes'][-1].get('why', '')}")
        elif s.get("min_heap_exact") is False:
            out.append(f"{name}: heap search cut short by the time budget; the figure is an upper bound.")
    if "mpy_package_bytes" in subjects[MICRODOT]:
        out.append(f"microdot: compiled size counts the modules the app imports (__init__, microdot); "
                   f"the whole package is {subjects[MICRODOT]['mpy_package_bytes']:,} B.")
    return out


def emit(result: dict, table_text: str, json_path: str | None) -> None:
    """Print the JSON report, then the table; also write the JSON to `json_path` when given."""
    import json
    from pathlib import Path
    text = json.dumps(result, indent=2)
    print(text)
    print()
    print(table_text)
    if json_path:
        out = Path(json_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
