# A simulated board for `ndn-edge sim` and `ndn-edge up`: a service for each communication model
# (docs/models.md) and optional packet loss and sleep.
# Runs on the MicroPython unix port (and on CPython when MicroPython is missing).
#
#   micropython sim_device.py [ndn_config.json]
#
# Services: temperature (cacheable), echo, counter (not idempotent; logs each count), slow (long-running), note (a
# notification target) and notes, burst (publishes n messages, from a given time), fail (raises: its error is
# logged on the device and shows in `ndn-edge logs`); topic `tick` (a counter) every second, or every "tick"
# seconds of the config.
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
import time
import asyncio
from device import Device
from device.port import ticks_ms, ticks_add, ticks_diff, random_below

_LOSS_SCALE = 10000
_PACE_MS = 5  # a burst's timer until it starts
_CHECK_MS = 100  # then, beside the acknowledgements that pace it
_WINDOW = 8  # a burst's reports in flight, by default

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
# a burst: published, to publish, with a timestamp, not before (ms since the epoch), paced on acks, window
burst = [0, 0, 0, 0, 0, _WINDOW]
del cfg, kw


@dev.service("temperature", cache_ms=2000, args={}, result="float",
             doc="Temperature in degrees Celsius; drifts over a minute")
def temperature():
    # A saw-tooth over 60 s, offset per device, so cached and fresh readings differ.
    return round(20.0 + index * 0.5 + (ticks_ms() // 1000 % 60) / 10, 1)


@dev.service("echo", doc="Returns its arguments")
def echo(**kw):
    return kw


@dev.service("counter", idempotent=False, args={}, result="int",
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


@dev.service("notes", args={}, result="list", doc="The arguments `note` received, oldest first")
def get_notes():
    return notes


@dev.service("burst", idempotent=False, args={"n": "int", "stamp": "bool", "at": "int", "window": "int"},
             result="int",
             doc="Publishes n messages on topic `burst` (values 1..n, or [i, ms since epoch] with stamp), "
                 "as fast as the outbox's acknowledgements allow with at most `window` (default 8) unacknowledged, "
                 "from `at` (ms since the epoch; the host's clock: simulated devices share it) or now")
def start_burst(n=100, stamp=False, at=0, window=_WINDOW):
    if burst[0] >= burst[1]:
        dev.every(_PACE_MS)(pace_start)  # until the burst starts; idle devices keep no timer
        if not burst[4]:
            _pace_on_ack(dev._reports())
    burst[0], burst[1], burst[2], burst[3], burst[5] = 0, n, stamp, at, max(1, min(window, dev.max_reports - 4))
    return n


def _pace_on_ack(ob):
    # A burst's next message goes out as soon as an acknowledgement frees the window (as an MQTT publisher's
    # next publish follows its PUBACK), not at the next turn of the timer.
    on_data = ob.on_data

    def on_data_then_pace(p, mv):
        n = len(ob.items)
        on_data(p, mv)
        if len(ob.items) < n and burst[0] < burst[1]:
            pace()

    ob.on_data = on_data_then_pace
    burst[4] = 1


@dev.service("fail", doc="Always fails (RuntimeError): the error answer, and its log entry on the host")
def fail(why="on purpose"):
    raise RuntimeError("failed %s" % why)


def tick():
    ticks[0] += 1
    dev.publish("tick", ticks[0])


if tick_ms > 0:
    dev.every(tick_ms)(tick)


def pace_start():
    # The burst's first messages, at its start time; then acknowledgements pace it (_pace_on_ack), and a slow timer
    # only what no acknowledgement will: a report the outbox gave up on. (A 5 ms timer for the whole burst woke
    # every publishing device 200 times a second for nothing.)
    if pace() is None and burst[0] == 0:
        return None  # not yet
    if burst[0] < burst[1]:
        dev.every(_CHECK_MS)(pace)
    return False


def pace():
    # Publish while fewer than `window` reports wait for their acknowledgement (at most max_reports - 4, leaving
    # room for `tick`: a full outbox drops its oldest report; and keep it below 10: that many acknowledgements
    # fill one read of the device's receive buffer, which takes every datagram queued at once).
    # Until the first acknowledgement has taught the outbox the gateway's address, one at a time: its reports go to
    # the group meanwhile, where every device reads them (device/outbox.py).
    if burst[3] and _now_ms() < burst[3]:
        return None  # not yet
    while burst[0] < burst[1]:
        ob = dev._outbox
        if ob is not None and len(ob.items) >= (burst[5] if ob.acked else 1):
            return None
        burst[0] += 1
        dev.publish("burst", [burst[0], _now_ms()] if burst[2] else burst[0])
    return False  # done: stop the timer


def _now_ms():
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


def _lossy(face, outbox, permille, draw):
    # Wrap the runtime's face and its outbox's socket (device/ is left untouched): drop a datagram with
    # probability permille / _LOSS_SCALE on the way in (report "nothing read") and on the way out (pretend it
    # left).
    read = face.read
    send = face.send
    send_from = face.send_from
    read_reports = outbox.read

    def lossy_read():
        n = read()
        if n and draw(_LOSS_SCALE) < permille:
            return 0
        return n

    def lossy_send(data):
        if draw(_LOSS_SCALE) < permille:
            return True
        return send(data)

    def lossy_send_from(sock, data, to=None):
        if draw(_LOSS_SCALE) < permille:
            return True
        return send_from(sock, data, to)

    def lossy_read_reports():
        n = read_reports()
        if n and draw(_LOSS_SCALE) < permille:
            return 0
        return n

    face.read = lossy_read
    face.send = lossy_send
    face.send_from = lossy_send_from
    outbox.read = lossy_read_reports


if loss > 0:
    # dev._face and the outbox now (run() reuses both), so that their datagrams can be lost
    _lossy(dev._face, dev._reports(), loss, random_below if seed is None else _seeded(int(seed)))
    print("simulating %d/%d datagram loss%s" % (loss, _LOSS_SCALE, "" if seed is None else ", seed %d" % seed))

gc.collect()  # the parser's and json's garbage, before the runtime preallocates its buffers
dev.run()
