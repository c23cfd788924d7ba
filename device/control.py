# The device's boot-time control plane: Device() and declaring services and timers (setup and service descriptions
# are device/derive.py's).
# None of it is on the per-invocation path, so the runtime imports this module when it needs it and releases it
# right after (runtime.release()): its code does not sit in the heap while serving. (Device() loads it, and the
# @dev.service declarations keep it, until setup, which releases it before loading device/derive.py.)
# Announcements are device/report.py's: a renewal loads only that. What is needed later and rarely (_health,
# _desc, configuration, sleep) is in device/manage.py.
#
# No class is defined here: an object of a class defined in a module keeps all of that module's code alive.
from device import tlv, net, port
from device.errors import DeviceError
from device.port import const, ticks_ms, ticks_add

_DEFAULT_PORT = const(56363)
_DEFAULT_GROUP = "224.0.23.170"


def init(dev, name, key, rx, tx, iface="0.0.0.0", group=_DEFAULT_GROUP, port=_DEFAULT_PORT, state_dir=".",
         lease_ms=60000, gateway=None, reply_cache=8, max_ops=4, max_reports=16, log_bytes=512, log_level=20):
    # Device(...), with the receive and transmit buffers it allocated (mtu bytes each): checks the name and key,
    # keeps them and the settings in the cold state (runtime.Conf) and creates every hot field, so that the
    # device's attribute table reaches its final size now.
    from device.runtime import Conf
    parts = [p for p in name.split("/") if p]
    if not name.startswith("/") or len(parts) < 2:
        raise DeviceError("device name must look like /site/device, got %r" % name)
    if isinstance(key, str):
        import binascii
        key = binascii.unhexlify(key)
    if len(key) != 32:
        raise DeviceError("device key must be 32 bytes, got %d" % len(key))
    c = dev.conf = Conf()
    c.key = bytes(key)
    c.site = parts[0]
    c.state_dir = state_dir
    c.lease_ms = lease_ms
    # dev.log() keeps entries in a ring of log_bytes (0: no logs) from log_level on (device/log.py).
    c.log_bytes = log_bytes
    c.log_level = log_level
    c.name_val = c.site_val = c.sig_base = c.desc_hash = None  # made by setup
    c.boot = 0
    dev.name = "/" + "/".join(parts)
    # Caps on what outlives a request (docs/protocol.md "Limits and memory"): a start beyond max_ops
    # running operations is answered RESOURCE_EXHAUSTED (device/ops.py); beyond max_reports pending
    # reports (at least 1) the oldest is dropped (device/outbox.py).
    dev.max_ops = max_ops
    dev.max_reports = max_reports
    dev.requests = 0
    dev.errors = 0
    dev.oom = 0  # MemoryErrors survived
    dev.refused = 0  # operation starts refused at max_ops
    dev.drops = [0] * 7
    # The face reads into rx; it opens its socket later (device/netopen.py). Replies and reports are built in tx.
    dev._face = net.MulticastFace(iface, group, port, rx, gateway)
    dev._tx = tx
    dev._txmv = memoryview(dev._tx)
    # The reply cache (docs/protocol.md "Replay protection"): per answered request its seq, signature tag and
    # Data, or None for an idempotent service's success, which is not kept: its retransmission runs the
    # handler again (same effect, by definition) and is answered in the same slot (Device._slot).
    dev._c_seq = [-1] * reply_cache
    dev._c_tag = [0] * reply_cache
    dev._c_data = [None] * reply_cache
    dev._cache_i = 0
    dev._slot = -1  # the slot a second run of an idempotent call answers in, else -1
    dev._keep = True  # whether the reply being sent is kept (_value clears it for idempotent services)
    dev._svc = {}
    dev._running = False
    dev._async = False
    dev._quiet = False  # the current request is a notification: no reply
    dev._outbox = None
    dev._logs = None  # device/log.py's Logs, made by the first entry
    dev._ops = {}
    dev._timers = []  # [due_ticks, period_ms, fn]
    dev._due = ticks_ms()  # when tick() next has work (see Device._run_due)
    dev._next = 0  # offset of the next packet of the last read
    dev._n = 0  # bytes of the last read
    dev._calling = False  # a handler is running
    dev._sleep_ms = 0
    # Set by setup(), and per request.
    dev._mac = dev._seq = dev._query_val = None
    dev._pkt = tlv.Packet()  # its prefixes are set by setup()
    dev._key_name = dev._sig_info = None
    dev._ncomp = dev._room = dev._renew_at = 0
    dev._query_at = dev._last_query = None  # when a query was last answered
    dev._cur_seq = dev._cur_sig = dev._at = dev._ctype = dev._fresh = 0
    dev._cur_name = dev._cur_pit = dev._cur_svc = None
    dev._tp = -1  # offset of the current call's trace context in the receive buffer, or -1


def service(dev, name, cache_ms=None, doc=None, args=None, result=None, idempotent=True, private=False,
            long_running=False):
    # @dev.service(...): registers the decorated function as the service `name`.
    if not name or name[0] == "_" or "/" in name:
        raise DeviceError("service name %r: must be one component not starting with '_'" % name)

    def register(fn):
        is_async = _is_async(fn)
        if long_running and not is_async:
            raise DeviceError("long-running service %r must be a coroutine (async def)" % name)
        from device.runtime import Service
        s = Service()
        s.fn = fn
        s.name = name
        s.cache_ms = cache_ms
        s.doc = doc
        s.args = args
        s.result = result
        s.idempotent = idempotent
        s.private = private
        s.long_running = long_running
        s.is_async = is_async
        dev._svc[name.encode()] = s
        dev._async = dev._async or is_async
        return fn
    return register


def _is_async(fn):
    # An `async def` handler: a generator function on MicroPython, CO_COROUTINE on CPython.
    if port.MICROPYTHON:
        return type(fn).__name__ == "generator"
    from device._cpython import is_coroutine
    return is_coroutine(fn)


def every(dev, period_ms):
    # @dev.every(period_ms): a timer, run by the serving loop (Device._run_due).
    def register(fn):
        dev._timers.append([ticks_add(ticks_ms(), period_ms), period_ms, fn])
        dev._due = ticks_ms()
        return fn
    return register
