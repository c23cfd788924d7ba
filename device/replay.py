# Replay protection without a clock (RFC 8613 appendix B.1.1): per key, the highest accepted
# SignatureSeqNum and a window of the numbers just below it, with a mark M >= high kept in flash.
# When an accepted number reaches M, M = high + block is written first; after a reboot high = M,
# so nothing accepted before the reboot is accepted again. The device's own send counter (tx)
# is leased the same way. The state file holds "rx_mark tx_mark".
from device.port import const

_WINDOW = const(30)  # bits kept in one small int on every port (31-bit small ints on 32-bit MCUs)


class SeqState:
    # Made by device/derive.py's seq_state, which reads the marks from the state file: path, block, rx_mark and
    # tx_mark (the marks kept in flash), high (the highest accepted number), seen (the window below it, as bits),
    # tx (the last number sent; report.py's next_tx counts it) and writes (of the state file).

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

    def _save(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d %d\n" % (self.rx_mark, self.tx_mark))
        import os
        os.rename(tmp, self.path)
        self.writes += 1
