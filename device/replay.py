# Replay protection without a clock (RFC 8613 appendix B.1.1): per key, the highest accepted
# SignatureSeqNum and a window of the numbers just below it, with a mark M >= high kept in flash.
# When an accepted number reaches M, M = high + block is written first; after a reboot high = M,
# so nothing accepted before the reboot is accepted again. The device's own send counter (tx)
# is leased the same way. The state file holds "rx_mark tx_mark".
from device.port import const

_WINDOW = const(30)  # bits kept in one small int on every port (31-bit small ints on 32-bit MCUs)
_ALL = const((1 << 30) - 1)


class SeqState:
    def __init__(self, path, block=64):
        self.path = path
        self.block = block
        rx = tx = 0
        try:
            with open(path) as f:
                parts = f.read().split()
            rx = int(parts[0])
            tx = int(parts[1])
        except (OSError, ValueError, IndexError):
            pass  # first boot, or a torn write: start from zero marks
        self.rx_mark = rx
        self.tx_mark = tx
        self.high = rx
        self.seen = _ALL  # after a reboot every number up to the mark counts as seen
        self.tx = tx
        self.writes = 0

    def fresh(self, seq):
        # True if seq was never accepted (and is not too old to tell).
        if seq > self.high:
            return True
        d = self.high - seq
        return d < _WINDOW and not (self.seen >> d) & 1

    def accept(self, seq):
        # Record seq as used; persists a new lease before the caller executes anything.
        if seq > self.high:
            d = seq - self.high
            self.seen = 1 if d >= _WINDOW else ((self.seen & ((1 << (_WINDOW - d)) - 1)) << d) | 1
            self.high = seq
            if seq >= self.rx_mark:
                self.rx_mark = seq + self.block
                self._save()
        else:
            self.seen |= 1 << (self.high - seq)

    def next_tx(self):
        self.tx += 1
        if self.tx >= self.tx_mark:
            self.tx_mark = self.tx + self.block
            self._save()
        return self.tx

    def rx_floor(self):
        return self.high + 1

    def _save(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d %d\n" % (self.rx_mark, self.tx_mark))
        import os
        os.rename(tmp, self.path)
        self.writes += 1
