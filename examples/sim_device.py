# A simulated board for `ndn-edge sim` and `ndn-edge up`: a service for each communication model
# (docs/models.md) and optional packet loss and sleep.
# Runs on the MicroPython unix port (and on CPython when MicroPython is missing).
#
#   micropython sim_device.py [ndn_config.json]
#
# Services: temperature (cacheable), echo, counter (not idempotent; logs each count), slow (long-running), note (a
# notification target) and notes, burst (publishes n messages), fail (raises: its error is logged on the device
# and shows in `ndn-edge logs`); topic `tick` (a counter) every second, or every "tick" seconds of the config.
# The config is the file provisioning writes ({"name", "key", "iface", "group", "port", "state_dir",
# "lease_ms"}, and the caps "max_ops" and "max_reports" where set) plus keys only the simulator reads: "index"
# (the device number, from 1; varies the readings between devices), "tick" (seconds between publications on topic
# `tick`; 0 never), "loss" (probability 0..1 that a datagram is dropped, in either direction), "seed" (an
# integer: the loss is drawn from a generator seeded with it and the index, the same drops in the same order on
# every run and on either interpreter; absent: from os.urandom) and "sleepy" (seconds: awake that long, then
# asleep that long, and so on; 0 never sleeps).
import gc
import sys
import json
import asyncio
from device import Device
from device.port import ticks_ms, ticks_add, ticks_diff, random_below

_LOSS_SCALE = 10000

path = sys.argv[1] if len(sys.argv) > 1 else "ndn_config.json"
with open(path) as f:
    cfg = json.load(f)
# What Device.from_config does, from the config already read (one JSON parse: the heap is small).
kw = {}
for k in ("iface", "group", "port", "state_dir", "lease_ms", "gateway", "max_ops", "max_reports", "log_bytes",
          "log_level"):
    if k in cfg:
        kw[k] = cfg[k]
dev = Device(cfg["name"], cfg["key"], **kw)
index = int(cfg.get("index", 0))
loss = int(float(cfg.get("loss", 0)) * _LOSS_SCALE)
seed = cfg.get("seed")
sleepy_ms = int(float(cfg.get("sleepy", 0)) * 1000)
tick_ms = int(float(cfg.get("tick", 1)) * 1000)
count = [0]
notes = []
ticks = [0]
burst = [0, 0, 0]  # published, to publish, with a timestamp
del cfg, kw


@dev.service("temperature", cache_ms=2000, result="float",
             doc="Temperature in degrees Celsius; drifts over a minute")
def temperature():
    # A saw-tooth over 60 s, offset per device, so cached and fresh readings differ.
    return round(20.0 + index * 0.5 + (ticks_ms() // 1000 % 60) / 10, 1)


@dev.service("echo", doc="Returns its arguments")
def echo(**kw):
    return kw


@dev.service("counter", idempotent=False, result="int",
             doc="Increments and returns a counter (runs once per call, even when retried)")
def counter():
    count[0] += 1
    dev.log("info", "counter now %d" % count[0])
    return count[0]


@dev.service("slow", long_running=True, idempotent=False, args={"seconds": "float"}, result="float",
             doc="Long-running: waits `seconds` (default 3), reporting progress, then returns them")
async def slow(op, seconds=3):
    steps = max(1, int(seconds * 2))  # progress every half second
    for i in range(steps):
        await asyncio.sleep(seconds / steps)
        op.progress((i + 1) / steps)
    return seconds


@dev.service("note", doc="Notification target: remembers its arguments (the last 20; see notes)")
def note(**kw):
    notes.append(kw)
    if len(notes) > 20:
        notes.pop(0)


@dev.service("notes", result="list", doc="The arguments `note` received, oldest first")
def get_notes():
    return notes


@dev.service("burst", idempotent=False, args={"n": "int", "stamp": "bool"}, result="int",
             doc="Publishes n messages on topic `burst` (values 1..n, or [i, ms since epoch] with stamp), "
                 "paced by the outbox")
def start_burst(n=100, stamp=False):
    if burst[0] >= burst[1]:
        dev.every(10)(pace)  # paced while the burst lasts; idle devices keep no 10 ms timer
    burst[0], burst[1], burst[2] = 0, n, stamp
    return n


@dev.service("fail", doc="Always fails (RuntimeError): the error answer, and its log entry on the host")
def fail(why="on purpose"):
    raise RuntimeError("failed %s" % why)


def tick():
    ticks[0] += 1
    dev.publish("tick", ticks[0])


if tick_ms > 0:
    dev.every(tick_ms)(tick)


def pace():
    # At most max_reports - 4 unacknowledged reports (12 by default): the outbox drops the oldest when full.
    # One per tick: a train of sends would come back to the device (multicast loopback) as one read, and
    # a read that fills the receive buffer loses its tail, acknowledgements included.
    ob = dev._outbox
    if burst[0] >= burst[1]:
        return False  # done: stop the timer
    if ob is None or len(ob.items) < max(1, dev.max_reports - 4):
        burst[0] += 1
        dev.publish("burst", [burst[0], _now_ms()] if burst[2] else burst[0])


def _now_ms():
    import time
    return time.time_ns() // 1000000


if sleepy_ms:
    wake = [ticks_ms()]

    @dev.every(100)
    def doze():
        # Awake sleepy_ms, then asleep as long (the runtime announces both), and so on.
        if ticks_diff(ticks_ms(), wake[0]) >= sleepy_ms:
            dev.sleep(sleepy_ms / 1000)
            wake[0] = ticks_add(ticks_ms(), sleepy_ms)


def _seeded(seed):
    # xorshift32 (Marsaglia 2003), seeded with the config's seed and this device's index, so that
    # devices of one fleet draw different streams. Masked to 32 bits at each step: the same numbers on
    # MicroPython and CPython.
    state = [((seed * 2654435761) ^ (index * 40503) ^ 0x9E3779B9) & 0xFFFFFFFF or 1]

    def below(n):
        x = state[0]
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        state[0] = x
        return x % n

    for _ in range(8):  # move away from a small seed's first, still small, numbers
        below(2)
    return below


def _lossy(face, permille, draw):
    # Wrap the runtime's face (device/ is left untouched): drop a datagram with probability
    # permille / _LOSS_SCALE on the way in (report "nothing read") and on the way out (pretend it left).
    read = face.read
    send = face.send

    def lossy_read():
        n = read()
        if n and draw(_LOSS_SCALE) < permille:
            return 0
        return n

    def lossy_send(data):
        if draw(_LOSS_SCALE) < permille:
            return True
        return send(data)

    face.read = lossy_read
    face.send = lossy_send


if loss > 0:
    dev.setup()  # creates dev._face; run() reuses it
    _lossy(dev._face, loss, random_below if seed is None else _seeded(int(seed)))
    print("simulating %d/%d datagram loss%s" % (loss, _LOSS_SCALE, "" if seed is None else ", seed %d" % seed))

gc.collect()  # the parser's and json's garbage, before the runtime preallocates its buffers
dev.run()
