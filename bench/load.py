"""Closed-loop load for the gateway benchmark: N callers in flight for a fixed time, latency of every call.

Each caller awaits one call, records its latency, and starts the next at once (a closed loop), so "64 in flight"
means 64 outstanding requests at every moment. A call that raises or returns a wrong value counts as an error,
not as a latency. Calls started before the end of the run are awaited; the rate is completed calls over the
time from the first start to the last completion.
"""
from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass
class Sample:
    """One timed run: completed calls, errors, elapsed seconds and every latency (seconds)."""

    inflight: int
    completed: int = 0
    errors: int = 0
    elapsed_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    first_error: str | None = None

    @property
    def rate(self) -> float:
        return self.completed / self.elapsed_s if self.elapsed_s > 0 else 0.0


def percentile(sorted_values: list[float], q: float) -> float | None:
    """The q-quantile (0..1) of an ascending list, nearest rank; None when empty."""
    if not sorted_values:
        return None
    rank = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


async def closed_loop(call: Callable[[int], Awaitable[bool]], inflight: int, seconds: float,
                      timeout_s: float) -> Sample:
    """Run `inflight` callers for `seconds`; `call(i)` (i unique per call) returns True when its answer is right.

    A call taking longer than `timeout_s` is an error; nothing runs past seconds + timeout_s.
    """
    sample = Sample(inflight)
    numbers = itertools.count()
    stop = time.perf_counter() + seconds

    async def caller() -> None:
        while time.perf_counter() < stop:
            i = next(numbers)
            t0 = time.perf_counter()
            try:
                ok = await _within(call(i), timeout_s)
                why = None if ok else f"call {i} returned a wrong value"
            except Exception as err:  # counted, and the first one reported: the run goes on
                ok, why = False, f"call {i}: {type(err).__name__}: {err}"
            if ok:
                sample.latencies_s.append(time.perf_counter() - t0)
                sample.completed += 1
            else:
                sample.errors += 1
                sample.first_error = sample.first_error or why[:300]

    began = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(inflight)))
    sample.elapsed_s = time.perf_counter() - began
    return sample


async def _within(aw: Awaitable[bool], timeout_s: float) -> bool:
    """`aw`'s result, TimeoutError after timeout_s; asyncio.timeout where it exists (no task per call)."""
    if hasattr(asyncio, "timeout"):  # Python 3.11+
        async with asyncio.timeout(timeout_s):
            return await aw
    return await asyncio.wait_for(aw, timeout_s)


def summarize(samples: list[Sample]) -> dict:
    """Median rate over the runs, p50/p99 over the latencies of all runs, in milliseconds."""
    rates = sorted(s.rate for s in samples)
    latencies = sorted(x for s in samples for x in s.latencies_s)
    p50, p99 = percentile(latencies, 0.50), percentile(latencies, 0.99)
    out = {"calls_per_s": round(rates[len(rates) // 2], 1),
           "p50_ms": round(p50 * 1000, 3) if p50 is not None else None,
           "p99_ms": round(p99 * 1000, 3) if p99 is not None else None,
           "calls_per_s_rounds": [round(s.rate, 1) for s in samples],
           "calls": sum(s.completed for s in samples), "errors": sum(s.errors for s in samples)}
    first = next((s.first_error for s in samples if s.first_error), None)
    if first:
        out["first_error"] = first
    return out
