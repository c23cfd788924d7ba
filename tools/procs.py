"""Child processes of the tools, tests and benchmarks: stopped the way a person would, Ctrl-C first; and SIGTERM
handled like Ctrl-C by commands that run an event loop."""
from __future__ import annotations

import asyncio
import signal
import subprocess


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
