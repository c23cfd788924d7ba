"""Full collections of the cyclic garbage collector at quiet moments, not in the middle of traffic.

CPython's collector walks its oldest generation now and then by itself; in the gateway that walk covers everything
serving made (queues, caches, recent replies) and takes milliseconds (14 ms in `python -m bench pubsub`), a pause
that every request and delivery waiting then pays: it was the largest single delay in that bench's p99. After
start-up (`QuietCollector.start`, once the daemon has frozen what start-up made) the automatic full collections are
off, and a task makes one instead when the process has been quiet (no young collection, that is next to no
allocation) for `QUIET_S`, or after `LONGEST_S` whatever the traffic, so that garbage in cycles stays bounded.
Young and middle generations are collected as before: they are short.
"""
from __future__ import annotations

import asyncio
import gc
import time

CHECK_S = 0.25      # how often the task looks
QUIET_S = 0.5       # no young collection for this long: quiet
LONGEST_S = 120.0   # a full collection at least this often, quiet or not
_NEVER = 1 << 30    # the oldest generation's threshold: never by itself


class QuietCollector:
    """Owns the collector's full collections while started; `stop` gives them back to CPython."""

    def __init__(self, *, check_s: float = CHECK_S, quiet_s: float = QUIET_S, longest_s: float = LONGEST_S) -> None:
        self.check_s = check_s
        self.quiet_s = quiet_s
        self.longest_s = longest_s
        self.collections = 0  # full collections made here
        self._threshold: tuple[int, int, int] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is not None:
            return
        self._threshold = gc.get_threshold()
        gc.set_threshold(self._threshold[0], self._threshold[1], _NEVER)
        self._task = asyncio.create_task(self._run(), name="quiet-gc")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._threshold is not None:
            gc.set_threshold(*self._threshold)
            self._threshold = None

    async def _run(self) -> None:
        young = gc.get_stats()[0]["collections"]
        changed = last_full = time.monotonic()
        busy_since_full = False
        while True:
            await asyncio.sleep(self.check_s)
            now = time.monotonic()
            seen = gc.get_stats()[0]["collections"]
            if seen != young:
                young, changed, busy_since_full = seen, now, True
            quiet = busy_since_full and now - changed >= self.quiet_s
            if quiet or now - last_full >= self.longest_s:
                gc.collect()
                self.collections += 1
                last_full = time.monotonic()
                busy_since_full = False
                young = gc.get_stats()[0]["collections"]
