"""ndn_edge.quiet_gc: the cyclic collector's full collections happen when the process is quiet (or at the latest
every `longest_s`), never by themselves in the middle of traffic, and CPython gets them back at `stop`."""
from __future__ import annotations

import asyncio
import gc
import time

from ndn_edge.quiet_gc import QuietCollector
from tests.support import run_scenario as run
from tests.support import until


def _churn(n: int = 5000) -> None:
    """Allocations enough for a young collection or two (each a small cycle)."""
    for _ in range(n):
        a: list = []
        a.append(a)


def test_a_full_collection_waits_for_a_quiet_moment_and_the_thresholds_come_back():
    before = gc.get_threshold()

    async def scenario() -> tuple[int, int, tuple[int, int, int]]:
        collector = QuietCollector(check_s=0.02, quiet_s=1.0, longest_s=60)
        collector.start()
        try:
            during = gc.get_threshold()
            busy_until = time.monotonic() + 0.6
            while time.monotonic() < busy_until:  # busy: young collections all along, so no full one
                _churn()
                await asyncio.sleep(0)
            while_busy = collector.collections
            await until(lambda: collector.collections > while_busy, 10, "a full collection once quiet")
            return while_busy, collector.collections, during
        finally:
            await collector.stop()

    while_busy, after, during = run(scenario)
    assert during[:2] == before[:2] and during[2] > 10 ** 6  # the oldest generation: not by itself
    assert while_busy == 0 and after == 1
    assert gc.get_threshold() == before


def test_a_process_never_quiet_still_gets_a_full_collection_every_longest_s():
    async def scenario() -> int:
        collector = QuietCollector(check_s=0.02, quiet_s=10, longest_s=0.3)
        collector.start()
        try:
            deadline = time.monotonic() + 5
            while collector.collections < 2 and time.monotonic() < deadline:
                _churn()
                await asyncio.sleep(0)
            return collector.collections
        finally:
            await collector.stop()

    assert run(scenario) >= 2
