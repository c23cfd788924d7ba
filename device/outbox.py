# Reports the device must get through (operation results, publications): each is kept until the
# gateway acknowledges it with a Data of the same name, and sent again on a backoff (docs/protocol.md
# "Reports"). Loaded only by a device that publishes or runs long operations.
#
# At most `capacity` (Device max_reports) are pending: a report beyond that pushes out the oldest,
# counted in `dropped` (_health reports_dropped). Dropping rather than refusing the new one, because
# the sender is the device's own code (a timer publishing a reading, an operation ending), which
# has nothing better to do with a refusal than lose that report; the newest value is the one a
# retained topic wants; a receiver sees the gap in `seq`; and an operation's result is still
# answered by _op_get. The cap bounds the outbox's heap whatever the gateway does, away or slow.
#
# Reports travel on a socket of their own (`sock`, bound to the interface and a port of the system's
# choosing, opened at the first report), so that the gateway can acknowledge each one to this device
# alone instead of to the group: on a shared group every node reads every datagram, and a device
# publishing hundreds of reports a second would make every other device read as many acknowledgements.
# A report goes to the group until a verified acknowledgement has come back to this socket; then new
# reports go to the address that acknowledgement came from (the gateway's: only it holds our key),
# and only resends go to the group again. Learning needs the sender's address, which recvfrom gives
# and allocates for (a new bytes per datagram), so it is used only while the address is unknown or
# doubtful (a pending report has been resent): then an acknowledgement from another address, a
# gateway that took over and answered a resend, is followed at once. Otherwise acknowledgements are
# read into the face's buffer. A third resend of a report forgets the address: nobody answers there.
# An acknowledgement from a gateway newly heard from (restarted, or one that took over) sends every
# report still waiting again at once, instead of at the end of its backoff (up to 5 s).
# Where the port cannot open a second socket, reports go out on the group's socket as before.
import binascii
from device import report
from device.port import const, ticks_ms, ticks_add, ticks_diff, urandom
from device.sign import equal

_FIRST_MS = const(300)
_MAX_MS = const(5000)
_MAX_SENDS = const(12)
_DIGEST_LEN = const(32)
_ACK_MAX = const(512)  # an acknowledgement is about 130 bytes; the gateway sends up to 512 back to back


class Outbox:
    def __init__(self, dev, capacity=16):
        self.dev = dev
        self.capacity = max(1, capacity)
        self.items = []  # [packet, offset of its digest in it, sends, due_ticks]
        self.boot = binascii.hexlify(urandom(4)).decode()
        self.seq = 0
        self.dropped = 0
        self.acked = 0
        self.sock = None  # the report socket, or None (not opened yet, or closed by a sleep)
        self.gw = None  # where the gateway's acknowledgements come from, once learned
        self._from = None  # the sender of the datagram being read, while learning
        self._doubt = False  # a pending report has been resent: learn from every acknowledgement

    def send(self, kind, params, reliable=True):
        # Everything is allocated before the report is sent or kept: a MemoryError (raised to the
        # caller) leaves neither a report that went out but is not kept nor half an entry. (Three
        # steps with small frames: a frame above 11 words would go on the heap at every report.)
        # Returns the packet, which names a reliable report while it waits (see pending).
        r = report.build(self.dev, kind, params)  # (start, end, offset of the digest) in dev._tx
        r = self._keep(r, reliable)
        self._out(r, self.gw)
        return r

    def _keep(self, r, reliable):
        # The report's packet, kept (when reliable) with the offset of its digest.
        pkt = bytes(self.dev._txmv[r[0]:r[1]])
        if reliable:
            r = [pkt, r[2] - r[0], 1, ticks_add(ticks_ms(), _FIRST_MS)]
            if len(self.items) >= self.capacity:
                self.items.pop(0)
                self.dropped += 1
            self.items.append(r)
        return pkt

    def pending(self, pkt):
        # True while the reliable report whose packet `send` returned waits for its acknowledgement.
        for it in self.items:
            if it[0] is pkt:
                return True
        return False

    def publish(self, topic, value, retain):
        self.seq += 1
        self.send(report.PUBLICATION, {"topic": topic, "boot": self.boot, "seq": self.seq,
                                       "value": value, "retain": retain})

    def _out(self, pkt, to):
        # To the learned gateway address, or (to None) to the group; from the report socket if it opens.
        face = self.dev._face
        if face.sock is None:
            return  # not serving (setup only, or asleep): the resends carry it later
        s = self.sock or self._open()
        if s is None:
            face.send(pkt)
        else:
            face.send_from(s, pkt, to)

    def _open(self):
        # The report socket (device/netopen.py, loaded for this and released after), polled by the
        # serving loop from its next turn; None where the port cannot open it.
        from device import netopen, runtime
        s = self.sock = netopen.report_socket(self.dev._face)
        runtime.release()
        if s is not None:
            self.dev._due = ticks_ms()  # the serving loop looks at the outbox now
        return s

    def close(self):
        # Before a sleep: the socket goes, the learned address stays (the gateway answers from it).
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def read(self):
        # What the report socket holds, into the face's buffer; bytes read (0 when nothing).
        if self.gw is None or self._doubt:
            return self._learn(self.dev._face.buf)
        return _read_into(self.sock, self.dev._face.buf)

    def _learn(self, buf):
        # One datagram and its sender, who is learned if it proves to be the gateway (on_data). recvfrom
        # allocates what it reads, so it reads at most what the gateway sends in one datagram (a few
        # acknowledgements back to back; the rest of a longer one is lost); when that finds no memory, the datagram is
        # read into the buffer all the same (the ack counts, nothing is learned) rather than left queued:
        # a serving loop would find it readable again at once, and fail again.
        try:
            data, self._from = self.sock.recvfrom(_ACK_MAX)
        except OSError:
            return 0
        except MemoryError:
            self._from = None
            return _read_into(self.sock, buf)
        buf[:len(data)] = data
        return len(data)

    def on_data(self, p, mv):
        # An acknowledgement: the Data's name is a pending report's full name, signed with our key.
        if p.digest_s < 0 or p.sv_n != _DIGEST_LEN or p.sinfo_e < 0:
            return
        i = self._pending(mv, p.digest_s)
        if i >= 0 and self._ours(p, mv):
            del self.items[i]
            self.acked += 1
            if self._from is not None:
                if self._from != self.gw:  # a gateway newly heard from: what still waits goes again now
                    i = len(self.items)  # (a for loop's iterator would put this frame on the heap)
                    while i:
                        i -= 1
                        self.items[i][3] = ticks_ms()
                    self.dev._due = ticks_ms()  # the serving loop looks at the outbox now
                self.gw = self._from  # only a gateway signs with our key: it may be a new one
                self._from = None

    def _pending(self, mv, at):
        # The index of the pending report whose digest is at mv[at:], or -1. Compared plainly: the
        # digest is public (the report's own name, sent in clear); the signature is checked in
        # constant time (_ours).
        for i in range(len(self.items)):
            if _same(mv, at, self.items[i]):
                return i
        return -1

    def _ours(self, p, mv):
        mac = self.dev._mac
        h = mac.start()
        h.update(mv[p.signed_s:p.sinfo_e])
        return equal(mv, p.sv_s, mac.finish(h))

    def tick(self, now):
        # Send what is due again, to the group (and at its third resend, forget the gateway's address:
        # nobody answers there); returns ms until the next resend (or None when nothing waits).
        wait = None
        items = self.items
        self._doubt = False
        i = 0
        while i < len(items):
            it = items[i]
            d = ticks_diff(it[3], now)
            if d <= 0:
                if it[2] >= _MAX_SENDS:
                    del items[i]
                    self.dropped += 1
                    continue
                if it[2] > 2:
                    self.gw = None
                self._out(it[0], None)
                d = min(_FIRST_MS << it[2], _MAX_MS)
                it[2] += 1
                it[3] = ticks_add(now, d)
            if it[2] > 1:
                self._doubt = True
            if wait is None or d < wait:
                wait = d
            i += 1
        return wait


def _same(mv, i, item):
    # The digest at mv[i:] equals the one in the item's packet (first byte first: most differ there).
    pkt = item[0]
    d = item[1]
    if mv[i] != pkt[d]:
        return False
    for k in range(1, _DIGEST_LEN):
        if mv[i + k] != pkt[d + k]:
            return False
    return True


def _read_into(s, buf):
    try:
        return s.readinto(buf) or 0
    except OSError:
        return 0
