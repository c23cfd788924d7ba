"""MicroPython side of the benchmarks: the interpreter, mpy-cross, compiled libraries and app processes.

Every app runs as its own `micropython -X heapsize=...` process on 127.0.0.1, importing only `.mpy`
files compiled here (as a board carries them) plus the interpreter's frozen modules (asyncio).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ndn_edge.tools import micropython as mp
from ndn_edge.tools.errors import ToolsError
from ndn_edge.tools.micropython import ToolMissing
from ndn_edge.tools.procs import stop as stop_process

ROOT = Path(__file__).resolve().parent.parent
APPS = Path(__file__).resolve().parent / "apps"


class BuildFailed(RuntimeError):
    """mpy-cross rejected a module."""


def find_tool(name: str) -> str:
    """Path of `name` ("micropython" or "mpy-cross"), as the tools find it; ToolMissing otherwise."""
    return mp.require(name, "bench")


def compile_package(mpy_cross: str, src: Path, lib: Path) -> dict[str, int]:
    """Compile every module of package directory `src` to `lib/<package>/*.mpy`; returns sizes by file.

    Every subject is compiled the way ndn-edge compiles its runtime for a board (ndn_edge.tools.micropython:
    RUNTIME_MPY_FLAGS, without line-number tables, each module recording its module's name as its file: see
    module_name), so code sizes and heaps compare like for like; host-only modules (HOST_ONLY) are left out."""
    out_dir = lib / src.name
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for py in sorted(src.glob("*.py")):
        if py.name in mp.HOST_ONLY and src.name == "device":
            continue
        out = out_dir / f"{py.stem}.mpy"
        try:
            mp.compile_module(mpy_cross, py, out, mp.module_name(src.name, py), mp.RUNTIME_MPY_FLAGS)
        except ToolsError as err:
            raise BuildFailed(str(err)) from None
        sizes[out.name] = out.stat().st_size
    return sizes


def version(micropython: str) -> str:
    """E.g. "MicroPython 1.29.0 (3.4.0; MicroPython 9458e3a23f on 2026-07-05)"."""
    code = ("import sys; v = sys.implementation.version; "
            "print('MicroPython %d.%d.%d (%s)' % (v[0], v[1], v[2], sys.version))")
    done = subprocess.run([micropython, "-c", code], capture_output=True, text=True, timeout=10)
    return done.stdout.strip()


def word_bits(micropython: str) -> int:
    """32 or 64: the interpreter's word size (objects and GC blocks are half the size on 32 bits)."""
    done = subprocess.run([micropython, "-c", "import sys; print(64 if sys.maxsize > 2**32 else 32)"],
                          capture_output=True, text=True, timeout=10)
    return int(done.stdout.strip() or 0)


class App:
    """One benchmark app on MicroPython with a given heap; stdout and stderr go to files in its workdir."""

    def __init__(self, micropython: str, script: str, args: list[str], heap_kib: int, path: str,
                 workdir: Path):
        self.workdir = workdir
        env = dict(os.environ, MICROPYPATH=path)
        self._out = open(workdir / "stdout.txt", "w+")
        self._err = open(workdir / "stderr.txt", "w+")
        self.proc = subprocess.Popen([micropython, "-X", f"heapsize={heap_kib}K", script, *args],
                                     cwd=workdir, env=env, stdout=self._out, stderr=self._err)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def failure(self) -> str:
        """Why the app is not serving: its exit status and the last line it wrote (MicroPython's unix
        port prints uncaught exceptions such as MemoryError to stdout)."""
        code = self.proc.poll()
        state = "running" if code is None else f"exit {code}"
        last = self._last_line("stderr.txt") or self._last_line("stdout.txt")
        return f"{state}: {last}" if last else state

    def _last_line(self, file: str) -> str:
        lines = (self.workdir / file).read_text(errors="replace").splitlines()
        return next((ln.strip() for ln in reversed(lines) if ln.strip()), "")

    def stop(self, timeout_s: float = 2.0) -> None:
        """Ctrl-C, then kill after `timeout_s`."""
        stop_process(self.proc, timeout_s)
        self._out.close()
        self._err.close()


class Env:
    """Interpreter, compiled libraries (one per subject) and a scratch directory for app workdirs."""

    def __init__(self, scratch: Path, micropython: str | None = None):
        self.scratch = scratch
        self.micropython = micropython or find_tool("micropython")
        self.mpy_cross = find_tool("mpy-cross")
        self.version = version(self.micropython)
        self.libs: dict[str, Path] = {}
        self.sizes: dict[str, dict[str, int]] = {}
        self.frozen: set[str] = set()  # libraries the interpreter carries frozen in: apps import those from there
        self.bits = word_bits(self.micropython)

    def use_frozen(self, key: str, package: str) -> None:
        """Apps of library `key` import `package` frozen into the interpreter (compiled sizes still count);
        ToolMissing if the interpreter does not carry it."""
        from ndn_edge.tools.repl import SOURCE_OF_SNIPPET
        code = SOURCE_OF_SNIPPET + f"print(_src({package!r}))"
        done = subprocess.run([self.micropython, "-c", code], capture_output=True, text=True, timeout=30,
                              env=dict(os.environ, MICROPYPATH=".frozen"), cwd=self.scratch)
        where = done.stdout.strip()
        if not where.startswith(".frozen"):
            raise ToolMissing(f"{self.micropython} does not carry `{package}` frozen in (it imports "
                              f"{where or 'nothing'}); build the unix port with "
                              "FROZEN_MANIFEST=firmware/unix/manifest.py (firmware/README.md)")
        self.frozen.add(key)

    def path(self, lib_key: str | None) -> str:
        """MICROPYPATH for an app of library `lib_key` (None: the interpreter's frozen modules only)."""
        if lib_key is None or lib_key in self.frozen:
            return ".frozen"
        return f"{self.libs[lib_key]}:.frozen"

    def add_lib(self, key: str, package_dir: Path) -> None:
        """Compile `package_dir` into the library `key` (MICROPYPATH entry of the apps that use it)."""
        lib = self.scratch / f"lib-{key}"
        self.sizes[key] = compile_package(self.mpy_cross, package_dir, lib)
        self.libs[key] = lib

    def launch(self, script: str, args: list[str], heap_kib: int, lib_key: str | None = None) -> App:
        """Run apps/`script` as a board runs its app: `main.py` in the working folder, the library under `lib/`
        there. Every name a module is loaded by (its __file__, the script's folder on sys.path) is interned into
        the heap, so the bench's own long scratch paths would cost heap that a board does not pay."""
        workdir = Path(tempfile.mkdtemp(prefix=f"{Path(script).stem}-{heap_kib}k-", dir=self.scratch))
        shutil.copyfile(APPS / script, workdir / "main.py")
        path = self.path(lib_key)
        if lib_key is not None and lib_key not in self.frozen:
            (workdir / "lib").symlink_to(self.libs[lib_key], target_is_directory=True)
            path = "lib:.frozen"
        return App(self.micropython, "main.py", args, heap_kib, path, workdir)
