# The board runtime's data plane: services declared with @dev.service, invoked by signed Interests
# and answered with signed Data (docs/protocol.md). Receive path: one buffer parsed to offsets;
# checks in order name, key, digest, signature, replay, then dispatch. Anything that fails a check
# is dropped and counted, never answered.
#
# Heap is the user's, so:
# - dev.run() serves from a select.poll loop and imports asyncio only when a handler is a coroutine
#   (device/aio.py); `await dev.serve()` always uses asyncio.
# - The control plane is in device/control.py (Device(), declarations) and device/derive.py (setup),
#   announcements in device/report.py, _desc, _health, config and sleep in device/manage.py, rare data-plane
#   paths (retransmissions, bad arguments, private services) in device/rare.py: each imported when needed and
#   released after, with a collection (release()), so that the next one's code fills the holes it leaves.
# - MicroPython heap-allocates the frame of a call whose state exceeds 11 words, so the per-packet
#   methods are small and keep what they share on self.
# - A MemoryError is survived wherever the serving loop catches it (see _fault and _lost): counted
#   (`oom` in _health), answered RESOURCE_EXHAUSTED when a request was running, and what was lost
#   is retried (the announcement renewal on the next tick) or left to the gateway's retransmission.
# - Long-running operations and pending reports are capped (max_ops, max_reports): their state lives
#   as long as they do, so without a cap a client could fill the heap. Both checks are off the
#   plain-call path (in ops.begin and the outbox).
#
# Who writes what (issue 10, item 4). Cold state, one owner: `dev.conf` (Conf: key, site, state_dir, lease_ms,
# log settings, and setup's name_val, site_val, sig_base, desc_hash, boot), written by control.init and
# derive.setup only, read by report.py and manage.py. Public: name, max_ops, max_reports (control.init) and the
# counters requests, errors, oom, refused, drops (this module; ops.py counts refused). Hot fields, each with one
# writer besides control.init, which creates them all (so the attribute table has its final size before serving):
# - setup (derive.setup), then read-only: _mac, _seq, _key_name, _query_val, _sig_info, _ncomp, _room,
#   _pkt.prefixes;
# - the face and buffers (control.init): _face (net.py; netopen.py opens it), _tx, _txmv, _pkt;
# - declarations (control.service/every): _svc, _async, _timers; ops.py: _ops; log.py (log.ring): _logs;
#   _reports: _outbox;
# - the serving loop and the receive path (this module): _running (also open/close/stop), _due, _renew_at,
#   _query_at, _last_query, _sleep_ms, _next, _n, _calling, _quiet, _tp, _slot, _keep, the reply cache
#   (_c_seq, _c_tag, _c_data, _cache_i) and the reply context _cur_seq, _cur_sig, _cur_name, _cur_pit, _cur_svc,
#   _at, _ctype, _fresh. aio.py saves and restores the reply context around an awaited handler (_finish), and
#   ops.py and aio.py set _calling around the handlers they run, report.announce sets the next renewal
#   (_renew_at) and report.on_query when a query is answered (_query_at, _due): the only writes from outside.
from device import cbor, tlv, port, net, replay  # noqa: F401 (replay is used by derive.py; imported here so
#                                                  that its code sits with the data plane's, below the control plane's)
from device.errors import DeviceError, MalformedError
from device.port import const, ticks_ms, ticks_add, ticks_diff
from device.tlv import tl_back, nni_back, put_sig, starts
from device.cbor import encode, loads
from device.sign import equal, sha256

# Collected once more before this module's functions and classes are made: they fill what loading its code left.
# (device/__init__.py has imported the modules above and collected before loading this one.)
port.collect()

_SIG_LEN = const(32)
_QUERY_HOLDOFF_MS = const(500)
_MAX_WAIT_MS = const(1000)
_RENEW_RETRY_MS = const(500)

# drop reasons, indexes into Device.drops (names in device/manage.py)
_MALFORMED = const(0)
_OVERSIZED = const(1)
_UNSUPPORTED = const(2)
_KEY = const(3)
_DIGEST = const(4)
_SIGNATURE = const(5)
_REPLAY = const(6)
_OK = const(-1)
_RESENT = const(-2)

# A call's trace context (docs/protocol.md "Trace context"): ApplicationParameters may start with a CBOR
# byte string of 24 bytes, the trace id and the gateway's span id, before the arguments.
_TRACE_HEAD = const(0x58)  # CBOR: a byte string, its length in the next byte
_TRACE_LEN = const(24)

# Replies are built around offset _REPLY_AT + len(name) + len(pit) of the transmit buffer: the
# LpPacket, Data, Name, MetaInfo and Content headers in front of the content take at most this much.
_REPLY_AT = const(40)
_T_INTEREST = const(0x05)
_T_NAME = const(0x07)
_T_META_INFO = const(0x14)
_T_CONTENT = const(0x15)
_T_CONTENT_TYPE = const(0x18)
_T_FRESHNESS = const(0x19)
_T_DATA = const(0x06)
_CONTENT_NACK = const(3)  # ContentType of an error answer
_T_SIG_VALUE = const(0x17)

_NO_ARGS = {}  # shared, never mutated: fn(**_NO_ARGS) builds the handler's own dict
_MAX_NAMES = const(32)  # distinct argument names taken without declared args (_take_names)
_names = None  # those names, a set once the first is taken

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
    # A declared service (@dev.service, device/control.py: its fields fn, name, cache_ms, doc, args, result,
    # idempotent, private, long_running, is_async are set there). Defined here, as objects keep their class's module
    # alive; no methods, so that its code is this.
    pass


def _rare():
    from device import rare
    return rare


def release():
    # Drop the control and management planes (and report.py, which announcements load) so their code can be
    # collected until it is needed again. report.py stays while a module that imports it is loaded (outbox.py,
    # ops.py, log.py): that one's reference keeps it alive anyway, and the next announcement would load a
    # second copy (1.5 KB on 32 bits) beside it. Collected at once: what is loaded next (the next cold module,
    # or setup's and open()'s objects) then fills the holes this leaves rather than the heap's free end (about
    # 1 KiB of the 32-bit smallest heap, firmware/README.md "Memory").
    import sys
    import device
    m = sys.modules
    for name in ("control", "derive", "manage", "report", "rare", "netopen"):
        if name == "report" and ("device.outbox" in m or "device.ops" in m or "device.log" in m):
            continue
        m.pop("device." + name, None)
        if name in device.__dict__:
            delattr(device, name)
    port.collect()


def _forget_failed_imports():
    # MicroPython (1.29, py/objmodule.c mp_obj_new_module) enters a module's name in sys.modules before it
    # allocates the module: an import that runs out of memory right there leaves the name mapped to nothing,
    # and every later import of it binds nothing (a NameError where the module is used, at once and forever;
    # the renewal of the announcement stopped so). Such an entry reads as None; dropping it lets the next
    # import load the module. Called for every MemoryError survived; allocates nothing (the loop's iterator
    # is on the stack), and its frame is on the C stack.
    import sys
    m = sys.modules
    while True:
        for name in m:
            if m.get(name) is None:
                break
        else:
            return
        m.pop(name, None)


class Conf:
    # The device's cold state, one owner (issue 10, item 4): its key and settings (control.init), and the names and
    # signature parts derived from them once (derive.setup). Nothing on the per-packet path reads it; what that
    # path needs is derived into Device's hot fields (see "Who writes what" above). No methods: its code is this.
    pass


class Device:
    def __init__(self, name, key, **kw):
        # Device(name, key, *, iface="0.0.0.0", group="224.0.23.170", port=56363, state_dir=".", lease_ms=60000,
        # gateway=None, mtu=1500, reply_cache=8, max_ops=4, max_reports=16, log_bytes=512, log_level=20):
        # checked and set by control.init (docs/operations.md; firmware/README.md "Memory" sizes mtu and
        # reply_cache). The buffers are allocated first, after a collection (what the app and the imports left is
        # then filled by small objects, and the heap's free end stays in one piece for them); the control plane
        # stays loaded for the @dev.service declarations that follow, until setup.
        n = kw.pop("mtu", 1500)
        port.collect()
        rx = bytearray(n)
        tx = bytearray(n)
        from device import control
        control.init(self, name, key, rx, tx, **kw)

    @classmethod
    def from_config(cls, path="ndn_config.json", **overrides):
        # The JSON file that `ndn-edge provision` writes; see docs/operations.md.
        from device import manage
        kw = manage.read_config(path, overrides)
        release()
        return cls(**kw)

    # -- declaring services (device/control.py: loaded until setup) --
    def service(self, name, **kw):
        # Decorator: @dev.service(name, cache_ms=None, doc=None, args=None, result=None, idempotent=True,
        # private=False, long_running=False); see control.service.
        from device import control
        return control.service(self, name, **kw)

    def every(self, period_ms):
        # Decorator: call fn() every period_ms from the serving loop (sensor sampling, publishing);
        # a timer whose fn returns False stops. May be used while serving.
        from device import control
        return control.every(self, period_ms)

    def publish(self, topic, value, retain=True):
        # Send value on topic (relative to the device); delivered at least once to the gateway.
        self._reports().publish(topic, value, retain)

    def log(self, level, msg):
        # Keep msg for the gateway at level (10 debug, 20 info, 30 warning, 40 error, or the name):
        # `ndn-edge logs` shows it, with the trace id of the call it was logged in (device/log.py).
        from device import log
        log.entry(self, level, msg)

    def log_print(self, on=True):
        # Also log what the app prints, at INFO (print() still prints).
        from device import log
        log.capture(self, on)

    def sleep(self, seconds):
        # Announce sleeping, close the socket, sleep, wake and announce; done by the serving loop.
        self._sleep_ms = int(seconds * 1000)
        self._due = ticks_ms()

    def _reports(self):
        # The outbox (device/outbox.py), made for the first report; the serving loop looks at it now (a report is
        # about to be queued).
        if self._outbox is None:
            from device.outbox import Outbox
            self.setup()
            self._outbox = Outbox(self, self.max_reports)
        self._due = ticks_ms()
        return self._outbox

    def describe(self):
        # The service descriptions, as `_desc` answers them (device/derive.py).
        from device import derive
        d = derive.describe(self)
        release()
        return d

    def _trace(self):
        # The trace context of the call whose handler is running (a view of the receive buffer), or None.
        if self._calling and self._tp >= 0:
            return self._face.mv[self._tp:self._tp + _TRACE_LEN]
        return None

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
        if self._mac is None:
            release()  # the declarations are over: their code (device/control.py) goes before setup's comes
            from device import derive
            derive.setup(self)
            release()

    def open(self):
        # Set up, open the face and announce; then call receive() when readable, tick() on time. Each step
        # loads what it needs and releases it (control, netopen, report), so they are never in the heap together.
        self.setup()
        f = self._face
        f.open()
        release()
        self._running = True
        self._announce("up")
        print("ndn-edge device %s serving on %s group %s:%d" % (self.name, f.iface, f.group, f.udp_port))

    def close(self):
        face = self._face
        if self._outbox is not None:
            self._outbox.close()
        if face.sock is not None:
            try:
                self._announce("leave")
            except MemoryError:  # leaving is a courtesy (the lease lapses anyway): close all the same
                self._oom()
            finally:
                face.close()
        self._running = False

    def stop(self):
        # End run() or serve(): the serving loop leaves at its next wake-up, which this causes.
        self._running = False
        if self._face.sock is not None:
            self._face.send(b"")  # wake the receive loop through multicast loopback

    def _poll_loop(self):
        import select
        sock = rs = wait = None
        while self._running:
            try:
                try:
                    self._walk()  # the rest of a read that a failed handler interrupted
                    w = self.tick()
                    ob = self._outbox
                    if self._face.sock is not sock or (ob is not None and ob.sock is not rs):
                        # Opened (again, after a sleep), or the outbox opened its socket: poll what is open now.
                        # Which sockets are polled is noted last: a poller left half-made by a MemoryError is
                        # made again on the next turn, not used.
                        rs = None if ob is None else ob.sock
                        poller = select.poll()
                        for s in (self._face.sock, self._face.usock, rs):  # group, unicast (device/net.py), reports
                            if s is not None:
                                poller.register(s, select.POLLIN)
                        wait = getattr(poller, "ipoll", poller.poll)  # ipoll reuses its result: no allocation
                        # what poll names the outbox's socket by: the object (MicroPython), its number (CPython)
                        rkey = rs if rs is None or port.MICROPYTHON else rs.fileno()
                        sock = self._face.sock
                    for ev in wait(w):  # an acknowledgement alone is one read, not three
                        if ev[0] == rkey:
                            self._acks(ob)
                        else:
                            self.receive()
                except Exception as e:
                    self._fault(e)
            except Exception as e:  # what handling it raised: see _lost
                self._calling = False
                self._lost(e)

    def tick(self):
        # Runs what is due; returns ms until the next due work (at most _MAX_WAIT_MS). Called after
        # every wake-up of the serving loop, so the common case (nothing due) is one comparison.
        w = ticks_diff(self._due, ticks_ms())
        if w <= 0:
            # Due again in a second if _run_due raises, even before it starts (its frame is on the
            # heap): a serving loop that calls tick again at once must not spin.
            self._due = ticks_add(ticks_ms(), _MAX_WAIT_MS)
            w = self._run_due()
        return w if w < _MAX_WAIT_MS else _MAX_WAIT_MS

    def _run_due(self):
        # Renewal, a pending query answer, app timers, report resends, a requested sleep.
        now = ticks_ms()
        if self._sleep_ms:
            ms = self._sleep_ms
            self._sleep_ms = 0
            from device import manage
            manage.sleep(self, ms)
            release()
            now = ticks_ms()
        if self._last_query is not None and not 0 <= ticks_diff(now, self._last_query) < _QUERY_HOLDOFF_MS:
            self._last_query = None  # forgotten once the holdoff is over: never compared across a ticks wrap
        if self._query_at is not None and ticks_diff(self._query_at, now) <= 0:
            self._query_at = None
            self._last_query = now
            self._renew()
        elif ticks_diff(self._renew_at, now) <= 0:
            self._renew()
        wait = ticks_diff(self._renew_at, now)
        if self._query_at is not None:
            wait = min(wait, ticks_diff(self._query_at, now))
        for t in self._timers:
            if ticks_diff(t[0], now) <= 0:
                t[0] = ticks_add(now, t[1])
                try:
                    r = t[2]()
                except Exception as e:  # an app timer's bug, or its MemoryError, must not stop serving
                    r = None
                    self._lost(e)
                if r is False:
                    self._timers.remove(t)
                    wait = 0  # the list changed: the rest run on the next tick
                    break
            wait = min(wait, ticks_diff(t[0], now))
        if self._outbox is not None:
            w = self._outbox.tick(now)
            if w is not None:
                wait = min(wait, w)
        if self._logs is not None:
            w = self._logs.tick(now)
            if w is not None:
                wait = min(wait, w)
        wait = max(0, min(wait, _MAX_WAIT_MS))
        self._due = ticks_add(now, wait)
        return wait

    def _renew(self):
        # An "up" announcement from tick (a renewal, a query's answer). One that runs out of memory
        # (the control plane is loaded for it) is counted and tried again _RENEW_RETRY_MS later, and
        # what else is due still runs: an app timer may be what frees the memory. What the failed
        # attempt loaded stays loaded until the retry (or the next release()): a retry that need not
        # import again needs less memory.
        try:
            self._announce("up")
        except MemoryError:
            self._oom()
            self._renew_at = ticks_add(ticks_ms(), _RENEW_RETRY_MS)

    def _announce(self, state):
        from device import report
        report.announce(self, state)
        release()

    # -- receive path --
    # Per packet: receive -> _walk -> _interest -> _check -> _dispatch -> _call
    # -> _value -> _send -> _encode, _sign -> _seal -> _emit. MicroPython puts a call's frame on the
    # heap when its state (arguments, locals, value stack, three words per active exception handler)
    # exceeds 11 words; these stay within that (bench/frames.py lists every function's frame, and
    # tests/test_device_budget.py checks them), so a call allocates little beyond its data. Hence
    # also the reused locals, and no try in this path: the serving loop catches (see _fault).
    def receive(self):
        # Handle what one read of the face's sockets returns, then one of the outbox's socket
        # (acknowledgements, device/outbox.py). The serving loop catches what this raises (see _fault).
        self._next = 0
        self._n = self._face.read()
        self._walk()
        ob = self._outbox
        if ob is not None and ob.sock is not None:
            self._acks(ob)

    def _acks(self, ob):
        # What the outbox's socket holds (acknowledgements): a serving loop that knows only that socket
        # woke calls this alone, one read instead of three.
        self._next = 0
        self._n = ob.read()
        self._walk()

    def _walk(self):
        # The packets of the last read from self._next on: one read may hold several datagrams
        # back to back (each NDN packet is a complete TLV); self._next moves past each before it is handled.
        n = self._n
        p = self._pkt
        while self._next < n:
            t = p.parse(self._face.mv, self._next, n)
            self._next = p.next
            if t == _T_INTEREST:
                self._interest(p)
            elif t == _T_DATA and self._outbox is not None:
                self._outbox.on_data(p, p.mv)

    def _fault(self, e):
        # What the receive path raised, caught by the serving loop, whose frame lives as long as the
        # loop: a try in the per-packet path would put a frame on the heap for every packet.
        # A handler's exception is answered as an error (MemoryError: RESOURCE_EXHAUSTED), and the
        # rest of the read is handled next; malformed input ends the read (framing is lost); a
        # MemoryError elsewhere loses the rest of the read (the gateway retransmits) and is counted;
        # anything else is a runtime bug, which must not stop the device: count it and go on.
        if self._calling:
            tp = self._trace()
            self._calling = False
            self._next = self._pkt.next
            self._failed(e, tp)
            return
        self._next = self._n
        if isinstance(e, MalformedError):
            self.drops[_OVERSIZED if self._n >= len(self._face.mv) else _MALFORMED] += 1
        else:
            self._lost(e)

    def _lost(self, e):
        # An exception outside a handler, caught so that serving goes on: a MemoryError is counted as
        # `oom` (no traceback: under memory pressure they come in storms), anything else is a
        # runtime or app-timer bug, counted as an error and printed. The serving loops also call it
        # for what _fault raised (out of memory for the error answer, say): nothing escapes them, as
        # a loop that ended would leave the device deaf while its process runs. So this and _oom
        # keep their frames within 11 words (on the C stack: a call that allocates nothing).
        if isinstance(e, MemoryError):
            self._oom()
        else:
            self.errors += 1
            port.print_exc(e)
            self._log_error(e, None, None)

    def _oom(self):
        # Count a MemoryError the device survives. The allocator has already collected before it
        # failed; collecting again frees what unwinding to here released (the failed call's frames
        # and partial results), so the error answer or the retry that follows finds it free.
        self.oom += 1
        _forget_failed_imports()
        port.collect()

    def _interest(self, p):
        # The parser matched the name against (device name, query name); see derive.setup.
        if p.match:
            if p.match == 1 and p.name_e - p.name_s == len(self._query_val):
                from device import report  # answered by the serving loop (_run_due), which releases it
                report.on_query(self)
            return
        r = self._check(p)
        if r == _OK:
            self._dispatch(p)
        elif r >= 0:
            self.drops[r] += 1

    def _check(self, p):
        # _OK, _RESENT (answered from the reply cache) or the drop reason.
        extra = p.ncomp - self._ncomp
        self._quiet = extra == 3
        if self._quiet:
            p.component(self._ncomp)  # a notification: <device>/_n/<service>/<digest>
            if p.n != 2 or p.mv[p.p] != 95 or p.mv[p.p + 1] != 110:
                return _UNSUPPORTED
        elif extra != 2:
            return _UNSUPPORTED
        if p.sig_type != 4 or p.sv_n != _SIG_LEN or p.seq < 0 or p.params_s < 0:
            return _KEY
        if p.kl_e - p.kl_s != len(self._key_name) or not starts(p.mv, p.kl_s, p.kl_e, self._key_name):
            return _KEY
        mv = p.mv
        d = sha256(mv[p.params_s:p.sv_s + p.sv_n])
        if p.digest_s < 0 or not equal(mv, p.digest_s, d):
            return _DIGEST
        d = self._mac.start()
        d.update(mv[p.name_s:p.last_s])
        d.update(mv[p.params_s:p.sinfo_e])
        d = self._mac.finish(d)
        if not equal(mv, p.sv_s, d):
            return _SIGNATURE
        if not self._seq.fresh(p.seq):
            return _rare().resend(self, p)  # a retransmission, or a replay
        self._seq.accept(p.seq)
        return _OK

    def _dispatch(self, p):
        self.requests += 1
        mv = p.mv
        self._cur_seq = p.seq
        self._cur_sig = _sig_tag(mv, p.sv_s)
        self._cur_name = mv[p.name_s:p.name_e]
        self._cur_pit = mv[p.pit_s:p.pit_s + p.pit_n] if p.pit_n else None
        s = p.params_vs
        self._tp = -1
        if p.params_ve - s >= _TRACE_LEN + 2 and mv[s] == _TRACE_HEAD and mv[s + 1] == _TRACE_LEN:
            self._tp = s + 2  # a trace context, then the arguments
            s += _TRACE_LEN + 2
        p.component(self._ncomp + 1 if self._quiet else self._ncomp)
        svc = self._find(mv[p.p:p.p + p.n])
        if svc is None:
            self._framework(p, s)
        elif p.params_ve > s:
            self._call(svc, mv[s:p.params_ve])
        else:
            self._call(svc, None)

    def _find(self, name):
        # The service called `name` (a memoryview), without building a key.
        for key in self._svc:
            if key == name:
                return self._svc[key]
        return None

    def _call(self, svc, params):
        args = _NO_ARGS
        if params is not None:
            args = self._args(svc, params)
            if args is None:
                return  # answered INVALID_ARGUMENT
        if svc.long_running:
            _rare().begin(self, svc, args)
            return
        self._cur_svc = svc
        self._calling = True  # what the handler raises reaches _fault
        value = svc.fn(**args)
        if svc.is_async:
            self._slot = -1  # answered later, when other replies may have taken the slot: a new one then
            from device import aio
            aio.finish_later(self, svc, value)  # value: the coroutine; not scheduled (no memory): answered
            self._calling = False
        else:
            self._calling = False
            self._value(svc, value)

    def _framework(self, p, s):
        # A framework service (_desc, _health, ...) or none (NOT_FOUND): its name and its arguments from offset s,
        # answered by device/manage.py, loaded for the answer. Out of _dispatch, whose frame this would push onto
        # the heap.
        try:
            from device import manage
            value = manage.value(self, bytes(p.mv[p.p:p.p + p.n]), p.mv[s:p.params_ve])  # None: answered
        except MemoryError:  # loading the management plane, or building its answer
            release()
            self._oom()
            self._error("RESOURCE_EXHAUSTED", "out of memory")
            return
        release()
        if value is not None:
            self._send(0, 0, value)

    def _args(self, svc, params):
        # The call's keyword arguments, or None after answering INVALID_ARGUMENT.
        args = None if svc.private else _decode_args(params, svc.args)
        return _rare().args(self, svc, params) if args is None else args

    def _failed(self, e, tp=None, svc=None):
        # Answer the exception a handler raised, then log it (a MemoryError is only counted). Within
        # 11 words of state: under memory pressure this must not need the heap for its frame.
        code, message = self._code(e)
        self._fail(code, message)
        if not isinstance(e, MemoryError):
            self._log_error(e, tp, svc or self._cur_svc)

    def _log_error(self, e, tp, svc):
        # The automatic log entry of a handler that raised, or of an exception outside a handler
        # (svc None: an app timer's), written by device/log.py: never an error about the error.
        if self.conf.log_bytes <= 0:
            return
        try:
            from device import log
            log.failed(self, e, tp, svc)
        except MemoryError:
            self._oom()
        except Exception as x:  # a bug of the log itself: shown, and serving goes on
            port.print_exc(x)

    def _fail(self, code, message):
        # An error answer that counts as a device error (a handler, or a reply, that failed).
        self.errors += 1
        self._error(code, message)

    def _code(self, e):
        # The wire code and message for an exception raised by a handler (a MemoryError is counted).
        if isinstance(e, ServiceError):
            return e.code, e.message
        if isinstance(e, (TypeError, ValueError)):
            return "INVALID_ARGUMENT", str(e)
        if isinstance(e, MemoryError):
            self._oom()  # counted, and collected before the answer is built
            return "RESOURCE_EXHAUSTED", "out of memory"
        return "INTERNAL", "%s: %s" % (type(e).__name__, e)

    def _error(self, code, message):
        if len(message) > 200:
            message = message[:200]
        self._send(_CONTENT_NACK, 0, {"code": code, "message": message})

    def _value(self, svc, value):
        self._keep = not svc.idempotent  # long-running starts do not come here: their {"op": id} is kept
        if svc.private:
            _rare().sealed(self, svc, value)
        else:
            self._send(0, svc.cache_ms or 0, value)

    # -- replies --
    # The content is written at a fixed offset of the transmit buffer (self._at), the Data's headers
    # backwards in front of it and the signature after it: nothing is copied or measured twice.
    def _send(self, ctype, fresh_ms, value, raw=None):
        # Reply to the current request (self._cur_*), remember it for retransmissions, send it.
        if self._quiet:
            return  # notifications get no reply
        self._ctype = ctype
        self._fresh = fresh_ms
        self._at = _REPLY_AT + len(self._cur_name) + (0 if self._cur_pit is None else len(self._cur_pit))
        e = self._encode(value) if raw is None else self._at + len(raw)
        if e < 0:
            e = _rare().encode_failed(self, value)
        if e > self._room:
            if ctype != _CONTENT_NACK:  # an error reply always fits a sane MTU; never loop
                self._fail("RESOURCE_EXHAUSTED", "reply exceeds the datagram buffer (mtu)")
        elif e:
            if raw is not None:
                self._tx[self._at:e] = raw
            self._sign(e)

    def _encode(self, value):
        # The content's end, or -1 when it does not encode (for device/rare.py's encode_failed to tell why).
        try:
            return encode(self._tx, self._at, value)
        except Exception:  # one type keeps this frame off the heap; _send asks device/rare.py why
            return -1

    def _sign(self, e):
        # Headers in front of the content at tx[self._at:e]; kept in the reply cache, and sent (_seal).
        i = tl_back(self._tx, self._at, _T_CONTENT, e - self._at)
        s = i
        if self._fresh:
            i = nni_back(self._tx, i, _T_FRESHNESS, self._fresh)
        if self._ctype:
            i = nni_back(self._tx, i, _T_CONTENT_TYPE, self._ctype)
        i = tl_back(self._tx, i, _T_META_INFO, s - i)
        # Remember the reply's MetaInfo and Content (tx[i:e], a few bytes: the name and signature are made again
        # for a retransmission, see rare.again), or None when it is not kept.
        k = self._slot
        if k < 0:
            k = self._cache_i
            self._cache_i = (k + 1) % len(self._c_seq)
        self._c_seq[k] = self._cur_seq
        self._c_tag[k] = self._cur_sig
        self._c_data[k] = bytes(self._txmv[i:e]) if self._keep else None
        self._slot = -1
        self._keep = True
        self._seal(i, e)

    def _seal(self, i, e):
        # The Data around MetaInfo and Content at tx[i:e]: the request's name in front, SignatureInfo and
        # SignatureValue after; sent.
        s = i - len(self._cur_name)
        self._tx[s:i] = self._cur_name
        s = tl_back(self._tx, s, _T_NAME, i - s)
        i = len(self._sig_info)
        self._tx[e:e + i] = self._sig_info
        e += i
        i = self._mac.start()
        i.update(self._txmv[s:e])
        e = put_sig(self._tx, e, _T_SIG_VALUE, self._mac.finish(i))
        s = tl_back(self._tx, s, _T_DATA, e - s)
        self._emit(s, e, self._cur_pit)

    def _emit(self, s, e, pit):
        # Send the Data at tx[s:e], inside an LpPacket carrying the request's PIT token if it had one.
        if pit is not None:
            s = tlv.lp_head(self._tx, s, e - s, pit)
        self._face.send(self._txmv[s:e])


def _decode_args(params, spec):
    # The argument map, or None when anything is wrong (Device._args_slow then says what).
    try:
        return _arg_map(loads(params), spec)
    except Exception:  # one type, no `as`, two arguments: keeps this frame off the heap
        return None


def _arg_map(args, spec):
    # args must be a map of text names, within spec when the service declares its arguments (an empty map: none).
    if not isinstance(args, dict):
        raise MalformedError("not a map")
    for k in args:
        if not isinstance(k, str) or (spec is not None and k not in spec):
            raise MalformedError("argument %r is not text or not declared" % (k,))
    if spec is None and args:
        _take_names(args)
    return args


def _take_names(args):
    # MicroPython interns every keyword name a call passes with ** (py/runtime.c), for as long as it runs, and a
    # declared service's names are the app's own. A service without declared arguments takes at most _MAX_NAMES
    # distinct ones, all such services together: new names beyond would fill the heap a few bytes at a time.
    global _names
    if _names is None:
        _names = set()
    for k in args:
        if k not in _names:
            if len(_names) >= _MAX_NAMES:
                raise MalformedError("argument %r: over %d names, declare args" % (k, _MAX_NAMES))
            _names.add(k)


def _sig_tag(mv, i):
    # The first 30 bits of a signature value: with the sequence number, identifies a retransmission of an
    # Interest whose signature verified (a different Interest with the same number is never signed). 30 bits
    # stay a small int on 32-bit boards: 7 bytes, as before, made big ints there, several allocations per call.
    return mv[i] << 22 | mv[i + 1] << 14 | mv[i + 2] << 6 | mv[i + 3] >> 2

