# Test board app: runs on MicroPython (and CPython). argv: name key_hex port state_dir [lease_ms [gateway]]
import sys
import asyncio
from device import Device, ServiceError

name, key, port, state = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
lease_ms = int(sys.argv[5]) if len(sys.argv) > 5 else 60000
gateway = sys.argv[6] if len(sys.argv) > 6 else None  # "host:port": the unicast fallback
dev = Device(name, key, iface="127.0.0.1", port=port, state_dir=state, lease_ms=lease_ms, gateway=gateway)
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


@dev.service("calls")
def calls():
    return count[0]


@dev.service("add", args={"a": "int", "b": "int"}, result="int")
def add(a, b):
    return a + b


@dev.service("fail")
def fail():
    raise RuntimeError("boom")


@dev.service("refuse")
def refuse():
    raise ServiceError("PERMISSION_DENIED", "not today")


@dev.service("slow")
async def slow(ms=10):
    await asyncio.sleep(ms / 1000)
    return ms


@dev.service("secret", private=True)
def secret(x=0):
    return {"x": x, "code": 1234}


notes = []
ticking = [False]


@dev.service("note", doc="Notification target: remembers its arguments")
def note(**kw):
    notes.append(kw)


@dev.service("notes")
def get_notes():
    return notes


@dev.service("work", long_running=True, args={"steps": "int", "step_ms": "int"})
async def work(op, steps=3, step_ms=20):
    for i in range(steps):
        await asyncio.sleep(step_ms / 1000)
        op.progress((i + 1) / steps)
    return {"steps": steps}


@dev.service("ticks", doc="Start publishing `tick` every 100 ms")
def ticks(on=True):
    ticking[0] = on
    return on


@dev.every(100)
def tick():
    if ticking[0]:
        dev.publish("tick", ticks_sent.append(1) or len(ticks_sent))


ticks_sent = []


@dev.service("nap")
def nap(ms=300):
    dev.sleep(ms / 1000)
    return ms


dev.run()
