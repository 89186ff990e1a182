"""Vigil collector: ingests agent reports, runs incidents, serves the API and /metrics."""
