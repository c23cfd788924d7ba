"""The device-facing side of the gateway: the multicast face, the directory (discovery and presence), the invoker
(cache, coalescing, circuit breaker, retries) and the intake of device reports, composed by `side.DeviceSide`."""
