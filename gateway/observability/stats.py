"""Counters and histograms the call path feeds: plain dictionaries, read by the Prometheus view at a scrape.

    rtt = Histograms(RTT_BUCKETS_S)
    rtt.observe("/edge/sim/1", 0.004)             # a dict lookup, a bisect, two additions
    calls = CallStats(known=lambda device, service: True)
    calls.record("/edge/sim/1", "temperature", "OK", 0.0002)

Decisions:
- The hot path only counts: no `prometheus_client` object is touched per call (its labelled children take a
  lock and a few microseconds each); `ndn_edge.observability.metrics` turns these into metric families when
  Prometheus scrapes. One source of truth: the counters here and the parts' `metrics()` dicts.
- Label sets are bounded: a (device, service) pair is admitted once `known(device, service)` says the device
  is provisioned and offers the service, and at most `max_series` pairs are kept; anything else is counted
  under `OTHER`. A client with a rule like `**` calling made-up names cannot grow the table.
Rejected: one `prometheus_client.Counter` per metric with labels on the call path (measured: about 2 us per
`labels().inc()`, a tenth of a cached call).
"""
from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Hashable, Iterator

OK = "OK"
OTHER = "_other"  # the device and service label of calls to names that are not provisioned
MAX_SERIES = 10_000
# Seconds. A cached call is answered in tens of microseconds, a device on a LAN in milliseconds, a retried one
# in hundreds of milliseconds.
CALL_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
RTT_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_UNKNOWN_TTL_S = 1.0


class Histograms:
    """Histograms by label: per label the count in each bucket (not cumulative), the sum and the count."""

    __slots__ = ("bounds", "max_series", "series")

    def __init__(self, bounds: tuple[float, ...], max_series: int = MAX_SERIES) -> None:
        self.bounds = bounds
        self.max_series = max_series
        self.series: dict[Hashable, list[float]] = {}  # label -> [bucket counts..., +Inf count, sum]

    def observe(self, label: Hashable, value: float) -> None:
        """Count `value` under `label` (a label beyond `max_series` is dropped)."""
        h = self.series.get(label)
        if h is None:
            if len(self.series) >= self.max_series:
                return
            h = self.series[label] = [0.0] * (len(self.bounds) + 2)
        h[bisect.bisect_left(self.bounds, value)] += 1
        h[-1] += value

    def cumulative(self) -> Iterator[tuple[Hashable, list[tuple[str, float]], float]]:
        """(label, [(upper bound, cumulative count)...] ending with "+Inf", sum) of every series."""
        for label, h in list(self.series.items()):
            total = 0.0
            buckets = []
            for bound, count in zip((*self.bounds, float("inf")), h[:-1]):
                total += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), total))
            yield label, buckets, h[-1]


class CallStats:
    """Calls by (device, service, result code), and their durations by (device, service)."""

    def __init__(self, known: Callable[[str, str], bool] | None = None, *, max_series: int = MAX_SERIES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._known = known
        self.max_series = max_series
        self.counts: dict[tuple[str, str, str], int] = {}
        self.durations = Histograms(CALL_BUCKETS_S, max_series)
        self._pairs: set[tuple[str, str]] = set()
        self._unknown: dict[tuple[str, str], float] = {}  # pairs found unknown lately (checked again after a while)
        self._clock = clock

    def record(self, device: str, service: str, code: str, seconds: float) -> None:
        """Count one call that ended with `code` ("OK" or a wire code) after `seconds`."""
        key = (device, service, code)
        n = self.counts.get(key)
        if n is None:
            key = self._admit(device, service, code)
            n = self.counts.get(key, 0)
        self.counts[key] = n + 1
        self.durations.observe(key[:2], seconds)

    def _admit(self, device: str, service: str, code: str) -> tuple[str, str, str]:
        pair = (device, service)
        if pair in self._pairs:
            return device, service, code
        now = self._clock()
        seen = self._unknown.get(pair)
        if seen is None or now - seen > _UNKNOWN_TTL_S:
            if len(self._pairs) < self.max_series and self._known is not None and self._known(device, service):
                self._unknown.pop(pair, None)
                self._pairs.add(pair)
                return device, service, code
            if len(self._unknown) >= self.max_series:
                self._unknown.clear()
            self._unknown[pair] = now
        return OTHER, OTHER, code
