# Signed Interests the device sends on its own (announcements, operation reports, publications):
# /<site>/<kind>/<digest>, parameters in CBOR, signed with the device key and its send counter.
# Loaded for an announcement and released after (runtime.release()), unless the outbox holds it.
from device import cbor, tlv, port
from device.port import const, ticks_ms, ticks_add, ticks_diff
from device.sign import sha256

_T_INTEREST = const(0x05)
_T_NAME = const(0x07)
_T_PARAMS_DIGEST = const(0x02)
_T_NONCE = const(0x0A)
_T_LIFETIME = const(0x0C)
_T_APP_PARAMS = const(0x24)
_T_ISIG_INFO = const(0x2C)
_T_ISIG_VALUE = const(0x2E)
_T_SIG_NONCE = const(0x26)
_T_SIG_SEQ = const(0x2A)
_DIGEST_LEN = const(32)
_LIFETIME_MS = const(1000)
_QUERY_WINDOW_MS = const(1000)  # a query is answered within this
_QUERY_HOLDOFF_MS = const(500)  # at most one answer per this (runtime.py's _run_due forgets the last after it)
# room in front of the parameters for the Interest's and Name's type and length (4 each at most), the digest
# component (34), Nonce (6), InterestLifetime (4) and the parameters' type and length (4); plus site and kind
_HEAD_ROOM = const(56)


# name components after /<site> (GenericNameComponent TLVs)
ANNOUNCE = b"\x08\x03_sd\x08\x03ann"
OPERATION = b"\x08\x03_op"
PUBLICATION = b"\x08\x04_pub"
LOG = b"\x08\x04_log"


def build(dev, kind, params):
    # The signed Interest /<site>/<kind>/<digest> with params in dev._tx, as replies are built: the
    # parameters encoded in place at an offset that leaves room for the headers, which are written
    # backwards in front of them, and the signature after them (no copy of the encoding, no sizes
    # computed twice). Returns (start, end, offset of the 32-byte ParametersSha256DigestComponent
    # value, which names the report).
    buf = dev._tx
    mv = dev._txmv
    c = dev.conf
    base = c.sig_base
    at = len(c.site_val) + len(kind) + _HEAD_ROOM
    pe = cbor.encode(buf, at, params)  # ValueError when the encoding alone does not fit
    n = len(base) + 20  # InterestSignatureInfo's value with the longest SignatureSeqNum
    if pe + n + 4 + 2 + _DIGEST_LEN > len(buf):
        raise ValueError("report of %d bytes does not fit the datagram buffer" % (pe - at))
    seq = next_tx(dev._seq)
    n -= 8 - tlv.size_nni(seq)
    sv = pe + n + (2 if n < 253 else 4)  # InterestSignatureValue, after the info that follows the parameters
    # InterestSignatureInfo{SignatureType, KeyLocator, SignatureNonce, SignatureSeqNum}, ending at sv
    i = tlv.nni_back(buf, sv, _T_SIG_SEQ, seq)
    i = _bytes_back(buf, i, _T_SIG_NONCE, port.urandom(8))
    buf[i - len(base):i] = base
    tlv.tl_back(buf, i - len(base), _T_ISIG_INFO, n)
    params_s = tlv.tl_back(buf, at, _T_APP_PARAMS, pe - at)
    i = tlv.nni_back(buf, params_s, _T_LIFETIME, _LIFETIME_MS)
    i = _bytes_back(buf, i, _T_NONCE, port.urandom(4))
    # Name{<site>, <kind>..., ParametersSha256DigestComponent}
    name_e = i
    digest_at = i - _DIGEST_LEN
    i = tlv.tl_back(buf, digest_at, _T_PARAMS_DIGEST, _DIGEST_LEN)
    comps_e = i
    n = len(kind)
    buf[i - n:i] = kind
    i -= n
    n = len(c.site_val)
    buf[i - n:i] = c.site_val
    i -= n
    comps_s = i
    i = tlv.tl_back(buf, i, _T_NAME, name_e - i)
    h = dev._mac.start()
    h.update(mv[comps_s:comps_e])
    h.update(mv[params_s:sv])
    e = tlv.put_sig(buf, sv, _T_ISIG_VALUE, dev._mac.finish(h))
    buf[digest_at:digest_at + _DIGEST_LEN] = sha256(mv[params_s:e])
    return tlv.tl_back(buf, i, _T_INTEREST, e - i), e, digest_at


def next_tx(s):
    # The next number of the device's send counter (s: its replay.SeqState), leased in flash as received ones are.
    s.tx += 1
    if s.tx >= s.tx_mark:
        s.tx_mark = s.tx + s.block
        s._save()
    return s.tx


def _bytes_back(buf, e, t, value):
    n = len(value)
    buf[e - n:e] = value
    return tlv.tl_back(buf, e - n, t, n)


def announce(dev, state, sleep_ms=None):
    # Signed announcement Interest /<site>/_sd/ann (docs/protocol.md "Discovery"), then the next renewal.
    import binascii
    c = dev.conf
    p = {"state": state, "lease_ms": c.lease_ms, "rx_floor": dev._seq.high + 1,
         "desc": binascii.hexlify(c.desc_hash).decode(), "uptime_ms": ticks_diff(ticks_ms(), c.boot),
         "mem_free": port.mem_free()}
    if sleep_ms is not None:
        p["sleep_ms"] = sleep_ms
    if len(dev._tx) != 1500:  # the largest datagram it reads, when not the protocol's default
        p["mtu"] = len(dev._tx)
    s, e, _ = build(dev, ANNOUNCE, p)
    dev._face.send(dev._txmv[s:e])
    third = c.lease_ms // 3
    dev._renew_at = ticks_add(ticks_ms(), third + port.random_below(third // 10 + 1))


def on_query(dev):
    # A discovery query (/<site>/_sd/query): answered by an announcement at a random time within _QUERY_WINDOW_MS
    # (Device._run_due sends it), at most one answer per _QUERY_HOLDOFF_MS; a device that just booted answers too
    # (its boot announcement may have gone out before the gateway listened).
    now = ticks_ms()
    if dev._query_at is None and (dev._last_query is None or ticks_diff(now, dev._last_query) >= _QUERY_HOLDOFF_MS):
        dev._query_at = ticks_add(now, port.random_below(_QUERY_WINDOW_MS))
        dev._due = now
