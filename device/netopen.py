# Opening the device's face (device/net.py): its sockets and the multicast options each port
# implements. Needed when the device starts and when it wakes from a sleep, so it is loaded then and
# released after (runtime.release()), like the control plane.
#
# Two sockets where the port allows: the group's, bound to the group address (Linux: that keeps other
# groups' traffic out), and the unicast one, bound to the interface's address and the group's port (the
# fallback where multicast does not get through, docs/protocol.md "Transport"). lwIP (ESP32, RP2) binds
# the wildcard address only: its one socket receives the group and unicast alike.
import socket
from device.port import const, MICROPYTHON

_IP_MULTICAST_ALL = const(49)  # Linux: 0 keeps a wildcard-bound socket out of the groups others joined


def open_face(face):
    add, ttl, mif, loop = mcast_options(socket)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ipproto = getattr(socket, "IPPROTO_IP", 0)
    try:
        s.bind(socket.getaddrinfo(face.group, face.udp_port)[0][-1])
        grouped = True
    except OSError:
        s.bind(socket.getaddrinfo("0.0.0.0", face.udp_port)[0][-1])
        grouped = False
    ifaddr = ip4(face.iface)
    s.setsockopt(ipproto, add, ip4(face.group) + ifaddr)
    for opt, value in ((mif, ifaddr), (ttl, 1), (loop, 1)):
        if opt is not None:  # None: the port's sockets cannot set it (see mcast_options)
            s.setsockopt(ipproto, opt, value)
    s.setblocking(False)
    u = _unicast(face, ipproto) if grouped else None
    dest = socket.getaddrinfo(face.group, face.udp_port)[0][-1]
    gw = None
    if face.gateway:
        host, _, p = face.gateway.rpartition(":")
        gw = socket.getaddrinfo(host, int(p))[0][-1]
    # MicroPython's readinto keeps reading while datagrams are queued, so one read may hold several packets back
    # to back; the parser walks them by their TLV framing.
    face.sock = s
    face.usock = u
    face._dest = dest
    face._gw_addr = gw
    face._read = s.readinto if MICROPYTHON else s.recv_into
    face._uread = None if u is None else u.readinto if MICROPYTHON else u.recv_into


def _unicast(face, ipproto):
    # A socket for unicast to the interface's address and the group's port, or None when this host cannot
    # keep the group's datagrams out of it (a wildcard-bound socket would read each of them a second time).
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if face.iface == "0.0.0.0":
            u.setsockopt(ipproto, _IP_MULTICAST_ALL, 0)
        u.bind(socket.getaddrinfo(face.iface, face.udp_port)[0][-1])
        u.setblocking(False)
    except OSError:
        u.close()
        return None
    return u


def report_socket(face):
    # The outbox's own socket (device/outbox.py): the interface's address, a port of the system's
    # choosing, multicast options as the group's socket has; None where the port cannot open it.
    _, ttl, mif, loop = mcast_options(socket)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(socket.getaddrinfo(face.iface, 0)[0][-1])
        for opt, value in ((mif, ip4(face.iface)), (ttl, 1), (loop, 1)):
            if opt is not None:
                s.setsockopt(getattr(socket, "IPPROTO_IP", 0), opt, value)
        s.setblocking(False)
    except OSError:
        s.close()
        return None
    return s


def mcast_options(socket):
    # IPv4 multicast socket options (ADD_MEMBERSHIP, TTL, IF, LOOP). CPython and some ports export
    # them; the unix port exports only IP_ADD_MEMBERSHIP. MicroPython's lwIP sockets (ESP32, RP2)
    # implement only ADD_MEMBERSHIP (3) and print a warning for the others, so those are None (not set)
    # unless the port exports them.
    add = getattr(socket, "IP_ADD_MEMBERSHIP", None)
    if add == 3:  # lwIP
        return (3, getattr(socket, "IP_MULTICAST_TTL", None), getattr(socket, "IP_MULTICAST_IF", None),
                getattr(socket, "IP_MULTICAST_LOOP", None))
    if add == 12:  # BSD, macOS
        return 12, 10, 9, 11
    return (add or 35, getattr(socket, "IP_MULTICAST_TTL", 33),
            getattr(socket, "IP_MULTICAST_IF", 32), getattr(socket, "IP_MULTICAST_LOOP", 34))


def ip4(text):
    # "a.b.c.d" -> 4 bytes; ports differ in whether inet_aton/inet_pton exist.
    parts = text.split(".")
    if len(parts) != 4:
        raise ValueError("not an IPv4 address: %r" % text)
    return bytes([int(p) for p in parts])
