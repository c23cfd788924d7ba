# A board app with plain-function services only (served from the poll loop, without asyncio) into which
# MemoryErrors are injected, as a heap that the app fills for a while would raise them: `oom` raises MemoryError, and
# every send of the device (its error answer, announcement renewals, replies) raises it too until an app timer sees
# that `ms` have passed and frees the heap. Before any of that, the serving loop's first poller cannot be made:
# select.poll() runs out of memory once. argv: name key_hex port state_dir lease_ms
import sys
import select
from device import Device
from device.port import ticks_ms, ticks_add, ticks_diff

dev = Device(sys.argv[1], sys.argv[2], iface="127.0.0.1", port=int(sys.argv[3]), state_dir=sys.argv[4],
             lease_ms=int(sys.argv[5]))
full_until = [None]  # while set, the heap is "full"
ticked = [0]
send = dev._face.send


def failing_send(data):
    if full_until[0] is not None:
        raise MemoryError("injected")
    return send(data)


dev._face.send = failing_send


class FailingSelect:
    # The select module as the serving loop imports it (sys.modules is looked in first), whose first poll() fails.
    POLLIN = select.POLLIN
    failed = False

    def poll(self):
        sys.modules["select"] = select
        if FailingSelect.failed:
            return select.poll()
        FailingSelect.failed = True
        raise MemoryError("injected")


sys.modules["select"] = FailingSelect()


@dev.service("temperature", cache_ms=2000)
def temperature():
    return 21.5


@dev.service("oom")
def oom(ms=300):
    full_until[0] = ticks_add(ticks_ms(), ms)
    raise MemoryError("injected")


@dev.service("oom_timer")
def oom_timer():
    ticked[0] = -1  # the timer raises MemoryError once
    return True


@dev.service("ticked")
def get_ticked():
    return ticked[0]


@dev.every(50)
def tick():
    if full_until[0] is not None and ticks_diff(ticks_ms(), full_until[0]) >= 0:
        full_until[0] = None  # the app frees the heap
    if ticked[0] < 0:
        ticked[0] = 0
        raise MemoryError("injected")
    ticked[0] += 1


dev.run()
