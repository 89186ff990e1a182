"""Service state through one facade; the platform module is chosen once, at import.

:func:`service_states` answers "is this service running?" for named services: systemd
units on Linux (``systemctl show``), Windows services (``psutil.win_service_get``) and
launchd jobs on macOS (``launchctl list``). Each answer is a :class:`ServiceState`
whose ``active`` is ``None`` (unknown) with a reason when the service does not exist or
cannot be queried, never a silent "running".
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from vigil.agent.svc._common import ServiceState

if sys.platform.startswith("linux"):
    from vigil.agent.svc import _linux as _platform
elif sys.platform == "win32":
    from vigil.agent.svc import _windows as _platform  # type: ignore[no-redef]
elif sys.platform == "darwin":
    from vigil.agent.svc import _darwin as _platform  # type: ignore[no-redef]
else:
    _platform = None

__all__ = ["ServiceState", "service_states"]


def service_states(names: Sequence[str], *, timeout_s: float = 5.0) -> dict[str, ServiceState]:
    """The state of each named service, keyed by the name as given.

    Blocking (runs a bounded subprocess or OS call; at most ``timeout_s`` seconds in
    total on Linux and per service elsewhere): call it from a worker thread.
    """
    if not names:
        return {}
    if _platform is None:
        return {
            n: ServiceState(None, f"services are not supported on {sys.platform}") for n in names
        }
    return _platform.service_states(names, timeout_s=timeout_s)
