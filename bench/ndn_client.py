"""ndn-edge client for the device benchmark: signed Interests over UDP multicast on 127.0.0.1.

Interests are built with ndn_edge.wire.packets.make_call before timing, with consecutive SignatureSeqNum
starting at the `rx_floor` of the device's boot announcement. While timed, a reply is recognised
only by its name (the Interest's full name); HMAC and content are verified after timing.
"""
from __future__ import annotations

import secrets
import socket
import time

import cbor2
from ndn.encoding import Name, parse_interest

from bench.calls import ECHO_ARGS, BadReply, Client, check_values, free_port, wait_for
from ndn_edge.wire import packets as wire

GROUP = "224.0.23.170"
LOOPBACK = "127.0.0.1"
DEVICE = "/edge/bench/b1"
T_DATA = 0x06


class GroupSocket:
    """A UDP socket joined to the group on 127.0.0.1 only, sending with IP_MULTICAST_IF 127.0.0.1, TTL 1."""

    def __init__(self, port: int):
        self.dest = (GROUP, port)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((GROUP, port))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(GROUP) + socket.inet_aton(LOOPBACK))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(LOOPBACK))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        self.sock = s

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.dest)

    def recv_until(self, accept, timeout_s: float):
        """The first datagram accept() takes within timeout_s, or None."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(2048)
            except TimeoutError:
                return None
            if accept(data):
                return data
        return None

    def close(self) -> None:
        self.sock.close()


def value_offset(packet: bytes) -> int:
    """Offset of the outer TLV's value (TLV-TYPE below 253; 1-, 3- or 5-byte TLV-LENGTH)."""
    first = packet[1]
    return 2 if first < 253 else 4 if first == 253 else 6


class NdnClient(Client):
    label = "ndn-edge"
    lib = "ndn"

    def __init__(self, app, group: GroupSocket, key: bytes):
        super().__init__(app)
        self.group = group
        self.key = key
        self.seq = 0

    @classmethod
    def launch(cls, env, heap_kib: int) -> NdnClient:
        port = free_port()
        key = secrets.token_bytes(32)
        group = GroupSocket(port)  # joined before the device boots, so its announcement is heard
        app = env.launch("ndn_three.py", [DEVICE, key.hex(), str(port), "."], heap_kib, cls.lib)
        return cls(app, group, key)

    def wait_ready(self, timeout_s: float) -> None:
        """Wait for the boot announcement signed with our key; continue from its rx_floor."""
        key_name = wire.key_name(DEVICE, self.key)

        def announcement():
            got = self.group.recv_until(lambda d: d[0] == 0x05 and _announces_up(d, key_name), 0.1)
            return got and cbor2.loads(bytes(parse_interest(got, with_tl=True)[2]))

        params = wait_for(announcement, self.app, timeout_s, interval_s=0)
        self.seq = params["rx_floor"] - 1

    def prepare(self, services: list[str]) -> list[tuple[bytes, bytes]]:
        """(Interest wire, Name TLV of the reply) per call, consecutive sequence numbers."""
        requests = []
        for service in services:
            self.seq += 1
            args = ECHO_ARGS if service == "echo" else None
            interest, final = wire.make_call(f"{DEVICE}/{service}", args, self.key, self.seq, signer_owner=DEVICE)
            requests.append((interest, bytes(Name.to_bytes(final))))
        return requests

    def exchange(self, request, timeout_s: float):
        interest, name = request

        def is_reply(d: bytes) -> bool:
            return d[0] == T_DATA and d.startswith(name, value_offset(d))

        self.group.send(interest)
        return self.group.recv_until(is_reply, timeout_s)

    def values(self, replies: list) -> list:
        """Verified, decoded results; BadReply on a bad signature or an error reply."""
        values = []
        for reply in replies:
            try:
                r = wire.parse_reply(reply, self.key)
            except wire.BadPacket as err:
                raise BadReply(str(err)) from err
            if not r.ok:
                raise BadReply(f"{Name.to_str(r.name)}: {r.code} {r.message}")
            values.append(r.value)
        return values

    def check(self, services, requests, replies) -> None:
        check_values(services, self.values(replies))

    def decode_memtotal(self, reply) -> int:
        return self.values([reply])[0]

    def info(self) -> dict:
        return {"transport": "signed Interest / Data over UDP multicast on 127.0.0.1, 1 in flight"}

    def close(self) -> None:
        super().close()
        self.group.close()


def _announces_up(datagram: bytes, key_name: str) -> bool:
    try:
        name, _, params, sig = parse_interest(datagram, with_tl=True)
        if Name.to_str(name[:3]) != "/edge/_sd/ann" or \
                Name.to_str(sig.signature_info.key_locator.name) != key_name:
            return False
        return cbor2.loads(bytes(params)).get("state") == "up"
    except Exception:  # other traffic on the group
        return False
