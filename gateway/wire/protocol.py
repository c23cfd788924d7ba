"""The protocol's named values that are not TLV types (those are `wire.tlv.T`): where devices meet, the default
site, key sizes (docs/protocol.md "Transport", "Names", "Keys"). One source on the host; the device runtime keeps
its own copies, which tests/test_tlv.py checks against these.
"""
from __future__ import annotations

DEFAULT_GROUP = "224.0.23.170"   # the devices' IPv4 multicast group
DEFAULT_PORT = 56363             # its UDP port
DEFAULT_IFACE = "127.0.0.1"      # the gateway joins the group on this interface unless told another
DEFAULT_SITE = "edge"            # the first name component of every device and framework name
KEY_BYTES = 32                   # device and client keys (HMAC-SHA256)
KEY_ID_BYTES = 4                 # a key id is the first 4 bytes of SHA-256(key), in hex
ENC_LABEL = b"ndn-edge enc"      # HMAC(key, ENC_LABEL)[:16] is a private service's AES key
