# A simulated board for `ndn-edge sim` and `ndn-edge up`: three services and optional packet loss.
# Runs on the MicroPython unix port (and on CPython when MicroPython is missing).
#
#   micropython sim_device.py [ndn_config.json]
#
# The config is the file provisioning writes ({"name", "key", "iface", "group", "port", "state_dir",
# "lease_ms"}) plus two keys only the simulator reads: "index" (the device number, from 1; varies the readings
# between devices) and "loss" (probability 0..1 that a datagram is dropped, in either direction).
import gc
import sys
import json
from device import Device
from device.port import ticks_ms, random_below

_LOSS_SCALE = 10000

path = sys.argv[1] if len(sys.argv) > 1 else "ndn_config.json"
with open(path) as f:
    cfg = json.load(f)
# What Device.from_config does, from the config already read (one JSON parse: the heap is small).
kw = {}
for k in ("iface", "group", "port", "state_dir", "lease_ms", "gateway"):
    if k in cfg:
        kw[k] = cfg[k]
dev = Device(cfg["name"], cfg["key"], **kw)
index = int(cfg.get("index", 0))
loss = int(float(cfg.get("loss", 0)) * _LOSS_SCALE)
count = [0]
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
    return count[0]


def _lossy(face, permille):
    # Wrap the runtime's face (device/ is left untouched): drop a datagram with probability
    # permille / _LOSS_SCALE on the way in (report "nothing read") and on the way out (pretend it left).
    read = face.read
    send = face.send

    def lossy_read():
        n = read()
        if n and random_below(_LOSS_SCALE) < permille:
            return 0
        return n

    def lossy_send(data):
        if random_below(_LOSS_SCALE) < permille:
            return True
        return send(data)

    face.read = lossy_read
    face.send = lossy_send


if loss > 0:
    dev.setup()  # creates dev._face; run() reuses it
    _lossy(dev._face, loss)
    print("simulating %d/%d datagram loss" % (loss, _LOSS_SCALE))

gc.collect()  # the parser's and json's garbage, before the runtime preallocates its buffers
dev.run()
