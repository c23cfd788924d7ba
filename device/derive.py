# What setup derives once from the device's name and key (names, the signature's fixed parts, the HMAC key pads,
# the replay state, the description's hash), and the service description (_desc). Loaded by Device.setup() after the
# control plane is released, and released after in turn (runtime.release()): setup, the heap's busiest moment, then
# holds only this, not the declarations' code as well.
from device import cbor, tlv
from device.port import const, ticks_ms
from device.sign import sha256

_SEQ_BLOCK = const(64)
_T_NAME = const(0x07)
_T_GENERIC = const(0x08)
_T_SIG_INFO = const(0x16)
_T_SIG_TYPE = const(0x1B)
_T_KEY_LOCATOR = const(0x1C)
_HMAC_BLOCK = const(64)  # SHA-256's block size
_ALL = const((1 << 30) - 1)  # replay.py's window (_WINDOW bits), all seen


def encode_name(uri):
    # "/edge/kitchen/th1" -> value bytes of a Name: one GenericNameComponent per segment.
    out = bytearray()
    for part in uri.split("/"):
        if part:
            out += tlv_bytes(_T_GENERIC, part.encode())
    return bytes(out)


def tlv_bytes(t, value):
    # One TLV (type below 253, value shorter than 64 KiB) as bytes.
    n = len(value)
    out = bytearray(n + 4)
    out[4:] = value
    return bytes(out[tlv.tl_back(out, 4, t, n):])


def setup(dev):
    # Everything derived once from the name and key; buffers allocated once, before serving.
    c = dev.conf
    c.name_val = encode_name(dev.name)
    dev._ncomp = dev.name.count("/")
    dev._query_val = encode_name("/%s/_sd/query" % c.site)
    c.site_val = encode_name("/" + c.site)
    kid = key_id(c.key)
    dev._key_name = encode_name(dev.name + "/KEY/" + kid)
    c.sig_base = tlv_bytes(_T_SIG_TYPE, b"\x04") + tlv_bytes(_T_KEY_LOCATOR, tlv_bytes(_T_NAME, dev._key_name))
    dev._sig_info = tlv_bytes(_T_SIG_INFO, c.sig_base)
    dev._mac = hmac(c.key)
    dev._seq = seq_state(c.state_dir.rstrip("/") + "/ndn_seq_" + kid)
    dev._pkt.prefixes = (c.name_val, dev._query_val)
    dev._room = len(dev._tx) - len(dev._sig_info) - 2 - 32  # the most content a reply can carry ends here
    c.boot = dev._renew_at = dev._due = ticks_ms()
    c.desc_hash = desc_hash(dev)


def hmac(key):
    # The key's HMAC-SHA256 (device/sign.py's Hmac) with its pads computed once (RFC 2104).
    from device.sign import Hmac
    if len(key) > _HMAC_BLOCK:
        key = sha256(key)
    ipad = bytearray(_HMAC_BLOCK)
    opad = bytearray(_HMAC_BLOCK)
    for i in range(len(key)):
        ipad[i] = key[i]
        opad[i] = key[i]
    for i in range(_HMAC_BLOCK):
        ipad[i] ^= 0x36
        opad[i] ^= 0x5C
    m = Hmac()
    m._ipad = bytes(ipad)
    m._opad = bytes(opad)
    return m


def key_id(key):
    # First 4 bytes of SHA-256(key) as 8 lowercase hex characters.
    d = sha256(key)
    return "%02x%02x%02x%02x" % (d[0], d[1], d[2], d[3])


def seq_state(path):
    # The replay state of the device's key (device/replay.py) from its file "rx_mark tx_mark": after a reboot every
    # number up to the marks counts as used.
    from device.replay import SeqState
    s = SeqState()
    s.path = path
    s.block = _SEQ_BLOCK
    rx = tx = 0
    try:
        with open(path) as f:
            parts = f.read().split()
        rx = int(parts[0])
        tx = int(parts[1])
    except (OSError, ValueError, IndexError):
        pass  # first boot, or a torn write: start from zero marks
    s.rx_mark = s.high = rx
    s.tx_mark = s.tx = tx
    s.seen = _ALL  # every number up to the mark counts as seen
    s.writes = 0
    return s


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
