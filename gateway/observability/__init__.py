"""What the gateway tells about itself and its devices: metrics, device logs, traces.

    obs = Observability(store, device_side, patterns, site="edge", options=ObservabilityOptions())
    await obs.start()     # device logs into the report intake, the health poller, OpenTelemetry if configured
    ...                   # the verbs record calls (obs.calls) and traces (obs.tracer); /metrics reads obs.view
    await obs.stop()

- `stats`: the call counters and latency histograms the hot path feeds (plain dicts; no dependency).
- `trace`: W3C trace context (`traceparent`) and the per-call trace: timeline and OpenTelemetry spans.
- `metrics`: the Prometheus view over every part's counters, `GET /metrics`, the metrics-only listener.
- `devlogs`: device log reports in, stored per device, followed by `ndn-edge logs` and the HTTP API.
- `health`: each device's `_health`, polled, for the metrics.
- `hub`: `Observability`, which builds and wires the above.
"""
