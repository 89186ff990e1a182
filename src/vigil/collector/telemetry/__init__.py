"""Telemetry as plain data: the in-memory aggregates /metrics reads, apart from
Prometheus exposition (``collector/metrics.py``)."""
