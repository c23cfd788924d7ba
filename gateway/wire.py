"""Host side of the wire protocol (docs/protocol.md) on top of python-ndn.

Owns: key ids and key names, signed Interests with SignatureSeqNum (python-ndn's HMAC signer
writes no nonce, time or sequence number, so a subclass adds them), and verified parsing of
device replies and announcements. Everything else in the gateway speaks in these terms.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import time
from dataclasses import dataclass
from typing import Any

import cbor2
from ndn.encoding import InterestParam, MetaInfo, Name, SignatureType, make_data, make_interest, parse_data
from ndn.security.signer.sha256_hmac_signer import HmacSha256Signer

from gateway.errors import GatewayError

ENC_LABEL = b"ndn-edge enc"
CONTENT_NACK = 3


class BadPacket(GatewayError):
    """A packet that does not parse or does not verify."""


def key_id(key: bytes) -> str:
    """First 4 bytes of SHA-256(key) as 8 lowercase hex characters."""
    return hashlib.sha256(key).digest()[:4].hex()


def key_name(owner: str, key: bytes) -> str:
    """Key name `<owner>/KEY/<key-id>` as a URI."""
    return f"{owner.rstrip('/')}/KEY/{key_id(key)}"


def enc_key(key: bytes) -> bytes:
    return hmac.new(key, ENC_LABEL, hashlib.sha256).digest()[:16]


class SeqSigner(HmacSha256Signer):
    """HMAC-SHA256 Interest signer that also writes SignatureNonce, SignatureTime and SignatureSeqNum."""

    def __init__(self, key_locator: str, key: bytes, seq: int):
        super().__init__(key_locator, key)
        self.seq = seq

    def write_signature_info(self, signature_info):
        super().write_signature_info(signature_info)
        signature_info.signature_nonce = int.from_bytes(os.urandom(8), "big")
        signature_info.signature_time = int(time.time() * 1000)
        signature_info.signature_seq_num = self.seq


def seal(key: bytes, plain: bytes) -> bytes:
    from Cryptodome.Cipher import AES
    iv = os.urandom(16)
    pad = 16 - len(plain) % 16
    return iv + AES.new(enc_key(key), AES.MODE_CBC, iv).encrypt(plain + bytes([pad]) * pad)


def unseal(key: bytes, data: bytes) -> bytes:
    from Cryptodome.Cipher import AES
    if len(data) < 32 or len(data) % 16:
        raise BadPacket(f"sealed content of {len(data)} bytes is not IV plus whole blocks")
    plain = AES.new(enc_key(key), AES.MODE_CBC, bytes(data[:16])).decrypt(bytes(data[16:]))
    pad = plain[-1]
    if not 1 <= pad <= 16 or plain[-pad:] != bytes([pad]) * pad:
        raise BadPacket("sealed content has bad padding")
    return plain[:-pad]


def make_call(name: str, args: dict | None, key: bytes, seq: int, *, signer_owner: str,
              lifetime_ms: int = 4000, private: bool = False) -> tuple[bytes, list]:
    """Signed Interest invoking `name` with CBOR `args`; returns (wire, final name)."""
    params = cbor2.dumps(args or {})
    if private:
        params = seal(key, params)
    signer = SeqSigner(key_name(signer_owner, key), key, seq)
    ip = InterestParam(must_be_fresh=True, lifetime=lifetime_ms)
    wire, final = make_interest(name, ip, params, signer=signer, need_final_name=True)
    return bytes(wire), final


@dataclass
class Reply:
    """A verified reply: `ok` with `value`, or an error `code` and `message`."""
    name: list
    ok: bool
    value: Any = None
    code: str | None = None
    message: str | None = None
    freshness_ms: int | None = None


def verify_data(wire: bytes, key: bytes) -> tuple[list, Any, bytes]:
    """Parse a Data and check its HMAC; returns (name, meta_info, content)."""
    try:
        name, meta, content, sig = parse_data(wire, with_tl=True)
    except (ValueError, IndexError, TypeError) as err:
        raise BadPacket(f"not a Data packet: {err}") from err
    if sig.signature_info is None or sig.signature_info.signature_type != SignatureType.HMAC_WITH_SHA256:
        raise BadPacket("Data is not signed with HMAC-SHA256")
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for part in sig.signature_covered_part:
        mac.update(part)
    if not hmac.compare_digest(mac.digest(), bytes(sig.signature_value_buf)):
        raise BadPacket(f"bad signature on Data {Name.to_str(name)}")
    return name, meta, bytes(content or b"")


def parse_reply(wire: bytes, key: bytes, *, private: bool = False) -> Reply:
    """Verify and decode a device's reply Data."""
    name, meta, content = verify_data(wire, key)
    fresh = meta.freshness_period if meta else None
    try:
        if meta is not None and meta.content_type == CONTENT_NACK:
            err = cbor2.loads(content)
            return Reply(name, False, code=str(err.get("code")), message=str(err.get("message")))
        if private:
            content = unseal(key, content)
        return Reply(name, True, value=cbor2.loads(content), freshness_ms=fresh)
    except (cbor2.CBORDecodeError, AttributeError, ValueError) as err:
        raise BadPacket(f"reply content is not valid CBOR: {err}") from err


def make_ack(name, key: bytes, owner: str) -> bytes:
    """Acknowledgement of a device's report (operation report, publication): a Data with the report's full
    name, signed with the device key, content {"ok": true} (docs/protocol.md "Reports")."""
    signer = HmacSha256Signer(key_name(owner, key), key)
    return bytes(make_data(name, MetaInfo(), cbor2.dumps({"ok": True}), signer=signer))
