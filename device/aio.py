# Serving inside asyncio: `await dev.serve()`, and coroutine handlers. Imported only when used,
# so a board whose handlers are plain functions never loads asyncio.
#
# Neither task here ends on an exception but by stopping (serve) or cancellation (_timers): what
# they catch goes to Device._fault and Device._lost, which count it (a MemoryError as `oom`); the
# serving loop then yields, so that other tasks can finish and free what they hold.
import asyncio
from device.port import MICROPYTHON


async def serve(dev):
    dev.open()
    acks = [None, None]  # the outbox's socket (device/outbox.py) and the task that reads it
    tasks = [asyncio.create_task(_timers(dev, acks))]
    if dev._face.usock is not None:  # unicast (device/net.py): its own waiter
        tasks.append(asyncio.create_task(_reader(dev, 1, acks)))
    try:
        await _reader(dev, 0, acks)
    finally:
        for t in tasks:
            t.cancel()
        if acks[1] is not None:
            acks[1].cancel()
        dev.close()


def _sock(dev, which):
    # 0: the group's socket, 1: the unicast one, 2: the outbox's (None when not open)
    if which == 2:
        ob = dev._outbox
        return None if ob is None else ob.sock
    return dev._face.usock if which else dev._face.sock


async def _reader(dev, which, acks):
    # Waits on a socket as it is now (a sleep, device/manage.py, closes and opens the face again) and
    # ends when it is closed. Device.receive reads the face's sockets or the outbox's.
    while dev._running:
        try:
            try:
                if dev._next < dev._n:
                    dev._walk()  # the rest of a read after a failed handler (Device._fault)
                else:
                    sock = _sock(dev, which)
                    if sock is None:
                        return
                    await _readable(sock)
                    if which == 2:
                        if dev._outbox.sock is not None:  # (a sleep may have closed it meanwhile)
                            dev._acks(dev._outbox)  # the outbox's socket alone
                    else:
                        dev.receive()
                    _follow(dev, acks)
                continue
            except Exception as e:
                dev._fault(e)
        except Exception as e:  # what handling it raised (see Device._lost)
            dev._calling = False
            dev._lost(e)
        await asyncio.sleep(0)


async def _timers(dev, acks):
    # Device.tick moves its due time a second ahead before it runs anything, so a tick that raised
    # is retried a second later at most (a renewal out of memory is retried by tick itself). It
    # yields after a failure too: a loop that went round without awaiting (starting the outbox's
    # reader out of memory, again and again) kept the tasks that would free memory from running.
    while dev._running:
        w = 0
        try:
            w = dev.tick()
            _follow(dev, acks)
        except Exception as e:
            dev._lost(e)
        await _sleep_ms(w)


def _follow(dev, acks):
    # Read the outbox's socket from a task of its own once it is open (a report was sent), and again
    # after a sleep reopened it.
    s = _sock(dev, 2)
    if s is not acks[0]:
        if acks[1] is not None:
            acks[1].cancel()
        acks[1] = None if s is None else asyncio.create_task(_reader(dev, 2, acks))
        acks[0] = s


if MICROPYTHON:
    _sleep_ms = asyncio.sleep_ms  # no float on the heap per tick

    async def _readable(sock):
        yield asyncio.core._io_queue.queue_read(sock)
else:
    def _sleep_ms(ms):
        return asyncio.sleep(ms / 1000)

    async def _readable(sock):
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        fd = sock.fileno()
        loop.add_reader(fd, lambda: fut.done() or fut.set_result(None))
        try:
            await fut
        finally:
            loop.remove_reader(fd)


def finish_later(dev, svc, coro):
    # The reply needs the request's name and token after the receive buffer has moved on: copy them
    # (and the call's trace context, for the log entry of a handler that raises).
    pit = dev._cur_pit
    tp = dev._trace()  # (dev._calling is still True here)
    asyncio.create_task(_finish(dev, svc, coro, dev._cur_seq, dev._cur_sig, bytes(dev._cur_name),
                                None if pit is None else bytes(pit), None if tp is None else bytes(tp)))


async def _finish(dev, svc, coro, seq, sig, name, pit, tp):
    try:
        value = await coro
        err = None
    except Exception as e:
        err = e
    try:
        # two pairs: a 4-tuple would be allocated, and could fail outside this try
        dev._cur_seq, dev._cur_sig = seq, sig
        dev._cur_name, dev._cur_pit = name, pit
        if err is None:
            dev._value(svc, value)
        else:
            dev._failed(err, tp, svc)
    except Exception as e:  # the reply itself failed (out of memory): the gateway retransmits
        dev._lost(e)
