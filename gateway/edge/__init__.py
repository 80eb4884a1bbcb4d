"""The edge of every request: access control, request ids and access logs,
parameter parsing, Prometheus telemetry, and the listener's limits (serving)."""
