"""What a benchmark client does, whatever the protocol: the call mix, the expected answers, the client interface.

A run of N calls cycles through the three services `temperature` (returns 21.5), `echo` (returns its
arguments) and `counter` (not idempotent: returns 1, 2, 3, ...). `memtotal` answers MicroPython's
`micropython.mem_total()`, the bytes allocated on the heap since start; it is used only for measuring.
"""
from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

TEMPERATURE = 21.5
ECHO_ARGS = {"room": "kitchen", "level": 3, "on": True}
SERVICES = ("temperature", "echo", "counter")
MEMTOTAL = "memtotal"


class StartFailed(RuntimeError):
    """The app did not start serving (out of memory at import, crashed, or silent past the timeout)."""


class BadReply(RuntimeError):
    """A reply that is missing, does not verify, or carries the wrong answer."""


def plan(n: int) -> list[str]:
    """The services of a run of n calls, in order."""
    return [SERVICES[i % len(SERVICES)] for i in range(n)]


def check_values(services: list[str], values: list) -> None:
    """Raise BadReply unless every value is the right answer for its service (counters consecutive)."""
    last_count = None
    for i, (service, value) in enumerate(zip(services, values)):
        if service == "temperature":
            ok = value == TEMPERATURE
        elif service == "echo":
            ok = value == ECHO_ARGS
        else:
            ok = isinstance(value, int) and (last_count is None or value == last_count + 1)
            last_count = value
        if not ok:
            raise BadReply(f"call {i + 1} ({service}) returned {value!r}")


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A port on 127.0.0.1 that was free a moment ago (UDP or TCP)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(probe, app, timeout_s: float, interval_s: float = 0.05):
    """Call probe() until it returns a truthy value; StartFailed when the app exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not app.alive():
            raise StartFailed(app.failure())
        value = probe()
        if value:
            return value
        time.sleep(interval_s)
    raise StartFailed(f"not serving after {timeout_s:g} s ({app.failure()})")


class AnchorServer:
    """An anchor's server: `apps/<app>` in its own CPython process on 127.0.0.1:<free port>, printing "ready"
    once it serves; its stderr goes to `<log_dir>/<what>.log`."""

    what = "anchor server"

    def __init__(self, app: str, args: list[str], log_dir: Path) -> None:
        from bench.mpy import APPS

        self.port = free_port()
        self._log = open(log_dir / f"{self.what.replace(' ', '-')}.log", "wb")
        self.proc = subprocess.Popen([sys.executable, str(APPS / app), str(self.port), *args],
                                     stdout=subprocess.PIPE, stderr=self._log, stdin=subprocess.DEVNULL)

    def wait_ready(self, timeout_s: float = 15.0) -> None:
        """Until the server prints "ready"; StartFailed if it exits or stays silent."""
        import selectors

        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout_s):
                raise StartFailed(f"{self.what} not ready after {timeout_s:g} s")
        if self.proc.stdout.readline().decode(errors="replace").strip() != "ready":
            self.proc.wait(5)
            raise StartFailed(f"{self.what} did not start (exit {self.proc.returncode}); see {self._log.name}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


class Client:
    """A benchmark client talking to one app process; subclasses speak NDN, HTTP or plain UDP.

    prepare() builds requests before timing, exchange() sends one and waits for its reply (timed),
    check() verifies the replies afterwards and raises BadReply.
    """

    label = ""
    lib: str | None = None  # the Env library the app imports

    def __init__(self, app):
        self.app = app

    @classmethod
    def start(cls, env, heap_kib: int, ready_s: float) -> Client:
        """Launch the app with `heap_kib` KiB of heap and wait until it serves; StartFailed otherwise."""
        client = cls.launch(env, heap_kib)
        try:
            client.wait_ready(ready_s)
        except BaseException:
            client.close()
            raise
        return client

    @classmethod
    def launch(cls, env, heap_kib: int) -> Client:
        raise NotImplementedError

    def wait_ready(self, timeout_s: float) -> None:
        raise NotImplementedError

    def prepare(self, services: list[str]) -> list:
        raise NotImplementedError

    def exchange(self, request, timeout_s: float):
        """The reply to `request`, or None when none came within timeout_s."""
        raise NotImplementedError

    def check(self, services: list[str], requests: list, replies: list) -> None:
        raise NotImplementedError

    def decode_memtotal(self, reply) -> int:
        raise NotImplementedError

    def memtotal(self, timeout_s: float = 2.0) -> int:
        """Bytes the app has allocated since start, as one ordinary call to its memtotal service."""
        reply = self.exchange(self.prepare([MEMTOTAL])[0], timeout_s)
        if reply is None:
            raise BadReply("no reply to memtotal")
        return self.decode_memtotal(reply)

    def info(self) -> dict:
        """Facts about how this client measured, for the report."""
        return {}

    def close(self) -> None:
        self.app.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
