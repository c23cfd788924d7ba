# The board runtime: services declared with @dev.service, announced on the multicast group,
# invoked by signed Interests and answered with signed Data (docs/protocol.md).
# Receive path: one buffer, parsed to offsets; checks in order name, key, digest, signature,
# replay, then dispatch. Anything that fails a check is dropped and counted, never answered.
import asyncio
from device import cbor, tlv, sign, port
from device.errors import DeviceError, MalformedError
from device.net import MulticastFace
from device.replay import SeqState
from device.port import const, ticks_ms, ticks_diff

_DEFAULT_GROUP = "224.0.23.170"
_DEFAULT_PORT = const(56363)
_DIGEST_LEN = const(32)
_QUERY_WINDOW_MS = const(1000)
_QUERY_HOLDOFF_MS = const(500)
_ANN_LIFETIME_MS = const(1000)

# drop reasons, indexes into Device.drops
_MALFORMED = const(0)
_OVERSIZED = const(1)
_UNSUPPORTED = const(2)
_KEY = const(3)
_DIGEST = const(4)
_SIGNATURE = const(5)
_REPLAY = const(6)
_DROP_NAMES = ("malformed", "oversized", "unsupported", "key", "digest", "signature", "replay")

CODES = ("INVALID_ARGUMENT", "NOT_FOUND", "PERMISSION_DENIED", "UNAVAILABLE",
         "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "INTERNAL")


class ServiceError(DeviceError):
    # Raise from a handler to answer with a specific error code: ServiceError("INVALID_ARGUMENT", "why").
    def __init__(self, code, message=""):
        if code not in CODES:
            code = "INTERNAL"
        super().__init__(code, message)
        self.code = code
        self.message = message


class Service:
    def __init__(self, fn, name, cache_ms, doc, args, result, idempotent, private):
        self.fn = fn
        self.name = name
        self.cache_ms = cache_ms
        self.doc = doc
        self.args = args
        self.result = result
        self.idempotent = idempotent
        self.private = private

    def describe(self):
        return {"name": self.name, "doc": self.doc, "args": self.args, "result": self.result,
                "cache_ms": self.cache_ms, "idempotent": self.idempotent, "private": self.private}


def _parse_key(key):
    if isinstance(key, str):
        import binascii
        key = binascii.unhexlify(key)
    if len(key) != 32:
        raise DeviceError("device key must be 32 bytes, got %d" % len(key))
    return bytes(key)


class Device:
    def __init__(self, name, key, *, iface="0.0.0.0", group=_DEFAULT_GROUP, port=_DEFAULT_PORT,
                 state_dir=".", lease_ms=60000, gateway=None, mtu=1500, reply_cache=8):
        parts = [p for p in name.split("/") if p]
        if not name.startswith("/") or len(parts) < 2:
            raise DeviceError("device name must look like /site/device, got %r" % name)
        self.name = "/" + "/".join(parts)
        self.site = parts[0]
        self.key = _parse_key(key)
        self.iface = iface
        self.group = group
        self.port = port
        self.state_dir = state_dir
        self.lease_ms = lease_ms
        self.gateway = gateway
        self.mtu = mtu
        self.requests = 0
        self.errors = 0
        self.drops = [0] * len(_DROP_NAMES)
        self._services = {}
        self._cache_n = reply_cache
        self._face = None
        self._running = False
        self._started = False

    @classmethod
    def from_config(cls, path="ndn_config.json", **overrides):
        # The JSON file that `ndn-edge provision` writes; see docs/operations.md.
        import json
        with open(path) as f:
            cfg = json.load(f)
        kw = {}
        for k in ("iface", "group", "port", "state_dir", "lease_ms", "gateway"):
            if k in cfg:
                kw[k] = cfg[k]
        kw.update(overrides)
        return cls(cfg["name"], cfg["key"], **kw)

    # -- declaring services --
    def service(self, name, *, cache_ms=None, doc=None, args=None, result=None, idempotent=True, private=False):
        if not name or name[0] == "_" or "/" in name:
            raise DeviceError("service name %r: must be one component not starting with '_'" % name)

        def register(fn):
            self._services[name.encode()] = Service(fn, name, cache_ms, doc, args, result, idempotent, private)
            return fn
        return register

    def describe(self):
        svcs = sorted(self._services.values(), key=lambda s: s.name)
        return {"name": self.name, "services": [s.describe() for s in svcs if s.name[0] != "_"]}

    # -- running --
    def run(self):
        # Blocking: serve until Ctrl-C, then announce leaving.
        try:
            asyncio.run(self.serve())
        except KeyboardInterrupt:
            pass
        finally:
            self._shutdown()

    async def serve(self):
        self._setup()
        face = self._face
        face.open()
        self._running = True
        self._announce("up")
        print("ndn-edge device %s serving on %s group %s:%d" % (self.name, self.iface, self.group, self.port))
        renew = asyncio.create_task(self._renew())
        try:
            while self._running:
                n = await face.recv()
                if n:
                    self._on_datagram(n)
        finally:
            renew.cancel()
            self._shutdown()

    def stop(self):
        self._running = False
        if self._face is not None and self._face.sock is not None:
            self._face.send(b"")  # wake the receive loop through multicast loopback

    def _shutdown(self):
        face = self._face
        if face is not None and face.sock is not None:
            try:
                self._announce("leave")
            finally:
                face.close()
        self._running = False

    def _setup(self):
        if self._started:
            return
        self._started = True
        self._builtin("_health", self._health)
        self._builtin("_desc", self.describe)
        self._name_val = tlv.encode_name(self.name)
        self._ncomp = self.name.count("/")
        self._query_val = tlv.encode_name("/%s/_sd/query" % self.site)
        self._ann_val = tlv.encode_name("/%s/_sd/ann" % self.site)
        kid = sign.key_id(self.key)
        self._key_name = tlv.encode_name(self.name + "/KEY/" + kid)
        self._sig_base = tlv.tlv(tlv.T_SIG_TYPE, b"\x04") + \
            tlv.tlv(tlv.T_KEY_LOCATOR, tlv.tlv(tlv.T_NAME, self._key_name))
        self._sig_info = tlv.tlv(tlv.T_SIG_INFO, self._sig_base)
        self._mac = sign.Hmac(self.key)
        self._enc_key = self._mac.mac(b"ndn-edge enc")[:16]
        self._seq = SeqState(self.state_dir.rstrip("/") + "/ndn_seq_" + kid, 64)
        self._face = MulticastFace(self.iface, self.group, self.port, self.mtu, self.gateway)
        self._tx = bytearray(self.mtu)
        self._pkt = tlv.Packet()
        self._cache = [None] * self._cache_n  # (seq, signature, data) of recent replies
        self._cache_i = 0
        self._boot = ticks_ms()
        self._desc_hash = sign.sha256(cbor.dumps(self.describe()))[:8]
        self._last_query = ticks_ms()
        self._query_pending = False

    def _builtin(self, name, fn):
        self._services[name.encode()] = Service(fn, name, None, None, None, None, True, False)

    # -- discovery --
    def _announce(self, state, sleep_ms=None):
        import binascii
        p = {"state": state, "lease_ms": self.lease_ms, "rx_floor": self._seq.rx_floor(),
             "desc": binascii.hexlify(self._desc_hash).decode(),
             "uptime_ms": ticks_diff(ticks_ms(), self._boot)}
        if sleep_ms is not None:
            p["sleep_ms"] = sleep_ms
        seq = self._seq.next_tx()
        sinfo = bytearray(self._sig_base)
        sinfo += tlv.tlv(0x26, port.urandom(8))
        tmp = bytearray(tlv.size_nni_tlv(0x2A, seq))
        tlv.put_nni_tlv(tmp, 0, 0x2A, seq)
        sinfo += tmp
        n = tlv.encode_signed_interest(self._tx, self._ann_val, cbor.dumps(p), sinfo, self._mac,
                                       sign.sha256, port.urandom(4), _ANN_LIFETIME_MS)
        self._face.send(memoryview(self._tx)[:n])

    async def _renew(self):
        while True:
            third = self.lease_ms // 3
            await asyncio.sleep((third + port.random_below(third // 10 + 1)) / 1000)
            self._announce("up")

    async def _answer_query(self):
        delay = port.random_below(_QUERY_WINDOW_MS)
        await asyncio.sleep(delay / 1000)
        self._query_pending = False
        self._last_query = ticks_ms()
        self._announce("up")

    # -- receive path --
    def _drop(self, reason):
        self.drops[reason] += 1

    def _on_datagram(self, n):
        # One read may hold several datagrams back to back (MicroPython's readinto keeps reading
        # while data is queued); each NDN packet is a complete TLV, so walk them in order.
        face = self._face
        p = self._pkt
        full = n >= len(face.buf)
        i = 0
        while i < n:
            try:
                t = p.parse(face.mv, i, n)
            except MalformedError:
                self._drop(_OVERSIZED if full else _MALFORMED)
                return  # framing is lost for the rest of this read
            i = p.next
            if t != tlv.T_INTEREST:
                continue  # Data from other devices, idle LpPackets: not for us
            try:
                self._on_interest(p, face.mv)
            except MalformedError:
                self._drop(_MALFORMED)
            except Exception as e:  # a runtime bug must not stop the device; count it and go on
                self.errors += 1
                _print_exc(e)

    def _prefix(self, mv, p, ref):
        n = len(ref)
        if p.name_e - p.name_s < n:
            return False
        s = p.name_s
        for i in range(n):
            if mv[s + i] != ref[i]:
                return False
        return True

    def _on_interest(self, p, mv):
        if not self._prefix(mv, p, self._name_val):
            if p.name_e - p.name_s == len(self._query_val) and self._prefix(mv, p, self._query_val):
                self._on_query()
            return
        if p.ncomp != self._ncomp + 2:
            self._drop(_UNSUPPORTED)
            return
        if p.sig_type != tlv.SIG_HMAC_SHA256 or p.sv_n != _DIGEST_LEN or p.seq < 0 or p.params_s < 0 \
                or not self._prefix_at(mv, p.kl_s, p.kl_e, self._key_name):
            self._drop(_KEY)
            return
        if p.digest_s < 0 or not sign.equal(mv, p.digest_s, sign.sha256(mv[p.params_s:p.sv_s + p.sv_n])):
            self._drop(_DIGEST)
            return
        h = self._mac.start()
        h.update(mv[p.name_s:p.last_s])
        h.update(mv[p.params_s:p.sinfo_e])
        if not sign.equal(mv, p.sv_s, self._mac.finish(h)):
            self._drop(_SIGNATURE)
            return
        seq = p.seq
        if not self._seq.fresh(seq):
            self._retransmission(p, mv, seq)
            return
        self._seq.accept(seq)
        self.requests += 1
        svc_s, svc_e = p.component(self._ncomp)
        svc = self._services.get(bytes(mv[svc_s:svc_e]))
        sig = bytes(mv[p.sv_s:p.sv_s + _DIGEST_LEN])
        if svc is None:
            self._reply_error(p, mv, seq, sig, "NOT_FOUND", "no service %s" % str(bytes(mv[svc_s:svc_e]), "utf-8"))
            return
        try:
            args = self._args(svc, mv[p.params_vs:p.params_ve])
        except MalformedError as e:
            self._reply_error(p, mv, seq, sig, "INVALID_ARGUMENT", "arguments: %s" % e)
            return
        try:
            r = svc.fn(**args)
        except Exception as e:
            self._reply_exc(p, mv, seq, sig, e)
            return
        if hasattr(r, "send"):
            # A coroutine: finish it in its own task; keep what the reply needs, the buffer moves on.
            name = bytes(mv[p.name_s:p.name_e])
            pit = bytes(mv[p.pit_s:p.pit_s + p.pit_n]) if p.pit_n else None
            asyncio.create_task(self._finish(r, svc, seq, sig, name, pit))
            return
        self._reply_value(svc, mv[p.name_s:p.name_e], self._pit(p, mv), seq, sig, r)

    def _prefix_at(self, mv, s, e, ref):
        if s < 0 or e - s != len(ref):
            return False
        for i in range(len(ref)):
            if mv[s + i] != ref[i]:
                return False
        return True

    def _pit(self, p, mv):
        return mv[p.pit_s:p.pit_s + p.pit_n] if p.pit_n else None

    def _args(self, svc, params):
        if svc.private and len(params):
            from device import seal
            params = seal.unseal(self._enc_key, params)
        if not len(params):
            return {}
        args = cbor.loads(params)
        if not isinstance(args, dict):
            raise MalformedError("not a map")
        for k in args:
            if not isinstance(k, str):
                raise MalformedError("argument name %r is not text" % (k,))
        spec = svc.args
        if spec:
            for k in args:
                if k not in spec:
                    raise MalformedError("unknown argument %r" % k)
        return args

    def _retransmission(self, p, mv, seq):
        for entry in self._cache:
            if entry is not None and entry[0] == seq and sign.equal(mv, p.sv_s, entry[1]):
                data = entry[2]
                if p.pit_n:
                    n = tlv.wrap_pit(self._tx, self._pit(p, mv), data)
                    self._face.send(memoryview(self._tx)[:n])
                else:
                    self._face.send(data)
                return
        self._drop(_REPLAY)

    async def _finish(self, coro, svc, seq, sig, name, pit):
        try:
            r = await coro
        except Exception as e:
            code, msg = self._classify(e)
            self._send_reply(name, pit, seq, sig, tlv.CONTENT_NACK, 0, cbor.dumps({"code": code, "message": msg}))
            return
        self._reply_value(svc, name, pit, seq, sig, r)

    def _classify(self, e):
        self.errors += 1
        if isinstance(e, ServiceError):
            return e.code, e.message
        if isinstance(e, (TypeError, ValueError)):
            return "INVALID_ARGUMENT", str(e)
        if isinstance(e, MemoryError):
            return "RESOURCE_EXHAUSTED", "out of memory"
        return "INTERNAL", "%s: %s" % (type(e).__name__, e)

    def _reply_exc(self, p, mv, seq, sig, e):
        code, msg = self._classify(e)
        self._reply_error(p, mv, seq, sig, code, msg)

    def _reply_error(self, p, mv, seq, sig, code, msg):
        self._send_reply(mv[p.name_s:p.name_e], self._pit(p, mv), seq, sig, tlv.CONTENT_NACK, 0,
                         cbor.dumps({"code": code, "message": msg}))

    def _reply_value(self, svc, name, pit, seq, sig, value):
        try:
            content = cbor.dumps(value)
        except (TypeError, ValueError) as e:
            self.errors += 1
            self._send_reply(name, pit, seq, sig, tlv.CONTENT_NACK, 0,
                             cbor.dumps({"code": "INTERNAL", "message": "result not encodable: %s" % e}))
            return
        if svc.private:
            from device import seal
            content = seal.seal(self._enc_key, content)
        self._send_reply(name, pit, seq, sig, 0, svc.cache_ms or 0, content)

    def _send_reply(self, name, pit, seq, sig, ctype, fresh_ms, content):
        try:
            s, e = tlv.encode_data(self._tx, pit, name, ctype, fresh_ms, content, self._sig_info, self._mac)
        except ValueError as err:
            self.errors += 1
            s, e = tlv.encode_data(self._tx, pit, name, tlv.CONTENT_NACK, 0,
                                   cbor.dumps({"code": "RESOURCE_EXHAUSTED", "message": str(err)}),
                                   self._sig_info, self._mac)
        tx = memoryview(self._tx)
        self._cache[self._cache_i] = (seq, sig, bytes(tx[s:e]))
        self._cache_i = (self._cache_i + 1) % self._cache_n
        self._face.send(tx[:e])

    def _on_query(self):
        if self._query_pending or ticks_diff(ticks_ms(), self._last_query) < _QUERY_HOLDOFF_MS:
            return
        self._query_pending = True
        asyncio.create_task(self._answer_query())

    def _health(self):
        drops = {}
        for i in range(len(_DROP_NAMES)):
            drops[_DROP_NAMES[i]] = self.drops[i]
        return {"uptime_ms": ticks_diff(ticks_ms(), self._boot), "mem_free": port.mem_free(),
                "requests": self.requests, "errors": self.errors, "drops": drops,
                "seq_writes": self._seq.writes}


def _print_exc(e):
    import sys
    if hasattr(sys, "print_exception"):
        sys.print_exception(e)
    else:
        import traceback
        traceback.print_exception(type(e), e, e.__traceback__)
