"""A corpus of hostile packets, written by hand so that each lies in exactly one way.

Every packet here is what someone on the LAN (no key) or a client with a valid key could send. Tests feed them
to the gateway's two faces and to the device, then check that everything still works and that each was counted.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator

import cbor2
from ndn.encoding import Name

from ndn_edge.wire import packets as wire


def tl(t: int, value: bytes) -> bytes:
    return wire.tlv(t, value)


def components(uri: str) -> bytes:
    return b"".join(bytes(c) for c in Name.from_str(uri))


LYING_COMPONENT = b"\x08\x24" + b"A" * 8  # a GenericNameComponent that claims 36 bytes and holds 8


def signed_interest(prefix: str, params: bytes, *, key_locator: bytes, seq: int = 5, key: bytes | None = None,
                    name_tail: bytes = b"", time_ms: int | None = None, nonce: bytes | None = None) -> bytes:
    """A signed Interest `<prefix><name_tail>/<digest>` with `key_locator` (the Name TLV's *value*) as given.

    Signed with `key` when one is given (a key holder's packet), else with zeros (a keyless one). The digest is
    always right, so the packet gets as far as the key lookup.
    """
    comps = components(prefix) + name_tail
    info_fields = tl(0x1B, b"\x04") + tl(0x1C, tl(0x07, key_locator))
    if nonce is not None:
        info_fields += tl(0x26, nonce)
    if time_ms is not None:
        info_fields += tl(0x28, time_ms.to_bytes(8, "big"))
    info_fields += tl(0x2A, seq.to_bytes(8, "big"))
    info = tl(0x2C, info_fields)
    app = tl(0x24, params)
    if key is None:
        mac = b"\x00" * 32
    else:
        import hmac
        mac = hmac.new(key, comps + app + info, hashlib.sha256).digest()
    value = tl(0x2E, mac)
    digest = tl(0x02, hashlib.sha256(app + info + value).digest())
    return tl(0x05, tl(0x07, comps + digest) + tl(0x0A, os.urandom(4)) + app + info + value)


def lying_key_locator(prefix: str) -> bytes:
    """The datagram of issue 11 item 1: a keyless Interest whose KeyLocator name has a lying component."""
    return signed_interest(prefix, cbor2.dumps({"state": "up", "lease_ms": 60000}), key_locator=LYING_COMPONENT)


def lying_name(prefix: str) -> bytes:
    """A keyless Interest whose own name carries a lying component before the digest."""
    return signed_interest(prefix, cbor2.dumps({}), key_locator=components("/edge/x/KEY/00000000"),
                           name_tail=LYING_COMPONENT)


def device_side_corpus(site: str = "edge") -> Iterator[tuple[str, bytes]]:
    """(what, datagram) for every hostile packet the multicast face of a gateway should survive."""
    for kind in ("_sd/ann", "_pub", "_op"):
        yield f"lying key locator under /{site}/{kind}", lying_key_locator(f"/{site}/{kind}")
        yield f"lying name under /{site}/{kind}", lying_name(f"/{site}/{kind}")
        yield f"key locator of a lying key id under /{site}/{kind}", signed_interest(
            f"/{site}/{kind}", cbor2.dumps({"state": "up"}),
            key_locator=components(f"/{site}/sim/1/KEY") + LYING_COMPONENT)
        yield f"params not CBOR under /{site}/{kind}", signed_interest(
            f"/{site}/{kind}", b"\xff\xfe", key_locator=components(f"/{site}/sim/1/KEY/00000000"))
        yield f"deep CBOR under /{site}/{kind}", signed_interest(
            f"/{site}/{kind}", b"\x81" * 5000 + b"\x00", key_locator=components(f"/{site}/sim/1/KEY/00000000"))
    yield "a name of 600 components", tl(0x05, tl(0x07, b"\x08\x01a" * 600) + tl(0x0A, b"1234"))
    yield "Data with a lying name component", tl(0x06, tl(0x07, LYING_COMPONENT) + tl(0x15, b"x"))
    yield "LpPacket with an unknown critical field", tl(0x64, tl(0x99, b"") + tl(0x50, tl(0x05, tl(0x07, b""))))


def client_face_corpus(site: str = "edge", client: str = "alice") -> Iterator[tuple[str, bytes]]:
    """(what, datagram) for the client face: keyless requests with lying names and key ids."""
    base = components(f"/{site}/_client/{client}/KEY")
    yield "lying key id", signed_interest(f"/{site}/_gw/call", cbor2.dumps({}), key_locator=base + LYING_COMPONENT,
                                          time_ms=0, nonce=os.urandom(8))
    yield "lying client name", signed_interest(f"/{site}/_gw/call", cbor2.dumps({}),
                                               key_locator=components(f"/{site}/_client") + LYING_COMPONENT,
                                               time_ms=0, nonce=os.urandom(8))
    yield "lying verb", signed_interest(f"/{site}/_gw", cbor2.dumps({}), key_locator=base + b"\x08\x0200",
                                        name_tail=LYING_COMPONENT, time_ms=0, nonce=os.urandom(8))


def mutate(packet: bytes, rng) -> bytes:
    """One hostile variant of a well-formed packet: a flipped, cut, inserted, lengthened or repeated part
    (`rng` is a seeded random.Random, so a failing variant can be made again)."""
    data = bytearray(packet)
    kind = rng.randrange(7)
    if kind == 0 and data:  # flip a few bytes
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == 1 and data:  # cut it short
        del data[rng.randrange(len(data)):]
    elif kind == 2:  # insert junk
        at = rng.randrange(len(data) + 1)
        data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    elif kind == 3 and len(data) > 2:  # a length that lies (one-byte lengths: the commonest)
        at = rng.randrange(1, len(data))
        data[at] = rng.choice((0, 1, 0x7F, 0xFC, 0xFD, 0xFE, 0xFF))
    elif kind == 4 and len(data) > 4:  # a slice repeated (a TLV twice, or a name component in a loop)
        a = rng.randrange(len(data))
        b = min(len(data), a + rng.randint(1, 40))
        data[b:b] = data[a:b] * rng.randint(1, 3)
    elif kind == 5:  # an outer type that is something else
        data[0] = rng.choice((0x00, 0x05, 0x06, 0x07, 0x64, 0xFD, 0xFF))
    else:  # random bytes of the same size
        data = bytearray(rng.randrange(256) for _ in range(len(data)))
    return bytes(data[:9000])
