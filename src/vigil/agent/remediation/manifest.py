"""Remediation manifests: what a fix is, when it runs, and how often it may run.

A remediation is a folder ``<library>/<id>/`` holding ``remediation.yaml`` and its scripts
(see ``docs/remediations.md`` for the contract). Loading is strict like the rest of the
config: unknown keys are errors, every error names the manifest file and the key, and a
script must resolve (symlinks included) to a regular file inside its own folder, so a
manifest cannot point the agent at ``/usr/bin/something`` or ``../../elsewhere``.

A manifest says when it runs (``trigger``: check ids and states, or an Intune-style
detection script whose exit status 1 means "issue present"), how its result is verified
(``verify``: re-evaluate the trigger after a delay, or a verification script), and how
often it may run (``cooldown``, ``attempts``). Parameters reach the script as environment
variables ``VIGIL_PARAM_<NAME>`` (see :meth:`Remediation.script_env`); nothing is ever
interpolated into a command line.

:func:`load_library` loads every manifest of the library folders (a bad one never stops
the others) and :func:`check_library` checks the agent config against what loaded. How a
run is judged lives in :mod:`~vigil.agent.remediation.outcome`.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vigil.agent.config import AgentConfig
from vigil.agent.exec.logons import LOGGED_ON_USER
from vigil.agent.exec.vetting import confine, describe
from vigil.configio import ConfigError, Section, load_yaml
from vigil.wire import MAX_OUTPUT

MANIFEST = "remediation.yaml"
PLATFORMS: tuple[str, ...] = ("linux", "darwin", "windows")
DEFAULT_TIMEOUT_S = 60.0
MAX_TIMEOUT_S = 3600.0
DEFAULT_OUTPUT_CAP = 16 * 1024
DEFAULT_COOLDOWN_S = 300.0
DEFAULT_DETECT_EVERY_S = 3600.0  # Intune runs detection at most hourly by default
MIN_DETECT_EVERY_S = 1.0
DEFAULT_MAX_ATTEMPTS = 3  # Fleet's automatic-retry limit
DEFAULT_ATTEMPTS_WINDOW_S = 3600.0
MIN_OUTPUT_CAP = 256  # room for a head, a tail and the truncation marker
TRIGGER_STATES: tuple[str, ...] = ("warning", "critical")
AGENT_USER = "agent"  # run_as value meaning "the agent's own user" (the default)
# run_as: logged_on_user runs as whoever is at the console then (vigil.agent.exec.logons);
# the value is a keyword, so a real account of that name cannot be named.
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
_PARAM = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_CHECK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$")
_USER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,31}\$?$")

log = logging.getLogger("vigil.agent")


def current_platform() -> str:
    """``"linux"``, ``"darwin"`` or ``"windows"``; other systems get ``sys.platform`` as is
    (which no manifest can list, so nothing runs there)."""
    if sys.platform.startswith("linux"):
        return "linux"
    if sys.platform == "win32":
        return "windows"
    return sys.platform


@dataclass(frozen=True, slots=True)
class CheckTrigger:
    """Run when check ``check`` (an id in the agent config) enters one of ``states``."""

    check: str
    states: tuple[str, ...] = ("critical",)


@dataclass(frozen=True, slots=True)
class Remediation:
    """One validated remediation manifest.

    ``folder`` is the remediation's real (symlink-free) folder; ``scripts``, ``detection``
    and ``verify_scripts`` map a platform to the real path of a script inside that folder.
    Durations are seconds: ``timeout_s`` per script, ``cooldown_s`` from the end of one run
    to the start of the next, ``detect_every_s`` between detection runs,
    ``verify_delay_s`` before verifying (``None``: the agent's ``remediation.verify_delay``).
    At most ``max_attempts`` runs start within any ``attempts_window_s``. ``run_as`` is a
    user name, ``"logged_on_user"`` (whoever is at the console when it runs), or ``None``
    for the agent's own user. ``params`` maps each declared
    parameter to its description, ``param_defaults`` to its default value (if any);
    ``required_params`` are those the script cannot do without (``required: true``).
    """

    id: str
    title: str
    description: str
    folder: Path
    platforms: tuple[str, ...]
    scripts: dict[str, Path]
    timeout_s: float
    output_cap_bytes: int
    cooldown_s: float
    params: dict[str, str]
    trigger_checks: tuple[CheckTrigger, ...] = ()
    detection: dict[str, Path] = field(default_factory=dict)
    detect_every_s: float = DEFAULT_DETECT_EVERY_S
    # Width of the per-host offset of the first detection run (remediation.schedule's
    # splay; 0: at once when the job starts).
    detect_splay_s: float = 0.0
    verify_scripts: dict[str, Path] = field(default_factory=dict)
    verify_delay_s: float | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    attempts_window_s: float = DEFAULT_ATTEMPTS_WINDOW_S
    run_as: str | None = None
    dry_run: bool = False
    param_defaults: dict[str, str] = field(default_factory=dict)
    required_params: tuple[str, ...] = ()

    def script_for(self, platform: str = current_platform()) -> Path | None:
        """The script to run on ``platform``, or ``None`` if this remediation has none."""
        return self.scripts.get(platform)

    def detection_for(self, platform: str = current_platform()) -> Path | None:
        """The detection script for ``platform``, or ``None``."""
        return self.detection.get(platform)

    def verify_for(self, platform: str = current_platform()) -> Path | None:
        """The verification script for ``platform``, or ``None`` (re-evaluate the trigger)."""
        return self.verify_scripts.get(platform)

    def states_for(self, check: str) -> tuple[str, ...]:
        """The states of ``check`` that this manifest's trigger names (empty if none)."""
        for t in self.trigger_checks:
            if t.check == check:
                return t.states
        return ()

    def script_env(self, values: Mapping[str, str], *, dry_run: bool = False) -> dict[str, str]:
        """The environment a run adds: ``VIGIL_PARAM_<NAME>`` per value (declared defaults
        first, then ``values``), plus ``VIGIL_REMEDIATION`` and ``VIGIL_DRY_RUN``
        (``"1"`` or ``"0"``).

        Raises ``ValueError`` naming a parameter the manifest does not declare. Declared
        parameters without a value or default are left out; the script decides whether it
        needs them.
        """
        env = {"VIGIL_REMEDIATION": self.id, "VIGIL_DRY_RUN": "1" if dry_run else "0"}
        for name, value in self.param_defaults.items():
            env[f"VIGIL_PARAM_{name.upper()}"] = value
        for name, value in values.items():
            if name not in self.params:
                declared = ", ".join(sorted(self.params)) or "none"
                raise ValueError(
                    f"remediation {self.id} has no parameter {name!r} (declared: {declared})"
                )
            env[f"VIGIL_PARAM_{name.upper()}"] = value
        return env


# --------------------------------------------------------------------------- loading


def load_manifest(folder: Path, roots: Sequence[Path] | None = None) -> Remediation:
    """Load ``folder/remediation.yaml``; raises :class:`ConfigError` naming the file and key.

    The agent's allowed-roots rule (:func:`~vigil.agent.exec.vetting.confine`) applies to
    the bundle itself: ``folder``, symlinks resolved, must lie inside one of ``roots``
    (default: the library folder that names it, ``folder``'s parent as given), and its
    ``remediation.yaml`` inside ``folder``; so a bundle or manifest that is a symlink to
    elsewhere is refused rather than followed.
    """
    file = str(Path(folder) / MANIFEST)
    if roots is None:
        roots = [Path(folder).absolute().parent]
    real_folder, refusal = confine(Path(folder), roots, what="bundle")
    if real_folder is None:
        raise ConfigError(file, "", str(folder), str(refusal))
    if confine(Path(file), [real_folder], what="manifest")[0] is None:
        raise ConfigError(file, "", str(folder), f"must be a file inside {real_folder}")
    root = Section(load_yaml(file), file)

    rem_id = root.get("id", str)
    if not _ID.match(rem_id):
        raise root.error("id", "must be 1-64 of letters, digits, '_', '.', '-'", rem_id)
    if rem_id != real_folder.name:
        raise root.error("id", f"must equal the folder name {real_folder.name!r}", rem_id)

    platforms = root.str_list("platforms")
    if not platforms:
        raise root.error("platforms", f"list at least one of {list(PLATFORMS)}", [])
    for i, p in enumerate(platforms):
        if p not in PLATFORMS:
            raise root.error(f"platforms[{i}]", f"must be one of {list(PLATFORMS)}", p)
    if len(set(platforms)) != len(platforms):
        raise root.error("platforms", "lists a platform twice", list(platforms))

    scripts = _scripts(root.section("scripts", required=True), platforms, real_folder)

    trigger = root.section("trigger")
    checks = tuple(_check_trigger(trigger, i, t) for i, t in enumerate(_list(trigger, "checks")))
    detection = _scripts(trigger.section("detection"), platforms, real_folder, optional=True)
    if checks and detection:
        raise trigger.error("detection", "give either trigger.checks or trigger.detection")
    every = trigger.duration("every", DEFAULT_DETECT_EVERY_S, minimum=MIN_DETECT_EVERY_S)
    trigger.done()

    verify = root.section("verify")
    verify_delay = verify.duration("delay", None)
    verify_scripts = _scripts(verify.section("scripts"), platforms, real_folder, optional=True)
    verify.done()

    attempts = root.section("attempts")
    max_attempts = attempts.get("max", int, DEFAULT_MAX_ATTEMPTS, minimum=1, maximum=100)
    window = attempts.duration("window", DEFAULT_ATTEMPTS_WINDOW_S, minimum=1.0)
    attempts.done()

    run_as = root.get("run_as", str, AGENT_USER)
    if not _USER.match(run_as):
        raise root.error(
            "run_as", f"must be {AGENT_USER!r}, {LOGGED_ON_USER!r} or a user name", run_as
        )

    params, defaults, required = _params(root)

    remediation = Remediation(
        id=rem_id,
        title=_text(root, "title"),
        description=_text(root, "description"),
        folder=real_folder,
        platforms=platforms,
        scripts=scripts,
        timeout_s=root.duration("timeout", DEFAULT_TIMEOUT_S, minimum=0.1),
        output_cap_bytes=_output_cap(root),
        cooldown_s=root.duration("cooldown", DEFAULT_COOLDOWN_S),
        params=params,
        trigger_checks=checks,
        detection=detection,
        detect_every_s=every,
        verify_scripts=verify_scripts,
        verify_delay_s=verify_delay,
        max_attempts=max_attempts,
        attempts_window_s=window,
        run_as=None if run_as == AGENT_USER else run_as,
        dry_run=root.get("dry_run", bool, False),
        param_defaults=defaults,
        required_params=required,
    )
    if remediation.timeout_s > MAX_TIMEOUT_S:
        raise root.error("timeout", f"must be at most {MAX_TIMEOUT_S:g}s", root.data["timeout"])
    root.done()
    return remediation


def load_library(folders: Iterable[Path]) -> tuple[dict[str, Remediation], list[ConfigError]]:
    """Every remediation under ``folders``, by id, and the errors of those that failed.

    Each subfolder holding a ``remediation.yaml`` is one remediation; other subfolders are
    ignored. A bad manifest lands in the error list and never stops the others, whatever
    went wrong while loading it (an unexpected exception is logged with its traceback and
    reported like a bad value). A bundle must lie inside its library folder (symlinks
    resolved). An id seen again (in a later folder) is an error; the first one wins. A
    library folder that cannot be listed is an error too. :func:`broken_bundle` tells which
    bundle an error is about.
    """
    found: dict[str, Remediation] = {}
    errors: list[ConfigError] = []
    for library in folders:
        try:
            children = sorted(p for p in Path(library).iterdir() if _has_manifest(p))
        except OSError as exc:
            # An empty Section builds an error about the folder itself, with no value shown.
            errors.append(Section({}, str(library)).error("", f"cannot list: {exc.strerror}"))
            continue
        for child in children:
            try:
                rem = load_manifest(child, [library])
            except ConfigError as exc:
                errors.append(exc)
                continue
            except Exception as exc:  # isolate every manifest: one bug must not stop the rest
                log.exception("loading remediation %s failed", child)
                errors.append(ConfigError(str(child / MANIFEST), "", child.name, describe(exc)))
                continue
            if rem.id in found:
                first = found[rem.id].folder / MANIFEST
                errors.append(
                    ConfigError(str(child / MANIFEST), "id", rem.id, f"duplicate id (see {first})")
                )
                continue
            found[rem.id] = rem
    return found, errors


def _has_manifest(child: Path) -> bool:
    """Whether ``child`` looks like a bundle; a symlinked ``remediation.yaml`` counts, so
    that the loader refuses it by name rather than ignoring it."""
    manifest = child / MANIFEST
    return manifest.is_file() or manifest.is_symlink()


def broken_bundle(error: ConfigError) -> str | None:
    """The bundle (folder name, normally its id) a :func:`load_library` error is about, or
    ``None`` when it is about a whole library folder."""
    file = Path(error.file)
    return file.parent.name if file.name == MANIFEST else None


def check_library(config: AgentConfig, library: Mapping[str, Remediation]) -> None:
    """Raise :class:`ConfigError` when a check (or ``remediation.params``) names a
    remediation that is not loaded, or passes it a parameter its manifest does not declare."""
    for i, spec in enumerate(config.checks):
        if spec.remediation is None:
            continue
        rem = library.get(spec.remediation.id)
        if rem is None:
            folders = ", ".join(str(f) for f in config.remediation.folders) or "(none configured)"
            raise ConfigError(
                config.file,
                f"checks[{i}].remediation",
                spec.remediation.id,
                f"no such remediation in remediation.folders: {folders}",
            )
        try:
            rem.script_env(spec.remediation.params)
        except ValueError as exc:
            raise ConfigError(
                config.file, f"checks[{i}].remediation.params", spec.remediation.params, str(exc)
            ) from None
    for i, rem_id in enumerate(config.remediation.enable):
        if rem_id not in library:
            key = f"remediation.enable[{i}]"
            raise ConfigError(config.file, key, rem_id, "no such remediation loaded")
    for rem_id, values in config.remediation.params.items():
        key = f"remediation.params.{rem_id}"
        if rem_id not in library:
            raise ConfigError(config.file, key, rem_id, "no such remediation loaded")
        try:
            library[rem_id].script_env(values)
        except ValueError as exc:
            raise ConfigError(config.file, key, values, str(exc)) from None
    for rem_id, seconds in config.remediation.schedule.items():
        key = f"remediation.schedule.{rem_id}"
        if rem_id not in library:
            raise ConfigError(config.file, key, rem_id, "no such remediation loaded")
        if not library[rem_id].detection:
            raise ConfigError(
                config.file,
                key,
                seconds,
                "this remediation has no detection script to schedule (it is triggered by"
                " checks: set `interval` on the check instead)",
            )
    for rem_id in config.remediation.timed:
        if rem_id not in library:
            key = f"remediation.schedule.{rem_id}"
            raise ConfigError(config.file, key, rem_id, "no such remediation loaded")


def with_schedule(
    config: AgentConfig, library: Mapping[str, Remediation]
) -> dict[str, Remediation]:
    """``library`` with ``remediation.schedule`` applied: each listed remediation's
    ``detect_every_s`` replaced by the agent config's value (the manifest's
    ``trigger.every`` is the fleet default, a host may need it faster or slower), and
    its ``detect_splay_s`` set from the schedule's ``splay``.
    Call after :func:`check_library`, which rejects an id that is not loaded or has no
    detection script."""
    out = dict(library)
    for rem_id, seconds in config.remediation.schedule.items():
        if rem_id in out:
            splay = config.remediation.splay.get(rem_id, 0.0)
            out[rem_id] = replace(out[rem_id], detect_every_s=seconds, detect_splay_s=splay)
    return out


def _list(section: Section, name: str) -> list[Any]:
    return section.get(name, list, [])


def _check_trigger(trigger: Section, i: int, raw: Any) -> CheckTrigger:
    """``"disk.root"`` (critical) or ``{check: disk.root, states: [warning, critical]}``."""
    key = f"checks[{i}]"
    if isinstance(raw, str):
        raw = {"check": raw}
    if not isinstance(raw, dict):
        raise trigger.error(key, "expected a check id or a mapping", raw)
    s = Section(raw, trigger.file, trigger.key(key))
    check = s.get("check", str)
    if not _CHECK_ID.match(check):
        raise s.error("check", "must be 1-128 of letters, digits, '_', '.', ':', '-'", check)
    states = s.str_list("states", ("critical",))
    if not states:
        raise s.error("states", f"list at least one of {list(TRIGGER_STATES)}", [])
    for j, state in enumerate(states):
        if state not in TRIGGER_STATES:
            raise s.error(f"states[{j}]", f"must be one of {list(TRIGGER_STATES)}", state)
    s.done()
    return CheckTrigger(check=check, states=tuple(states))


def _scripts(
    section: Section, platforms: tuple[str, ...], folder: Path, *, optional: bool = False
) -> dict[str, Path]:
    """One script per listed platform (or none at all when ``optional``)."""
    if optional and not section.data:
        return {}
    scripts = {p: _script(section, p, folder) for p in platforms}
    section.done()  # a script for an unlisted platform is an unknown key
    return scripts


def _script(section: Section, platform: str, folder: Path) -> Path:
    raw = section.get(platform, str)
    if not (folder / raw).exists():
        raise section.error(platform, "script not found", raw)
    real, _ = confine(folder / raw, [folder], what="script")
    if real is None:
        raise section.error(platform, f"script must stay inside the folder {folder}", raw)
    if not real.is_file():
        raise section.error(platform, "script must be a regular file", raw)
    return real


def _params(root: Section) -> tuple[dict[str, str], dict[str, str], tuple[str, ...]]:
    """``name: description`` or ``name: {description: ..., default: ..., required: ...}``;
    returns descriptions, defaults and the required names."""
    raw = root.get("params", dict, {})
    params: dict[str, str] = {}
    defaults: dict[str, str] = {}
    required: list[str] = []
    for name, value in raw.items():
        if not isinstance(name, str) or not _PARAM.match(name):
            raise root.error(f"params.{name}", "name must be 1-32 of a-z, 0-9, '_'", name)
        if isinstance(value, str):
            params[name] = value
            continue
        if not isinstance(value, dict):
            raise root.error(f"params.{name}", "expected a description or a mapping", value)
        s = Section(value, root.file, root.key(f"params.{name}"))
        params[name] = s.get("description", str)
        if s.has("default"):
            default = s.get("default", (str, int, float))
            if isinstance(default, float) and default.is_integer():
                default = int(default)
            defaults[name] = str(default)
        if s.get("required", bool, False):
            if name in defaults:
                raise s.error("required", "a parameter with a default is never missing", True)
            required.append(name)
        s.done()
    return params, defaults, tuple(required)


def _text(section: Section, name: str) -> str:
    value = section.get(name, str).strip()
    if not value:
        raise section.error(name, "must not be empty", value)
    return value


def _output_cap(section: Section) -> int:
    cap = section.size("output_cap", DEFAULT_OUTPUT_CAP)
    if not MIN_OUTPUT_CAP <= cap <= MAX_OUTPUT:
        raise section.error(
            "output_cap",
            f"must be between {MIN_OUTPUT_CAP} bytes and {MAX_OUTPUT} bytes (the report limit)",
            section.data["output_cap"],
        )
    return cap
