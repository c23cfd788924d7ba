"""Datagram framing for the gateway's device side: NDNLPv2 unwrapping and cheap looks at packet headers.

Owns the rules of docs/protocol.md "Transport" and "NDNLPv2" as they apply to what the gateway receives: one
NDN packet per datagram, `LpPacket`s unwrapped (idle ones ignored, fragmented ones dropped), and two zero-copy
peeks used for routing before any full parse: the outer type and the encoded `Name` TLV.

Decisions:
- The gateway's own Interests come back to it through multicast loopback, and devices' replies to other
  consumers share the group. Routing on raw bytes (`name_tlv`, `has_name_prefix`) lets the receive path ignore
  that traffic without building python-ndn objects; only packets someone waits for are parsed and verified.
- `unwrap` is written here instead of calling `ndn.encoding.ndnlp_v2.parse_lp_packet_v2`: python-ndn rejects
  any `FragIndex`/`FragCount` (the protocol accepts a count of 1) and ignores every unknown field (the protocol
  drops unknown fields outside the ignorable 800..959 range). Tests cross-check the two on ordinary packets.
"""
from __future__ import annotations

from collections.abc import Sequence

from ndn_edge.wire.tlv import FramingError, T, read_tl

__all__ = ["FramingError", "components_ok", "has_name_prefix", "name_tlv", "read_tl", "unwrap"]


def unwrap(datagram: bytes) -> bytes | None:
    """The NDN packet in a datagram: itself, or an LpPacket's fragment; None for an idle LpPacket.

    FramingError when the datagram is not exactly one Interest, Data or acceptable LpPacket.
    """
    t, s, e = read_tl(datagram, 0)
    if e != len(datagram):
        raise FramingError(f"datagram of {len(datagram)} bytes holds a TLV of {e} bytes")
    if t in (T.INTEREST, T.DATA):
        return datagram
    if t != T.LP_PACKET:
        raise FramingError(f"datagram is of type {t:#x} but Interest, Data or LpPacket is expected")
    fragment = None
    i = s
    while i < e:
        ft, fs, fe = read_tl(datagram, i, e)
        if ft == T.LP_FRAGMENT:
            fragment = datagram[fs:fe]
        elif ft == T.LP_FRAG_COUNT:
            count = int.from_bytes(datagram[fs:fe], "big")
            if count > 1:
                raise FramingError(f"fragmented LpPacket (FragCount {count}) is not supported")
        elif ft in (T.LP_PIT_TOKEN, T.LP_SEQUENCE, T.LP_FRAG_INDEX):
            pass
        elif not (T.LP_IGNORABLE_MIN <= ft <= T.LP_IGNORABLE_MAX and ft & 3 == 0):
            raise FramingError(f"LpPacket header field of type {ft} is not understood")
        i = fe
    if fragment is None:
        return None
    inner_t, _, inner_e = read_tl(fragment, 0)
    if inner_e != len(fragment) or inner_t not in (T.INTEREST, T.DATA):
        raise FramingError(f"LpFragment holds type {inner_t:#x} of {inner_e} bytes in {len(fragment)}; "
                           "one Interest or Data is expected")
    return fragment


def components_ok(components: Sequence[Sequence[int]]) -> bool:
    """True if each item is exactly one TLV whose length matches its size (python-ndn's parser splits a Name
    into components without checking each one's length; printing a lying one raises later)."""
    try:
        for c in components:
            if not isinstance(c, (bytes, bytearray, memoryview)):  # python-ndn's parser may hand back other types
                return False
            t, _, e = read_tl(c, 0)
            if e != len(c) or t == 0:
                return False
    except FramingError:
        return False
    return True


def name_tlv(packet: bytes) -> bytes | None:
    """The encoded Name TLV (type and length included) that opens an Interest or Data, or None."""
    try:
        _, s, e = read_tl(packet, 0)
        t, _ns, ne = read_tl(packet, s, e)
    except FramingError:
        return None
    if t != T.NAME:
        return None
    return packet[s:ne]


def has_name_prefix(packet: bytes, prefix_value: bytes) -> bool:
    """True if the packet's Name starts with the components whose encodings are `prefix_value`."""
    try:
        _, s, e = read_tl(packet, 0)
        t, ns, ne = read_tl(packet, s, e)
    except FramingError:
        return False
    return t == T.NAME and ne - ns >= len(prefix_value) and packet[ns:ns + len(prefix_value)] == prefix_value
