# What differs between MicroPython ports (unix, ESP32, RP2) and CPython: ticks, free heap (async detection is
# device/control.py's, the socket options are device/netopen.py's: each is needed only there). CPython-only
# code lives in device/_cpython.py so that its bytecode is never loaded on a board.
import gc
import os
import sys
import time

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):
        return x

MICROPYTHON = sys.implementation.name == "micropython"

if hasattr(time, "ticks_ms"):
    ticks_ms = time.ticks_ms
    ticks_add = time.ticks_add
    ticks_diff = time.ticks_diff
else:
    from device._cpython import ticks_ms, ticks_add, ticks_diff


def mem_free():
    f = getattr(gc, "mem_free", None)
    return f() if f else None


collect = gc.collect  # called when a MemoryError was caught: no frame, no import


def urandom(n):
    # (os imported above, not here: an import statement of an extensible built-in module, such as os, looks
    # for a file of that name on every path entry each time it runs, a dozen failed stat calls per report)
    return os.urandom(n)


def random_below(n):
    # Uniform-enough integer in [0, n) for jitter and query back-off; n < 2**16.
    b = urandom(2)
    return ((b[0] << 8) | b[1]) % n if n > 0 else 0


def print_exc(e):
    if hasattr(sys, "print_exception"):
        sys.print_exception(e)
    else:
        from device._cpython import print_exc
        print_exc(e)
