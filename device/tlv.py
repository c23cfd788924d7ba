# NDN packet format v0.3 on the board: parse a datagram into offsets of one receive buffer
# (no copies), and write packets into one preallocated transmit buffer backwards: the content
# goes first, at a known offset, and each header is written in front of what it covers, once its
# length is known, so nothing is measured twice (Device._sign, report.build).
# See docs/protocol.md for the layout of every packet.
from device.port import const
from device.errors import MalformedError

_T_INTEREST = const(0x05)
_T_DATA = const(0x06)
_T_NAME = const(0x07)
_T_GENERIC = const(0x08)
_T_PARAMS_DIGEST = const(0x02)
_T_NONCE = const(0x0A)
_T_LIFETIME = const(0x0C)
_T_MUST_BE_FRESH = const(0x12)
_T_FWD_HINT = const(0x1E)
_T_CAN_BE_PREFIX = const(0x21)
_T_HOP_LIMIT = const(0x22)
_T_APP_PARAMS = const(0x24)
_T_ISIG_INFO = const(0x2C)
_T_ISIG_VALUE = const(0x2E)
_T_META_INFO = const(0x14)
_T_CONTENT = const(0x15)
_T_SIG_INFO = const(0x16)
_T_SIG_VALUE = const(0x17)
_T_CONTENT_TYPE = const(0x18)
_T_FRESHNESS = const(0x19)
_T_SIG_TYPE = const(0x1B)
_T_KEY_LOCATOR = const(0x1C)
_T_KEY_DIGEST = const(0x1D)
_T_SIG_NONCE = const(0x26)
_T_SIG_TIME = const(0x28)
_T_SIG_SEQ = const(0x2A)
_T_LP_PACKET = const(0x64)
_T_LP_FRAGMENT = const(0x50)
_T_LP_FRAG_INDEX = const(0x52)
_T_LP_FRAG_COUNT = const(0x53)
_T_LP_PIT_TOKEN = const(0x62)
_T_LP_SEQUENCE = const(0x51)
_DIGEST_LEN = const(32)


def size_nni(n):
    return 1 if n <= 0xFF else 2 if n <= 0xFFFF else 4 if n <= 0xFFFFFFFF else 8


class Packet:
    # Offsets of one parsed datagram inside the receive buffer. One instance per device, reused:
    # parsing allocates nothing for names and payloads (they stay memoryview offsets).
    # With `prefixes` (name TLV values), an Interest whose name starts with none of them is another
    # node's: its parse stops after the name with match -1, since on a shared multicast group most
    # traffic is other nodes' and the device only has to tell it is not its own.

    def __init__(self, prefixes=None):
        self.mv = None
        self.p = 0
        self.n = 0
        self.prefixes = prefixes
        self.reset()

    def reset(self):
        self.pit_s = self.pit_n = 0
        self.name_s = self.name_e = self.last_s = 0
        self.ncomp = 0
        self.params_s = self.params_vs = self.params_ve = -1
        self.sinfo_e = -1
        self.sig_type = -1
        self.kl_s = self.kl_e = -1
        self.seq = -1
        self.sv_s = self.sv_n = -1
        self.digest_s = -1
        self.match = -1  # index into self.prefixes of the Interest's name prefix

    # -- primitive readers (advance self.p; self.n holds the last TLV length) --
    # Error texts are short: a malformed packet is only counted, and every string costs board heap.
    # MicroPython heap-allocates the frame of any call whose state exceeds 11 words, so the
    # per-TLV readers keep few locals; the rare wide numbers take a separate path.
    def num(self, end):
        p = self.p
        if p >= end:
            raise MalformedError("tlv: past end")
        b = self.mv[p]
        if b < 253:
            self.p = p + 1
            return b
        return self._wide(b, end)

    def _wide(self, b, end):
        mv = self.mv
        p = self.p
        w = 2 if b == 0xFD else 4 if b == 0xFE else 8
        if p + 1 + w > end:
            raise MalformedError("tlv: past end")
        v = 0
        for k in range(p + 1, p + 1 + w):
            v = (v << 8) | mv[k]
        self.p = p + 1 + w
        return v

    def tl(self, end):
        t = self.num(end)
        n = self.num(end)
        if n > end - self.p:
            raise MalformedError("tlv: length past end")
        self.n = n
        return t

    def nni(self):
        # NonNegativeInteger value of the current TLV (length self.n), advances past it.
        n = self.n
        if n not in (1, 2, 4, 8):
            raise MalformedError("tlv: integer length")
        mv = self.mv
        v = 0
        for k in range(self.p, self.p + n):
            v = (v << 8) | mv[k]
        self.p += n
        return v

    # -- packets --
    def parse(self, mv, start, limit):
        # Parse the packet at mv[start:], which must end by limit; returns the inner packet type
        # (0x05 Interest, 0x06 Data) or 0 for an idle LpPacket. The inner packet spans
        # [self.start, self.end); the next packet in the buffer starts at self.next.
        # (A stream read on MicroPython may hold several datagrams back to back: TLV frames them.)
        self.mv = mv
        self.reset()
        self.p = start
        t = self.tl(limit)
        self.next = self.p + self.n
        self.start = start
        self.end = self.next
        if t == _T_LP_PACKET:
            t = self._lp(self.next)  # the fragment's type, now at [self.start, self.end); -1: none
            if t < 0:
                return 0
        if t == _T_INTEREST:
            self._interest(self.end)
        elif t == _T_DATA:
            self._data(self.end)
        else:
            raise MalformedError("tlv: not Interest or Data")
        return t

    def _lp(self, length):
        # NDNLPv2: the PIT token and the one Fragment; other known headers are skipped. Returns the
        # fragment's type (its TLV at [self.start, self.end), self.p at its value), or -1 for an idle packet.
        frag_s = frag_e = -1
        while self.p < length:
            t = self.tl(length)
            if t == _T_LP_FRAGMENT:
                frag_s = self.p
                frag_e = self.p + self.n
                self.p = frag_e
            elif t == _T_LP_PIT_TOKEN:
                self.pit_s = self.p
                self.pit_n = self.n
                self.p += self.n
            elif t == _T_LP_FRAG_COUNT:
                if self.nni() > 1:
                    raise MalformedError("lp: fragmented")
            elif t in (_T_LP_SEQUENCE, _T_LP_FRAG_INDEX) or (800 <= t <= 959 and t & 3 == 0):
                self.p += self.n
            else:
                raise MalformedError("lp: unknown field")
        if frag_s < 0:
            return -1
        self.p = frag_s
        t = self.tl(frag_e)
        if self.p + self.n != frag_e:
            raise MalformedError("lp: bytes after packet")
        self.start = frag_s
        self.end = frag_e
        return t

    def _data(self, end):
        # Offsets of a Data's name and signature; its signed portion is [self.signed_s, self.sinfo_e). The Name is
        # its first element (a second one, a critical type out of place, is malformed).
        self.signed_s = self.p
        if self.tl(end) != _T_NAME:
            raise MalformedError("data: Name not first")
        self._name(self.p + self.n)
        while self.p < end:
            t = self.tl(end)
            e = self.p + self.n
            if t == _T_SIG_INFO:
                self.sinfo_e = e
            elif t == _T_SIG_VALUE:
                self.sv_s = self.p
                self.sv_n = self.n
            elif t not in (_T_META_INFO, _T_CONTENT) and (t < 32 or t & 1):  # critical
                raise MalformedError("data: unknown critical")
            self.p = e

    def _interest(self, end):
        # The Name is the first element (NDN packet format 0.3); a second one, a critical type out of place, is
        # malformed: it must not move the name's offsets after a parse that stopped at the first would have ended.
        if self.tl(end) != _T_NAME:
            raise MalformedError("interest: Name not first")
        self._name(self.p + self.n)
        if self.prefixes is not None and self._match() < 0:
            self.p = end  # another node's Interest: the rest is not ours to check
            return
        while self.p < end:
            s = self.p
            t = self.tl(end)
            e = self.p + self.n
            if t == _T_APP_PARAMS:
                self.params_s = s
                self.params_vs = self.p
                self.params_ve = e
            elif t == _T_ISIG_INFO:
                self._siginfo(e)
                self.sinfo_e = e
            elif t == _T_ISIG_VALUE:
                self.sv_s = self.p
                self.sv_n = self.n
            elif t == _T_NONCE:
                if self.n != 4:
                    raise MalformedError("interest: Nonce length")
            elif t not in (_T_CAN_BE_PREFIX, _T_MUST_BE_FRESH, _T_LIFETIME, _T_HOP_LIMIT, _T_FWD_HINT) \
                    and (t < 32 or t & 1):  # critical
                raise MalformedError("interest: unknown critical")
            self.p = e

    def _name(self, end):
        self.name_s = self.p
        self.name_e = end
        k = 0
        while self.p < end:
            s = self.p
            t = self.tl(end)
            if t == 0 or t > 0xFFFF:
                raise MalformedError("name: component type")
            if t == _T_PARAMS_DIGEST:
                if self.n != _DIGEST_LEN:
                    raise MalformedError("name: digest length")
                self.digest_s = self.p
            self.last_s = s
            self.p += self.n
            k += 1
        self.ncomp = k
        if self.digest_s >= 0 and self.digest_s < self.last_s:
            raise MalformedError("name: digest not last")

    def _match(self):
        # Sets and returns self.match: the first of self.prefixes the name starts with, or -1.
        for i in range(len(self.prefixes)):
            if starts(self.mv, self.name_s, self.name_e, self.prefixes[i]):
                self.match = i
                return i
        return -1

    def _siginfo(self, end):
        while self.p < end:
            t = self.tl(end)
            e = self.p + self.n
            if t == _T_SIG_TYPE:
                self.sig_type = self.nni()
            elif t == _T_KEY_LOCATOR:
                t2 = self.tl(e)
                if t2 == _T_NAME:
                    self.kl_s = self.p
                    self.kl_e = self.p + self.n
                elif t2 != _T_KEY_DIGEST:
                    raise MalformedError("siginfo: KeyLocator type")
            elif t == _T_SIG_SEQ:
                self.seq = self.nni()
            elif t not in (_T_SIG_NONCE, _T_SIG_TIME) and (t < 32 or t & 1):  # critical
                raise MalformedError("siginfo: unknown critical")
            self.p = e

    def component(self, i):
        # Sets self.p and self.n to the value of name component i (the name was checked by parse).
        self.p = self.name_s
        while True:
            self.tl(self.name_e)
            if not i:
                return
            self.p += self.n
            i -= 1


def starts(mv, s, e, ref):
    # mv[s:e] starts with ref, compared in place.
    if e - s < len(ref):
        return False
    for i in range(len(ref)):
        if mv[s + i] != ref[i]:
            return False
    return True


def tl_back(buf, e, t, n):
    # Type t (< 253) and length n (< 65536) written to end at offset e; returns where they start.
    if n < 253:
        buf[e - 2] = t
        buf[e - 1] = n
        return e - 2
    buf[e - 4] = t
    buf[e - 3] = 0xFD
    buf[e - 2] = n >> 8
    buf[e - 1] = n & 0xFF
    return e - 4


def nni_back(buf, e, t, n):
    # NonNegativeInteger TLV of n (shortest of 1, 2, 4 or 8 bytes) written to end at e; returns its start.
    w = size_nni(n)
    i = e
    while i > e - w:
        i -= 1
        buf[i] = n & 0xFF
        n >>= 8
    return tl_back(buf, e - w, t, w)


def put_sig(buf, i, t, sig):
    # A signature value TLV (type t, 32 bytes) at buf[i:]; returns its end.
    buf[i] = t
    buf[i + 1] = _DIGEST_LEN
    buf[i + 2:i + 2 + _DIGEST_LEN] = sig
    return i + 2 + _DIGEST_LEN


def lp_head(buf, s, n, pit):
    # Wrap the packet buf[s:s+n] in LpPacket{PitToken, Fragment} written in front of it; returns its start.
    i = tl_back(buf, s, _T_LP_FRAGMENT, n)
    k = len(pit)
    buf[i - k:i] = pit
    i = tl_back(buf, i - k, _T_LP_PIT_TOKEN, k)
    return tl_back(buf, i, _T_LP_PACKET, s + n - i)
