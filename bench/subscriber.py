"""Subscribers of `python -m bench pubsub`, in worker processes: `python -m bench.subscriber SUBJECT JSON`.

Both subjects' subscribers run the same way, so that neither gets an arrangement the other does not: each worker
process holds a share of the subscribers, each subscriber its own client and socket, served by one thread (an
asyncio loop for ndn-edge's `Client.subscribe`; a `select` loop over paho-mqtt clients, which paho supports
with `loop_read`/`loop_write`/`loop_misc`, for MQTT). A worker prints `ready` once every one of its subscriptions
is in place, reads until each subscriber has every message (or none came for `quiet_s`), then prints one JSON
line: per subscriber the deliveries `[publisher, i, send time in ms, receipt time in s]`, the CPU seconds the
worker spent from `ready` on, and what the subject adds (ndn-edge: device-to-gateway latency, messages its
queue dropped).

JSON argument: `{"subs": [first index, count], "total": messages expected per subscriber, "quiet_s", "durable":
name or null, and "home" (ndn-edge) or "port" (MQTT)}`.
"""
from __future__ import annotations

import asyncio
import json
import select
import sys
import time
from typing import Any

PATTERN = "sim/*/burst"
TOPIC_FILTER = "sim/+/burst"
READY_S = 20.0


def ndn(cfg: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(_ndn(cfg))


async def _ndn(cfg: dict[str, Any]) -> dict[str, Any]:
    from ndn_edge.client.api import Client
    from ndn_edge.state.home import Home

    home = Home(cfg["home"])
    first, count = cfg["subs"]
    clients = [Client.from_home(home, client=f"sub{k}", timeout=10) for k in range(first, first + count)]
    for c in clients:
        await c.open()
    try:
        subs = [c.subscribe(PATTERN, durable=cfg["durable"], batch=1000) for c in clients]
        for sub in subs:
            await sub.open()
        _say("ready")
        cpu = time.process_time()
        got = await asyncio.gather(*(_read(sub, cfg["total"], cfg["quiet_s"]) for sub in subs))
        cpu = time.process_time() - cpu
        for sub in subs:
            if cfg["durable"]:
                await sub.unsubscribe()  # the queue goes with it: the next run starts empty
            else:
                await sub.close()
        lost = sum(sub.lost for sub in subs)
    finally:
        for c in clients:
            await c.close()
    return {"records": [g[0] for g in got], "to_gateway_ms": [x for g in got for x in g[1]], "cpu_s": cpu,
            "lost_by_queue": lost}


async def _read(sub: Any, total: int, quiet_s: float) -> tuple[list[list[Any]], list[float]]:
    out: list[list[Any]] = []
    to_gateway: list[float] = []
    while len(out) < total:
        msg = await sub.next(quiet_s)
        if msg is None:
            break
        if msg.retained:
            continue
        now = time.time()
        i, sent_ms = msg.value
        out.append([msg.publisher, i, sent_ms, now])
        to_gateway.append(msg.time * 1000 - sent_ms)
    return out, to_gateway


def mqtt(cfg: dict[str, Any]) -> dict[str, Any]:
    import paho.mqtt.client as paho

    first, count = cfg["subs"]
    total, quiet_s = cfg["total"], cfg["quiet_s"]
    records: list[list[list[Any]]] = [[] for _ in range(count)]
    subscribed = [0]
    received = [0]
    clients = []

    def on_message(out: list[list[Any]]) -> Any:
        def handle(client: Any, userdata: Any, msg: Any) -> None:
            now = time.time()
            i, sent = msg.payload.split()
            out.append([msg.topic.rsplit("/", 1)[0], int(i), float(sent), now])
            received[0] += 1
        return handle

    def on_subscribe(*_: Any) -> None:
        subscribed[0] += 1

    for k in range(count):
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"sub{first + k}",
                             clean_session=not cfg["durable"], protocol=paho.MQTTv311)
        client.on_message = on_message(records[k])
        client.on_subscribe = on_subscribe
        client.connect("127.0.0.1", cfg["port"])
        client.subscribe(TOPIC_FILTER, qos=1)
        clients.append(client)
    by_fd = {c.socket().fileno(): c for c in clients}
    fds = list(by_fd)

    def turn(timeout_s: float) -> None:
        # What paho's own loop does for one client, for all of them: select, read, write what waits.
        readable, writable, _ = select.select(fds, [fd for fd in fds if by_fd[fd].want_write()], [], timeout_s)
        for fd in readable:
            by_fd[fd].loop_read()
        for fd in writable:
            by_fd[fd].loop_write()

    deadline = time.monotonic() + READY_S
    while subscribed[0] < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{count - subscribed[0]} MQTT subscribers not subscribed within {READY_S:g} s")
        turn(0.05)
    _say("ready")
    cpu = time.process_time()
    expected = total * count
    quiet_at = time.monotonic() + quiet_s
    misc_at = seen = 0.0
    while received[0] < expected or any(len(r) < total for r in records):
        turn(0.05)
        now = time.monotonic()
        if now >= misc_at:  # keep-alives, retries (paho's loop_misc), once in a while
            for c in clients:
                c.loop_misc()
            misc_at = now + 0.05
            if received[0] != seen:
                seen, quiet_at = received[0], now + quiet_s
            elif now > quiet_at:
                break
    cpu = time.process_time() - cpu
    for c in clients:
        c.disconnect()
    return {"records": records, "cpu_s": cpu}


def _say(word: str) -> None:
    sys.stdout.write(word + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    subject, cfg = argv[0], json.loads(argv[1])
    result = ndn(cfg) if subject == "ndn-edge" else mqtt(cfg)
    _say(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
