"""The part of the `ndn-edge up` tour that shows the communication models (docs/models.md), one real exchange
each through the client library, printed as the equivalent `ndn-edge` command and what it gave.

    await tour_patterns(demo, fleet)     # after cmd_up's request/response tour; `demo` may call everything

Kept apart from `ndn_edge.tools.cmd_up` so the tour of each model sits next to nothing else; `cmd_up._tour` calls it.
"""
from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ndn_edge.client.api import Client
    from ndn_edge.tools.cmd_sim import SimFleet


async def tour_patterns(demo: Client, fleet: SimFleet) -> None:
    """Notification, long-running operation, operations list, pub/sub, membership, scatter/gather, queued call."""
    from ndn_edge.errors import CallError
    from ndn_edge.tools.cmd_patterns import print_gather, print_message, print_ops
    from ndn_edge.tools.output import value_text

    site = fleet.site
    first, second, third = (_rel(fleet.names[i % fleet.count], site) for i in range(3))

    def command(text: str, note: str) -> None:
        print(f"\n$ ndn-edge {text} --as {demo.name}" + (f"    # {note}" if note else ""))

    try:
        command(f"call --notify {first}/note --args '{_json({'text': 'hello'})}'",
                "notification: no reply, at most once")
        await demo.notify(f"{first}/note", {"text": "hello"})
        print("sent")
        command(f"call {first}/notes", "the device ran it")
        print(value_text(await _until(lambda: demo.call(f"{first}/notes"), bool)))

        command(f"call --start {second}/slow --args '{_json({'seconds': 2})}' --wait 10",
                "long-running: a handle at once, progress, the device reports the end")
        t0 = time.perf_counter()
        op = await demo.start(f"{second}/slow", {"seconds": 2})
        print(f"operation {op.id} {op.state}")
        while not op.done:
            await op.refresh(wait=10)
            if op.progress is not None and not op.done:
                print(f"  progress {op.progress * 100:.0f}%")
        print(f"{value_text(await op.result())}    [{op.state} after {time.perf_counter() - t0:.1f} s]")
        command("ops", "operations are kept by the gateway: any client may come back for them")
        print_ops(list(await demo.ops(page_size=5)))

        command(f"sub '{first}/tick' --count 3", "pub/sub: the retained value first, then live, in order")
        async with demo.subscribe(f"{first}/tick") as sub:
            for _ in range(3):
                msg = await sub.next(5)
                if msg is not None:
                    print_message(msg, False)
        command("sub '_members/**' --count " + str(fleet.count), "membership events are a topic too")
        async with demo.subscribe("_members/**") as sub:
            for _ in range(fleet.count):
                msg = await sub.next(3)
                if msg is not None:
                    print_message(msg, False)

        pattern = f"{first.rsplit('/', 1)[0]}/*/temperature" if "/" in first else "*/temperature"
        command(f"call --all '{pattern}' --timeout 2", "scatter/gather: every device at once, by a deadline")
        print_gather(await demo.gather(pattern, deadline=2))

        command(f"call --persist {third}/echo --args '{_json({'queued': True})}' --wait 10",
                "queued in the gateway until the device is online (a sleeping one: when it wakes)")
        queued = await demo.call(f"{third}/echo", {"queued": True}, persist=True, ttl=60)
        print(f"{value_text(await queued.result(timeout=10))}    [operation {queued.id}, {queued.state}]")
    except CallError as err:
        print(f"{err.code}: {err.message}    [exit code {err.exit_code}]")


async def _until(fetch: Any, ok: Any, tries: int = 20) -> Any:
    import asyncio

    value = None
    for _ in range(tries):
        value = await fetch()
        if ok(value):
            return value
        await asyncio.sleep(0.05)
    return value


def _rel(full_name: str, site: str) -> str:
    prefix = f"/{site}/"
    return full_name[len(prefix):] if full_name.startswith(prefix) else full_name


def _json(value: Any) -> str:
    return json.dumps(value)
