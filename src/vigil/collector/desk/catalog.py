"""The service catalog: which service a check belongs to, and how urgent a failure is.

Loaded from ``config/catalog.yaml`` (see that file for an annotated example) into frozen
dataclasses, validated like every config: an unknown key, a bad priority or a matrix with
a missing cell is a :class:`agent.configio.ConfigError` naming the file, key and value.

Priority is ITIL-style **impact x urgency**:

- *impact* is the business criticality of the service the check belongs to
  (``high``/``medium``/``low``); a check no service claims gets ``defaults.impact``.
- *urgency* comes from the host's group (servers and kiosks ``high``, laptops ``medium``);
  a host in no group gets ``defaults.urgency``. A fleet-wide problem (the same check
  failing on many hosts) is always ``high`` urgency: many users are affected at once.
- the ``matrix`` maps the pair to ``P1`` (most urgent) .. ``P4``; every priority has an
  SLA target (seconds to restore), overridable per service.

Everything here is pure: no clock, no I/O after :func:`load_catalog` returns.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path

from vigil.configio import ConfigError, Section, load_yaml

LEVELS: tuple[str, ...] = ("high", "medium", "low")
PRIORITIES: tuple[str, ...] = ("P1", "P2", "P3", "P4")

# The documented defaults (docs/incidents.md): a business-critical outage is P1, a minor
# issue on one laptop (low impact, medium urgency) is P4.
DEFAULT_MATRIX: dict[tuple[str, str], str] = {
    ("high", "high"): "P1",
    ("high", "medium"): "P2",
    ("high", "low"): "P3",
    ("medium", "high"): "P2",
    ("medium", "medium"): "P3",
    ("medium", "low"): "P4",
    ("low", "high"): "P3",
    ("low", "medium"): "P4",
    ("low", "low"): "P4",
}
DEFAULT_SLA_S: dict[str, float] = {
    "P1": 4 * 3600.0,
    "P2": 8 * 3600.0,
    "P3": 3 * 86400.0,
    "P4": 10 * 86400.0,
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True, slots=True)
class Service:
    """A business service: the checks that belong to it (ids or shell-style globs)."""

    name: str
    description: str
    owner: str
    criticality: str
    checks: tuple[str, ...]
    sla_s: dict[str, float] = field(default_factory=dict)

    def owns(self, check: str) -> bool:
        return any(p == check or fnmatch.fnmatchcase(check, p) for p in self.checks)


@dataclass(frozen=True, slots=True)
class HostGroup:
    """Hosts whose agent labels include every ``match`` pair.

    ``urgency`` is the urgency of a failure on such a host; ``silence_expected`` says a
    silent agent is normal there (laptops sleep) and must not raise an incident.
    """

    name: str
    match: dict[str, str]
    urgency: str
    silence_expected: bool

    def contains(self, labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match.items())


@dataclass(frozen=True, slots=True)
class Classification:
    """What the catalog says about one failure: service (or None), impact, urgency,
    priority and SLA target in seconds."""

    service: str | None
    impact: str
    urgency: str
    priority: str
    sla_s: float


@dataclass(frozen=True, slots=True)
class Catalog:
    """The loaded catalog. :data:`EMPTY_CATALOG` (no file) ranks everything ``P3``."""

    services: tuple[Service, ...] = ()
    groups: tuple[HostGroup, ...] = ()
    matrix: dict[tuple[str, str], str] = field(default_factory=lambda: dict(DEFAULT_MATRIX))
    sla_s: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SLA_S))
    default_impact: str = "medium"
    default_urgency: str = "medium"

    def service_for(self, check: str) -> Service | None:
        """The first service (in file order) that claims ``check``."""
        return next((s for s in self.services if s.owns(check)), None)

    def groups_for(self, labels: dict[str, str]) -> tuple[HostGroup, ...]:
        """Every group whose ``match`` the labels satisfy, in file order."""
        return tuple(g for g in self.groups if g.contains(labels))

    def group_names(self, labels: dict[str, str]) -> tuple[str, ...]:
        return tuple(g.name for g in self.groups_for(labels))

    def silence_expected(self, labels: dict[str, str]) -> bool:
        """Whether a silent agent with these labels is normal (first matching group
        decides; no group: silence is raised)."""
        groups = self.groups_for(labels)
        return groups[0].silence_expected if groups else False

    def classify(
        self, check: str, labels: dict[str, str], *, fleet: bool = False
    ) -> Classification:
        """Impact, urgency, priority and SLA for ``check`` failing on a host with ``labels``.

        ``fleet``: the failure is fleet-wide (many hosts), which makes it ``high`` urgency.
        """
        service = self.service_for(check)
        impact = service.criticality if service else self.default_impact
        groups = self.groups_for(labels)
        urgency = "high" if fleet else (groups[0].urgency if groups else self.default_urgency)
        priority = self.matrix[(impact, urgency)]
        sla = (service.sla_s.get(priority) if service else None) or self.sla_s[priority]
        return Classification(
            service=service.name if service else None,
            impact=impact,
            urgency=urgency,
            priority=priority,
            sla_s=sla,
        )


EMPTY_CATALOG = Catalog()


def load_catalog(path: str | Path) -> Catalog:
    """Load and validate a catalog file; raises :class:`ConfigError` naming key and value."""
    root = Section(load_yaml(path), str(path))
    root.check_keys("defaults", "priorities", "groups", "services")

    d = root.section("defaults")
    d.check_keys("impact", "urgency")
    default_impact = d.get("impact", str, "low", choices=LEVELS)
    default_urgency = d.get("urgency", str, "medium", choices=LEVELS)
    d.done()

    p = root.section("priorities")
    p.check_keys("matrix", "sla")
    matrix = dict(DEFAULT_MATRIX)
    if p.has("matrix"):
        m = p.section("matrix")
        m.check_keys(*LEVELS)
        for impact in LEVELS:
            row = m.section(impact, required=True)
            row.check_keys(*LEVELS)
            for urgency in LEVELS:
                matrix[(impact, urgency)] = row.get(urgency, str, choices=PRIORITIES)
            row.done()
        m.done()
    sla = dict(DEFAULT_SLA_S)
    sla.update(_sla(p, "sla"))
    p.done()

    groups: list[HostGroup] = []
    for g in root.sections("groups"):
        g.check_keys("name", "match", "urgency", "silence_expected")
        name = _name(g, "name")
        if any(x.name == name for x in groups):
            raise g.error("name", "duplicate group name", name)
        match = g.str_map("match")
        if not match:
            raise g.error("match", "must name at least one label", match)
        groups.append(
            HostGroup(
                name=name,
                match=match,
                urgency=g.get("urgency", str, "medium", choices=LEVELS),
                silence_expected=g.get("silence_expected", bool, False),
            )
        )
        g.done()

    services: list[Service] = []
    for s in root.sections("services"):
        s.check_keys("name", "description", "owner", "criticality", "checks", "sla")
        name = _name(s, "name")
        if any(x.name == name for x in services):
            raise s.error("name", "duplicate service name", name)
        checks = s.str_list("checks")
        if not checks or any(not c.strip() for c in checks):
            raise s.error("checks", "must list at least one non-empty check id or glob", checks)
        services.append(
            Service(
                name=name,
                description=s.get("description", str, ""),
                owner=s.get("owner", str),
                criticality=s.get("criticality", str, choices=LEVELS),
                checks=checks,
                sla_s=_sla(s, "sla"),
            )
        )
        s.done()
    root.done()
    return Catalog(
        services=tuple(services),
        groups=tuple(groups),
        matrix=matrix,
        sla_s=sla,
        default_impact=default_impact,
        default_urgency=default_urgency,
    )


def _name(section: Section, key: str) -> str:
    value = section.get(key, str)
    if not _NAME.match(value):
        raise section.error(key, "must be 1-64 letters, digits, '.', '_' or '-'", value)
    return value


def _sla(section: Section, key: str) -> dict[str, float]:
    """``{P1: 4h, ...}``: durations per priority (any subset)."""
    if not section.has(key):
        section.get(key, dict, {})
        return {}
    s = section.section(key)
    s.check_keys(*PRIORITIES)
    out: dict[str, float] = {}
    for priority in PRIORITIES:
        if s.has(priority):
            seconds = s.duration(priority)
            if seconds <= 0:
                raise s.error(priority, "must be more than 0", s.data[priority])
            out[priority] = seconds
    s.done()
    return out


__all__ = [
    "EMPTY_CATALOG",
    "Catalog",
    "Classification",
    "ConfigError",
    "HostGroup",
    "Service",
    "load_catalog",
]
