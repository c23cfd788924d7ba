# Signed Interests the device sends on its own (announcements, operation reports, publications):
# /<site>/<kind>/<digest>, parameters in CBOR, signed with the device key and its send counter.
from device import cbor, tlv, port
from device.port import const
from device.sign import sha256

_T_NONCE = const(0x0A)
_T_LIFETIME = const(0x0C)
_T_APP_PARAMS = const(0x24)
_T_ISIG_INFO = const(0x2C)
_T_ISIG_VALUE = const(0x2E)
_T_SIG_NONCE = const(0x26)
_T_SIG_SEQ = const(0x2A)
_DIGEST_LEN = const(32)
_LIFETIME_MS = const(1000)


# name components after /<site> (GenericNameComponent TLVs)
ANNOUNCE = b"\x08\x03_sd\x08\x03ann"
OPERATION = b"\x08\x03_op"
PUBLICATION = b"\x08\x04_pub"


def build(dev, kind, params):
    # /<site>/<kind> signed Interest into dev._tx; returns its length. Its ParametersSha256DigestComponent
    # is at dev._tx[dev.report_digest_at:+32].
    seq = dev._seq.next_tx()
    nonce = port.urandom(8)
    sinfo = bytearray(len(dev._sig_base) + 10 + tlv.size_nni_tlv(_T_SIG_SEQ, seq))
    i = tlv.put_bytes(sinfo, 0, dev._sig_base)
    i = tlv.put_bytes(sinfo, tlv.put_tl(sinfo, i, _T_SIG_NONCE, 8), nonce)
    tlv.put_nni_tlv(sinfo, i, _T_SIG_SEQ, seq)
    name = bytearray(dev._site_val)
    name += kind
    return _signed_interest(dev, name, cbor.dumps(params), sinfo)


def _signed_interest(dev, name_value, params, sinfo_fields):
    # Interest{Name{comps, digest}, Nonce, Lifetime, AppParams, ISigInfo, ISigValue} into dev._tx.
    buf = dev._tx
    name_len = len(name_value) + 2 + _DIGEST_LEN
    total = (tlv.size_tl(tlv.T_NAME, name_len) + name_len + 6 + 4 + tlv.size_tl(_T_APP_PARAMS, len(params)) +
             len(params) + tlv.size_tl(_T_ISIG_INFO, len(sinfo_fields)) + len(sinfo_fields) + 2 + _DIGEST_LEN)
    if tlv.size_tl(tlv.T_INTEREST, total) + total > len(buf):
        raise ValueError("report of %d bytes exceeds the %d-byte buffer" % (total, len(buf)))
    i = tlv.put_tl(buf, 0, tlv.T_INTEREST, total)
    i = tlv.put_tl(buf, i, tlv.T_NAME, name_len)
    comps_s = i
    i = tlv.put_bytes(buf, i, name_value)
    comps_e = i
    i = tlv.put_tl(buf, i, tlv.T_PARAMS_DIGEST, _DIGEST_LEN)
    dev.report_digest_at = i
    i += _DIGEST_LEN
    i = tlv.put_bytes(buf, tlv.put_tl(buf, i, _T_NONCE, 4), port.urandom(4))
    i = tlv.put_be(buf, tlv.put_tl(buf, i, _T_LIFETIME, 2), _LIFETIME_MS, 2)
    params_s = i
    i = tlv.put_bytes(buf, tlv.put_tl(buf, i, _T_APP_PARAMS, len(params)), params)
    i = tlv.put_bytes(buf, tlv.put_tl(buf, i, _T_ISIG_INFO, len(sinfo_fields)), sinfo_fields)
    mv = memoryview(buf)
    h = dev._mac.start()
    h.update(mv[comps_s:comps_e])
    h.update(mv[params_s:i])
    i = tlv.put_bytes(buf, tlv.put_tl(buf, i, _T_ISIG_VALUE, _DIGEST_LEN), dev._mac.finish(h))
    buf[dev.report_digest_at:dev.report_digest_at + _DIGEST_LEN] = sha256(mv[params_s:i])
    return i
