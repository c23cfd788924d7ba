# The data plane's rare paths, loaded when one is taken and released after (runtime.release()):
# retransmissions (answered from the reply cache), arguments that do not decode (the error answer says why),
# private services (sealed both ways, device/seal.py), results that do not encode and the start of a long-running
# operation (device/ops.py). What a plain call runs stays in device/runtime.py.
from device import cbor
from device.errors import MalformedError
from device.port import const
from device.runtime import _arg_map, _sig_tag

# Device._check's results (device/runtime.py): run the call, answered from the cache, the replay drop reason.
_OK = const(-1)
_RESENT = const(-2)
_REPLAY = const(6)
_REPLY_AT = const(40)  # where runtime.py builds replies: see its _REPLY_AT


def resend(dev, p):
    # A retransmission of an answered request: its kept reply (_RESENT), or for an idempotent service's
    # success, which is not kept, a second run (_OK) answered in the same slot; _REPLAY when not remembered.
    tag = _sig_tag(p.mv, p.sv_s)
    for k in range(len(dev._c_seq)):
        if dev._c_seq[k] == p.seq and dev._c_tag[k] == tag:
            data = dev._c_data[k]
            if data is None:
                dev._slot = k
                return _OK
            again(dev, p, data)
            return _RESENT
    return _REPLAY


def again(dev, p, data):
    # The kept reply to this retransmission: its MetaInfo and Content, in the Data that Device._seal makes around
    # them again with the request's name (the same Interest: its signature verified) and a new signature (HMAC is
    # deterministic: the same bytes as the first time).
    dev._cur_name = p.mv[p.name_s:p.name_e]
    dev._cur_pit = p.mv[p.pit_s:p.pit_s + p.pit_n] if p.pit_n else None
    i = _REPLY_AT + len(dev._cur_name) + p.pit_n
    dev._tx[i:i + len(data)] = data
    dev._seal(i, i + len(data))

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


def begin(dev, svc, args):
    # A call of a long-running service: the operation starts (or is refused at max_ops) and its id is answered.
    from device import ops
    ops.begin(dev, svc, args)
