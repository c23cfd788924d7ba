"""Notifications: a device service invoked once, with no reply (docs/protocol.md "Notifications").

    await notify(device_side, "/edge/sim/1", "note", {"text": "hi"})    # {"device": ..., "sent": True}

Decisions:
- At most once: one signed Interest `<device>/_n/<service>/<digest>`, sent once on the multicast face. The device
  runs the handler once (a copy is a replay) and never answers, errors included, so a lost datagram is a lost
  notification and nobody learns of it. That is the contract; a caller that needs to know uses `call`.
- Signed with the invoker's sequence counter for the device (one counter per key: two counters would interleave
  numbers and the device would reject the lower ones as replays), at or above the device's announced floor.
- Checked before sending, so mistakes are not silent: the device must be known and online (UNAVAILABLE says why
  not: nothing is queued), and offer the service when its description is known (NOT_FOUND). Private services'
  arguments are encrypted as for calls.
"""
from __future__ import annotations

from typing import Any

from ndn_edge.devices.invoker import canonical_args
from ndn_edge.errors import Internal, NotFound, StoreError, Unavailable
from ndn_edge.patterns.gather import why_down
from ndn_edge.wire import packets as wire

LIFETIME_MS = 1000


async def notify(devices: Any, device: str, service: str, args: dict[str, Any] | None) -> dict[str, Any]:
    """Send one notification; answers as soon as it is sent."""
    canonical_args(args)  # InvalidArgument for arguments that are not a text-keyed map
    name = devices.directory.resolve(device)
    record = devices.store.device(name)
    if record is None:
        raise NotFound(f"no device {name}; `ndn-edge devices` lists the known ones")
    if not devices.is_online(name):
        raise Unavailable(why_down(devices.directory, name) + "; a notification is not queued")
    services = record.desc.get("services") if isinstance(record.desc, dict) else None
    svc = None
    if isinstance(services, list):
        svc = next((s for s in services if isinstance(s, dict) and s.get("name") == service), None)
        if svc is None:
            raise NotFound(f"device {name} has no service {service!r}")
    floor = max(record.rx_floor, devices.directory.rx_floor(name))
    try:
        seq = devices.invoker.next_seq(record, floor)
    except StoreError as err:
        raise Internal(f"cannot lease sequence numbers for {record.key_name}: {err}") from err
    packet, _ = wire.make_call(f"{name}/_n/{service}", args, record.key, seq, signer_owner=name,
                               private=bool(svc and svc.get("private")), lifetime_ms=LIFETIME_MS)
    devices.invoker.check_fits(name, packet, f"{name}/{service}")
    devices.send_to(name, packet)  # by the device's path (multicast or unicast)
    return {"device": name, "service": service, "sent": True}
