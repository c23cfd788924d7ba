# HMAC-SHA256 (RFC 2104) with the key pads computed once per key, key ids, constant-time compare.
# MicroPython's sha256 objects cannot be copied, so the pads are kept, not hash states.
import hashlib
from device.port import const

_BLOCK = const(64)


class Hmac:
    def __init__(self, key):
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        ipad = bytearray(_BLOCK)
        opad = bytearray(_BLOCK)
        for i in range(len(key)):
            ipad[i] = key[i]
            opad[i] = key[i]
        for i in range(_BLOCK):
            ipad[i] ^= 0x36
            opad[i] ^= 0x5C
        self._ipad = bytes(ipad)
        self._opad = bytes(opad)

    def start(self):
        # Inner hash to feed with update(); close with finish().
        return hashlib.sha256(self._ipad)

    def finish(self, inner):
        h = hashlib.sha256(self._opad)
        h.update(inner.digest())
        return h.digest()

    def mac(self, data):
        h = self.start()
        h.update(data)
        return self.finish(h)


def sha256(data):
    return hashlib.sha256(data).digest()


def key_id(key):
    # First 4 bytes of SHA-256(key) as 8 lowercase hex characters.
    d = sha256(key)
    return "%02x%02x%02x%02x" % (d[0], d[1], d[2], d[3])


def equal(mv, start, ref):
    # Constant-time comparison of mv[start:start+len(ref)] with ref; no early exit.
    if start < 0 or start + len(ref) > len(mv):
        return False
    d = 0
    for i in range(len(ref)):
        d |= mv[start + i] ^ ref[i]
    return d == 0
