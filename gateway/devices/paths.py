"""How the gateway reaches each device: the multicast group, or unicast to the address the device's verified
announcements come from (docs/protocol.md "Transport", "Unicast fallback").

Owns, per device: the address learned, the path mode an operator configured (`auto`, `multicast` or `unicast`,
kept in the store's meta table as `path:<device>`; `ndn-edge devices --path DEVICE=MODE`), and in `auto` the path
found to work. Every packet the gateway sends to one device (calls, notifications, report acknowledgements) goes
through `send`.

Decisions:
- `auto` starts on multicast and switches a device to unicast when a request sent to the group went unanswered
  and the retransmission that added a unicast copy was answered: its multicast does not get through (Wi-Fi
  networks with client isolation, IGMP snooping gone wrong, mesh systems). One such rescue is enough: unicast to a
  device's own address is at least as reliable as the group. A device that joins again (it rebooted, or its lease
  lapsed) starts on multicast again.
- In `auto`, whichever the path, every retransmission goes both ways (when the address is known): a lost
  datagram and a broken path look the same to the sender. A configured mode is kept to.
- An address that several devices announce from (simulated devices sharing one host and port) or that is the
  gateway's own is never used: a datagram sent there could reach the wrong socket.
- The configured mode is read from the store at most once a second per device, as device records are
  (`invoker.RECORD_REFRESH_S`): a change applies within a second, and a send costs no SQLite read.
Rejected: telling the paths apart by the face a reply arrives on (a device configured with the gateway's address
sends every reply both ways, so the arrival says nothing about which request copy got through).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ndn_edge.devices.face import Address, MulticastFace, UnicastFace
from ndn_edge.errors import InvalidArgument
from ndn_edge.logs import event

log = logging.getLogger("ndn_edge.paths")

AUTO, MULTICAST, UNICAST = "auto", "multicast", "unicast"
MODES = (AUTO, MULTICAST, UNICAST)
META_PREFIX = "path:"
MODE_REFRESH_S = 1.0


def set_mode(store: Any, device: str, mode: str) -> None:
    """Configure how the gateway reaches `device` (full name): auto (default), multicast or unicast."""
    if mode not in MODES:
        raise InvalidArgument(f"path mode must be one of {', '.join(MODES)}, got {mode!r}")
    store.set_meta(META_PREFIX + device, mode)


class Paths:
    """The path to each device, and the sends along it."""

    def __init__(self, store: Any, mcast: MulticastFace, ucast: UnicastFace | None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._mcast = mcast
        self._ucast = ucast
        self._clock = clock
        self._addr: dict[str, Address] = {}
        self._users: dict[Address, set[str]] = {}  # devices announcing from each address
        self._unicast: set[str] = set()  # in auto mode: devices found to need unicast
        self._modes: dict[str, tuple[float, str]] = {}  # device -> (read at, configured mode)
        self.counters: dict[str, int] = {"unicast_sends": 0, "switched_to_unicast": 0}

    # -- what the directory and the invoker tell

    def learn(self, device: str, addr: Address | None) -> None:
        """A verified announcement of `device` came from `addr`."""
        if addr is None or self._addr.get(device) == addr:
            return
        old = self._addr.get(device)
        if old is not None:
            self._users.get(old, set()).discard(device)
        self._addr[device] = addr
        self._users.setdefault(addr, set()).add(device)

    def joined(self, device: str) -> None:
        """The device announced itself again after a reboot or an absence: try the group first again."""
        self._unicast.discard(device)

    def answered(self, device: str, sends: int) -> None:
        """A verified reply came to a request after `sends` transmissions (the first went to the group alone
        unless the device was on unicast already)."""
        if sends > 1 and device not in self._unicast and self.mode(device) == AUTO and self._usable(device):
            self._unicast.add(device)
            self.counters["switched_to_unicast"] += 1
            event(log, "device_path", device=device, path=UNICAST, address=self.address(device),
                  reason="its multicast went unanswered, unicast answered")

    # -- sending

    def send(self, device: str, data: bytes, attempt: int = 0) -> None:
        """Send one packet to `device` by its path; in auto mode a retransmission (`attempt` > 0) goes both ways.
        A configured mode is kept to (unicast falls back to the group only while no address is known)."""
        mode = self.mode(device)
        usable = self._usable(device)
        unicast = usable and (mode == UNICAST or (mode == AUTO and device in self._unicast))
        both = mode == AUTO and attempt > 0 and usable
        if not unicast or both:
            self._mcast.send(data)
        if unicast or both:
            assert self._ucast is not None
            self._ucast.send_to(data, self._addr[device])
            self.counters["unicast_sends"] += 1

    # -- what is shown

    def path(self, device: str) -> str:
        """`unicast` or `multicast`: how a request to `device` goes out first."""
        mode = self.mode(device)
        if mode == MULTICAST or not self._usable(device):
            return MULTICAST
        return UNICAST if mode == UNICAST or device in self._unicast else MULTICAST

    def address(self, device: str) -> str | None:
        """The address its announcements come from, as "ip:port", or None before the first one."""
        addr = self._addr.get(device)
        return None if addr is None else f"{addr[0]}:{addr[1]}"

    def mode(self, device: str) -> str:
        """The configured mode (auto unless an operator set one)."""
        now = self._clock()
        cached = self._modes.get(device)
        if cached is not None and now - cached[0] < MODE_REFRESH_S:
            return cached[1]
        mode = self._store.get_meta(META_PREFIX + device, AUTO) or AUTO
        if mode not in MODES:
            mode = AUTO
        self._modes[device] = (now, mode)
        return mode

    def _usable(self, device: str) -> bool:
        addr = self._addr.get(device)
        if addr is None or self._ucast is None or not self._ucast.is_open:
            return False
        return len(self._users.get(addr, ())) == 1 and addr != self._ucast.address
