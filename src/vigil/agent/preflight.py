"""The one validation every ``vigil-agent`` command runs before doing anything.

``run`` and ``check`` (and anything else that reads the agent config) go through
:func:`preflight`, so a config that ``check`` accepts is a config ``run`` accepts, and
the other way round (issue #14: ``check`` used to accept a check naming a remediation
that does not exist). It loads the config, checks that the state folder can exist,
loads the remediation library with every manifest isolated, and checks the config
against the library:

- a check's ``remediation.id``, ``remediation.enable`` and ``remediation.params`` must
  name a remediation that exists (:func:`~vigil.agent.remediation.manifest.check_library`);
- an enabled remediation triggered by checks needs at least one of those checks
  configured, or it could never run;
- every parameter a manifest marks ``required: true`` needs a value wherever the
  remediation can run from.

A *broken* bundle (its manifest exists but does not load) is not fatal: it is logged,
left out (checks naming it run without a remediation), and reported to the collector as
the :data:`REMEDIATIONS_CHECK` check result, so one bad manifest never stops the agent.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from vigil.agent.config import AgentConfig, load_agent_config
from vigil.agent.remediation.manifest import (
    Remediation,
    broken_bundle,
    check_library,
    load_library,
)
from vigil.configio import ConfigError

log = logging.getLogger("vigil.agent")

REMEDIATIONS_CHECK = "agent.remediations"
"""The agent-health check result naming the remediation bundles that failed to load
(``critical``), or saying all loaded (``ok``)."""


@dataclass(frozen=True, slots=True)
class Preflight:
    """A validated start: the ``config`` to run (references to broken bundles removed),
    the loaded ``library`` by id, and ``broken``: bundle name -> why it did not load."""

    config: AgentConfig
    library: dict[str, Remediation]
    broken: dict[str, str]


def preflight(path: Path, *, create_state: bool = False) -> Preflight:
    """Load the agent config at ``path`` and check it as every command must.

    ``create_state`` creates the state folder (``run``); otherwise it is only checked to
    be creatable (``check`` changes nothing on disk). Raises :class:`ConfigError` (exit 2)
    naming the file, key and value.
    """
    config = load_agent_config(path)
    check_state_dir(config, create=create_state)
    config, library, broken = load_checked_library(config)
    return Preflight(config, library, broken)


def load_checked_library(
    config: AgentConfig,
) -> tuple[AgentConfig, dict[str, Remediation], dict[str, str]]:
    """Load ``remediation.folders`` and check ``config`` against it (see the module doc).

    Returns the config with every reference to a broken bundle removed, the library, and
    the broken bundles with their reasons (each also logged as an error).
    """
    library, errors = load_library(config.remediation.folders)
    broken: dict[str, str] = {}
    for err in errors:
        log.error("remediation not loaded: %s", err)
        if (bundle := broken_bundle(err)) is not None and bundle not in library:
            broken.setdefault(bundle, err.message)
    config = without_broken(config, broken)
    check_library(config, library)
    check_enabled(config, library)
    return config, library, broken


def without_broken(config: AgentConfig, broken: Mapping[str, str]) -> AgentConfig:
    """``config`` minus its references to ``broken`` bundles: checks naming one run with
    no remediation, and it leaves ``remediation.enable``, ``.params`` and ``.schedule``."""
    if not broken:
        return config
    checks = []
    for spec in config.checks:
        if spec.remediation is not None and spec.remediation.id in broken:
            log.warning(
                "check %s runs without its remediation %s (not loaded)",
                spec.id,
                spec.remediation.id,
            )
            spec = dataclasses.replace(spec, remediation=None)
        checks.append(spec)
    rs = config.remediation
    settings = dataclasses.replace(
        rs,
        enable=tuple(i for i in rs.enable if i not in broken),
        params={k: v for k, v in rs.params.items() if k not in broken},
        schedule={k: v for k, v in rs.schedule.items() if k not in broken},
        timed={k: v for k, v in rs.timed.items() if k not in broken},
    )
    return dataclasses.replace(config, checks=tuple(checks), remediation=settings)


def check_enabled(config: AgentConfig, library: Mapping[str, Remediation]) -> None:
    """Raise :class:`ConfigError` when a remediation could never run as configured: an
    enabled one whose trigger checks are none of the configured checks, or one (enabled,
    or named by a check) missing a value for a parameter its manifest requires."""
    check_ids = {spec.id for spec in config.checks}
    host_params = config.remediation.params
    for i, rem_id in enumerate(config.remediation.enable):
        rem = library[rem_id]
        key = f"remediation.enable[{i}]"
        wanted = [t.check for t in rem.trigger_checks]
        if wanted and not check_ids.intersection(wanted):
            raise ConfigError(
                config.file,
                key,
                rem_id,
                f"its trigger check {' or '.join(wanted)} is not configured in checks, "
                "so it could never run",
            )
        if missing := _missing(rem, host_params.get(rem_id, {})):
            raise ConfigError(
                config.file,
                f"remediation.params.{rem_id}",
                dict(host_params.get(rem_id, {})),
                f"enabled remediation {rem_id} requires {', '.join(missing)}",
            )
    for i, spec in enumerate(config.checks):
        if spec.remediation is None:
            continue
        rem = library[spec.remediation.id]
        values = {**host_params.get(rem.id, {}), **spec.remediation.params}
        if missing := _missing(rem, values):
            raise ConfigError(
                config.file,
                f"checks[{i}].remediation.params",
                dict(spec.remediation.params),
                f"remediation {rem.id} requires {', '.join(missing)} "
                f"(here or in remediation.params.{rem.id})",
            )


def _missing(rem: Remediation, values: Mapping[str, str]) -> list[str]:
    return [name for name in rem.required_params if not values.get(name)]


def check_state_dir(config: AgentConfig, *, create: bool) -> None:
    """Raise :class:`ConfigError` when the state folder (or the outbox's folder) cannot
    exist: a regular file in the way, or no permission. ``create`` makes them, and checks
    that this user may write in them."""
    folders = [("agent.state_dir", config.state_dir), ("outbox.path", config.outbox.path.parent)]
    for key, folder in folders:
        if create:
            try:
                folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(config.file, key, str(folder), _why(folder, exc)) from None
            if not os.access(folder, os.W_OK | os.X_OK):
                raise ConfigError(config.file, key, str(folder), "not writable by this user")
            continue
        blocker = _first_non_folder(folder)
        if blocker is not None:
            raise ConfigError(
                config.file, key, str(folder), f"{blocker} is not a folder, so it cannot exist"
            )


def _first_non_folder(folder: Path) -> Path | None:
    """The nearest existing ancestor of ``folder`` (itself included) when it is not a
    folder; ``None`` when ``folder`` exists as one or could be created below one."""
    for candidate in (folder, *folder.parents):
        if os.path.lexists(candidate):
            return None if candidate.is_dir() else candidate
    return None


def _why(folder: Path, exc: OSError) -> str:
    blocker = _first_non_folder(folder)
    if blocker is not None:
        return f"cannot create it: {blocker} is not a folder"
    return f"cannot create it: {exc.strerror or exc}"
