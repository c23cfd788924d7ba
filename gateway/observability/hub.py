"""`Observability`: the call statistics, the tracer, device logs and the health poller of one gateway, wired
into its device side and report intake; the Prometheus view once the gateway is built.

    obs = Observability(store, device_side, patterns, site="edge", options=ObservabilityOptions(otlp="..."))
    await obs.start()
    view = obs.view(gateway)        # ndn_edge.observability.metrics.MetricsView, for /metrics
    await obs.stop()
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ndn_edge.devices.descriptions import find_service
from ndn_edge.devices.invoker import FRAMEWORK_SERVICES
from ndn_edge.observability.stats import CallStats
from ndn_edge.observability.trace import Tracer, otel_provider, otlp_endpoint_from_env

DEFAULT_HEALTH_INTERVAL_S = 60.0


@dataclass(frozen=True)
class ObservabilityOptions:
    """How the gateway observes: `_health` polling (seconds; 0 off), and where spans go (OTLP over HTTP; None:
    the OTEL_EXPORTER_OTLP_* variables, else no spans)."""

    health_interval_s: float = DEFAULT_HEALTH_INTERVAL_S
    otlp: str | None = None
    span_exporter: Any = None  # an OpenTelemetry SpanExporter (tests: the SDK's in-memory exporter)


class Observability:
    """What the gateway records about calls and devices, beside the parts' own counters."""

    def __init__(self, store: Any, devices: Any, patterns: Any = None, *, site: str,
                 options: ObservabilityOptions | None = None) -> None:
        from ndn_edge.observability.health import HealthPoller

        self.options = options or ObservabilityOptions()
        self.site = site.strip("/")
        self.store = store
        self.devices = devices
        self.patterns = patterns
        self.calls = CallStats(known=self._known)
        endpoint = self.options.otlp or otlp_endpoint_from_env()
        provider = None
        if self.options.span_exporter is not None or endpoint:
            provider = otel_provider(endpoint, exporter=self.options.span_exporter)
        self.tracer = Tracer(provider)
        self.health = HealthPoller(devices, interval_s=self.options.health_interval_s)
        self.logs: Any = None
        if patterns is not None:
            from ndn_edge.observability.devlogs import DeviceLogs

            self.logs = DeviceLogs(store, site=self.site, intake=patterns.intake)

    async def start(self) -> None:
        """Device logs into the report intake; the health poller."""
        if self.logs is not None:
            from ndn_edge.devices.reports import LOG

            self.logs.start()
            self.patterns.intake.handlers[LOG] = self.logs.on_report
        await self.health.start()

    async def stop(self) -> None:
        await self.health.stop()
        if self.logs is not None:
            from ndn_edge.devices.reports import LOG

            self.patterns.intake.handlers.pop(LOG, None)
        self.tracer.shutdown()

    def view(self, gateway: Any) -> Any:
        """The Prometheus view of `gateway` (its parts, and this)."""
        from ndn_edge.observability.metrics import MetricsView

        return MetricsView(gateway)

    def counters(self) -> dict[str, Any]:
        """This part's counters, for the `metrics` verb."""
        out: dict[str, Any] = {"health_polls": self.health.counters["polls"],
                               "health_failures": self.health.counters["failures"]}
        if self.logs is not None:
            out.update({f"logs_{k}": v for k, v in self.logs.counters.items()})
        return out

    def _known(self, device: str, service: str) -> bool:
        """True if `device` is provisioned and offers `service` (a framework service, or one of its description)."""
        record = self.store.device(device)
        if record is None:
            return False
        return service in FRAMEWORK_SERVICES or find_service(record.desc, service) is not None
