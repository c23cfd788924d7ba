# The board runtime's data plane: services declared with @dev.service, invoked by signed Interests
# and answered with signed Data (docs/protocol.md). Receive path: one buffer parsed to offsets;
# checks in order name, key, digest, signature, replay, then dispatch. Anything that fails a check
# is dropped and counted, never answered.
#
# Heap is the user's, so:
# - dev.run() serves from a select.poll loop and imports asyncio only when a handler is a coroutine
#   (device/aio.py); `await dev.serve()` always uses asyncio.
# - The control plane (setup, announcements, _desc, _health, config) is in device/control.py,
#   imported when needed and released after.
# - MicroPython heap-allocates the frame of a call whose state exceeds 11 words, so the per-packet
#   methods are small and keep what they share on self.
from device import cbor, tlv, port
from device.errors import DeviceError, MalformedError
from device.port import const, ticks_ms, ticks_add, ticks_diff
from device.sign import equal, sha256

_DEFAULT_GROUP = "224.0.23.170"
_DEFAULT_PORT = const(56363)
_SIG_LEN = const(32)
_QUERY_WINDOW_MS = const(1000)
_QUERY_HOLDOFF_MS = const(500)
_MAX_WAIT_MS = const(1000)

# drop reasons, indexes into Device.drops (names in device/control.py)
_MALFORMED = const(0)
_OVERSIZED = const(1)
_UNSUPPORTED = const(2)
_KEY = const(3)
_DIGEST = const(4)
_SIGNATURE = const(5)
_REPLAY = const(6)
_OK = const(-1)
_RESENT = const(-2)

_NO_ARGS = {}  # shared, never mutated: fn(**_NO_ARGS) builds the handler's own dict

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
    def __init__(self, fn, name, cache_ms, doc, args, result, idempotent, private, long_running):
        self.fn = fn
        self.name = name
        self.cache_ms = cache_ms
        self.doc = doc
        self.args = args
        self.result = result
        self.idempotent = idempotent
        self.private = private
        self.long_running = long_running
        self.is_async = port.is_async(fn)


def control():
    from device import control
    return control


def release():
    # Drop the control plane's module so its code can be collected until it is needed again.
    import sys
    import device
    sys.modules.pop("device.control", None)
    if "control" in device.__dict__:
        del device.control


class Device:
    def __init__(self, name, key, *, iface="0.0.0.0", group=_DEFAULT_GROUP, port=_DEFAULT_PORT,
                 state_dir=".", lease_ms=60000, gateway=None, mtu=1500, reply_cache=8):
        parts = [p for p in name.split("/") if p]
        if not name.startswith("/") or len(parts) < 2:
            raise DeviceError("device name must look like /site/device, got %r" % name)
        if isinstance(key, str):
            import binascii
            key = binascii.unhexlify(key)
        if len(key) != 32:
            raise DeviceError("device key must be 32 bytes, got %d" % len(key))
        self.name = "/" + "/".join(parts)
        self.site = parts[0]
        self.key = bytes(key)
        self.iface = iface
        self.group = group
        self.port = port
        self.state_dir = state_dir
        self.lease_ms = lease_ms
        self.gateway = gateway
        self.mtu = mtu
        self.requests = 0
        self.errors = 0
        self.drops = [0] * 7
        self._svc = {}
        self._cache_n = reply_cache
        self._face = None
        self._running = False
        self._async = False
        self._quiet = False  # the current request is a notification: no reply
        self._outbox = None
        self._ops = {}
        self._timers = []  # [due_ticks, period_ms, fn]
        self._sleep_ms = 0

    @classmethod
    def from_config(cls, path="ndn_config.json", **overrides):
        # The JSON file that `ndn-edge provision` writes; see docs/operations.md.
        kw = control().read_config(path, overrides)
        release()
        return cls(**kw)

    # -- declaring services --
    def service(self, name, *, cache_ms=None, doc=None, args=None, result=None, idempotent=True, private=False,
                long_running=False):
        if not name or name[0] == "_" or "/" in name:
            raise DeviceError("service name %r: must be one component not starting with '_'" % name)

        def register(fn):
            s = Service(fn, name, cache_ms, doc, args, result, idempotent, private, long_running)
            if long_running and not s.is_async:
                raise DeviceError("long-running service %r must be a coroutine (async def)" % name)
            self._svc[name.encode()] = s
            self._async = self._async or s.is_async
            return fn
        return register

    def every(self, period_ms):
        # Decorator: call fn() every period_ms from the serving loop (sensor sampling, publishing);
        # a timer whose fn returns False stops. May be used while serving.
        def register(fn):
            self._timers.append([ticks_add(ticks_ms(), period_ms), period_ms, fn])
            return fn
        return register

    def publish(self, topic, value, retain=True):
        # Send value on topic (relative to the device); delivered at least once to the gateway.
        self._reports().publish(topic, value, retain)

    def sleep(self, seconds):
        # Announce sleeping, close the socket, sleep, wake and announce; done by the serving loop.
        self._sleep_ms = int(seconds * 1000)

    def _reports(self):
        if self._outbox is None:
            from device.outbox import Outbox
            self.setup()
            self._outbox = Outbox(self)
        return self._outbox

    def describe(self):
        d = control().describe(self)
        release()
        return d

    # -- running --
    def run(self):
        # Blocking: serve until Ctrl-C or stop(), then announce leaving.
        try:
            if self._async:
                import asyncio
                asyncio.run(self.serve())
            else:
                self.open()
                self._poll_loop()
        except KeyboardInterrupt:
            pass
        finally:
            self.close()

    def serve(self):
        # `await dev.serve()` inside a running asyncio loop.
        from device import aio
        return aio.serve(self)

    def setup(self):
        # Derive names and keys and allocate buffers and the face (once); open() calls it.
        if self._face is None:
            control().setup(self)
            release()

    def open(self):
        # Set up, open the face and announce; then call receive() when readable, tick() on time.
        self.setup()
        self._face.open()
        self._running = True
        self._announce("up")
        print("ndn-edge device %s serving on %s group %s:%d" % (self.name, self.iface, self.group, self.port))

    def close(self):
        face = self._face
        if face is not None and face.sock is not None:
            try:
                self._announce("leave")
            finally:
                face.close()
        self._running = False

    def stop(self):
        self._running = False
        if self._face is not None and self._face.sock is not None:
            self._face.send(b"")  # wake the receive loop through multicast loopback

    def _poll_loop(self):
        import select
        poller = select.poll()
        poller.register(self._face.sock, select.POLLIN)
        wait = getattr(poller, "ipoll", poller.poll)  # ipoll reuses its result: no allocation
        while self._running:
            for _ in wait(self.tick()):
                self.receive()

    def tick(self):
        # Run due timers (renewal, a pending query answer, app timers, report resends, a requested
        # sleep); returns ms until the next one.
        now = ticks_ms()
        if self._sleep_ms:
            ms = self._sleep_ms
            self._sleep_ms = 0
            control().sleep(self, ms)
            release()
            now = ticks_ms()
        if self._query_at is not None and ticks_diff(self._query_at, now) <= 0:
            self._query_at = None
            self._last_query = now
            self._announce("up")
        elif ticks_diff(self._renew_at, now) <= 0:
            self._announce("up")
        wait = ticks_diff(self._renew_at, now)
        if self._query_at is not None:
            wait = min(wait, ticks_diff(self._query_at, now))
        for t in self._timers:
            if ticks_diff(t[0], now) <= 0:
                t[0] = ticks_add(now, t[1])
                if self._timer(t[2]) is False:
                    self._timers.remove(t)
                    break  # the list changed: the rest run on the next tick
            wait = min(wait, ticks_diff(t[0], now))
        if self._outbox is not None:
            w = self._outbox.tick(now)
            if w is not None:
                wait = min(wait, w)
        return max(0, min(wait, _MAX_WAIT_MS))

    def _timer(self, fn):
        try:
            return fn()
        except Exception as e:  # an app timer's bug must not stop serving
            self.errors += 1
            port.print_exc(e)

    def _announce(self, state):
        control().announce(self, state)
        release()

    def _on_query(self):
        now = ticks_ms()
        if self._query_at is None and ticks_diff(now, self._last_query) >= _QUERY_HOLDOFF_MS:
            self._query_at = ticks_add(now, port.random_below(_QUERY_WINDOW_MS))

    # -- receive path --
    def receive(self):
        n = self._face.read()
        if n:
            self._datagram(n)

    def _datagram(self, n):
        # One read may hold several datagrams back to back; each NDN packet is a complete TLV.
        p = self._pkt
        mv = self._face.mv
        i = 0
        while i < n:
            try:
                t = p.parse(mv, i, n)
            except MalformedError:
                self.drops[_OVERSIZED if n >= len(mv) else _MALFORMED] += 1
                return  # framing is lost for the rest of this read
            i = p.next
            if t == tlv.T_INTEREST:
                self._interest(p, mv)
            elif t == tlv.T_DATA and self._outbox is not None:
                self._outbox.on_data(p, mv)

    def _interest(self, p, mv):
        try:
            if not _prefix(mv, p.name_s, p.name_e, self._name_val):
                if p.name_e - p.name_s == len(self._query_val) and _prefix(mv, p.name_s, p.name_e, self._query_val):
                    self._on_query()
                return
            r = self._check(p, mv)
            if r >= 0:
                self.drops[r] += 1
            elif r == _OK:
                self._dispatch(p, mv)
        except MalformedError:
            self.drops[_MALFORMED] += 1
        except Exception as e:  # a runtime bug must not stop the device; count it and go on
            self.errors += 1
            port.print_exc(e)

    def _check(self, p, mv):
        # _OK, _RESENT (answered from the reply cache) or the drop reason.
        extra = p.ncomp - self._ncomp
        self._quiet = extra == 3
        if self._quiet:
            p.component(self._ncomp)  # a notification: <device>/_n/<service>/<digest>
            if p.n != 2 or mv[p.p] != 95 or mv[p.p + 1] != 110:
                return _UNSUPPORTED
        elif extra != 2:
            return _UNSUPPORTED
        if p.sig_type != 4 or p.sv_n != _SIG_LEN or p.seq < 0 or p.params_s < 0 or p.kl_e - p.kl_s != len(
                self._key_name) or not _prefix(mv, p.kl_s, p.kl_e, self._key_name):
            return _KEY
        if p.digest_s < 0 or not equal(mv, p.digest_s, sha256(mv[p.params_s:p.sv_s + p.sv_n])):
            return _DIGEST
        h = self._mac.start()
        h.update(mv[p.name_s:p.last_s])
        h.update(mv[p.params_s:p.sinfo_e])
        if not equal(mv, p.sv_s, self._mac.finish(h)):
            return _SIGNATURE
        if not self._seq.fresh(p.seq):
            return _RESENT if self._resend(p, mv) else _REPLAY
        self._seq.accept(p.seq)
        return _OK

    def _resend(self, p, mv):
        # A retransmission of an executed request: the cached reply, never a second run.
        for entry in self._cache:
            if entry is not None and entry[0] == p.seq and equal(mv, p.sv_s, entry[1]):
                if p.pit_n:
                    n = tlv.wrap_pit(self._tx, mv[p.pit_s:p.pit_s + p.pit_n], entry[2])
                    self._face.send(memoryview(self._tx)[:n])
                else:
                    self._face.send(entry[2])
                return True
        return False

    def _dispatch(self, p, mv):
        self.requests += 1
        self._cur_seq = p.seq
        self._cur_sig = bytes(mv[p.sv_s:p.sv_s + _SIG_LEN])
        self._cur_name = mv[p.name_s:p.name_e]
        self._cur_pit = mv[p.pit_s:p.pit_s + p.pit_n] if p.pit_n else None
        p.component(self._ncomp + 1 if self._quiet else self._ncomp)
        key = bytes(mv[p.p:p.p + p.n])
        svc = self._svc.get(key)
        if svc is None:
            self._framework(key, mv[p.params_vs:p.params_ve])
            return
        if p.params_ve > p.params_vs:
            try:
                args = self._args(svc, mv[p.params_vs:p.params_ve])
            except MalformedError as e:
                self._error("INVALID_ARGUMENT", "arguments: %s" % e)
                return
        else:
            args = _NO_ARGS
        if svc.long_running:
            from device import ops
            self._send(0, 0, cbor.dumps({"op": ops.start(self, svc, args)}))
            return
        try:
            r = svc.fn(**args)
        except Exception as e:
            self._failed(e)
            return
        if svc.is_async:
            from device import aio
            aio.finish_later(self, svc, r)
        else:
            self._value(svc, r)

    def _framework(self, key, params):
        try:
            args = cbor.loads(params) if len(params) else {}
        except MalformedError as e:
            self._error("INVALID_ARGUMENT", "arguments: %s" % e)
            return
        value = control().framework(self, key, args) if key[:1] == b"_" and isinstance(args, dict) else None
        release()
        if value is None:
            self._error("NOT_FOUND", "no service %s" % str(key, "utf-8"))
        else:
            self._send(0, 0, cbor.dumps(value))

    def _args(self, svc, params):
        if svc.private:
            from device import seal
            params = seal.unseal(self._enc_key, params)
        args = cbor.loads(params)
        if not isinstance(args, dict):
            raise MalformedError("not a map")
        spec = svc.args
        for k in args:
            if not isinstance(k, str):
                raise MalformedError("argument name %r is not text" % (k,))
            if spec and k not in spec:
                raise MalformedError("unknown argument %r" % k)
        return args

    def _failed(self, e):
        self.errors += 1
        code, message = self._code(e)
        self._error(code, message)

    def _code(self, e):
        # The wire code and message for an exception raised by a handler.
        if isinstance(e, ServiceError):
            return e.code, e.message
        if isinstance(e, (TypeError, ValueError)):
            return "INVALID_ARGUMENT", str(e)
        if isinstance(e, MemoryError):
            return "RESOURCE_EXHAUSTED", "out of memory"
        return "INTERNAL", "%s: %s" % (type(e).__name__, e)

    def _error(self, code, message):
        self._send(tlv.CONTENT_NACK, 0, cbor.dumps({"code": code, "message": message}))

    def _value(self, svc, value):
        try:
            content = cbor.dumps(value)
        except (TypeError, ValueError) as e:
            self.errors += 1
            self._error("INTERNAL", "result not encodable: %s" % e)
            return
        if svc.private:
            from device import seal
            content = seal.seal(self._enc_key, content)
        self._send(0, svc.cache_ms or 0, content)

    def _send(self, ctype, fresh_ms, content):
        # Reply to the current request (self._cur_*), remember it for retransmissions, send it.
        if self._quiet:
            return  # notifications get no reply
        try:
            s, e = tlv.encode_data(self._tx, self._cur_pit, self._cur_name, ctype, fresh_ms, content,
                                   self._sig_info, self._mac)
        except ValueError as err:
            self.errors += 1
            s, e = tlv.encode_data(self._tx, self._cur_pit, self._cur_name, tlv.CONTENT_NACK, 0,
                                   cbor.dumps({"code": "RESOURCE_EXHAUSTED", "message": str(err)}),
                                   self._sig_info, self._mac)
        tx = memoryview(self._tx)
        self._cache[self._cache_i] = (self._cur_seq, self._cur_sig, bytes(tx[s:e]))
        self._cache_i = (self._cache_i + 1) % self._cache_n
        self._face.send(tx[:e])


def _prefix(mv, s, e, ref):
    # mv[s:e] starts with ref.
    if e - s < len(ref):
        return False
    for i in range(len(ref)):
        if mv[s + i] != ref[i]:
            return False
    return True
