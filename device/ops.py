# Long-running operations on the device: started by an invocation that is answered at once with
# {"op": id}; the handler runs as an asyncio task and its end is reported through the outbox
# (docs/protocol.md "Long-running operations"). Loaded only by a device with such services.
#
# At most dev.max_ops run at once (Device._start_op refuses the next with RESOURCE_EXHAUSTED): each
# holds its task, its handler's frame and whatever the handler keeps until it ends. An operation
# counts as running while its task is set; it is finished (task None) as soon as its handler ends,
# before its final report is queued.
import asyncio
import binascii
from device import report
from device.port import const, urandom

_KEEP_FINISHED = const(4)
_REPORT_TRIES = const(20)  # a final report that finds no memory is queued again, every half second
_RETRY_S = 0.5


class Operation:
    # What a long-running handler receives as its first argument.
    def __init__(self, dev, op_id):
        self.id = op_id
        self.state = "running"
        self.fraction = None
        self.result = None
        self.error = None
        self.task = None
        self.tp = None  # the trace context of the call that started it (for the log of its failure)
        self._dev = dev

    def progress(self, fraction, note=None):
        # Report progress (0..1); sent once, not retried, so not sent when memory is short: a lost
        # progress report must not fail the operation (the MemoryError is counted, `oom`).
        self.fraction = fraction
        try:
            info = self.info()
            if note is not None:
                info["note"] = note
            self._dev._reports().send(report.OPERATION, info, False)
        except MemoryError:
            self._dev._oom()

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


def begin(dev, svc, args):
    # Answer a start: refused beyond max_ops running operations (never run); one that runs out of
    # memory is answered RESOURCE_EXHAUSTED through Device._fault, and nothing of it is kept.
    if running(dev) >= dev.max_ops:
        dev.refused += 1
        dev._error("RESOURCE_EXHAUSTED", "%d operations running, the most this device runs (max_ops); "
                   "retry when one has finished" % dev.max_ops)
        return
    dev._calling = True
    op_id = start(dev, svc, args)
    try:
        dev._send(0, 0, {"op": op_id})
    except MemoryError:
        forget(dev, op_id)  # unanswered, so it must not run either
        raise
    dev._calling = False


def running(dev):
    n = 0
    for k in dev._ops:
        if dev._ops[k].task is not None:
            n += 1
    return n


def start(dev, svc, args):
    # Registered, then scheduled; a MemoryError on the way leaves nothing behind.
    op = Operation(dev, binascii.hexlify(urandom(4)).decode())
    tp = dev._trace()
    if tp is not None:
        op.tp = bytes(tp)
    dev._ops[op.id] = op
    try:
        op.task = asyncio.create_task(_run(dev, svc, op, args))
    except MemoryError:
        del dev._ops[op.id]
        raise
    return op.id


def forget(dev, op_id):
    # An operation whose start could not be answered: cancelled before it ran, never reported.
    op = dev._ops.pop(op_id, None)
    if op is not None and op.task is not None:
        op.task.cancel()


async def _run(dev, svc, op, args):
    err = None
    try:
        op.result = await svc.fn(op, **args)
        op.state = "done"
    except asyncio.CancelledError:
        op.state = "cancelled"
    except Exception as e:
        op.state = "failed"
        err = e
    op.task = None  # no longer counts against max_ops
    if dev._ops.get(op.id) is not op:
        return  # forgotten (its start was never answered): nobody waits for its report
    # The final report, retried while memory is short (the gateway asks with _op_get about an
    # operation it has not heard of for a while, so one that never gets through is still found).
    for _ in range(_REPORT_TRIES):
        try:
            if err is not None:
                code, message = dev._code(err)
                op.error = {"code": code, "message": message}
                if not isinstance(err, MemoryError):
                    dev._log_error(err, op.tp, svc)
                err = None
            _prune(dev, op)
            dev._reports().send(report.OPERATION, op.info())
            return
        except MemoryError:
            dev._oom()
        await asyncio.sleep(_RETRY_S)


def _prune(dev, op):
    # Keep the last _KEEP_FINISHED finished operations for _op_get, op (just finished) among them.
    finished = [k for k in dev._ops if k != op.id and dev._ops[k].task is None]
    for k in finished[:max(0, len(finished) + 1 - _KEEP_FINISHED)]:
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
