"""The device's side of a publication, on MicroPython: heap allocated and time per published message, and heap held.

Part of `python -m bench pubsub` (and `python -m bench.publish`): the runtime compiled with mpy-cross as a board
carries it, one `Device` in one MicroPython process with a generous heap, its outbox on a real UDP socket on
127.0.0.1. A stand-in gateway socket in the same process takes the reports and sends back the acknowledgements a
gateway would (signed with the device key). Measured with `micropython.mem_total()` and `time.ticks_us()` around
the device's own work only (`dev.publish`, then `dev.receive()` until every report is acknowledged), never around
the stand-in's:
- `alloc_per_message_bytes`: heap allocated per message, publication and acknowledgement together (and each:
  `alloc_publish_bytes`, `alloc_ack_bytes`);
- `us_per_message`: the same work's time (the unix port on this machine: compare, do not transfer);
- `publisher_heap_bytes`: heap in use (after a collection) once the device has published and been acknowledged,
  minus before its first publication: the outbox, its socket, and the code it loads (on the unix port `.mpy` code
  lives in the heap; frozen into firmware it would not);
- `pending_report_bytes`: heap held per report waiting for its acknowledgement.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.mpy import ROOT, compile_package, find_tool

WINDOW = 8      # reports published before their acknowledgements are read (the simulated device's burst window)
ROUNDS = 60
WARM_UP = 5
HEAP = "1M"

SCRIPT = r"""
import gc
import socket
import time
import micropython
from device import Device, tlv
from device.derive import hmac

KEY = bytes(range(32))
dev = Device("/edge/bench/p1", KEY, iface="127.0.0.1", port=%(port)d, state_dir=".")
dev.setup()
dev._face.open()  # the group's socket (nothing is announced: the stand-in reads only its own socket)
gw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
gw_addr = socket.getaddrinfo("127.0.0.1", %(gw_port)d)[0][-1]
gw.bind(gw_addr)
gw.settimeout(5)  # a report that never comes fails the run instead of hanging it
mac = hmac(KEY)


def sign(data):
    h = mac.start()
    h.update(data)
    return mac.finish(h)


content = b"\x15\x05\xa1\x62ok\xf5"  # {"ok": true}, as the gateway acknowledges


def acks(n):
    # The stand-in gateway: read n reports, acknowledge each to where it came from.
    for _ in range(n):
        data, addr = gw.recvfrom(1500)
        p = tlv.Packet()
        p.parse(memoryview(data), 0, len(data))
        signed = bytes(data[p.name_s - 2:p.name_e]) + content + dev._sig_info
        body = signed + b"\x17\x20" + sign(signed)
        gw.sendto(bytes([6, len(body)]) + body, addr)


def until_acked():
    for _ in range(100000):  # loopback delivers at once; bounded all the same
        if not dev._outbox.items:
            return
        dev.receive()


gc.collect()
before = gc.mem_alloc()
ob = dev._reports()
ob._open()
ob.gw = gw_addr  # as if learned: reports go to the stand-in
dev.publish("t", [0, 0])
acks(1)
until_acked()
gc.collect()
publisher = gc.mem_alloc() - before
alloc = sent = us = count = 0
held = 0
for r in range(%(rounds)d):
    gc.collect()
    if r == %(warm)d:
        held = gc.mem_alloc()
    a = micropython.mem_total()
    t = time.ticks_us()
    for i in range(%(window)d):
        dev.publish("t", [i, 1700000000000 + i])
    t = time.ticks_diff(time.ticks_us(), t)
    a = micropython.mem_total() - a
    if r >= %(warm)d:
        sent += a
    if r == %(warm)d:
        gc.collect()
        held = gc.mem_alloc() - held
    acks(%(window)d)
    a2 = micropython.mem_total()
    t2 = time.ticks_us()
    until_acked()
    t += time.ticks_diff(time.ticks_us(), t2)
    a += micropython.mem_total() - a2
    if r >= %(warm)d:
        alloc += a
        us += t
        count += %(window)d
print(alloc // count, sent // count, us / count, publisher, held // %(window)d, ob.acked, ob.dropped, dev.drops)
"""


def run(workdir: Path) -> dict[str, Any]:
    """Measure in one MicroPython process; the figures (JSON-able)."""
    import socket as host_socket

    micropython = find_tool("micropython")
    lib = workdir / "lib"
    sizes = compile_package(find_tool("mpy-cross"), ROOT / "device", lib)
    ports = []
    for _ in range(2):
        with host_socket.socket(host_socket.AF_INET, host_socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    script = workdir / "publish.py"
    script.write_text(SCRIPT % {"port": ports[0], "gw_port": ports[1], "rounds": ROUNDS + WARM_UP, "window": WINDOW,
                                "warm": WARM_UP})
    done = subprocess.run([micropython, "-X", f"heapsize={HEAP}", str(script)], cwd=workdir, capture_output=True,
                          text=True, timeout=120, env={"MICROPYPATH": f"{lib}:.frozen", "PATH": ""})
    if done.returncode != 0:
        raise RuntimeError(f"the publication measurement failed: {done.stdout[-300:]} {done.stderr[-300:]}")
    alloc, sent, us, publisher, held, acked, dropped, *drops = done.stdout.split()
    expect = 1 + (ROUNDS + WARM_UP) * WINDOW
    if int(acked) != expect or int(dropped):
        raise RuntimeError(f"the publication measurement lost reports: {acked} of {expect} acknowledged, "
                           f"{dropped} dropped")
    return {"alloc_per_message_bytes": int(alloc), "alloc_publish_bytes": int(sent),
            "alloc_ack_bytes": int(alloc) - int(sent), "us_per_message": round(float(us), 1),
            "publisher_heap_bytes": int(publisher), "pending_report_bytes": int(held),
            "runtime_mpy_bytes": sum(sizes.values()), "window": WINDOW, "messages": ROUNDS * WINDOW,
            "device_drops": " ".join(drops)}


def table(figures: dict[str, Any]) -> str:
    return (f"device (MicroPython, per published message): {figures['alloc_per_message_bytes']:,} B allocated, "
            f"{figures['us_per_message']:.0f} us; publisher heap {figures['publisher_heap_bytes']:,} B, "
            f"{figures['pending_report_bytes']:,} B per pending report")


if __name__ == "__main__":
    import json
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ndn-edge-bench-publish-") as tmp:
        result = run(Path(tmp))
    print(json.dumps(result, indent=2))
    print(table(result), file=sys.stderr)
