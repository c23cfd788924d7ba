# The data plane's rare paths, loaded when one is taken and released after (runtime.release()):
# arguments that do not decode (the error answer says why), private services (sealed both ways,
# device/seal.py) and results that do not encode. What a plain call runs stays in device/runtime.py.
from device import cbor
from device.errors import MalformedError
from device.runtime import _arg_map

# A port built without an SSL library (the unix port's minimal builds) has no cryptolib: its AES is mbedtls'.
_NO_AES = "private services need cryptolib (AES), which this firmware lacks"


def args(dev, svc, params):
    # Private arguments, and the error answer (decoding again to learn what is wrong); None when answered.
    try:
        if svc.private:
            from device import seal
            params = seal.unseal(seal.key(dev._mac), params)
        return _arg_map(cbor.loads(params), svc.args)
    except MalformedError as e:
        dev._error("INVALID_ARGUMENT", "arguments: %s" % e)
    except ImportError:
        dev._error("UNAVAILABLE", _NO_AES)
    return None


def sealed(dev, svc, value):
    # A private service's result: CBOR, sealed, answered.
    try:
        raw = cbor.dumps(value)
    except (TypeError, ValueError) as e:
        dev._fail("INTERNAL", "result not encodable: %s" % e)
        return
    from device import seal
    try:
        raw = seal.seal(seal.key(dev._mac), raw)
    except ImportError:
        dev._fail("UNAVAILABLE", _NO_AES)
        return
    dev._send(0, svc.cache_ms or 0, None, raw)


def encode_failed(dev, value):
    # Device._encode failed: encodes again to learn why (an `except ... as` would put its frame on the heap).
    # The content's end past the buffer when it does not fit, 0 after answering an unencodable result.
    try:
        cbor.encode(dev._tx, dev._at, value)
    except (TypeError, ValueError) as e:
        if "does not fit" in str(e):
            return len(dev._tx) + 1
        dev._fail("INTERNAL", "result not encodable: %s" % e)
    return 0
