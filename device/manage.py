# The device's management plane: the framework services (_desc, _health, _op_get, _op_cancel), the
# configuration file and sleep. Imported when needed and released right after, like device/control.py.
# The control plane is imported only by what needs it (_desc): _health, _op_get and _op_cancel
# run without loading its code, on a device that may be short of memory.
from device import port
from device.port import ticks_ms, ticks_diff

_DROP_NAMES = ("malformed", "oversized", "unsupported", "key", "digest", "signature", "replay")
_CONFIG_KEYS = ("iface", "group", "port", "state_dir", "lease_ms", "gateway", "max_ops", "max_reports", "mtu",
                "log_bytes", "log_level")


def read_config(path, overrides):
    # Keyword arguments for Device from the JSON file `ndn-edge provision` writes (docs/operations.md).
    import json
    with open(path) as f:
        cfg = json.load(f)
    kw = {"name": cfg["name"], "key": cfg["key"]}
    for k in _CONFIG_KEYS:
        if k in cfg:
            kw[k] = cfg[k]
    kw.update(overrides)
    return kw


def health(dev):
    ob = dev._outbox
    lg = dev._logs
    drops = {}
    for i in range(len(_DROP_NAMES)):
        drops[_DROP_NAMES[i]] = dev.drops[i]
    ops = 0
    if dev._ops:
        from device.ops import running
        ops = running(dev)
    port.collect()  # mem_free is then what the device really has, not counting garbage
    return {"uptime_ms": ticks_diff(ticks_ms(), dev.conf.boot), "mem_free": port.mem_free(),
            "requests": dev.requests, "errors": dev.errors, "oom": dev.oom, "drops": drops,
            "seq_writes": dev._seq.writes, "ops_running": ops, "ops_refused": dev.refused,
            "reports_pending": len(ob.items) if ob else 0, "reports_dropped": ob.dropped if ob else 0,
            "logs_dropped": lg.dropped if lg else 0}


def value(dev, key, params):
    # The answer of the framework service `key` (a name component starting with "_") called with the CBOR
    # `params`; None after answering an error (arguments that do not decode, or NOT_FOUND).
    from device import cbor
    from device.errors import MalformedError
    try:
        args = cbor.loads(params) if len(params) else {}
    except MalformedError as e:
        dev._error("INVALID_ARGUMENT", "arguments: %s" % e)
        return None
    v = framework(dev, key, args) if key[:1] == b"_" and isinstance(args, dict) else None
    if v is None:
        try:
            key = str(key, "utf-8")
        except UnicodeError:  # a name component need not be text
            pass
        dev._error("NOT_FOUND", "no service %s" % key)
    return v


def framework(dev, name, args):
    # The value of a framework service, or None when there is no such service (or operation).
    if name == b"_desc":
        from device import derive
        return derive.describe(dev)
    if name == b"_health":
        return health(dev)
    if name in (b"_op_get", b"_op_cancel") and dev._ops:
        from device import ops
        return ops.get(dev, args) if name == b"_op_get" else ops.cancel(dev, args)
    return None


def sleep(dev, ms):
    # Announce the sleep, close the socket, sleep (lightly where the port can), wake, announce.
    import time
    from device import report
    report.announce(dev, "sleep", ms)
    if dev._outbox is not None:
        dev._outbox.close()  # opened again by the next report
    dev._face.close()
    try:
        import machine
        machine.lightsleep(ms)
    except (ImportError, AttributeError):
        time.sleep(ms / 1000)
    dev._face.open()
    report.announce(dev, "up")
