# Device benchmark app (ndn-edge): three services plus `memtotal`, used only for measuring.
# Runs on MicroPython. argv: name key_hex port state_dir
import sys
import micropython
from device import Device

name, key, port, state = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
dev = Device(name, key, iface="127.0.0.1", port=port, state_dir=state)
count = [0]


@dev.service("temperature", cache_ms=2000, doc="Temperature in degrees Celsius", result="float")
def temperature():
    return 21.5


@dev.service("echo", doc="Returns its arguments")
def echo(**kw):
    return kw


@dev.service("counter", idempotent=False, doc="Increments and returns a counter")
def counter():
    count[0] += 1
    return count[0]


@dev.service("memtotal")
def memtotal():
    return micropython.mem_total()


dev.run()
