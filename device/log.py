# Device logs: dev.log(level, msg) entries kept in a small ring buffer and sent to the gateway as
# signed reports /<site>/_log through the outbox (docs/protocol.md "Device logs"). Imported on the
# first dev.log() (or the first handler that raised): a device that never logs keeps neither this
# code nor its buffer in the heap.
#
# The ring is one bytearray of `log_bytes` (512 by default), allocated once: entries are packed
# records, so their number and size cost no objects and the heap they take is exact. A record:
#   [0] its length, [1] level, [2:6] seq, [6:10] ticks_ms when logged, [10] trace length (0 or 24),
#   then the trace (trace id and span id of the call the entry was logged in), then the message.
# When a new entry does not fit, the oldest are dropped and counted (`dropped`, _health logs_dropped):
# a board that cannot reach the gateway keeps the newest entries. Every entry has a sequence number
# (from 1 at every boot, with the outbox's boot id), so the gateway shows what was lost as a gap.
#
# Rate limit: at most one log report in flight (it takes one slot of the outbox, never more, so logs
# never push publications out), at least _GAP_MS between two, at most _BATCH bytes of records each.
# A board logging in a loop therefore sends at most a few hundred bytes every quarter second, and
# loses its oldest entries, counted, rather than its heap or the gateway's attention.
import struct
from device import report
from device.port import const, ticks_ms, ticks_add, ticks_diff

_HEAD = const(11)
_TRACE = const(24)
_MAX_MSG = const(100)  # bytes of a message kept; a longer one is cut at a character boundary
_BATCH = const(480)  # bytes of records in one report
_GAP_MS = const(250)  # between two log reports, and between looks at the one in flight
_RETRY_MS = const(1000)  # after a report that could not be built (out of memory)
_TICKS_MASK = const(0x3FFFFFFF)  # ticks_ms is below 2**30 on MicroPython (and device/_cpython.py)

_NAMES = ("debug", "info", "warning", "error")


def level_of(level):
    # 10, 20, 30, 40 (as Python's logging) or their names; anything else is an error (40).
    if isinstance(level, str):
        try:
            return (_NAMES.index(level.lower()) + 1) * 10
        except ValueError:
            return 40
    if isinstance(level, int) and 0 <= level <= 50:
        return level
    return 40


def ring(dev):
    # The device's log ring, made on first use; None when logs are off (log_bytes 0).
    c = dev.conf
    if dev._logs is None and c.log_bytes > 0:
        dev._logs = Logs(dev, c.log_bytes, c.log_level)
    return dev._logs


def entry(dev, level, msg):
    # dev.log(level, msg): kept with the trace context of the call it is logged in.
    lg = ring(dev)
    if lg is not None:
        lg.add(level, msg, dev._trace())


def capture(dev, on):
    # dev.log_print(on)
    lg = ring(dev)
    if lg is not None:
        lg.capture(on)


def failed(dev, e, tp, svc):
    # The entry of a handler that raised: ERROR, or WARNING for a ServiceError (an answer the app
    # chose), "service: CODE: message"; outside a handler (svc None): "uncaught: Type: text".
    lg = ring(dev)
    if svc is None:
        text = "uncaught: %s: %s" % (type(e).__name__, e)
    else:
        text = "%s: %s: %s" % ((svc.name,) + dev._code(e))
    from device.runtime import ServiceError
    lg.add(30 if isinstance(e, ServiceError) else 40, text, tp)


class Logs:
    def __init__(self, dev, size, level):
        self.dev = dev
        self.buf = bytearray(size)
        self.mv = memoryview(self.buf)
        self.used = 0  # bytes of records, from 0
        self.seq = 0  # of the last entry logged
        self.dropped = 0  # entries lost: pushed out of the full buffer, or too long for it
        self.level = level  # entries below it are not kept
        self.sent = None  # the report in flight (its packet, as Outbox.send returned it)
        self.next_ms = ticks_ms()  # no report before this
        self.orig = None  # the print() that capture() replaced

    def add(self, level, msg, tp=None):
        level = level_of(level)
        if level < self.level:
            return
        if not isinstance(msg, str):
            msg = str(msg)
        b = msg.encode()
        n = len(b)
        if n > _MAX_MSG:
            n = _MAX_MSG
            while n and b[n] & 0xC0 == 0x80:  # not inside a UTF-8 sequence
                n -= 1
        t = 0 if tp is None else _TRACE
        size = _HEAD + t + n
        self.seq += 1
        if size > len(self.buf):
            self.dropped += 1
            return
        if self.used + size > len(self.buf):
            self._make_room(size)
        buf = self.buf
        i = self.used
        struct.pack_into(">BBII", buf, i, size, level, self.seq, ticks_ms() & _TICKS_MASK)
        buf[i + 10] = t
        i += _HEAD
        if t:
            self.mv[i:i + t] = tp
            i += t
        self.mv[i:i + n] = b if n == len(b) else memoryview(b)[:n]
        self.used += size
        now = ticks_ms()
        if self.sent is None and ticks_diff(self.next_ms, now) <= 0:
            self.tick(now)  # nothing in flight: send now (a serving loop in asyncio ticks up to 1 s later)
        else:
            self.dev._due = now  # the serving loop looks at the log now

    def _make_room(self, size):
        # Drop the oldest records until `size` bytes are free; one move of what is kept.
        k = 0
        while self.used - k + size > len(self.buf):
            k += self.buf[k]
            self.dropped += 1
        self._cut(k)

    def _cut(self, k):
        # Remove the first k bytes of records (the buffer's slice assignment is a memmove).
        self.mv[0:self.used - k] = self.mv[k:self.used]
        self.used -= k

    def tick(self, now):
        # Send the next report when it is due; ms until this wants to run again (None: nothing waits).
        if not self.used:
            return None
        if self.sent is not None:
            ob = self.dev._outbox
            if ob is not None and ob.pending(self.sent):
                return _GAP_MS
            self.sent = None  # acknowledged, or given up by the outbox (the gateway sees a gap)
        w = ticks_diff(self.next_ms, now)
        if w > 0:
            return w
        try:
            self._send(now)
        except MemoryError:
            self.dev._oom()
            self.next_ms = ticks_add(now, _RETRY_MS)
            return _RETRY_MS
        except ValueError:  # a report larger than the device's datagram buffer (a small `mtu`)
            self._lose()
        self.next_ms = ticks_add(now, _GAP_MS)
        return _GAP_MS

    def _send(self, now):
        # The records that fit one report, oldest first, as [seq, age_ms, level, text(, trace)].
        buf = self.buf
        mv = self.mv
        entries = []
        i = 0
        while i < self.used and (not entries or i + buf[i] <= _BATCH):
            n = buf[i]
            seq, at = struct.unpack_from(">II", buf, i + 2)
            t = buf[i + 10]
            e = [seq, ticks_diff(now, at), buf[i + 1], str(bytes(mv[i + _HEAD + t:i + n]), "utf-8")]
            if t:
                e.append(bytes(mv[i + _HEAD:i + _HEAD + t]))
            entries.append(e)
            i += n
        ob = self.dev._reports()
        self.sent = ob.send(report.LOG, {"boot": ob.boot, "dropped": self.dropped, "entries": entries})
        self._cut(i)

    def _lose(self):
        # Drop the oldest record, counted: what could not be sent must not block the rest.
        self.dropped += 1
        self._cut(self.buf[0])

    def capture(self, on):
        # Also log what print() prints, at INFO (the app's own output; the runtime's tracebacks go to
        # the console only). Ports built without MICROPY_CAN_OVERRIDE_BUILTINS refuse (AttributeError).
        import builtins
        if on and self.orig is None:
            self.orig = builtins.print
            builtins.print = self._print
        elif not on and self.orig is not None:
            builtins.print = self.orig
            self.orig = None

    def _print(self, *args, **kw):
        self.orig(*args, **kw)
        if kw.get("file") is None:
            self.add(20, kw.get("sep", " ").join([str(a) for a in args]), self.dev._trace())
