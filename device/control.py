# The device's boot-time control plane: declaring services and timers, setup, opening the face,
# announcements, service descriptions. None of it is on the per-invocation path, so the runtime imports
# this module when it needs it and releases it right after (runtime.control()/release()): its code does
# not sit in the heap between announcements. (Declarations load it from the first @dev.service to
# setup.) What is needed later and rarely (_health, _desc, configuration, sleep) is in device/manage.py,
# so that setup, the heap's busiest moment, loads only this.
#
# No class is defined here: an object of a class defined in a module keeps all of that module's code alive.
from device import cbor, tlv, port
from device.errors import DeviceError
from device.port import const, ticks_ms, ticks_add, ticks_diff
from device.sign import sha256

_SEQ_BLOCK = const(64)


def service(dev, name, cache_ms=None, doc=None, args=None, result=None, idempotent=True, private=False,
            long_running=False):
    # @dev.service(...): registers the decorated function as the service `name`.
    if not name or name[0] == "_" or "/" in name:
        raise DeviceError("service name %r: must be one component not starting with '_'" % name)

    def register(fn):
        is_async = port.is_async(fn)
        if long_running and not is_async:
            raise DeviceError("long-running service %r must be a coroutine (async def)" % name)
        from device.runtime import Service
        dev._svc[name.encode()] = Service(fn, name, cache_ms, doc, args, result, idempotent, private, long_running,
                                          is_async)
        dev._async = dev._async or is_async
        return fn
    return register


def every(dev, period_ms):
    # @dev.every(period_ms): a timer, run by the serving loop (Device._run_due).
    def register(fn):
        dev._timers.append([ticks_add(ticks_ms(), period_ms), period_ms, fn])
        dev._wake()
        return fn
    return register


def start(dev):
    # Open the face (device/netopen.py) and announce: Device.open.
    from device import netopen
    netopen.open_face(dev._face)
    dev._running = True
    announce(dev, "up")
    f = dev._face
    print("ndn-edge device %s serving on %s group %s:%d" % (dev.name, f.iface, f.group, f.udp_port))


def encode_name(uri):
    # "/edge/kitchen/th1" -> value bytes of a Name: one GenericNameComponent per segment.
    out = bytearray()
    for part in uri.split("/"):
        if part:
            out += tlv_bytes(tlv.T_GENERIC, part.encode())
    return bytes(out)


def tlv_bytes(t, value):
    # One TLV (type below 253, value shorter than 64 KiB) as bytes.
    n = len(value)
    out = bytearray(n + 4)
    out[4:] = value
    return bytes(out[tlv.tl_back(out, 4, t, n):])


def setup(dev):
    # Everything derived once from the name and key; buffers allocated once, before serving.
    from device.replay import SeqState
    from device.sign import Hmac, key_id
    dev._name_val = encode_name(dev.name)
    dev._ncomp = dev.name.count("/")
    dev._query_val = encode_name("/%s/_sd/query" % dev.site)
    dev._site_val = encode_name("/" + dev.site)
    kid = key_id(dev.key)
    dev._key_name = encode_name(dev.name + "/KEY/" + kid)
    dev._sig_base = tlv_bytes(tlv.T_SIG_TYPE, b"\x04") + \
        tlv_bytes(tlv.T_KEY_LOCATOR, tlv_bytes(tlv.T_NAME, dev._key_name))
    dev._sig_info = tlv_bytes(tlv.T_SIG_INFO, dev._sig_base)
    dev._mac = Hmac(dev.key)
    dev._seq = SeqState(dev.state_dir.rstrip("/") + "/ndn_seq_" + kid, _SEQ_BLOCK)
    dev._pkt.prefixes = (dev._name_val, dev._query_val)
    dev._room = len(dev._tx) - len(dev._sig_info) - 2 - 32  # the most content a reply can carry ends here
    dev._boot = ticks_ms()
    dev._renew_at = dev._boot
    dev._due = dev._boot
    dev._desc_hash = desc_hash(dev)


def desc_hash(dev):
    # First 8 bytes of SHA-256 of the description's CBOR, encoded in the transmit buffer (idle during
    # setup) rather than a growing scratch: setup is the heap's busiest moment.
    try:
        n = cbor.encode(dev._tx, 0, describe(dev))
        return sha256(dev._txmv[:n])[:8]
    except ValueError:  # a description larger than a datagram
        return sha256(cbor.dumps(describe(dev)))[:8]


def describe(dev):
    # Only what differs from the defaults (docs/protocol.md "Service descriptions"): the _desc reply must fit one
    # datagram, and every key written at its default cost about 10 bytes per service.
    out = []
    for name in sorted(dev._svc):
        s = dev._svc[name]
        d = {"name": s.name}
        for k, v in (("doc", s.doc), ("args", s.args), ("result", s.result), ("cache_ms", s.cache_ms)):
            if v is not None:
                d[k] = v
        if not s.idempotent:
            d["idempotent"] = False
        if s.private:
            d["private"] = True
        if s.long_running:
            d["long_running"] = True
        out.append(d)
    # "trace": this runtime reads a trace context before the arguments (docs/protocol.md "Trace context")
    return {"name": dev.name, "services": out, "trace": True}


def announce(dev, state, sleep_ms=None):
    # Signed announcement Interest /<site>/_sd/ann (docs/protocol.md "Discovery"), then the next renewal.
    import binascii
    from device import report
    p = {"state": state, "lease_ms": dev.lease_ms, "rx_floor": dev._seq.rx_floor(),
         "desc": binascii.hexlify(dev._desc_hash).decode(), "uptime_ms": ticks_diff(ticks_ms(), dev._boot),
         "mem_free": port.mem_free()}
    if sleep_ms is not None:
        p["sleep_ms"] = sleep_ms
    if len(dev._tx) != 1500:  # the largest datagram it reads, when not the protocol's default
        p["mtu"] = len(dev._tx)
    s, e, _ = report.build(dev, report.ANNOUNCE, p)
    dev._face.send(dev._txmv[s:e])
    third = dev.lease_ms // 3
    dev._renew_at = ticks_add(ticks_ms(), third + port.random_below(third // 10 + 1))
