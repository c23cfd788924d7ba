"""Child processes of the tools, tests and benchmarks: stopped the way a person would, Ctrl-C first."""
from __future__ import annotations

import signal
import subprocess


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
