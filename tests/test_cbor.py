"""device/cbor.py: RFC 8949 vectors, cbor2 interop, fuzzing, rejections, and the same checks on real MicroPython."""
import math
import random
import shutil
import struct
import subprocess
import tracemalloc

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device import cbor
from device.errors import MalformedError
from tests.support import ROOT, find_mpy_cross, micropython_required

# ---------------------------------------------------------------------------------------------------------------
# Vectors

# RFC 8949 Appendix A items for which our encoder's output is the preferred (shortest-argument, double-float) form:
# checked in both directions.
RFC_BOTH = [
    ("00", 0), ("01", 1), ("0a", 10), ("17", 23), ("1818", 24), ("1819", 25), ("1864", 100), ("1903e8", 1000),
    ("1a000f4240", 1000000), ("1b000000e8d4a51000", 1000000000000), ("1bffffffffffffffff", 2**64 - 1),
    ("3bffffffffffffffff", -2**64), ("20", -1), ("29", -10), ("3863", -100), ("3903e7", -1000),
    ("fb3ff199999999999a", 1.1), ("fb7e37e43c8800759c", 1.0e300), ("fbc010666666666666", -4.1),
    ("f4", False), ("f5", True), ("f6", None),
    ("40", b""), ("4401020304", b"\x01\x02\x03\x04"),
    ("60", ""), ("6161", "a"), ("6449455446", "IETF"), ("62225c", "\"\\"), ("62c3bc", "\u00fc"),
    ("63e6b0b4", "\u6c34"), ("64f0908591", "\U00010151"),
    ("80", []), ("83010203", [1, 2, 3]), ("8301820203820405", [1, [2, 3], [4, 5]]),
    ("98190102030405060708090a0b0c0d0e0f101112131415161718181819", list(range(1, 26))),
    ("a0", {}), ("a201020304", {1: 2, 3: 4}), ("a26161016162820203", {"a": 1, "b": [2, 3]}),
    ("826161a161626163", ["a", {"b": "c"}]),
    ("a56161614161626142616361436164614461656145", {"a": "A", "b": "B", "c": "C", "d": "D", "e": "E"}),
]

# Half/single floats (and doubles our encoder never writes for these values): decode only.
RFC_DECODE_FLOATS = [
    ("f90000", 0.0), ("f98000", -0.0), ("f93c00", 1.0), ("f93e00", 1.5), ("f97bff", 65504.0),
    ("fa47c35000", 100000.0), ("fa7f7fffff", 3.4028234663852886e38), ("f90001", 5.960464477539063e-08),
    ("f90400", 6.103515625e-05), ("f9c400", -4.0), ("f97c00", math.inf), ("f9fc00", -math.inf),
    ("fa7f800000", math.inf), ("faff800000", -math.inf), ("fb7ff0000000000000", math.inf),
    ("fbfff0000000000000", -math.inf), ("f97e00", math.nan), ("fa7fc00000", math.nan),
    ("fb7ff8000000000000", math.nan), ("f93555", 0.333251953125), ("f903ff", 6.097555160522461e-05),
]

# Well-formed but not in preferred form (over-long arguments): still decoded.
NON_PREFERRED = [("1800", 0), ("190017", 23), ("1a00000001", 1), ("1b0000000000000000", 0), ("3800", -1),
                 ("5800", b""), ("780161", "a"), ("9800", []), ("b800", {})]

# Every rejection the decoder must make, by kind.
MALFORMED = {
    "empty": "",
    "tag 0": "c074323031332d30332d32315432303a30343a30305a",
    "tag 1": "c11a514b67b0",
    "tag 32": "d82076687474703a2f2f7777772e6578616d706c652e636f6d",
    "tag alone": "c0",
    "indefinite bytes": "5f42010243030405ff",
    "indefinite text": "7f657374726561646d696e67ff",
    "indefinite array": "9f018202039f0405ffff",
    "indefinite map": "bf61610161629f0203ffff",
    "break alone": "ff",
    "reserved 28 uint": "1c", "reserved 29 nint": "3d", "reserved 30 bytes": "5e", "reserved 28 text": "7c",
    "reserved 29 array": "9d", "reserved 30 map": "be", "reserved 28 tag": "dc", "reserved 28 simple": "fc",
    "reserved 29 simple": "fd", "reserved 30 simple": "fe",
    "simple 0": "e0", "simple 19": "f3", "undefined": "f7", "simple 24 two-byte low": "f818",
    "simple 32": "f820", "simple 255": "f8ff",
    "array nesting 17": "81" * 17 + "00",
    "map nesting 17": "a100" * 17 + "00",
    "mixed nesting 17": "8181a1008181a100818181a10081818181a1008181" + "00",
    "bytes length > remaining": "5a003d0900616263",
    "huge bytes length": "5b00000000ffffffff",
    "huge text length": "7bffffffffffffffff61",
    "huge array length": "9bffffffffffffffff00",
    "huge map length": "bb7fffffffffffffff0000",
    "array count > remaining": "9a0100000001",
    "map count > remaining": "a301020304",
    "truncated uint8 arg": "18", "truncated uint16 arg": "1901", "truncated uint32 arg": "1a000001",
    "truncated uint64 arg": "1b00000000000000", "truncated half": "f900", "truncated single": "fa3f80",
    "truncated double": "fb3ff19999", "truncated text": "6261", "truncated array": "8201",
    "truncated map": "a101",
    "utf8 bad start": "61ff", "utf8 lone continuation": "6180", "utf8 truncated seq": "62c328",
    "utf8 overlong nul": "62c080", "utf8 overlong 3-byte": "63e080af", "utf8 surrogate": "63eda080",
    "utf8 surrogate pair": "66eda080edb080", "utf8 above 10ffff": "64f4908080", "utf8 lead f5": "64f5808080",
    "unhashable array key": "a18000", "unhashable map key": "a1a00000",
    "trailing bytes": "0000", "trailing after map": "a0f6",
}

DEEP_OK = ["81" * 16 + "00", "a100" * 16 + "00"]


def h(s):
    return bytes.fromhex(s)


def norm(v):
    """Type-strict structural form: bool/int/float (by bits) and -0.0/0.0 are distinguished."""
    if v is None or v is True or v is False:
        return ("const", v)
    if type(v) is float:
        return ("float", "nan" if v != v else struct.pack(">d", v))
    if isinstance(v, (list, tuple)):
        return ("list", [norm(x) for x in v])
    if isinstance(v, dict):
        return ("map", [(norm(k), norm(x)) for k, x in v.items()])
    return (type(v).__name__, v)


# ---------------------------------------------------------------------------------------------------------------
# 1. RFC 8949 Appendix A

@pytest.mark.parametrize("hexed,value", RFC_BOTH, ids=[x[0][:20] for x in RFC_BOTH])
def test_rfc_vectors_both_directions(hexed, value):
    assert cbor.dumps(value).hex() == hexed
    assert norm(cbor.loads(h(hexed))) == norm(value)


@pytest.mark.parametrize("hexed,value", RFC_DECODE_FLOATS, ids=[x[0] for x in RFC_DECODE_FLOATS])
def test_rfc_float_decoding(hexed, value):
    got = cbor.loads(h(hexed))
    assert type(got) is float
    if math.isnan(value):
        assert math.isnan(got)
    else:
        assert got == value and math.copysign(1.0, got) == math.copysign(1.0, value)


def test_all_half_floats_match_struct_e():
    # Our hand-written half decoder against CPython's struct 'e' for every one of the 65536 bit patterns.
    for bits in range(0x10000):
        raw = bits.to_bytes(2, "big")
        got = cbor.loads(b"\xf9" + raw)
        want = struct.unpack(">e", raw)[0]
        if math.isnan(want):
            assert math.isnan(got), hex(bits)
        else:
            assert struct.pack(">d", got) == struct.pack(">d", want), hex(bits)


def test_floats_always_encode_as_doubles():
    assert cbor.dumps(0.0).hex() == "fb0000000000000000"
    assert cbor.dumps(-0.0).hex() == "fb8000000000000000"
    assert cbor.dumps(1.5).hex() == "fb3ff8000000000000"
    assert cbor.dumps(math.inf).hex() == "fb7ff0000000000000"
    assert cbor.dumps(-math.inf).hex() == "fbfff0000000000000"
    assert cbor.dumps(math.nan)[:1] == b"\xfb" and math.isnan(cbor.loads(cbor.dumps(math.nan)))


@pytest.mark.parametrize("hexed,value", NON_PREFERRED, ids=[x[0] for x in NON_PREFERRED])
def test_non_preferred_widths_decode(hexed, value):
    assert norm(cbor.loads(h(hexed))) == norm(value)


def test_integer_width_boundaries():
    cases = [(23, "17"), (24, "1818"), (255, "18ff"), (256, "190100"), (65535, "19ffff"), (65536, "1a00010000"),
             (2**32 - 1, "1affffffff"), (2**32, "1b0000000100000000"), (-24, "37"), (-25, "3818"),
             (-256, "38ff"), (-257, "390100"), (-2**32, "3affffffff"), (-2**32 - 1, "3b0000000100000000")]
    for value, hexed in cases:
        assert cbor.dumps(value).hex() == hexed
        assert cbor.loads(h(hexed)) == value
        assert cbor2.dumps(value).hex() == hexed


def test_input_buffer_types_and_views_with_offset():
    data = h("a26161016162820203")
    want = {"a": 1, "b": [2, 3]}
    assert cbor.loads(data) == want
    assert cbor.loads(bytearray(data)) == want
    assert cbor.loads(memoryview(data)) == want
    # A view that does not start at offset 0 of its buffer: indices are relative to the view.
    assert cbor.loads(memoryview(b"\xff\xff" + data + b"\xff")[2:-1]) == want
    assert type(cbor.loads(memoryview(h("43010203")))) is bytes


def test_encoder_input_types():
    assert cbor.dumps(bytearray(b"ab")) == cbor.dumps(b"ab") == cbor.dumps(memoryview(b"ab")) == h("426162")
    assert cbor.dumps((1, (2, 3))) == cbor.dumps([1, [2, 3]])
    assert cbor.dumps([True, False, None, 1]).hex() == "84f5f4f601"  # bools are not encoded as ints
    assert type(cbor.dumps(1)) is bytes


def test_encoder_rejections():
    with pytest.raises(ValueError, match="out of range"):
        cbor.dumps(2**64)
    with pytest.raises(ValueError, match="out of range"):
        cbor.dumps(-2**64 - 1)
    with pytest.raises(ValueError, match="out of range"):
        cbor.dumps({"k": [2**70]})
    for bad, name in (({1}, "set"), (object(), "object"), (1j, "complex"), (frozenset(), "frozenset")):
        with pytest.raises(TypeError, match=name):
            cbor.dumps(bad)
    with pytest.raises(TypeError, match="set"):
        cbor.dumps({"a": [{2}]})
    deep = 0
    for _ in range(16):
        deep = [deep]
    assert cbor.loads(cbor.dumps(deep)) == deep
    with pytest.raises(ValueError, match="16"):
        cbor.dumps([deep])
    with pytest.raises(ValueError, match="16"):
        cbor.dumps({"x": [deep]})
    cyclic = []
    cyclic.append(cyclic)
    with pytest.raises(ValueError):
        cbor.dumps(cyclic)


# ---------------------------------------------------------------------------------------------------------------
# 2. Interop with cbor2

INT64 = st.integers(min_value=-2**64, max_value=2**64 - 1)
SCALARS = st.one_of(INT64, st.floats(allow_nan=False, allow_infinity=False), st.text(), st.binary(),
                    st.booleans(), st.none())
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=8), inner, max_size=5)),
    max_leaves=25,
)


def depth(v):
    if isinstance(v, list):
        return 1 + max((depth(x) for x in v), default=0)
    if isinstance(v, dict):
        return 1 + max((depth(x) for x in v.values()), default=0)
    return 0


@settings(max_examples=300, deadline=None)
@given(VALUES)
def test_our_dumps_is_read_by_cbor2(value):
    if depth(value) > 16:
        with pytest.raises(ValueError):
            cbor.dumps(value)
        return
    encoded = cbor.dumps(value)
    assert norm(cbor2.loads(encoded)) == norm(value)
    # cbor2 (non-canonical) also writes shortest ints and double floats: the bytes are identical.
    assert encoded == cbor2.dumps(value)


@settings(max_examples=300, deadline=None)
@given(VALUES, st.booleans())
def test_cbor2_dumps_is_read_by_us(value, canonical):
    # canonical=True makes cbor2 write the smallest exact float (half/single) and sort map keys.
    encoded = cbor2.dumps(value, canonical=canonical)
    if depth(value) > 16:
        with pytest.raises(MalformedError):
            cbor.loads(encoded)
        return
    got = cbor.loads(encoded)
    if canonical:
        assert got == value and norm(cbor2.loads(encoded)) == norm(got)
    else:
        assert norm(got) == norm(value)


# ---------------------------------------------------------------------------------------------------------------
# 2b. encode(): into a preallocated buffer

FILL = 0xA5  # what a buffer holds before encode() writes into it


def check_encode_into(value, want):
    """encode() at offsets 0 and 3, into exactly enough room and into more. Into every smaller buffer it raises
    ValueError saying it does not fit, without resizing the buffer or writing before offset i, and what it wrote
    from i on is a prefix of the encoding (it writes a piece only after checking the piece fits)."""
    for i in (0, 3):
        end = i + len(want)
        for spare in (0, 5):
            buf = bytearray([FILL] * (end + spare))
            assert cbor.encode(buf, i, value) == end
            assert buf == bytearray([FILL] * i) + want + bytearray([FILL] * spare)
        for size in range(end):
            buf = bytearray([FILL] * size)
            with pytest.raises(ValueError, match=r"^cbor: does not fit at offset [0-9]+$"):
                cbor.encode(buf, i, value)
            assert len(buf) == size
            assert buf[:i] == bytearray([FILL] * min(i, size))
            written = buf[i:]
            k = 0
            while k < len(written) and written[k] == want[k]:
                k += 1
            assert written[k:] == bytearray([FILL] * (len(written) - k)), (i, size)


@settings(max_examples=150, deadline=None)
@given(VALUES)
def test_encode_matches_cbor2_and_never_overflows(value):
    if depth(value) > 16:
        with pytest.raises(ValueError, match="16"):
            cbor.encode(bytearray(4096), 0, value)
        return
    check_encode_into(value, cbor2.dumps(value))


@pytest.mark.parametrize("hexed,value", RFC_BOTH, ids=[x[0][:20] for x in RFC_BOTH])
def test_encode_rfc_vectors(hexed, value):
    check_encode_into(value, h(hexed))


def test_encode_api():
    buf = bytearray(8)
    i = cbor.encode(buf, 0, "a")
    i = cbor.encode(buf, i, -1)
    assert i == 3 and buf[:i] == h("616120")  # items one after another
    view = bytearray(12)
    assert cbor.encode(memoryview(view)[1:], 1, [1.5]) == 11  # any writable byte buffer
    assert view == h("0000" "81fb3ff8000000000000")
    assert cbor.encode(bytearray(2), 0, bytearray(b"a")) == 2 and cbor.encode(bytearray(2), 0, memoryview(b"a")) == 2
    with pytest.raises(ValueError) as info:
        cbor.encode(bytearray(3), 0, "abc")
    assert str(info.value) == "cbor: does not fit at offset 0"
    with pytest.raises(ValueError, match="does not fit"):
        cbor.encode(bytearray(4), 9, 0)  # offset past the end
    with pytest.raises(ValueError, match="out of range"):
        cbor.encode(bytearray(16), 0, [2**64])
    with pytest.raises(TypeError, match="set"):
        cbor.encode(bytearray(16), 0, {"a": {1}})
    cyclic = []
    cyclic.append(cyclic)
    with pytest.raises(ValueError, match="16"):
        cbor.encode(bytearray(64), 0, cyclic)
    # A failed call leaves no state behind: depth and buffer are per call.
    deep = 0
    for _ in range(16):
        deep = [deep]
    buf = bytearray(17)
    assert cbor.encode(buf, 0, deep) == 17 and cbor.loads(buf) == deep
    assert cbor.dumps(deep) == bytes(buf)


def test_encoder_error_messages():
    def message(kind, value):
        with pytest.raises(kind) as info:
            cbor.dumps(value)
        return str(info.value)

    assert message(ValueError, [0, 2**64]) == "cbor: int out of range at offset 2"
    assert message(TypeError, {"k": {1}}) == "cbor: cannot encode set at offset 3"
    deep = 0
    for _ in range(17):
        deep = [deep]
    assert message(ValueError, deep) == "cbor: nesting deeper than 16 at offset 16"


def test_dumps_grows_its_scratch():
    # dumps encodes into a 32-byte scratch that grows as needed: sizes around each step and head width.
    for n in (0, 1, 23, 24, 30, 31, 32, 33, 63, 64, 65, 255, 256, 1000, 65535, 65536, 70000):
        for value in (b"x" * n, "\u00fc" * n, [n] * min(n, 3000), {"k%d" % k: k for k in range(min(n, 500))}):
            assert cbor.dumps(value) == cbor2.dumps(value), (n, type(value))
    big = [[b"\x00" * 40] * 5] * 30
    assert cbor.dumps(big) == cbor2.dumps(big)


# ---------------------------------------------------------------------------------------------------------------
# 3. Fuzzing: a value or MalformedError, nothing else

def decode_or_malformed(data):
    try:
        value = cbor.loads(data)
    except MalformedError as e:
        assert str(e).startswith("cbor: ")
        return
    # Whatever decodes re-encodes (all decoded types are encodable) and decodes back to the same thing.
    assert norm(cbor.loads(cbor.dumps(value))) == norm(value)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_fuzz_random_bytes(data):
    decode_or_malformed(data)
    decode_or_malformed(memoryview(data))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(
    [b"\x18", b"\x19", b"\x1a", b"\x1b", b"\x5b", b"\x7b", b"\x9b", b"\xbb", b"\xf9", b"\xfa", b"\xfb", b"\x81",
     b"\xa1", b"\x61", b"\x62", b"\xc3", b"\xed", b"\xf4", b"\xff", b"\x00", b"\x80", b"\xa0", b"\x9f"]),
    max_size=24))
def test_fuzz_header_soup(chunks):
    # Random bytes rarely hit interesting headers; this mixes them densely.
    decode_or_malformed(b"".join(chunks))


@settings(max_examples=300, deadline=None)
@given(VALUES, st.data())
def test_fuzz_mutations_of_valid_encodings(value, data):
    canonical = data.draw(st.booleans())
    if depth(value) > 16:
        return
    encoded = cbor2.dumps(value, canonical=canonical)
    # Every strict prefix of one item is incomplete: always malformed.
    for cut in range(len(encoded)):
        with pytest.raises(MalformedError):
            cbor.loads(encoded[:cut])
    with pytest.raises(MalformedError, match="trailing"):
        cbor.loads(encoded + b"\x00")
    flipped = bytearray(encoded)
    flipped[data.draw(st.integers(0, len(encoded) - 1))] ^= data.draw(st.integers(1, 255))
    decode_or_malformed(bytes(flipped))


# ---------------------------------------------------------------------------------------------------------------
# 4. Rejections

@pytest.mark.parametrize("hexed", list(MALFORMED.values()), ids=list(MALFORMED))
def test_rejections(hexed):
    with pytest.raises(MalformedError) as info:
        cbor.loads(h(hexed))
    assert str(info.value).startswith("cbor: ")
    assert type(info.value.__context__) not in (IndexError, struct.error)


@pytest.mark.parametrize("hexed", DEEP_OK)
def test_depth_16_accepted(hexed):
    assert cbor.loads(h(hexed)) is not None


def test_rejection_messages_carry_values():
    def message(hexed):
        with pytest.raises(MalformedError) as info:
            cbor.loads(h(hexed))
        return str(info.value)

    assert message("5a003d0900616263") == "cbor: length 4000000 exceeds 3 left at offset 5"
    assert message("9bffffffffffffffff00") == "cbor: length 18446744073709551615 exceeds 1 left at offset 9"
    assert message("c11a514b67b0") == "cbor: unsupported tag 1 at offset 0"
    assert message("825f00") == "cbor: unsupported additional info 31 at offset 1"
    assert message("f7") == "cbor: unsupported simple value 23 at offset 0"
    assert message("f820") == "cbor: unsupported simple value 32 at offset 0"
    assert message("f814") == "cbor: unsupported simple value 20 at offset 0"  # false, but not in one byte
    assert message("0000") == "cbor: trailing bytes at offset 1"
    assert message("") == "cbor: length 1 exceeds 0 left at offset 0"
    assert message("8163eda080") == "cbor: invalid UTF-8 at offset 2"  # MicroPython's str() accepts it
    assert message("826100" "61ff") == "cbor: invalid UTF-8 at offset 4"  # every str() rejects it
    assert message("a18000") == "cbor: unhashable map key at offset 1"
    assert message("a2" "00f6" "a000") == "cbor: unhashable map key at offset 3"
    assert message("81" * 17 + "00") == "cbor: nesting deeper than 16 at offset 16"


def test_huge_declared_lengths_never_allocate():
    tracemalloc.start()
    try:
        for hexed in ("5b00000000ffffffff", "5bffffffffffffffff00", "7bffffffffffffffff61", "9bffffffffffffffff00",
                      "bbffffffffffffffff0000", "5a7fffffff", "825bffffffffffffffff"):
            with pytest.raises(MalformedError, match="exceeds"):
                cbor.loads(h(hexed))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


# ---------------------------------------------------------------------------------------------------------------
# 5. The real MicroPython

# Runs unchanged on both interpreters: a text form that compares across them (floats by bits, NaN as one).
NORM_SRC = r'''
import struct
def norm(v):
    if v is None or v is True or v is False:
        return repr(v)
    t = type(v)
    if t is int:
        return 'i%d' % v
    if t is float:
        return 'fnan' if v != v else 'f' + struct.pack('>d', v).hex()
    if t is bytes:
        return 'b' + v.hex()
    if t is str:
        return 's' + v.encode().hex()
    if t is list:
        return '[' + ','.join([norm(x) for x in v]) + ']'
    if t is dict:
        return '{' + ','.join(sorted([norm(k) + ':' + norm(v[k]) for k in v])) + '}'
    return '?' + repr(t)
'''
_ns = {}
exec(NORM_SRC, _ns)
mp_norm = _ns["norm"]

# Python literals evaluated by both interpreters; maps have at most one key (MicroPython's dict order differs).
ENCODE_LITERALS = [
    "0", "1", "23", "24", "100", "1000", "1000000", "1000000000000", "2**64-1", "-1", "-1000", "-2**64",
    "2**32", "-2**32-1", "255", "256", "65535", "65536", "1.1", "1.0e300", "-4.1", "0.0", "-0.0", "1.5",
    "5e-324", "True", "False", "None", "''", "'a'", "'IETF'", "'\\u00fc'", "'\\u6c34'", "'\\U00010151'",
    "'x' * 300", "b''", "b'\\x01\\x02\\x03\\x04'", "bytes(range(256))", "bytearray(b'ab')", "memoryview(b'cd')",
    "[]", "[1, 2, 3]", "[1, [2, 3], [4, 5]]", "list(range(1, 26))", "(1, (2, 'x'))", "{}", "{'a': 1}",
    "{1: 2}", "['a', {'b': 'c'}]", "{'k': [True, None, {'n': -7}]}", "[[[[[[[[[[[[[[[[0]]]]]]]]]]]]]]]]",
]


def random_value(rng, d=0):
    kind = rng.randrange(9 if d < 4 else 6)
    if kind == 0:
        return rng.choice([0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1, -1, -24, -25,
                           -2**32, -2**32 - 1, -2**64, rng.randrange(-2**64, 2**64)])
    if kind == 1:
        return rng.choice([0.5, 1.0, -2.0, 65504.0, 100000.0, 1e-7, 1.0e300,
                           struct.unpack(">d", rng.randbytes(8))[0], rng.uniform(-1e6, 1e6)])
    if kind == 2:
        return "".join(rng.choice("aZ0 \u00fc\u6c34\U0001f600\x00\u07ff\uffff") for _ in range(rng.randrange(12)))
    if kind == 3:
        return rng.randbytes(rng.randrange(30))
    if kind in (4, 5):
        return rng.choice([True, False, None, rng.randrange(-30, 30)])
    if kind in (6, 7):
        return [random_value(rng, d + 1) for _ in range(rng.randrange(5))]
    return {rng.choice(["a", "bb", "\u00fc", 7, -3, b"k"]) if i == 0 else "k%d" % i: random_value(rng, d + 1)
            for i in range(rng.randrange(4))}


def decode_vectors():
    rng = random.Random(8949)
    values = [random_value(rng) for _ in range(200)]
    encodings = [cbor2.dumps(v, canonical=c) for v in values for c in (False, True)]
    encodings += [h(x) for x, _ in RFC_BOTH + RFC_DECODE_FLOATS + NON_PREFERRED]
    encodings += [h(x) for x in DEEP_OK]
    return encodings


def mp_script(body):
    return NORM_SRC + "from device import cbor\nfrom device.errors import MalformedError\n" + body


def test_micropython_encodes_like_cbor2(run_mp):
    body = "for src in %r:\n    print(cbor.dumps(eval(src)).hex())\n" % (ENCODE_LITERALS,)
    lines = run_mp(mp_script(body)).split()
    assert len(lines) == len(ENCODE_LITERALS)
    for src, got in zip(ENCODE_LITERALS, lines):
        value = eval(src)
        assert got == cbor.dumps(value).hex(), src
        if isinstance(value, memoryview):
            value = bytes(value)  # cbor2 writes a memoryview as an array of ints
        if not isinstance(value, float) or math.isfinite(value):  # cbor2 writes inf/nan as halves
            assert got == cbor2.dumps(value).hex(), src


def test_micropython_multi_key_map_decodes_equal(run_mp):
    # MicroPython's dict is not insertion-ordered, so only the decoded value is comparable.
    src = "{'zeta': 1, 'alpha': [2], 'b': None, 'c': 'x', 'delta': -1.5}"
    out = run_mp(mp_script("print(cbor.dumps(%s).hex())\n" % src)).strip()
    assert cbor2.loads(h(out)) == eval(src)


def test_micropython_decodes_cbor2_encodings(run_mp):
    encodings = decode_vectors()
    body = ("import binascii\nfor x in %r:\n    print(norm(cbor.loads(binascii.unhexlify(x))))\n"
            % ([e.hex() for e in encodings],))
    lines = run_mp(mp_script(body)).splitlines()
    assert lines == [mp_norm(cbor.loads(e)) for e in encodings]


def test_micropython_rejections_match_cpython(run_mp):
    cases = [*list(MALFORMED.values()), "825f00", "8163eda080", "a18000"]
    body = ("for x in %r:\n"
            "    try:\n"
            "        cbor.loads(bytes.fromhex(x))\n"
            "        print('accepted')\n"
            "    except MalformedError as e:\n"
            "        print('M', e)\n"
            "    except Exception as e:\n"
            "        print('other', type(e).__name__, e)\n" % (cases,))
    lines = run_mp(mp_script(body)).splitlines()
    want = []
    for x in cases:
        with pytest.raises(MalformedError) as info:
            cbor.loads(h(x))
        want.append("M %s" % info.value)
    assert lines == want


def test_micropython_encoder_rejections(run_mp):
    body = ("for src in ['2**64', '-2**64-1', '{1}', 'object()', '[[[[[[[[[[[[[[[[[0]]]]]]]]]]]]]]]]]']:\n"
            "    try:\n"
            "        cbor.dumps(eval(src))\n"
            "        print('accepted')\n"
            "    except (TypeError, ValueError) as e:\n"
            "        print(type(e).__name__)\n")
    assert run_mp(mp_script(body)).split() == ["ValueError", "ValueError", "TypeError", "TypeError", "ValueError"]


def test_micropython_encode_into_buffer(run_mp):
    # encode() at offsets 0 and 3 with room to spare, and into every smaller buffer: ValueError, no resize, nothing
    # written before the offset, a prefix of the encoding after it. Prints the encoding or what went wrong.
    body = r"""
FILL = 0xA5
def check(v):
    want = cbor.dumps(v)
    for i in (0, 3):
        end = i + len(want)
        buf = bytearray(bytes([FILL]) * (end + 2))
        if cbor.encode(buf, i, v) != end or bytes(buf) != bytes([FILL]) * i + want + bytes([FILL]) * 2:
            return 'bad fit %d' % i
        for size in range(end):
            buf = bytearray(bytes([FILL]) * size)
            try:
                cbor.encode(buf, i, v)
                return 'bad no error %d %d' % (i, size)
            except ValueError as e:
                if not str(e).startswith('cbor: does not fit at offset '):
                    return 'bad message %r' % str(e)
            if len(buf) != size:
                return 'bad resize %d %d' % (i, size)
            w = buf[i:]
            k = 0
            while k < len(w) and w[k] == want[k]:
                k += 1
            if bytes(w[k:]) != bytes([FILL]) * (len(w) - k) or bytes(buf[:i]) != bytes([FILL]) * min(i, size):
                return 'bad write %d %d' % (i, size)
    return want.hex()
for src in LITERALS:
    print(check(eval(src)))
""".replace("LITERALS", repr(ENCODE_LITERALS))
    lines = run_mp(mp_script(body)).split()
    assert lines == [cbor.dumps(eval(src)).hex() for src in ENCODE_LITERALS]


def cbor_only_package(tmp_path):
    """tmp_path/device holding only errors.py and cbor precompiled to .mpy, as a board would carry it; returns the
    .mpy. A snippet run from tmp_path finds this package first on MicroPython's path: the full package's __init__
    imports the whole runtime, and compiling source takes heap of its own."""
    mpy_cross = find_mpy_cross()
    if mpy_cross is None:
        if micropython_required():
            pytest.fail("mpy-cross is required (CI) but was not found")
        pytest.skip("mpy-cross not found")
    pkg = tmp_path / "device"
    pkg.mkdir()
    shutil.copy(ROOT / "device" / "errors.py", pkg / "errors.py")
    subprocess.run([mpy_cross, "-o", str(pkg / "cbor.mpy"), "device/cbor.py"], cwd=ROOT, check=True)
    return pkg / "cbor.mpy"


def test_micropython_small_heap(run_mp, tmp_path):
    # 16 KB heap, about a sixth of an ESP32's: import, encode, decode, and hostile lengths that a decoder which
    # allocated first would answer with MemoryError.
    mpy = cbor_only_package(tmp_path)
    body = ("print(cbor.__file__)\n"
            "v = {'temp': 21.5, 'ok': True, 'ids': [1, 2**40, -3], 'raw': b'\\x00\\x01', 'name': '\\u00fc'}\n"
            "e = cbor.dumps(v)\n"
            "print(cbor.loads(e) == v)\n"
            "for x in ('5b00000000ffffffff', '9bffffffffffffffff00', 'bbffffffffffffffff0000', '7a7fffffff'):\n"
            "    try:\n"
            "        cbor.loads(bytes.fromhex(x))\n"
            "    except MalformedError as err:\n"
            "        print('M')\n"
            "big = cbor.dumps(list(range(200)))\n"
            "print(len(cbor.loads(big)))\n")
    out = run_mp(mp_script(body), heap="16K").split()
    assert out == [str(mpy), "True", "M", "M", "M", "M", "200"]


# Heap bytes allocated per call (micropython.mem_total deltas) on the 64-bit unix port, with some headroom; the
# runtime measures the same way per signed call. A frame over 11 words, a returned tuple, a slice of a memoryview
# or a temporary bytes each show up here. The dict and the memoryview slices its strings are made from are the
# floor for loads; the bytes of each str (str.encode) for encode.
ALLOCATION_LIMITS = {"loads_map": 600, "encode_map": 400, "encode_float": 0, "encode_int": 0, "encode_true": 0,
                     "encode_none": 0, "encode_int_list": 0, "encode_bytes": 0, "loads_int": 100}
MPY_SIZE_LIMIT = 2100  # bytes of cbor.mpy: each function object and string constant is heap once it is imported


def test_micropython_allocation(run_mp, tmp_path):
    mpy = cbor_only_package(tmp_path)
    assert mpy.stat().st_size <= MPY_SIZE_LIMIT
    body = r"""
import gc, micropython
if not hasattr(micropython, 'mem_total'):
    print('no-mem-stats')
    raise SystemExit
def per_call(name, f, n=20):
    f()
    t0 = micropython.mem_total()
    for _ in range(n):
        f()
    print(name, (micropython.mem_total() - t0) // n)
d = {"room": "kitchen", "level": 3, "on": True}
e = cbor.dumps(d)
buf = bytearray(64)
enc = cbor.encode
nums = [1, 24, 1000, -70000, 2**40]
raw = b'\x00' * 40
per_call('loads_map', lambda: cbor.loads(e))
per_call('encode_map', lambda: enc(buf, 0, d))
per_call('encode_float', lambda: enc(buf, 0, 21.5))
per_call('encode_int', lambda: enc(buf, 0, 7))
per_call('encode_true', lambda: enc(buf, 0, True))
per_call('encode_none', lambda: enc(buf, 0, None))
per_call('encode_int_list', lambda: enc(buf, 0, nums))
per_call('encode_bytes', lambda: enc(buf, 0, raw))
per_call('loads_int', lambda: cbor.loads(b'\x19\x03\xe8'))
# Decoding non-ASCII text leaves nothing behind: iterating a str's characters would intern each one as a qstr,
# for good. The texts are built from bytes, as they arrive (chr() would intern the characters itself).
def text(j):
    b = bytearray(b'\x79\x03\x84')  # text of 900 bytes: 300 CJK characters
    for c in range(0x4E00 + 300 * j, 0x4E00 + 300 * j + 300):
        b += bytes([0xE0 | c >> 12, 0x80 | c >> 6 & 0x3F, 0x80 | c & 0x3F])
    return bytes(b)
def decode_all(texts):
    for t in texts:
        cbor.loads(t)
texts = [text(j) for j in range(6)]
decode_all(texts[:1])
texts = texts[1:]
gc.collect()
a = gc.mem_alloc()
decode_all(texts)
gc.collect()
print('text_growth', gc.mem_alloc() - a)
"""
    out = run_mp(mp_script(body))
    if out.strip() == "no-mem-stats":
        pytest.skip("this MicroPython has no micropython.mem_total")
    got = {name: int(value) for name, value in (line.split() for line in out.splitlines())}
    assert got.pop("text_growth") < 1000
    assert got == {name: min(got[name], limit) for name, limit in ALLOCATION_LIMITS.items()}, got
