"""Child processes of the tools, tests and benchmarks: stopped the way a person would, Ctrl-C first; and SIGTERM
handled like Ctrl-C by commands that run an event loop."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path


def cancel_on_sigterm() -> None:
    """Called in the coroutine `asyncio.run` (or `run_loop`) runs: SIGTERM cancels it, as asyncio does on Ctrl-C,
    so its `finally` blocks run (devices stopped, `gateway.json` removed). The caller sees CancelledError."""
    task = asyncio.current_task()
    if task is None:
        return
    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    except (NotImplementedError, RuntimeError, ValueError):  # not on this platform / not the main thread
        pass


def stop(proc: subprocess.Popen | None, grace_s: float = 10.0) -> int | None:
    """SIGINT (the child cleans up: a device announces leaving), SIGKILL after `grace_s`; the exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(grace_s)
    return proc.returncode


def stop_all(procs: list[subprocess.Popen], grace_s: float = 10.0) -> None:
    """SIGINT every process at once, then wait for all within `grace_s` together, SIGKILL what is left."""
    import time
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def gateway_may_be_starting(home: Path) -> bool:
    """True if an `ndn-edge gateway` process of `home` runs: read from /proc (Linux), so a command that must
    not race a starting gateway (`client add` before the home's site is decided) waits only when there is
    one. True where that cannot be known (no /proc, or a process whose home cannot be read)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    ours = _real(home)
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = [a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0") if a]
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if "gateway" not in argv or not any("ndn_edge" in a or a.endswith("ndn-edge") for a in argv[:3]):
            continue
        try:
            theirs = _home_of(entry, argv)
        except OSError:
            return True
        if theirs is None or theirs == ours:
            return True
    return False


def _home_of(entry: Path, argv: list[str]) -> Path | None:
    """The home a process of the CLI uses (the rules of Home.resolve, with its working folder and environment);
    None when it cannot tell."""
    cwd = Path(os.readlink(entry / "cwd"))
    for i, arg in enumerate(argv):
        if arg == "--home" and i + 1 < len(argv):
            return _real(cwd / argv[i + 1])
        if arg.startswith("--home="):
            return _real(cwd / arg.split("=", 1)[1])
    env = dict(item.split("=", 1) for item in (entry / "environ").read_text(errors="replace").split("\0")
               if "=" in item)
    if env.get("NDN_EDGE_HOME"):
        return _real(cwd / env["NDN_EDGE_HOME"])
    if env.get("XDG_DATA_HOME", "").startswith("/"):
        return _real(Path(env["XDG_DATA_HOME"]) / "ndn-edge")
    if env.get("HOME"):
        return _real(Path(env["HOME"]) / ".local" / "share" / "ndn-edge")
    return None


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))
