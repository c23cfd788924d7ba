# Device benchmark floor anchor: a bare asyncio UDP echo on 127.0.0.1. A one-byte datagram "?"
# is answered with micropython.mem_total() instead. Runs on MicroPython. argv: port reply_port
import sys
import socket
import asyncio
import micropython


async def main(port, reply_port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(socket.getaddrinfo("127.0.0.1", port)[0][-1])
    s.setblocking(False)
    peer = socket.getaddrinfo("127.0.0.1", reply_port)[0][-1]
    reader = asyncio.StreamReader(s)
    buf = bytearray(1500)
    mv = memoryview(buf)
    while True:
        n = await reader.readinto(buf)
        if n == 1 and buf[0] == 63:
            s.sendto(str(micropython.mem_total()), peer)
        elif n:
            s.sendto(mv[:n], peer)


asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
