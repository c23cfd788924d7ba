"""NDN TLV on the host: every type number the gateway reads or writes, in one namespace (`T`), and the read and
write primitives (docs/protocol.md "TLV").

    t, start, end = read_tl(packet, 0)          # FramingError if the length runs past the end
    tlv(T.CONTENT, b"...")                      # one element, type and length as NDN variable-size numbers

The device runtime writes its own copies of these numbers as `const()`s (device/tlv.py and friends);
tests/test_tlv.py checks that every number the device uses equals the one here.
"""
from __future__ import annotations

from collections.abc import Sequence


class T:
    """TLV types (NDN packet format v0.3 and NDNLPv2)."""

    INTEREST = 0x05
    DATA = 0x06
    NAME = 0x07
    GENERIC_COMPONENT = 0x08
    DIGEST_COMPONENT = 0x02  # ParametersSha256DigestComponent
    NONCE = 0x0A
    INTEREST_LIFETIME = 0x0C
    MUST_BE_FRESH = 0x12
    META_INFO = 0x14
    CONTENT = 0x15
    SIGNATURE_INFO = 0x16
    SIGNATURE_VALUE = 0x17
    CONTENT_TYPE = 0x18
    FRESHNESS_PERIOD = 0x19
    FINAL_BLOCK_ID = 0x1A
    SIGNATURE_TYPE = 0x1B
    KEY_LOCATOR = 0x1C
    KEY_DIGEST = 0x1D
    FORWARDING_HINT = 0x1E
    CAN_BE_PREFIX = 0x21
    HOP_LIMIT = 0x22
    APPLICATION_PARAMETERS = 0x24
    SIGNATURE_NONCE = 0x26
    SIGNATURE_TIME = 0x28
    SIGNATURE_SEQ_NUM = 0x2A
    INTEREST_SIGNATURE_INFO = 0x2C
    INTEREST_SIGNATURE_VALUE = 0x2E
    LP_PACKET = 0x64
    LP_FRAGMENT = 0x50
    LP_SEQUENCE = 0x51
    LP_FRAG_INDEX = 0x52
    LP_FRAG_COUNT = 0x53
    LP_PIT_TOKEN = 0x62
    LP_IGNORABLE_MIN = 800
    LP_IGNORABLE_MAX = 959


CONTENT_NACK = 3            # ContentType of an error reply
SIGNATURE_HMAC_SHA256 = 4   # SignatureType
DIGEST_BYTES = 32

NUM_1 = 253  # below: the number is the byte itself (a one-byte TLV-TYPE or TLV-LENGTH)
_NUM_2, _NUM_4, _NUM_8 = 0xFD, 0xFE, 0xFF


class FramingError(ValueError):
    """Bytes that are not well-framed TLV (or not one well-framed NDN packet)."""


def read_num(buf: Sequence[int], i: int) -> tuple[int, int]:
    """The NDN variable-size number at `buf[i]` and the offset after it; FramingError if truncated."""
    if i >= len(buf):
        raise FramingError(f"number expected at offset {i} but the packet ends at {len(buf)}")
    first = buf[i]
    if first < NUM_1:
        return first, i + 1
    width = 2 if first == _NUM_2 else 4 if first == _NUM_4 else 8
    end = i + 1 + width
    if end > len(buf):
        raise FramingError(f"{width}-byte number at offset {i} runs past the packet end {len(buf)}")
    return int.from_bytes(bytes(buf[i + 1:end]), "big"), end


def read_tl(buf: Sequence[int], i: int, end: int | None = None) -> tuple[int, int, int]:
    """(type, value start, value end) of the TLV at `buf[i]`; FramingError if it overruns `end`."""
    limit = len(buf) if end is None else end
    if i + 1 < limit:  # the usual case, one-byte type and length, in one step: every packet read starts here
        t = buf[i]
        n = buf[i + 1]
        if t < NUM_1 and n < NUM_1:
            if i + 2 + n > limit:
                raise FramingError(f"TLV type {t:#x} at offset {i} has length {n} but only {limit - i - 2} bytes "
                                   "follow")
            return t, i + 2, i + 2 + n
    t, j = read_num(buf, i)
    n, j = read_num(buf, j)
    if j + n > limit:
        raise FramingError(f"TLV type {t:#x} at offset {i} has length {n} but only {limit - j} bytes follow")
    return t, j, j + n


def var_num(n: int) -> bytes:
    """An NDN variable-size number."""
    if n < NUM_1:
        return bytes((n,))
    if n <= 0xFFFF:
        return b"\xfd" + n.to_bytes(2, "big")
    if n <= 0xFFFFFFFF:
        return b"\xfe" + n.to_bytes(4, "big")
    return b"\xff" + n.to_bytes(8, "big")


def tlv_head(typ: int, length: int) -> bytes:
    """TLV-TYPE and TLV-LENGTH as NDN variable-size numbers."""
    if typ < NUM_1 and length < NUM_1:  # one byte each: nearly every element of a packet
        return bytes((typ, length))
    return var_num(typ) + var_num(length)


def tlv(typ: int, value: bytes) -> bytes:
    """One TLV element."""
    n = len(value)
    if typ < NUM_1 and n < NUM_1:
        return bytes((typ, n)) + value
    return var_num(typ) + var_num(n) + value


def nni(n: int) -> bytes:
    """A NonNegativeInteger in the fewest of 1, 2, 4 or 8 bytes."""
    for width in (1, 2, 4, 8):
        if n < 1 << (8 * width):
            return n.to_bytes(width, "big")
    raise OverflowError(f"{n} does not fit a NonNegativeInteger")
