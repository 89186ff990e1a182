"""Vigil workstation agent: samples health, evaluates checks, runs remediations, ships reports."""

__version__ = "0.1.0"
