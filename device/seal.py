# Private services: AES-128-CBC with a random IV over CBOR, inside an HMAC-signed packet
# (encrypt-then-MAC). Uses MicroPython's cryptolib; on CPython, pycryptodomex (a python-ndn dependency).
from device.errors import MalformedError
from device.port import const, urandom

_MODE_CBC = const(2)
_BLOCK = const(16)


def _cipher(key, iv):
    try:
        import cryptolib
        return cryptolib.aes(key, _MODE_CBC, iv)
    except ImportError:
        from Cryptodome.Cipher import AES
        return AES.new(key, AES.MODE_CBC, iv)


def key(mac):
    # The AES key of private services, derived from the device key: HMAC(key, "ndn-edge enc")[:16].
    h = mac.start()
    h.update(b"ndn-edge enc")
    return mac.finish(h)[:16]


def seal(key, plain):
    iv = urandom(_BLOCK)
    pad = _BLOCK - len(plain) % _BLOCK
    buf = bytearray(plain)
    buf.extend(bytes([pad]) * pad)
    return iv + _cipher(key, iv).encrypt(buf)


def unseal(key, data):
    n = len(data)
    if n < 2 * _BLOCK or n % _BLOCK:
        raise MalformedError("seal: %d bytes is not IV plus whole blocks" % n)
    plain = _cipher(key, bytes(data[:_BLOCK])).decrypt(bytes(data[_BLOCK:]))
    pad = plain[-1]
    if not 1 <= pad <= _BLOCK:
        raise MalformedError("seal: bad padding")
    return plain[:-pad]
