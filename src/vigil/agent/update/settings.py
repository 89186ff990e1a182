"""``update:`` in agent.yaml: whether the agent updates itself from the collector's
release channel, and how long a new release has to prove itself.

``enabled`` (default: on when a policy key is trusted, since a release is verified with
the same keys; off without one — there would be nothing to verify with);
``confirm_within`` (default ``10m``): a new release that has not delivered
two reports (``guard.CONFIRM_DELIVERIES``) by then is rolled back.
"""

from __future__ import annotations

from dataclasses import dataclass

from vigil.configio import Section

# A new release that has not confirmed itself this long after the switch is rolled back.
CONFIRM_WITHIN_S = 600.0


@dataclass(frozen=True, slots=True)
class UpdateSettings:
    """``enabled`` None: decided by whether a policy key is trusted (see the module
    doc); ``confirm_within_s`` in seconds."""

    enabled: bool | None = None
    confirm_within_s: float = CONFIRM_WITHIN_S

    def active(self, trusted: tuple[str, ...]) -> bool:
        """Whether self-update runs, given the trusted policy keys."""
        return bool(trusted) if self.enabled is None else self.enabled and bool(trusted)


def update_settings(s: Section) -> UpdateSettings:
    """Read the ``update:`` section (unknown keys refused, naming file and key)."""
    settings = UpdateSettings(
        enabled=s.get("enabled", bool, None),
        confirm_within_s=s.duration("confirm_within", CONFIRM_WITHIN_S, minimum=5.0),
    )
    s.done()
    return settings
