# The device's face: one non-blocking UDP socket joined to the multicast group on one interface,
# one preallocated receive buffer; sends to the group (and to a gateway address when set).
import socket
from device import port


class MulticastFace:
    def __init__(self, iface, group, udp_port, buf, gateway=None):
        self.iface = iface
        self.group = group
        self.udp_port = udp_port
        self.buf = buf
        self.mv = memoryview(self.buf)
        self.sock = None
        self._gateway = gateway  # "host:port" for the unicast fallback, or None
        self._gw_addr = None
        self._dest = None
        self._read = None

    def open(self):
        add, ttl, mif, loop = port.mcast_options(socket)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ipproto = getattr(socket, "IPPROTO_IP", 0)
        try:
            # Binding the group address filters other groups' traffic on Linux; lwIP wants the wildcard.
            s.bind(socket.getaddrinfo(self.group, self.udp_port)[0][-1])
        except OSError:
            s.bind(socket.getaddrinfo("0.0.0.0", self.udp_port)[0][-1])
        ifaddr = port.ip4(self.iface)
        s.setsockopt(ipproto, add, port.ip4(self.group) + ifaddr)
        for opt, value in ((mif, ifaddr), (ttl, 1), (loop, 1)):
            if opt is not None:  # None: the port's sockets cannot set it (see port.mcast_options)
                s.setsockopt(ipproto, opt, value)
        s.setblocking(False)
        self.sock = s
        # MicroPython's readinto keeps reading while datagrams are queued, so one read may hold
        # several packets back to back; the parser walks them by their TLV framing.
        self._read = getattr(s, "recv_into", None) or s.readinto
        self._dest = socket.getaddrinfo(self.group, self.udp_port)[0][-1]
        if self._gateway:
            host, _, p = self._gateway.rpartition(":")
            self._gw_addr = socket.getaddrinfo(host, int(p))[0][-1]

    def read(self):
        # Bytes now in self.buf (0 when nothing was waiting).
        try:
            return self._read(self.buf) or 0
        except OSError:
            return 0

    def send(self, data):
        try:
            self.sock.sendto(data, self._dest)
            if self._gw_addr is not None:
                self.sock.sendto(data, self._gw_addr)
        except OSError:
            return False  # a full send queue loses a datagram; the sender retries
        return True

    def send_from(self, sock, data, to=None):
        # As send, or to the address `to`, from another socket (the outbox's, device/outbox.py): its
        # own method, so that send's frame stays off the heap.
        try:
            sock.sendto(data, to or self._dest)
            if to is None and self._gw_addr is not None:
                sock.sendto(data, self._gw_addr)
        except OSError:
            return False
        return True

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None
