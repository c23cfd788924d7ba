"""The federation key: 32 random bytes that only the federation's gateways hold (HOME/federation.json, 0600).

Everything a gateway stores in NATS is sealed with it (AES-256-GCM under a key derived for sealing; the record's
bucket and key are the associated data, so a sealed value cannot be moved to another key); requests one gateway
makes on behalf of a client it authenticated itself (HTTP, gather) are vouched for with an HMAC under another
derived key. A NATS operator, or any NATS client without the key, reads no secret and can forge nothing: a value
that does not open is dropped and counted by its reader.

Decisions:
- AES-GCM from pycryptodomex, which python-ndn already depends on; a fresh random 96-bit nonce per value (a few
  million values per key at most in a federation's life, far below the birthday bound for 96 bits).
- Derived keys (HMAC-SHA256 of the federation key and a label) keep sealing and vouching apart.
Rejected: leaving device records readable and sealing only the keys in them (rules and directory entries need
integrity as much as keys need secrecy: a forged rule grants access).
"""
from __future__ import annotations

import hashlib
import hmac
import os

from ndn_edge.errors import GatewayError

KEY_BYTES = 32
_NONCE_BYTES = 12
_TAG_BYTES = 16
_VERSION = b"\x01"


class BadSeal(GatewayError):
    """A value in NATS that the federation key does not open (forged, damaged, or of another federation)."""


class FederationKey:
    """Seals values stored in NATS and vouches for requests between gateways."""

    __slots__ = ("_seal", "_vouch")

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
            raise ValueError(f"a federation key is {KEY_BYTES} bytes")
        self._seal = hmac.new(key, b"ndn-edge federation seal", hashlib.sha256).digest()
        self._vouch = hmac.new(key, b"ndn-edge federation vouch", hashlib.sha256).digest()

    def __repr__(self) -> str:
        return "FederationKey(...)"

    def seal(self, where: str, plain: bytes) -> bytes:
        """`plain` encrypted and authenticated, bound to `where` (bucket/key)."""
        from Cryptodome.Cipher import AES

        nonce = os.urandom(_NONCE_BYTES)
        cipher = AES.new(self._seal, AES.MODE_GCM, nonce=nonce, mac_len=_TAG_BYTES)
        cipher.update(where.encode())
        body, tag = cipher.encrypt_and_digest(plain)
        return _VERSION + nonce + body + tag

    def open(self, where: str, sealed: bytes) -> bytes:
        """The plain text of a sealed value; BadSeal when it does not open (for `where`)."""
        from Cryptodome.Cipher import AES

        if len(sealed) < 1 + _NONCE_BYTES + _TAG_BYTES or sealed[:1] != _VERSION:
            raise BadSeal(f"value at {where} is not a sealed ndn-edge record ({len(sealed)} bytes)")
        nonce, body, tag = sealed[1:1 + _NONCE_BYTES], sealed[1 + _NONCE_BYTES:-_TAG_BYTES], sealed[-_TAG_BYTES:]
        cipher = AES.new(self._seal, AES.MODE_GCM, nonce=nonce, mac_len=_TAG_BYTES)
        cipher.update(where.encode())
        try:
            return cipher.decrypt_and_verify(body, tag)
        except ValueError as err:
            raise BadSeal(f"value at {where} does not open with this federation's key") from err

    def vouch(self, body: bytes) -> bytes:
        """The MAC a gateway puts on a request it makes for a client it authenticated."""
        return hmac.new(self._vouch, body, hashlib.sha256).digest()

    def vouched(self, body: bytes, mac: bytes) -> bool:
        """True if `mac` is this federation's MAC of `body` (constant time)."""
        return hmac.compare_digest(self.vouch(body), mac)
