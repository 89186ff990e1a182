"""Vigil collector: ingests agent reports, runs incidents, serves the API and /metrics."""

from agent import __version__

__all__ = ["__version__"]
