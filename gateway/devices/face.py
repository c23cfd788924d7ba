"""The gateway's faces towards devices: one asyncio UDP endpoint on the devices' group, on one interface only,
and the unicast fallback on the same interface (`UnicastFace`).

Owns the socket and the transport rules of docs/protocol.md: bind the group port with `SO_REUSEADDR`, join the
group on one interface (`IP_ADD_MEMBERSHIP` with that interface's address), send with `IP_MULTICAST_IF` set to
the same address, TTL 1, loopback on (devices and the gateway may share a host). Each datagram is unwrapped
(`ndn_edge.wire.framing.unwrap`) and the bare Interest or Data handed to `on_packet`.

Decisions:
- Shaped like python-ndn's `Face`: `open`, `send`, `close` and one inbound callback. The owner sets
  `on_packet`; the callback only routes (habit 4: callbacks record and signal, tasks do the work).
- Bound to the group address, not the wildcard: on Linux that keeps other groups' traffic on the same port out.
- LP unwrapping and framing checks live here, below every consumer, so "malformed: dropped and counted" is
  counted once, in `malformed`; idle LpPackets are counted in `idle`, not as malformed.
- The receive buffer asks for `RCVBUF_BYTES` (1 MiB; Linux caps it at `net.core.rmem_max`): answers to the
  start-up query arrive from every device within a second, and a default buffer (about 200 KiB, a few hundred
  datagrams) overflows while the loop is busy with the first of them.
- With loopback on, every packet we send to the group comes back to our own socket. The multicast face
  remembers its last `_ECHOES_KEPT` sends and drops their copies on arrival (`echoes`) before any parsing: on
  an uncached call that is one datagram in four the gateway reads.
- `iface` is an IPv4 address (`127.0.0.1` in tests) or, on Linux, an interface name such as `eth0`, which is
  resolved to its address once at `open()`.
Rejected: python-ndn's `UdpFace` (unicast only, no group membership or interface pinning) and one socket for
sending plus one for receiving (twice the setup for no gain: one socket does both).
"""
from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

from ndn_edge.errors import ConfigError, Unavailable
from ndn_edge.logs import event
from ndn_edge.wire.framing import FramingError, unwrap

log = logging.getLogger("ndn_edge.mcast")

MULTICAST_TTL = 1
RCVBUF_BYTES = 1 << 20
_ECHOES_KEPT = 1024  # sends remembered to recognise their loopback copies (more than ever wait in the socket)
_SIOCGIFADDR = 0x8915  # Linux ioctl: an interface's IPv4 address
_IFNAMSIZ = 16


def interface_address(iface: str) -> str:
    """The IPv4 address for `iface`: itself when it is an address, else the Linux interface's address."""
    try:
        socket.inet_aton(iface)
        return iface
    except OSError:
        pass
    try:
        import fcntl
        import struct
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            packed = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, struct.pack("256s", iface.encode()[:_IFNAMSIZ - 1]))
        return socket.inet_ntoa(packed[20:24])
    except (ImportError, OSError) as err:
        raise ConfigError(f"interface {iface!r} has no IPv4 address ({err}); pass an address of this host "
                          "such as 127.0.0.1, or the name of an interface that is up") from err


Address = tuple[str, int]


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, face: _Endpoint) -> None:
        self._face = face

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self._face._received(data, addr)

    def error_received(self, exc: Exception) -> None:
        self._face.errors += 1
        event(log, "socket_error", logging.DEBUG, error=str(exc))


class _Endpoint:
    """What both faces share: one UDP socket on the interface `iface`, its counters, and the framing of what it
    receives (`on_packet` gets each bare Interest or Data; `last_addr` is its sender meanwhile)."""

    def __init__(self, iface: str, port: int) -> None:
        self.iface = iface
        self.port = port
        self.on_packet: Callable[[bytes], None] | None = None
        self.received = 0   # datagrams read from the socket
        self.malformed = 0  # datagrams dropped as not one well-framed NDN packet
        self.idle = 0       # idle LpPackets (no fragment) and empty datagrams, ignored
        self.sent = 0
        self.errors = 0     # socket errors reported by the kernel
        self.last_addr: Address | None = None  # the sender of the packet `on_packet` is called with
        self._transport: asyncio.DatagramTransport | None = None

    @property
    def is_open(self) -> bool:
        """True between `open()` and `close()`."""
        return self._transport is not None

    def close(self) -> None:
        """Stop receiving and release the socket (idempotent)."""
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()

    def counters(self) -> dict[str, int]:
        """The face's counters by name."""
        return {"received": self.received, "malformed": self.malformed, "idle": self.idle, "sent": self.sent,
                "errors": self.errors}

    def _received(self, datagram: bytes, addr: Address | None = None) -> None:
        self.received += 1
        if not datagram:  # a device's stop() wakes its own receive loop with an empty datagram
            self.idle += 1
            return
        try:
            packet = unwrap(datagram)
        except FramingError as err:
            self.malformed += 1
            event(log, "datagram_dropped", logging.DEBUG, reason="malformed", size=len(datagram), error=str(err))
            return
        if packet is None:
            self.idle += 1
            return
        if self.on_packet is not None:
            self.last_addr = addr
            self.on_packet(packet)


class MulticastFace(_Endpoint):
    """A UDP face joined to `group`:`port` on the interface `iface` only."""

    def __init__(self, iface: str, group: str, port: int) -> None:
        super().__init__(iface, port)
        self.group = group
        self._dest = (group, port)
        self.echoes = 0  # our own packets, looped back by the kernel (IP_MULTICAST_LOOP), ignored
        self._sent_recently: dict[bytes, None] = {}  # what we sent last, to know its echo when it comes back

    async def open(self) -> None:
        """Create the socket, join the group and start receiving; ConfigError if the interface is unusable."""
        if self._transport is not None:
            return
        address = interface_address(self.iface)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
            sock.bind((self.group, self.port))
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                            socket.inet_aton(self.group) + socket.inet_aton(address))
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(address))
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, MULTICAST_TTL)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
            sock.setblocking(False)
        except OSError as err:
            sock.close()
            raise ConfigError(f"cannot join multicast group {self.group}:{self.port} on {self.iface} "
                              f"({address}): {err}; check that the interface is up and multicast-capable") from err
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), sock=sock)
        event(log, "multicast_face_open", iface=self.iface, address=address, group=f"{self.group}:{self.port}")

    def send(self, data: bytes) -> None:
        """Send one packet to the group; Unavailable if the face is not open."""
        if self._transport is None:
            raise Unavailable(f"multicast face {self.group}:{self.port} on {self.iface} is not open")
        self._transport.sendto(data, self._dest)
        self.sent += 1
        recent = self._sent_recently
        recent[data] = None
        if len(recent) > _ECHOES_KEPT:
            del recent[next(iter(recent))]

    def counters(self) -> dict[str, int]:
        return {**super().counters(), "echoes": self.echoes}

    def _received(self, datagram: bytes, addr: Address | None = None) -> None:
        if datagram in self._sent_recently:  # the loopback copy of our own send: nothing to read in it
            del self._sent_recently[datagram]
            self.received += 1
            self.echoes += 1
            return
        super()._received(datagram, addr)


class UnicastFace(_Endpoint):
    """The unicast fallback (docs/protocol.md "Transport"): a UDP socket bound to the interface's address and
    `port`, where devices configured with the gateway's address send their announcements, replies and reports
    too, and from which the gateway sends to one device's address (`send_to`). The same framing, counters and
    `on_packet` (with `last_addr`) as the multicast face."""

    def __init__(self, iface: str, port: int) -> None:
        super().__init__(iface, port)
        self.address: Address | None = None  # bound to, once open

    async def open(self) -> None:
        """Bind the interface's address and `port`; ConfigError if that is not possible."""
        if self._transport is not None:
            return
        address = interface_address(self.iface)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
            sock.bind((address, self.port))
            sock.setblocking(False)
        except OSError as err:
            sock.close()
            raise ConfigError(f"cannot listen for unicast on {address}:{self.port} ({self.iface}): {err}; "
                              "pick another unicast port") from err
        self.address = sock.getsockname()
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), sock=sock)
        event(log, "unicast_face_open", iface=self.iface, address=f"{self.address[0]}:{self.address[1]}")

    def send_to(self, data: bytes, addr: Address) -> None:
        """Send one packet to `addr`; Unavailable if the face is not open."""
        if self._transport is None:
            raise Unavailable(f"unicast face {self.iface}:{self.port} is not open")
        self._transport.sendto(data, addr)
        self.sent += 1
