"""A policy bundle's config fragment merged over the local agent config.

Precedence (``docs/policy.md``): the policy wins where both say something.

- ``checks``: a policy check replaces the local check with the same id (in its place);
  the policy's other checks follow the local ones.
- ``remediation.enabled`` (id -> params): each id is added to ``remediation.enable``;
  its params override the local ``remediation.params.<id>`` key by key.
- ``remediation.schedule``: per id, the policy's schedule replaces the local one (an
  interval, daily or once, see :mod:`~vigil.agent.remediation.schedule`).
- The bundle's ``remediations/`` folder comes first in ``remediation.folders``, so a
  remediation shipped in the policy wins over a local folder's copy of the same id.

Everything else (collector, intervals, sampler, ...) stays local. The merged config then
goes through the same checks as at start-up
(:func:`~vigil.agent.preflight.load_checked_library`), so a policy the agent could not
have started with is refused the same way (a :class:`~vigil.configio.ConfigError`
naming the policy's file and key).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from vigil.agent.config import (
    AgentConfig,
    CheckSpec,
    parse_check,
    watched_process_names,
)
from vigil.agent.policy.cache import CachedBundle
from vigil.agent.preflight import load_checked_library
from vigil.agent.remediation.manifest import Remediation
from vigil.agent.remediation.schedule import parse_schedules
from vigil.configio import ConfigError, Section
from vigil.policy_bundle import POLICY_FILE, REMEDIATIONS_DIR


def merged_config(local: AgentConfig, cached: CachedBundle) -> AgentConfig:
    """``local`` with ``cached``'s fragment applied (see the module doc); raises
    :class:`ConfigError` naming ``<bundle folder>/policy.yaml`` and the key."""
    fragment = cached.bundle.config
    file = str(cached.folder / POLICY_FILE)  # relative params resolve in the bundle
    root = Section(dict(fragment), file)
    policy_checks = [parse_check(s) for s in root.sections("checks")]
    seen: set[str] = set()
    for i, spec in enumerate(policy_checks):
        if spec.id in seen:
            raise ConfigError(file, f"checks[{i}].id", spec.id, "duplicate check id")
        seen.add(spec.id)
    rem = root.section("remediation")
    enabled_section = rem.section("enabled")
    enabled: dict[str, dict[str, str]] = {}
    for rem_id in enabled_section.data:
        enabled[str(rem_id)] = enabled_section.str_map(str(rem_id), {})
    enabled_section.done()
    schedule, timed, splay = parse_schedules(rem.section("schedule"))
    rem.done()
    root.done()

    by_id = {spec.id: spec for spec in policy_checks}
    checks: list[CheckSpec] = [by_id.pop(spec.id, spec) for spec in local.checks]
    checks.extend(spec for spec in policy_checks if spec.id in by_id)
    rs = local.remediation
    params = {k: dict(v) for k, v in rs.params.items()}
    for rem_id, values in enabled.items():
        params[rem_id] = {**params.get(rem_id, {}), **values}
    folders: tuple[Path, ...] = (cached.folder / REMEDIATIONS_DIR, *rs.folders)
    settings = dataclasses.replace(
        rs,
        folders=folders,
        enable=tuple(dict.fromkeys((*rs.enable, *enabled))),
        params=params,
        # A policy's schedule for an id replaces the local one, whatever its form.
        schedule={**{k: v for k, v in rs.schedule.items() if k not in timed}, **schedule},
        timed={**{k: v for k, v in rs.timed.items() if k not in schedule}, **timed},
        splay={
            **{k: v for k, v in rs.splay.items() if k not in schedule and k not in timed},
            **splay,
        },
    )
    sampler = dataclasses.replace(local.sampler, watched_names=watched_process_names(checks))
    return dataclasses.replace(local, checks=tuple(checks), remediation=settings, sampler=sampler)


def compose(
    local: AgentConfig, cached: CachedBundle | None
) -> tuple[AgentConfig, dict[str, Remediation], dict[str, str]]:
    """The config, library and broken bundles to run: ``local`` alone when ``cached`` is
    ``None``, else merged with it; checked as at start-up (raises :class:`ConfigError`)."""
    config = local if cached is None else merged_config(local, cached)
    return load_checked_library(config)
