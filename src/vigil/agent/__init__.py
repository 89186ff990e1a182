"""Vigil workstation agent: samples health, evaluates checks, runs remediations, ships reports."""
