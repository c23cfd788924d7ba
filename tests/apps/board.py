# Test board app: runs on MicroPython (and CPython). argv: name key_hex port state_dir [lease_ms]
import sys
import asyncio
from device import Device, ServiceError

name, key, port, state = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
lease_ms = int(sys.argv[5]) if len(sys.argv) > 5 else 60000
dev = Device(name, key, iface="127.0.0.1", port=port, state_dir=state, lease_ms=lease_ms)
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


dev.run()
