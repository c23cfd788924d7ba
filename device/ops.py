# Long-running operations on the device: started by an invocation that is answered at once with
# {"op": id}; the handler runs as an asyncio task and its end is reported through the outbox
# (docs/protocol.md "Long-running operations"). Loaded only by a device with such services.
import asyncio
import binascii
from device import report
from device.port import const, urandom

_KEEP_FINISHED = const(4)


class Operation:
    # What a long-running handler receives as its first argument.
    def __init__(self, dev, op_id):
        self.id = op_id
        self.state = "running"
        self.fraction = None
        self.result = None
        self.error = None
        self.task = None
        self._dev = dev

    def progress(self, fraction, note=None):
        # Report progress (0..1); sent once, not retried.
        self.fraction = fraction
        info = self.info()
        if note is not None:
            info["note"] = note
        self._dev._reports().send(report.OPERATION, info, False)

    @property
    def cancelled(self):
        return self.state == "cancelled"

    def info(self):
        d = {"op": self.id, "state": self.state, "progress": self.fraction}
        if self.state == "done":
            d["result"] = self.result
        elif self.error is not None:
            d["error"] = self.error
        return d


def start(dev, svc, args):
    op = Operation(dev, binascii.hexlify(urandom(4)).decode())
    dev._ops[op.id] = op
    op.task = asyncio.create_task(_run(dev, svc, op, args))
    return op.id


async def _run(dev, svc, op, args):
    try:
        op.result = await svc.fn(op, **args)
        op.state = "done"
    except asyncio.CancelledError:
        op.state = "cancelled"
    except Exception as e:
        op.state = "failed"
        code, message = dev._code(e)
        op.error = {"code": code, "message": message}
    op.task = None
    dev._reports().send(report.OPERATION, op.info())
    finished = [k for k in dev._ops if dev._ops[k].task is None]
    for k in finished[:max(0, len(finished) - _KEEP_FINISHED)]:
        del dev._ops[k]


def get(dev, args):
    op = dev._ops.get(args.get("op"))
    return None if op is None else op.info()


def cancel(dev, args):
    op = dev._ops.get(args.get("op"))
    if op is None or op.task is None:
        return None
    op.task.cancel()
    return {"op": op.id, "state": "cancelling"}
