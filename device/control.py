# The device's control plane: setup, announcements, service descriptions, health, configuration.
# None of it is on the per-invocation path, so the runtime imports this module when it needs it
# and releases it right after (runtime.control()/release()): its code does not sit in the heap
# between announcements.
from device import cbor, tlv, port
from device.port import const, ticks_ms, ticks_add, ticks_diff
from device.sign import sha256

_T_NONCE = const(0x0A)
_T_LIFETIME = const(0x0C)
_T_APP_PARAMS = const(0x24)
_T_ISIG_INFO = const(0x2C)
_T_ISIG_VALUE = const(0x2E)
_T_SIG_NONCE = const(0x26)
_T_SIG_SEQ = const(0x2A)
_DIGEST_LEN = const(32)
_ANN_LIFETIME_MS = const(1000)
_SEQ_BLOCK = const(64)
_DROP_NAMES = ("malformed", "oversized", "unsupported", "key", "digest", "signature", "replay")
_CONFIG_KEYS = ("iface", "group", "port", "state_dir", "lease_ms", "gateway")


def encode_name(uri):
    # "/edge/kitchen/th1" -> value bytes of a Name: one GenericNameComponent per segment.
    out = bytearray()
    for part in uri.split("/"):
        if part:
            out += tlv_bytes(tlv.T_GENERIC, part.encode())
    return bytes(out)


def tlv_bytes(t, value):
    out = bytearray(tlv.size_tl(t, len(value)) + len(value))
    tlv.put_bytes(out, tlv.put_tl(out, 0, t, len(value)), value)
    return bytes(out)


def read_config(path, overrides):
    # Keyword arguments for Device from the JSON file `ndn-edge provision` writes (docs/operations.md).
    import json
    with open(path) as f:
        cfg = json.load(f)
    kw = {"name": cfg["name"], "key": cfg["key"]}
    for k in _CONFIG_KEYS:
        if k in cfg:
            kw[k] = cfg[k]
    kw.update(overrides)
    return kw


def setup(dev):
    # Everything derived once from the name and key; buffers allocated once, before serving.
    from device.net import MulticastFace
    from device.replay import SeqState
    from device.sign import Hmac, key_id
    dev._name_val = encode_name(dev.name)
    dev._ncomp = dev.name.count("/")
    dev._query_val = encode_name("/%s/_sd/query" % dev.site)
    kid = key_id(dev.key)
    dev._key_name = encode_name(dev.name + "/KEY/" + kid)
    dev._sig_base = tlv_bytes(tlv.T_SIG_TYPE, b"\x04") + \
        tlv_bytes(tlv.T_KEY_LOCATOR, tlv_bytes(tlv.T_NAME, dev._key_name))
    dev._sig_info = tlv_bytes(tlv.T_SIG_INFO, dev._sig_base)
    dev._mac = Hmac(dev.key)
    dev._enc_key = dev._mac.mac(b"ndn-edge enc")[:16]
    dev._seq = SeqState(dev.state_dir.rstrip("/") + "/ndn_seq_" + kid, _SEQ_BLOCK)
    dev._face = MulticastFace(dev.iface, dev.group, dev.port, dev.mtu, dev.gateway)
    dev._tx = bytearray(dev.mtu)
    dev._pkt = tlv.Packet()
    dev._cache = [None] * dev._cache_n
    dev._cache_i = 0
    dev._boot = ticks_ms()
    dev._renew_at = dev._boot
    dev._query_at = None
    dev._last_query = dev._boot
    dev._desc_hash = sha256(cbor.dumps(describe(dev)))[:8]


def describe(dev):
    out = []
    for name in sorted(dev._svc):
        s = dev._svc[name]
        out.append({"name": s.name, "doc": s.doc, "args": s.args, "result": s.result,
                    "cache_ms": s.cache_ms, "idempotent": s.idempotent, "private": s.private})
    return {"name": dev.name, "services": out}


def health(dev):
    drops = {}
    for i in range(len(_DROP_NAMES)):
        drops[_DROP_NAMES[i]] = dev.drops[i]
    return {"uptime_ms": ticks_diff(ticks_ms(), dev._boot), "mem_free": port.mem_free(),
            "requests": dev.requests, "errors": dev.errors, "drops": drops, "seq_writes": dev._seq.writes}


def framework(dev, name):
    # The value of a framework service (`_desc`, `_health`), or None when there is no such service.
    if name == b"_desc":
        return describe(dev)
    if name == b"_health":
        return health(dev)
    return None


def announce(dev, state, sleep_ms=None):
    # Signed announcement Interest /<site>/_sd/ann (docs/protocol.md "Discovery"), then the next renewal.
    import binascii
    p = {"state": state, "lease_ms": dev.lease_ms, "rx_floor": dev._seq.rx_floor(),
         "desc": binascii.hexlify(dev._desc_hash).decode(), "uptime_ms": ticks_diff(ticks_ms(), dev._boot)}
    if sleep_ms is not None:
        p["sleep_ms"] = sleep_ms
    seq = dev._seq.next_tx()
    sinfo = bytearray(dev._sig_base)
    sinfo += tlv_bytes(_T_SIG_NONCE, port.urandom(8))
    tmp = bytearray(tlv.size_nni_tlv(_T_SIG_SEQ, seq))
    tlv.put_nni_tlv(tmp, 0, _T_SIG_SEQ, seq)
    sinfo += tmp
    n = _signed_interest(dev._tx, encode_name("/%s/_sd/ann" % dev.site), cbor.dumps(p), sinfo, dev._mac)
    dev._face.send(memoryview(dev._tx)[:n])
    third = dev.lease_ms // 3
    dev._renew_at = ticks_add(ticks_ms(), third + port.random_below(third // 10 + 1))


def _signed_interest(buf, name_value, params, sinfo_fields, mac):
    # Interest{Name{comps, digest}, Nonce, Lifetime, AppParams, ISigInfo, ISigValue} into buf.
    name_len = len(name_value) + 2 + _DIGEST_LEN
    sinfo_len = tlv.size_tl(_T_ISIG_INFO, len(sinfo_fields)) + len(sinfo_fields)
    total = (tlv.size_tl(tlv.T_NAME, name_len) + name_len + 6 + 4 +
             tlv.size_tl(_T_APP_PARAMS, len(params)) + len(params) + sinfo_len + 2 + _DIGEST_LEN)
    i = tlv.put_tl(buf, 0, tlv.T_INTEREST, total)
    i = tlv.put_tl(buf, i, tlv.T_NAME, name_len)
    comps_s = i
    i = tlv.put_bytes(buf, i, name_value)
    comps_e = i
    i = tlv.put_tl(buf, i, tlv.T_PARAMS_DIGEST, _DIGEST_LEN)
    digest_s = i
    i += _DIGEST_LEN
    i = tlv.put_tl(buf, i, _T_NONCE, 4)
    i = tlv.put_bytes(buf, i, port.urandom(4))
    i = tlv.put_tl(buf, i, _T_LIFETIME, 2)
    i = tlv.put_be(buf, i, _ANN_LIFETIME_MS, 2)
    params_s = i
    i = tlv.put_tl(buf, i, _T_APP_PARAMS, len(params))
    i = tlv.put_bytes(buf, i, params)
    i = tlv.put_tl(buf, i, _T_ISIG_INFO, len(sinfo_fields))
    i = tlv.put_bytes(buf, i, sinfo_fields)
    mv = memoryview(buf)
    h = mac.start()
    h.update(mv[comps_s:comps_e])
    h.update(mv[params_s:i])
    sig = mac.finish(h)
    i = tlv.put_tl(buf, i, _T_ISIG_VALUE, _DIGEST_LEN)
    i = tlv.put_bytes(buf, i, sig)
    buf[digest_s:digest_s + _DIGEST_LEN] = sha256(mv[params_s:i])
    return i
