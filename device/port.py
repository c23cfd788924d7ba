# What differs between MicroPython ports (unix, ESP32, RP2) and CPython, in one place:
# ticks, free heap, socket option numbers, and waiting for a readable socket inside asyncio.
import sys
import time

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):
        return x

MICROPYTHON = sys.implementation.name == "micropython"

_TICKS_PERIOD = const(1 << 30)
_TICKS_HALF = const(1 << 29)

if hasattr(time, "ticks_ms"):
    ticks_ms = time.ticks_ms
    ticks_add = time.ticks_add
    ticks_diff = time.ticks_diff
else:
    # CPython: the same wrap-around arithmetic as MicroPython, so code paths are identical.
    def ticks_ms():
        return time.monotonic_ns() // 1000000 & (_TICKS_PERIOD - 1)

    def ticks_add(t, delta):
        return (t + delta) & (_TICKS_PERIOD - 1)

    def ticks_diff(a, b):
        return ((a - b + _TICKS_HALF) & (_TICKS_PERIOD - 1)) - _TICKS_HALF


def mem_free():
    import gc
    f = getattr(gc, "mem_free", None)
    return f() if f else None


def urandom(n):
    import os
    return os.urandom(n)


def random_below(n):
    # Uniform-enough integer in [0, n) for jitter and query back-off; n < 2**16.
    b = urandom(2)
    return ((b[0] << 8) | b[1]) % n if n > 0 else 0


# IPv4 multicast socket options. CPython and some MicroPython ports export them; the unix port
# exports only IP_ADD_MEMBERSHIP, and lwIP ports (ESP32, RP2) use their own numbering.
def mcast_options(socket):
    add = getattr(socket, "IP_ADD_MEMBERSHIP", None)
    if add == 3:  # lwIP: TTL 5, IF 6, LOOP 7
        return 3, 5, 6, 7
    if add == 12:  # BSD, macOS
        return 12, 10, 9, 11
    # Linux numbering (the unix port on Linux, CPython on Linux)
    return (add or 35,
            getattr(socket, "IP_MULTICAST_TTL", 33),
            getattr(socket, "IP_MULTICAST_IF", 32),
            getattr(socket, "IP_MULTICAST_LOOP", 34))


def ip4(text):
    # "a.b.c.d" -> 4 bytes; ports differ in whether inet_aton/inet_pton exist.
    parts = text.split(".")
    if len(parts) != 4:
        raise ValueError("not an IPv4 address: %r" % text)
    return bytes([int(p) for p in parts])


async def read_datagram(sock, buf, reader):
    # Wait until `sock` is readable, then read one datagram into `buf`; returns its length (0: none).
    if MICROPYTHON:
        n = await reader.readinto(buf)
        return n or 0
    import asyncio
    loop = asyncio.get_running_loop()
    while True:
        try:
            return sock.recv_into(buf)
        except BlockingIOError:
            pass
        fut = loop.create_future()
        fd = sock.fileno()
        loop.add_reader(fd, lambda: fut.done() or fut.set_result(None))
        try:
            await fut
        finally:
            loop.remove_reader(fd)


def stream_reader(sock):
    # MicroPython's asyncio wraps any pollable object; CPython needs nothing.
    if MICROPYTHON:
        import asyncio
        return asyncio.StreamReader(sock)
    return None
