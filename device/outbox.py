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
import binascii
from device import report
from device.port import const, ticks_ms, ticks_add, ticks_diff, urandom
from device.sign import equal

_FIRST_MS = const(300)
_MAX_MS = const(5000)
_MAX_SENDS = const(12)


class Outbox:
    def __init__(self, dev, capacity=16):
        self.dev = dev
        self.capacity = max(1, capacity)
        self.items = []  # [digest, packet, sends, due_ticks]
        self.boot = binascii.hexlify(urandom(4)).decode()
        self.seq = 0
        self.dropped = 0
        self.acked = 0

    def send(self, kind, params, reliable=True):
        # Everything is allocated before the report is sent or kept: a MemoryError (raised to the
        # caller) leaves neither a report that went out but is not kept nor half an entry.
        # Returns the digest that names a reliable report (see pending), None for the others.
        dev = self.dev
        s, e, d = report.build(dev, kind, params)
        pkt = bytes(dev._txmv[s:e])
        digest = None
        if reliable:
            d -= s
            digest = pkt[d:d + 32]
            item = [digest, pkt, 1, ticks_add(ticks_ms(), _FIRST_MS)]
            if len(self.items) >= self.capacity:
                self.items.pop(0)
                self.dropped += 1
            self.items.append(item)
        if dev._face.sock is not None:
            dev._face.send(pkt)
        return digest

    def pending(self, digest):
        # True while the report `send` returned `digest` for waits for its acknowledgement.
        for it in self.items:
            if it[0] is digest:
                return True
        return False

    def publish(self, topic, value, retain):
        self.seq += 1
        self.send(report.PUBLICATION, {"topic": topic, "boot": self.boot, "seq": self.seq,
                                       "value": value, "retain": retain})

    def on_data(self, p, mv):
        # An acknowledgement: the Data's name is a pending report's full name, signed with our key.
        if p.digest_s < 0 or p.sv_n != 32 or p.sinfo_e < 0:
            return
        items = self.items
        for i in range(len(items)):
            if equal(mv, p.digest_s, items[i][0]):
                mac = self.dev._mac
                h = mac.start()
                h.update(mv[p.signed_s:p.sinfo_e])
                if equal(mv, p.sv_s, mac.finish(h)):
                    del items[i]
                    self.acked += 1
                return

    def tick(self, now):
        # Send what is due again; returns ms until the next resend (or None when nothing waits).
        wait = None
        items = self.items
        i = 0
        while i < len(items):
            it = items[i]
            d = ticks_diff(it[3], now)
            if d <= 0:
                if it[2] >= _MAX_SENDS:
                    del items[i]
                    self.dropped += 1
                    continue
                if self.dev._face.sock is not None:
                    self.dev._face.send(it[1])
                d = min(_FIRST_MS << it[2], _MAX_MS)
                it[2] += 1
                it[3] = ticks_add(now, d)
            if wait is None or d < wait:
                wait = d
            i += 1
        return wait
