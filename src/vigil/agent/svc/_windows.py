"""Windows services via psutil (``win_service_get``; the SCM answers in-process)."""

from __future__ import annotations

from collections.abc import Sequence

import psutil

from vigil.agent.svc._common import ServiceState


def service_states(names: Sequence[str], *, timeout_s: float) -> dict[str, ServiceState]:
    """``running`` is active; a missing service or a denied query is unknown."""
    out: dict[str, ServiceState] = {}
    for name in names:
        try:
            status = psutil.win_service_get(name).status()  # type: ignore[attr-defined]
        except psutil.NoSuchProcess:
            out[name] = ServiceState(None, f"no such service {name}")
        except (psutil.AccessDenied, OSError) as exc:
            out[name] = ServiceState(None, f"cannot query {name}: {exc}")
        else:
            out[name] = ServiceState(status == "running", status)
    return out
