# The device's face: one non-blocking UDP socket joined to the multicast group on one interface, one
# preallocated receive buffer; sends to the group (and to a gateway address when set). It also listens
# for unicast on its port, the fallback where multicast does not get through (docs/protocol.md
# "Transport"): on lwIP (ESP32, RP2) the group socket is bound to the wildcard address and receives it
# already; where the group socket can be bound to the group address (Linux, the unix port), a second
# socket bound to the interface's address on the same port receives it.
import socket
from device import port
from device.port import const

_IP_MULTICAST_ALL = const(49)  # Linux: 0 keeps a wildcard-bound socket out of the groups others joined


class MulticastFace:
    def __init__(self, iface, group, udp_port, buf, gateway=None):
        self.iface = iface
        self.group = group
        self.udp_port = udp_port
        self.buf = buf
        self.mv = memoryview(self.buf)
        self.sock = None
        self.usock = None  # the unicast socket, where sock cannot receive unicast (see open)
        self._gateway = gateway  # "host:port" for the unicast fallback, or None
        self._gw_addr = None
        self._dest = None
        self._read = self._uread = None

    def open(self):
        add, ttl, mif, loop = port.mcast_options(socket)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ipproto = getattr(socket, "IPPROTO_IP", 0)
        try:
            # Binding the group address filters other groups' traffic on Linux; lwIP wants the wildcard.
            s.bind(socket.getaddrinfo(self.group, self.udp_port)[0][-1])
            grouped = True
        except OSError:
            s.bind(socket.getaddrinfo("0.0.0.0", self.udp_port)[0][-1])
            grouped = False
        ifaddr = port.ip4(self.iface)
        s.setsockopt(ipproto, add, port.ip4(self.group) + ifaddr)
        for opt, value in ((mif, ifaddr), (ttl, 1), (loop, 1)):
            if opt is not None:  # None: the port's sockets cannot set it (see port.mcast_options)
                s.setsockopt(ipproto, opt, value)
        s.setblocking(False)
        self.sock = s
        if grouped:
            self.usock = self._unicast(ipproto)
        # MicroPython's readinto keeps reading while datagrams are queued, so one read may hold
        # several packets back to back; the parser walks them by their TLV framing.
        self._read = _reader(s)
        self._uread = None if self.usock is None else _reader(self.usock)
        self._dest = socket.getaddrinfo(self.group, self.udp_port)[0][-1]
        if self._gateway:
            host, _, p = self._gateway.rpartition(":")
            self._gw_addr = socket.getaddrinfo(host, int(p))[0][-1]

    def _unicast(self, ipproto):
        # A socket for unicast to the interface's address and the group's port, or None when this host cannot
        # keep the group's datagrams out of it (a wildcard-bound socket would read each of them a second time).
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.iface == "0.0.0.0":
                u.setsockopt(ipproto, _IP_MULTICAST_ALL, 0)
            u.bind(socket.getaddrinfo(self.iface, self.udp_port)[0][-1])
            u.setblocking(False)
        except OSError:
            u.close()
            return None
        return u

    def read(self):
        # Bytes now in self.buf (0 when nothing was waiting): the group's datagrams, then unicast ones.
        n = _fill(self._read, self.buf)
        if self._uread is not None and n < len(self.buf):
            n += _fill(self._uread, self.mv[n:] if n else self.buf)
        return n

    def send(self, data):
        try:
            self.sock.sendto(data, self._dest)
            if self._gw_addr is not None:
                self.sock.sendto(data, self._gw_addr)
        except OSError:
            return False  # a full send queue loses a datagram; the sender retries
        return True

    def close(self):
        for s in (self.sock, self.usock):
            if s is not None:
                s.close()
        self.sock = self.usock = None


def _reader(s):
    return getattr(s, "recv_into", None) or s.readinto


def _fill(read, buf):
    try:
        return read(buf) or 0
    except OSError:
        return 0
