# HMAC-SHA256 (RFC 2104) with the key pads computed once per key (device/derive.py), constant-time compare.
# MicroPython's sha256 objects cannot be copied, so the pads are kept, not hash states.
import hashlib


class Hmac:
    # Made by device/derive.py's hmac, which computes its pads _ipad and _opad from the key (once, at setup).

    def start(self):
        # Inner hash to feed with update(); close with finish().
        return hashlib.sha256(self._ipad)

    def finish(self, inner):
        h = hashlib.sha256(self._opad)
        h.update(inner.digest())
        return h.digest()


def sha256(data):
    return hashlib.sha256(data).digest()


def equal(mv, start, ref):
    # Constant-time comparison of mv[start:start+len(ref)] with ref; no early exit.
    if start < 0 or start + len(ref) > len(mv):
        return False
    d = 0
    for i in range(len(ref)):
        d |= mv[start + i] ^ ref[i]
    return d == 0
