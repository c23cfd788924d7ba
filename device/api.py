# The app's calls on a Device that many apps never make: dev.publish, dev.log, dev.log_print, dev.sleep,
# dev.describe and dev.stop (declaring services and timers is device/control.py's). Device.__getattr__ finds them here
# (device/runtime.py), so their code is in the heap only while an app uses them: loaded by the first call and
# released with the other cold modules (runtime.release()). A board pays about 90 bytes of heap per function a
# loaded .mpy module holds, whether it is called or not.
from device.port import ticks_ms

_API = ("publish", "log", "log_print", "sleep", "describe", "stop")


def method(dev, name):
    # dev.<name>: the function of this API called on dev; AttributeError for any other name, as Python's own.
    if name not in _API:
        raise AttributeError(name)
    fn = globals()[name]
    return lambda *args, **kw: fn(dev, *args, **kw)


def publish(dev, topic, value, retain=True):
    # Send value on topic (relative to the device); delivered at least once to the gateway (device/outbox.py).
    from device.outbox import reports
    reports(dev).publish(topic, value, retain)


def log(dev, level, msg):
    # Keep msg for the gateway at level (10 debug, 20 info, 30 warning, 40 error, or the name): `ndn-edge logs`
    # shows it, with the trace id of the call it was logged in (device/log.py).
    from device import log
    log.entry(dev, level, msg)


def log_print(dev, on=True):
    # Also log what the app prints, at INFO (print() still prints).
    from device import log
    log.capture(dev, on)


def sleep(dev, seconds):
    # Announce sleeping, close the socket, sleep, wake and announce; done by the serving loop.
    dev._sleep_ms = int(seconds * 1000)
    dev._due = ticks_ms()


def describe(dev):
    # The service descriptions, as `_desc` answers them (device/derive.py).
    from device import derive
    from device.runtime import release
    d = derive.describe(dev)
    release()
    return d


def stop(dev):
    # End run() or serve(): the serving loop leaves at its next wake-up, which this causes.
    dev._running = False
    if dev._face.sock is not None:
        dev._face.send(b"")  # wakes the receive loop through multicast loopback
