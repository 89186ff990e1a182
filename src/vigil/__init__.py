"""Vigil: proactive endpoint monitoring.

``vigil.agent`` runs on workstations, ``vigil.collector`` centrally; neither imports the
other. Both build on ``vigil.wire`` (the versioned protocol) and ``vigil.configio`` (the
shared config reader), which import nothing else of Vigil.
"""

__version__ = "0.1.0"
