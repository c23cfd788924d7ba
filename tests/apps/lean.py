# A board app with plain-function services only: served from the poll loop, without asyncio.
import sys
from device import Device

dev = Device(sys.argv[1], sys.argv[2], iface="127.0.0.1", port=int(sys.argv[3]), state_dir=sys.argv[4])
count = [0]


@dev.service("temperature", cache_ms=2000)
def temperature():
    return 21.5


@dev.service("counter", idempotent=False)
def counter():
    count[0] += 1
    return count[0]


@dev.service("reading", cache_ms=2000)
def reading(n=0):
    # cacheable per argument: one entry per n (tests/test_hostile.py, cache avalanche)
    return n


@dev.service("nap")
def nap(ms=100):
    dev.sleep(ms / 1000)  # done by the serving loop after this answer
    return ms


@dev.service("modules")
def modules():
    return sorted(k for k in sys.modules if k.startswith("device") or k == "asyncio")


dev.run()
