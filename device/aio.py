# Serving inside asyncio: `await dev.serve()`, and coroutine handlers. Imported only when used,
# so a board whose handlers are plain functions never loads asyncio.
import asyncio
from device.port import MICROPYTHON


async def serve(dev):
    dev.open()
    timers = asyncio.create_task(_timers(dev))
    try:
        while dev._running:
            await _readable(dev._face.sock)
            dev._next = 0
            dev._n = dev._face.read()
            while dev._next < dev._n:  # after a failed handler, the rest of the read (Device._fault)
                try:
                    dev._walk()
                except Exception as e:
                    dev._fault(e)
    finally:
        timers.cancel()
        dev.close()


async def _timers(dev):
    while dev._running:
        await asyncio.sleep(dev.tick() / 1000)


if MICROPYTHON:
    async def _readable(sock):
        yield asyncio.core._io_queue.queue_read(sock)
else:
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
    # The reply needs the request's name and token after the receive buffer has moved on: copy them.
    pit = dev._cur_pit
    asyncio.create_task(_finish(dev, svc, coro, dev._cur_seq, dev._cur_sig, bytes(dev._cur_name),
                                None if pit is None else bytes(pit)))


async def _finish(dev, svc, coro, seq, sig, name, pit):
    try:
        value = await coro
        err = None
    except Exception as e:
        err = e
    dev._cur_seq, dev._cur_sig, dev._cur_name, dev._cur_pit = seq, sig, name, pit
    if err is None:
        dev._value(svc, value)
    else:
        dev._failed(err)
