# CBOR (RFC 8949) subset codec for the device runtime; runs on MicroPython and CPython.
# Supported: ints (64-bit range), bytes, text, arrays, maps, false/true/null, floats.
# Definite lengths only; no tags. Encoder writes floats as doubles; decoder accepts half/single/double.
import struct

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

from device.errors import MalformedError

_MAX_DEPTH = const(16)  # deepest allowed nesting of arrays/maps (top-level container = 1)
_UINT_MAX = const(0xFFFFFFFFFFFFFFFF)


# Append the initial byte for `major` with argument n (0 <= n < 2**64) in its shortest form.
def _head(out, major, n):
    if n < 24:
        out.append((major << 5) | n)
        return
    ai = 24
    w = 1
    while n >> (w << 3):  # widths 1, 2, 4, 8 -> additional info 24..27
        ai += 1
        w <<= 1
    out.append((major << 5) | ai)
    out.extend(n.to_bytes(w, 'big'))


def _enc(out, obj, depth):
    # bool before int: True/False are ints on both interpreters.
    if obj is False:
        out.append(0xF4)
    elif obj is True:
        out.append(0xF5)
    elif obj is None:
        out.append(0xF6)
    elif isinstance(obj, int):
        if not -1 - _UINT_MAX <= obj <= _UINT_MAX:
            raise ValueError('cbor: int %d out of range' % obj)
        if obj >= 0:
            _head(out, 0, obj)
        else:
            _head(out, 1, -1 - obj)
    elif isinstance(obj, float):
        out.append(0xFB)
        out.extend(struct.pack('>d', obj))
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        if isinstance(obj, memoryview):
            obj = bytes(obj)  # len() of a memoryview counts items, not bytes
        _head(out, 2, len(obj))
        out.extend(obj)
    elif isinstance(obj, str):
        b = obj.encode('utf-8')
        _head(out, 3, len(b))
        out.extend(b)
    elif isinstance(obj, (list, tuple, dict)):
        depth += 1
        if depth > _MAX_DEPTH:
            raise ValueError('cbor: nesting deeper than %d' % _MAX_DEPTH)
        if isinstance(obj, dict):
            _head(out, 5, len(obj))
            for k in obj:
                _enc(out, k, depth)
                _enc(out, obj[k], depth)
        else:
            _head(out, 4, len(obj))
            for x in obj:
                _enc(out, x, depth)
    else:
        raise TypeError('cbor: cannot encode %s' % type(obj).__name__)


def dumps(obj):
    out = bytearray()
    _enc(out, obj, 0)
    return bytes(out)


def _bad(msg):
    raise MalformedError('cbor: ' + msg)


# Check that `need` bytes are available at offset i, before anything of that size is built.
def _room(mv, i, need):
    left = len(mv) - i
    if need > left:
        _bad('length %d exceeds %d remaining bytes at offset %d' % (need, left, i))


# Read the argument of the initial byte at offset i; returns (major, ai, argument, offset after header).
# For major 7 the argument of ai 25..27 is the raw float bits.
def _arg(mv, i):
    _room(mv, i, 1)
    ib = mv[i]
    major = ib >> 5
    ai = ib & 0x1F
    i += 1
    if ai < 24:
        return major, ai, ai, i
    if ai > 27:  # 28..30 reserved, 31 indefinite length / break
        _bad('additional info %d (major %d) not supported at offset %d' % (ai, major, i - 1))
    w = 1 << (ai - 24)
    _room(mv, i, w)
    n = 0
    for k in range(i, i + w):
        n = (n << 8) | mv[k]
    return major, ai, n, i + w


def _half(h):
    mant = h & 0x3FF
    exp = (h >> 10) & 0x1F
    if exp == 0:
        v = mant * 2.0 ** -24  # subnormal (or zero)
    elif exp == 31:
        v = float('nan') if mant else float('inf')
    else:
        v = (mant + 1024) * 2.0 ** (exp - 25)
    return -v if h & 0x8000 else v


# The decoder is split into small functions: MicroPython heap-allocates the frame of any call
# whose state exceeds 11 words, and _dec runs once per item.
def _dec(mv, i, depth):
    h = _arg(mv, i)
    major = h[0]
    if major == 0:
        return h[2], h[3]
    if major == 1:
        return -1 - h[2], h[3]
    if major == 2:
        _room(mv, h[3], h[2])
        return bytes(mv[h[3]:h[3] + h[2]]), h[3] + h[2]
    if major == 3:
        return _text(mv, h[3], h[2])
    if major == 4 or major == 5:
        return _items(mv, i, h, depth + 1)
    if major == 7:
        return _simple(mv, i, h)
    _bad('tag %d not supported at offset %d' % (h[2], i))  # major 6


def _text(mv, i, n):
    _room(mv, i, n)
    j = i + n
    try:
        s = str(mv[i:j], 'utf-8')
    except UnicodeError:
        s = None
    if s is not None and len(s) != n:
        # Non-ASCII. MicroPython's decoder only checks the byte structure: it lets overlong forms,
        # surrogates and code points over U+10FFFF through, so recount the shortest encoding.
        m = 0
        for c in s:
            c = ord(c)
            if 0xD7FF < c < 0xE000 or c > 0x10FFFF:
                m = -1
                break
            m += 1 if c < 0x80 else 2 if c < 0x800 else 3 if c < 0x10000 else 4
        if m != n:
            s = None
    if s is None:
        _bad('invalid UTF-8 in text of length %d at offset %d' % (n, i))
    return s, j


def _items(mv, start, h, depth):
    major, n, i = h[0], h[2], h[3]
    if depth > _MAX_DEPTH:
        _bad('nesting deeper than %d at offset %d' % (_MAX_DEPTH, start))
    # Every item takes at least one byte: bound the count before building anything.
    _room(mv, i, n if major == 4 else 2 * n)
    if major == 4:
        a = []
        for _ in range(n):
            x, i = _dec(mv, i, depth)
            a.append(x)
        return a, i
    d = {}
    for _ in range(n):
        at = i
        k, i = _dec(mv, i, depth)
        v, i = _dec(mv, i, depth)
        try:
            d[k] = v
        except TypeError:
            _bad('unhashable %s map key at offset %d' % (type(k).__name__, at))
    return d, i


def _simple(mv, start, h):
    ai, n, i = h[1], h[2], h[3]
    if ai == 20:
        return False, i
    if ai == 21:
        return True, i
    if ai == 22:
        return None, i
    if ai == 25:
        return _half(n), i
    if ai == 26:
        return struct.unpack_from('>f', mv, i - 4)[0], i
    if ai == 27:
        return struct.unpack_from('>d', mv, i - 8)[0], i
    _bad('simple value %d not supported at offset %d' % (n, start))


def loads(buf):
    mv = memoryview(buf)
    v, i = _dec(mv, 0, 0)
    if i != len(mv):
        _bad('%d trailing bytes at offset %d' % (len(mv) - i, i))
    return v
