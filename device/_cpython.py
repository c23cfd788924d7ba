# CPython stand-ins for MicroPython built-ins, imported only when running on CPython.
import time

_PERIOD = 1 << 30
_HALF = 1 << 29


def ticks_ms():
    return time.monotonic_ns() // 1000000 & (_PERIOD - 1)


def ticks_add(t, delta):
    return (t + delta) & (_PERIOD - 1)


def ticks_diff(a, b):
    # Same wrap-around arithmetic as MicroPython's, so code paths are identical.
    return ((a - b + _HALF) & (_PERIOD - 1)) - _HALF


def print_exc(e):
    import traceback
    traceback.print_exception(type(e), e, e.__traceback__)


def is_coroutine(fn):
    return bool(getattr(getattr(fn, "__code__", None), "co_flags", 0) & 0x80)  # CO_COROUTINE
