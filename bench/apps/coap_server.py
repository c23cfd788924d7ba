"""The CoAP anchor of the gateway benchmark: an aiocoap server with one GET resource, on 127.0.0.1 only.

    python bench/apps/coap_server.py PORT PAYLOAD_BYTES

`GET /temperature` answers PAYLOAD_BYTES bytes (2.05 Content), the same size as the ndn-edge reply content it is
compared with. Only the `udp6` transport is started, bound to 127.0.0.1:PORT (aiocoap's default server would
also open TCP, TLS and WebSocket listeners). Prints "ready" once serving; runs until killed.
"""
import asyncio
import sys

import aiocoap
import aiocoap.resource as resource


class Temperature(resource.Resource):
    def __init__(self, payload: bytes) -> None:
        super().__init__()
        self.payload = payload

    async def render_get(self, request):
        return aiocoap.Message(code=aiocoap.CONTENT, payload=self.payload)


async def main(port: int, size: int) -> None:
    site = resource.Site()
    site.add_resource(["temperature"], Temperature(bytes(i % 251 for i in range(size))))
    await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", port), transports=["udp6"])
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
