# The device's face: the group's UDP socket (and, where the port needs one, a unicast socket), and one
# preallocated receive buffer; sends to the group (and to a gateway address when set). Opened by
# device/netopen.py, loaded only then: what stays in the heap while serving is reading and sending.


class MulticastFace:
    def __init__(self, iface, group, udp_port, buf, gateway=None):
        self.iface = iface
        self.group = group
        self.udp_port = udp_port
        self.gateway = gateway  # "host:port" for the unicast fallback, or None
        self.buf = buf
        self.mv = memoryview(self.buf)
        self.sock = None  # the group's socket (on lwIP it receives unicast too)
        self.usock = None  # the unicast socket, where sock cannot receive unicast (device/netopen.py)
        self._gw_addr = None
        self._dest = None
        self._read = self._uread = None  # the sockets' readinto (recv_into on CPython), set by netopen

    def open(self):
        from device import netopen
        netopen.open_face(self)

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
        for s in (self.sock, self.usock):
            if s is not None:
                s.close()
        self.sock = self.usock = None


def _fill(read, buf):
    try:
        return read(buf) or 0
    except OSError:
        return 0
