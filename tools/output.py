"""How the `ndn-edge` commands print: tables for people, JSON for scripts, values as a person reads them."""
from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from typing import IO, Any


def print_json(obj: Any) -> None:
    """`obj` as indented JSON (bytes as hex, anything else JSON lacks as its text)."""
    print(json.dumps(obj, indent=2, default=jsonable))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Columns padded to their widest cell, headers first."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    for row in (headers, *rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())


def value_text(value: Any) -> str:
    """A value as a person reads it: text as is, everything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, default=jsonable)


def time_text(ts: float) -> str:
    """A local date and time."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def ago(ts: Any, now: float) -> str:
    """How long ago `ts` was, for recent times; the time itself for older ones."""
    if not isinstance(ts, (int, float)):
        return "-"
    delta = max(0.0, now - ts)
    if delta < 60:
        return f"{delta:.0f} s ago"
    if delta < 3600:
        return f"{delta / 60:.0f} min ago"
    return time_text(ts)


def jsonable(value: Any) -> Any:
    """What JSON cannot hold, as something it can: bytes as hex, the rest as text."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    return str(value)


def in_background(stream: IO[str]) -> bool:
    """True if `stream` is this process's terminal and the process runs in the background of it (`cmd &` in an
    interactive shell), where whatever it prints lands among the output of the commands typed next."""
    try:
        fd = stream.fileno()
        return os.isatty(fd) and os.tcgetpgrp(fd) != os.getpgrp()
    except (OSError, ValueError, AttributeError):  # not a file, closed, or not our controlling terminal
        return False
