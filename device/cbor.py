# CBOR (RFC 8949) subset codec for the device runtime; runs on MicroPython and CPython.
# Supported: ints (64-bit range), bytes, text, arrays, maps, false/true/null, floats.
# Definite lengths only; no tags. Encoder writes floats as doubles; decoder accepts half/single/double.
# encode(buf, i, obj) writes into a preallocated buffer; dumps(obj) returns bytes; loads(buf) raises MalformedError.
#
# Written to allocate little on MicroPython: the decoder keeps its input and cursor in module globals instead of
# returning (value, offset) tuples, and the encoder writes with struct.pack_into and slice assignment. Each
# function keeps within the 11 words of state (arguments, locals, value stack; a try block takes 3 more) that
# MicroPython keeps off the heap, so there is no for loop or try block where it would push one over. Few
# functions and short messages: the compiled module is heap once imported. Not re-entrant: one call at a time.
# Module state, set by every call: encoder _o (output), _d (depth), _g (1: _o may grow, for dumps);
# decoder _b (memoryview of the input), _i (offset of the next byte).
import struct

from device.errors import MalformedError


# Write the head for major type bits mt (major << 5) and argument n (0 <= n < 2**64) in its shortest form at
# offset i of _o; returns the offset after it, or for bytes and text after the n bytes that follow it.
# Comparisons and pack_into make no big ints on 32-bit boards.
def _head(i, mt, n):
    w = (n > 23) + (n > 0xFF) + (n > 0xFFFF) + (n > 0xFFFFFFFF)  # 0: in the initial byte; 1..4: 1..8 bytes
    j = i + 1 + (1 << w >> 1) + (mt >> 6 == 1 and n)
    if j > len(_o):
        if not _g:
            _bad('does not fit', i, ValueError)
        _o.extend(bytes(j))  # at least doubles
    if w:
        struct.pack_into(('>B', '>H', '>I', '>Q')[w - 1], _o, i + 1, n)
        n = 23 + w
    _o[i] = mt + n
    return j


def _enc(i, x):
    global _d
    if x is None or x is True or x is False:  # before int: bools are ints
        return _head(i, 0xE0, 22 if x is None else 20 + x)
    if isinstance(x, int):
        k = 0
        if x < 0:
            k = 0x20
            x = ~x
        if x > 0xFFFFFFFFFFFFFFFF:
            _bad('int out of range', i, ValueError)
        return _head(i, k, x)
    if isinstance(x, float):
        _head(i, 0x40, 8)  # makes room for 9 bytes (the head of 8 bytes of payload), then 0xFB and the double
        struct.pack_into('>Bd', _o, i, 0xFB, x)
        return i + 9
    k = 0x40
    if isinstance(x, str):
        k = 0x60
        x = x.encode()
    elif isinstance(x, memoryview):
        x = bytes(x)  # len() of a memoryview counts items, not bytes
    if isinstance(x, bytes) or isinstance(x, bytearray):
        i = _head(i, k, len(x))
        _o[i - len(x):i] = x
        return i
    k = 0xA0
    if not isinstance(x, dict):
        k = 0x80
        if not (isinstance(x, list) or isinstance(x, tuple)):
            _bad('cannot encode ' + type(x).__name__, i, TypeError)
    _d += 1
    if _d > 16:
        _bad('nesting deeper than 16', i, ValueError)
    i = _head(i, k, len(x))
    for k in x:
        i = _enc(i, k)
        if isinstance(x, dict):
            i = _enc(i, x[k])
    _d -= 1
    return i


# Write the encoding of obj into the bytearray buf at offset i; returns the offset after it. If it does not
# fit, raises ValueError without writing past the end (buf[i:] may then hold the start of the encoding).
# TypeError for an unencodable type, ValueError for an int out of range or nesting deeper than 16.
# (g=1 is for dumps: grow buf instead of raising.)
def encode(buf, i, obj, g=0):
    global _o, _d, _g
    _o = buf
    _d = 0
    _g = g
    i = _enc(i, obj)
    _o = None
    return i


def dumps(obj):
    b = bytearray(32)  # grown by _head as needed, then cut to the encoding
    b[encode(b, 0, obj, 1):] = b''
    return bytes(b)


# Raise e (MalformedError unless given) saying what x went wrong at offset i.
def _bad(x, i, e=MalformedError):
    raise e('cbor: %s at offset %d' % (x, i))


# Check that n bytes are left at _i, before anything of that size is built.
def _need(n):
    k = len(_b) - _i
    if n > k:
        _bad('length %d exceeds %d left' % (n, k), _i)


def _dec(d):
    global _i
    s = _i
    _need(1)
    m = _b[s]  # initial byte
    n = m & 31
    _i += 1
    if n > 23:  # the argument follows in 1, 2, 4 or 8 bytes
        if n > 27:  # 28..30 reserved, 31 indefinite length / break
            _bad('unsupported %s %d' % ('additional info', n), s)
        v = 1 << n - 24
        _need(v)
        if m > 0xF9:  # a single or double float
            n = _i
            _i += v
            v = ('>f', '>d')[v >> 3]
            return struct.unpack_from(v, _b, n)[0]
        n = 0
        while v:
            n = n << 8 | _b[_i]
            _i += 1
            v -= 1
    m >>= 5
    if m < 2:
        return ~n if m else n
    if m < 4:  # bytes, text
        _need(n)
        v = _b[_i:_i + n]
        if m == 2:
            v = bytes(v)
        else:
            v = str(v, 'utf-8')  # a UnicodeError is reported by loads, at _i
            if len(v) != n:
                # Non-ASCII. MicroPython's decoder checks only the byte structure: it lets overlong forms,
                # surrogates and code points over U+10FFFF through. Check each lead byte with the next one.
                m = 0
                s = _i + n
                while s > _i:  # backwards: m holds a byte and the one after it
                    s -= 1
                    m = _b[s] << 8 | m >> 8
                    # C0/C1 xx, E0 80..9F, ED A0..BF, F0 80..8F, F4 90.. and F5..F7 xx
                    if m >> 9 == 0x60 or m >> 5 == 0x704 or m >> 5 == 0x76D or m >> 4 == 0xF08 or m > 0xF48F:
                        _bad('invalid UTF-8', _i)
        _i += n
        return v
    if m == 7:
        v = _b[s] & 31
        if v == 25:
            return _half(n)
        if 19 < v < 23:
            return (False, True, None)[v - 20]
    if m > 5:
        _bad('unsupported %s %d' % (('tag', 'simple value')[m - 6], n), s)
    if d > 15:
        _bad('nesting deeper than 16', s)
    # Every item takes at least one byte: bound the count before building anything.
    _need(n << m - 4)
    d += 1
    if m == 4:
        v = []
        while n:
            v.append(_dec(d))
            n -= 1
        return v
    v = {}
    while n:
        s = _i
        m = _dec(d)
        x = _dec(d)
        if _b[s] >> 6 == 2:  # an array or a map
            _bad('unhashable map key', s)
        v[m] = x
        n -= 1
    return v


# The value of the half float (IEEE 754 binary16) n. No float literal of infinity here or anywhere in the
# runtime: MicroPython's freezer writes a float constant as C text, and `inf` is not C.
def _half(n):
    e = n >> 10 & 31
    f = n & 0x3FF
    if e == 31:
        v = float('nan' if f else 'inf')
    else:
        v = (f | (e > 0) << 10) * 2.0 ** ((e or 1) - 25)
    return -v if n >> 15 else v


def loads(buf):
    global _b, _i
    _b = memoryview(buf)
    _i = 0
    try:
        v = _dec(0)
    except ValueError:  # the UnicodeError of str(): nothing else in _dec raises one
        _bad('invalid UTF-8', _i)
    if _i != len(_b):
        _bad('trailing bytes', _i)
    _b = None
    return v
