"""The floor anchor of the gateway benchmark: a bare asyncio UDP echo on 127.0.0.1, the least any Python datagram
server does per request (read a datagram, send it back).

    python bench/apps/py_udp_echo.py PORT [asyncio|uvloop]

Runs on the event loop named (uvloop: the one the gateway runs on where it is installed). Prints "ready" once
serving; runs until killed.
"""
import asyncio
import sys


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", port))
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[2] == "uvloop":
        import uvloop
        uvloop.run(main(int(sys.argv[1])))
    else:
        asyncio.run(main(int(sys.argv[1])))
