"""Services source: whether each configured service (systemd unit, Windows service,
launchd job) is running, through :func:`vigil.agent.svc.service_states`; when the service
manager cannot tell and the service has a fallback (pidfile, process name, ``service
<name> status``), through :mod:`~vigil.agent.sampling.service_fallback`."""

from __future__ import annotations

from collections.abc import Callable

from vigil.agent import svc
from vigil.agent.sampler_config import ServiceFallback
from vigil.agent.sampling.series import Item
from vigil.agent.sampling.service_fallback import fallback_state


class Services:
    """``service.active[<name>]``: 1 running, 0 not; none, with the reason, when the
    state cannot be told (no such unit, no service manager)."""

    def __init__(
        self,
        names: tuple[str, ...],
        *,
        states: Callable[..., dict[str, svc.ServiceState]],
        reasons: dict[str, str],
        fallbacks: tuple[ServiceFallback, ...] = (),
        fallback: Callable[[ServiceFallback], svc.ServiceState] = fallback_state,
    ) -> None:
        self._names = names
        self._states = states
        self._reasons = reasons
        self._fallbacks = {f.name: f for f in fallbacks}
        self._fallback = fallback

    def read(self) -> list[Item]:
        """One reading of every configured service."""
        items: list[Item] = []
        for name, state in self._states(self._names).items():
            key = f"service.active[{name}]"
            if state.active is None and name in self._fallbacks:
                # No systemd (or no such unit): ask the way the admin configured.
                state = self._fallback(self._fallbacks[name])
            if state.active is None:
                self._reasons[key] = state.detail
            else:
                self._reasons.pop(key, None)
                items.append((key, 1.0 if state.active else 0.0))
        return items
