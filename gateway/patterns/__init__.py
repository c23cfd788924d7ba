"""The communication patterns beyond request/response (docs/models.md): notifications, long-running operations
and queued calls, publish/subscribe, scatter/gather; `hub.Patterns` wires them to one device side."""
