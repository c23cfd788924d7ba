"""The MQTT anchor of `python -m bench pubsub`: Mosquitto on 127.0.0.1, MicroPython publishers with micropython-lib's
`umqtt.simple`, paho-mqtt subscribers in the benchmark's process; the same shape as the ndn-edge run.

- Broker: Debian's `mosquitto` started here with a config of its own (listener on 127.0.0.1 and a free port,
  anonymous, no persistence file). Installed with apt-get when missing and this process may (root, Debian);
  otherwise the run stops with the command to install it.
- Publishers: `bench/apps/umqtt_pub.py` on the same MicroPython unix port and heap as the simulated devices, one
  process each, with `umqtt/simple.py` from MicroPython's source (micropython-lib, `../shared/micropython/`)
  compiled with mpy-cross as a board would carry it. QoS 1: each `publish` returns when its PUBACK is in.
- Subscribers: paho-mqtt clients (MQTT 3.1.1, QoS 1), each with its own connection, in worker processes as
  ndn-edge's subscribers are (bench/subscriber.py); messages recorded as they arrive.

Variants (SPEC.md, issue 17): `mqtt` is the tuned broker and publisher -- `TCP_NODELAY` on the publisher's socket
(without it Nagle's algorithm and the broker's delayed ACK stall every PUBACK about 40 ms) and
`max_queued_messages 0` (no limit: Mosquitto's default of 1000 queued messages per client drops messages to a
subscriber that falls behind); `mqtt-stock` is umqtt.simple as it is with Mosquitto's defaults. For durable
subscriptions the subscribers use persistent sessions (`clean_session=False`); the broker keeps them in memory
(Mosquitto writes sessions to disk only every `autosave_interval`, 30 minutes by default).
"""
from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.mpy import APPS, ROOT
from ndn_edge.tools import micropython as mp
from ndn_edge.tools.errors import ToolsError
from ndn_edge.tools.micropython import ToolMissing
from ndn_edge.tools.procs import stop as stop_process

UMQTT = "lib/micropython-lib/micropython/umqtt.simple/umqtt/simple.py"  # in a MicroPython source tree
SOURCES = ROOT.parent / "shared" / "micropython"  # where SPEC.md puts MicroPython's source (an archive or a tree)
READY_S = 20.0
STOP_S = 5.0


@dataclass(frozen=True)
class Variant:
    name: str
    title: str
    nodelay: bool          # TCP_NODELAY on the publisher's socket
    unlimited_queue: bool  # max_queued_messages 0 (else Mosquitto's default, 1000)


VARIANTS = {
    "mqtt": Variant("mqtt", "MQTT tuned (TCP_NODELAY, max_queued_messages 0)", True, True),
    "mqtt-stock": Variant("mqtt-stock", "MQTT stock (umqtt.simple as is, Mosquitto defaults)", False, False),
}


def umqtt_source(given: str | None = None) -> Path:
    """umqtt/simple.py from MicroPython's source: `given` (a source tree or a .tar.gz of one), else
    `../shared/micropython/`; ToolMissing naming what was looked for."""
    candidates = [Path(given)] if given else [*sorted(SOURCES.glob("micropython-*.tar.gz")), SOURCES]
    for cand in candidates:
        if cand.is_dir():
            found = next((p for p in (cand / UMQTT, *(d / UMQTT for d in cand.glob("micropython-*"))) if p.is_file()),
                         None)
            if found is not None:
                return found
        elif cand.is_file():
            return _from_archive(cand)
    raise ToolMissing(f"no umqtt.simple source in {given or SOURCES} (MicroPython's source with "
                      "micropython-lib, as a tree or its .tar.gz); pass --micropython-src")


def _from_archive(archive: Path) -> Path:
    """umqtt/simple.py extracted from `archive` into a cache folder (once per archive)."""
    stat = archive.stat()
    out = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ndn-edge" / "bench" / \
        f"umqtt-{stat.st_size}-{int(stat.st_mtime)}" / "simple.py"
    if out.is_file():
        return out
    with tarfile.open(archive) as tar:
        member = next((m for m in tar.getmembers() if m.isfile() and m.name.endswith(UMQTT)), None)
        if member is None:
            raise ToolMissing(f"{archive} holds no {UMQTT}")
        data = tar.extractfile(member)
        assert data is not None
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_bytes(data.read())
        os.replace(tmp, out)
    return out


def compile_umqtt(mpy_cross: str, source: Path, lib: Path) -> int:
    """lib/umqtt/simple.mpy compiled from `source` as the runtime is for a board; its size in bytes."""
    out = lib / "umqtt" / "simple.mpy"
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        mp.compile_module(mpy_cross, source, out, "umqtt.simple", mp.RUNTIME_MPY_FLAGS)
    except ToolsError as err:
        raise ToolMissing(f"mpy-cross could not compile {source}: {err}") from None
    return out.stat().st_size


def find_mosquitto(install: bool = True) -> str:
    """The mosquitto broker's path; installed from Debian when missing and possible, else ToolMissing."""
    path = shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if os.access(p, os.X_OK)), None)
    if path:
        return path
    if install and os.geteuid() == 0 and shutil.which("apt-get"):
        print("bench pubsub: mosquitto not found; installing Debian's mosquitto (apt-get install mosquitto)",
              flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "mosquitto"]):
            subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, check=False)
        path = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK)
                                             else None)
        if path:
            return path
    raise ToolMissing("mosquitto (the MQTT anchor) is not installed: apt-get install mosquitto, or "
                      "leave the anchors out with --subjects ndn-edge")


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """One mosquitto process on 127.0.0.1 with the variant's configuration."""

    def __init__(self, mosquitto: str, variant: Variant, workdir: Path) -> None:
        self.port = free_tcp_port()
        conf = workdir / f"mosquitto-{variant.name}.conf"
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", "persistence false",
                 f"log_dest file {workdir / f'mosquitto-{variant.name}.log'}"]
        if variant.unlimited_queue:
            lines.append("max_queued_messages 0")
        conf.write_text("\n".join(lines) + "\n")
        self.proc = subprocess.Popen([mosquitto, "-c", str(conf)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + READY_S
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"mosquitto did not listen on 127.0.0.1:{self.port} (see {conf})") from None
                time.sleep(0.02)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_S)


class Publishers:
    """N umqtt publishers (MicroPython processes), connected and waiting for `go()`."""

    def __init__(self, micropython: str, lib: Path, port: int, devices: int, messages: int, nodelay: bool,
                 heap: str, workdir: Path) -> None:
        env = dict(os.environ, MICROPYPATH=f"{lib}:.frozen")
        self.procs: list[subprocess.Popen[bytes]] = []
        self.errs: list[Path] = []
        for n in range(1, devices + 1):
            err = workdir / f"umqtt-{n}.err"
            self.errs.append(err)
            with open(err, "wb") as err_file:
                self.procs.append(subprocess.Popen(
                    [micropython, "-X", f"heapsize={heap}", str(APPS / "umqtt_pub.py"), "127.0.0.1", str(port),
                     f"pub{n}", f"sim/{n}/burst", str(messages), "1" if nodelay else "0"],
                    cwd=workdir, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err_file))
        self._expect(b"ready", READY_S)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def go(self) -> None:
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.write(b"go\n")
            p.stdin.flush()

    def wait_done(self, timeout_s: float) -> bool:
        """True when every publisher printed "done" within `timeout_s`."""
        try:
            self._expect(b"done", timeout_s)
            return True
        except RuntimeError:
            return False

    def _expect(self, word: bytes, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        waiting = {p.stdout.fileno(): p for p in self.procs if p.stdout is not None}
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{len(waiting)} umqtt publisher(s) did not say {word.decode()!r} within "
                                   f"{timeout_s:g} s ({self._why()})")
            readable, _, _ = select.select(list(waiting), [], [], left)
            for fd in readable:
                line = waiting[fd].stdout.readline()  # type: ignore[union-attr]
                if line.strip() == word:
                    del waiting[fd]
                elif not line:
                    raise RuntimeError(f"an umqtt publisher ended before saying {word.decode()!r} ({self._why()})")

    def _why(self) -> str:
        tails = [e.read_text(errors="replace").strip().splitlines()[-1:] for e in self.errs if e.exists()]
        return "; ".join(t[0] for t in tails if t) or "no error output"

    def stop(self) -> None:
        for p in self.procs:
            if p.stdin is not None:
                p.stdin.close()
            stop_process(p, STOP_S)
            if p.stdout is not None:
                p.stdout.close()


def run(variant: Variant, *, mosquitto: str, micropython: str, lib: Path, devices: int, messages: int,
        subscribers: int, durable: bool, heap: str, quiet_s: float, workdir: Path, cpu: Any) -> dict[str, Any]:
    """One measurement: broker, subscribers, publishers; the deliveries and the CPU each role spent."""
    from bench.pubsub import Subscribers

    total = devices * messages
    broker = Broker(mosquitto, variant, workdir)
    subs = pubs = None
    try:
        subs = Subscribers("mqtt", subscribers, {"port": broker.port, "total": total, "quiet_s": quiet_s,
                                                 "durable": durable}, workdir)
        pubs = Publishers(micropython, lib, broker.port, devices, messages, variant.nodelay, heap, workdir)
        before = cpu(broker.pid, pubs.pids)
        pubs.go()
        got = subs.results(max(60.0, total / 50) + quiet_s)
        after = cpu(broker.pid, pubs.pids)
        finished = pubs.wait_done(STOP_S)
    finally:
        if subs is not None:
            subs.stop()
        if pubs is not None:
            pubs.stop()
        broker.stop()
    return {"records": got["records"], "cpu": (before, after, got["cpu_s"]), "publishers_finished": finished}
