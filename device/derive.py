# What setup derives once from the device's name and key (names, the signature's fixed parts, the HMAC key pads,
# the replay state, the description's hash), and the service description (_desc). Loaded by Device.setup() after the
# control plane is released, and released after in turn (runtime.release()): setup, the heap's busiest moment, then
# holds only this, not the declarations' code as well.
from device import cbor, tlv
from device.port import const, ticks_ms
from device.sign import sha256

_SEQ_BLOCK = const(64)


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
    c = dev.conf
    c.name_val = encode_name(dev.name)
    dev._ncomp = dev.name.count("/")
    dev._query_val = encode_name("/%s/_sd/query" % c.site)
    c.site_val = encode_name("/" + c.site)
    kid = key_id(c.key)
    dev._key_name = encode_name(dev.name + "/KEY/" + kid)
    c.sig_base = tlv_bytes(tlv.T_SIG_TYPE, b"\x04") + tlv_bytes(tlv.T_KEY_LOCATOR, tlv_bytes(tlv.T_NAME, dev._key_name))
    dev._sig_info = tlv_bytes(tlv.T_SIG_INFO, c.sig_base)
    dev._mac = Hmac(c.key)
    dev._seq = SeqState(c.state_dir.rstrip("/") + "/ndn_seq_" + kid, _SEQ_BLOCK)
    dev._pkt.prefixes = (c.name_val, dev._query_val)
    dev._room = len(dev._tx) - len(dev._sig_info) - 2 - 32  # the most content a reply can carry ends here
    c.boot = dev._renew_at = dev._due = ticks_ms()
    c.desc_hash = desc_hash(dev)


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
