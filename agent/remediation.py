"""Remediation manifests: what a fix is, where its scripts are, and how it may run.

A remediation is a folder ``<library>/<id>/`` holding ``remediation.yaml`` and its scripts
(see ``remediations/README.md`` for the format). Loading is strict like the rest of the
config: unknown keys are errors, every error names the manifest file and the key, and a
script must resolve (symlinks included) to a regular file inside its own folder, so a
manifest cannot point the agent at ``/usr/bin/something`` or ``../../elsewhere``.

Parameters declared by a manifest reach the script as environment variables
``VIGIL_PARAM_<NAME>`` (see :meth:`Remediation.script_env`); nothing is ever interpolated
into a command line.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.configio import ConfigError, Section, load_yaml
from agent.wire import MAX_OUTPUT

MANIFEST = "remediation.yaml"
PLATFORMS: tuple[str, ...] = ("linux", "darwin", "windows")
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_OUTPUT_CAP = 16 * 1024
DEFAULT_COOLDOWN_S = 300.0
MIN_OUTPUT_CAP = 256  # room for a head, a tail and the truncation marker
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
_PARAM = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def current_platform() -> str:
    """``"linux"``, ``"darwin"`` or ``"windows"``; other systems get ``sys.platform`` as is
    (which no manifest can list, so nothing runs there)."""
    if sys.platform.startswith("linux"):
        return "linux"
    if sys.platform == "win32":
        return "windows"
    return sys.platform


@dataclass(frozen=True, slots=True)
class Remediation:
    """One validated remediation manifest.

    ``folder`` is the remediation's real (symlink-free) folder; ``scripts`` maps a
    platform to the real path of its script inside that folder. ``timeout_s`` and
    ``cooldown_s`` are seconds, ``output_cap_bytes`` bounds the kept output excerpt.
    ``params`` maps each declared parameter name to its description.
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

    def script_for(self, platform: str = current_platform()) -> Path | None:
        """The script to run on ``platform``, or ``None`` if this remediation has none."""
        return self.scripts.get(platform)

    def script_env(self, values: Mapping[str, str], *, dry_run: bool = False) -> dict[str, str]:
        """The environment a run adds: ``VIGIL_PARAM_<NAME>`` per value, plus
        ``VIGIL_REMEDIATION`` and ``VIGIL_DRY_RUN`` (``"1"`` or ``"0"``).

        Raises ``ValueError`` naming a parameter the manifest does not declare. Declared
        parameters without a value are left out; the script decides whether it needs them.
        """
        env = {"VIGIL_REMEDIATION": self.id, "VIGIL_DRY_RUN": "1" if dry_run else "0"}
        for name, value in values.items():
            if name not in self.params:
                declared = ", ".join(sorted(self.params)) or "none"
                raise ValueError(
                    f"remediation {self.id} has no parameter {name!r} (declared: {declared})"
                )
            env[f"VIGIL_PARAM_{name.upper()}"] = value
        return env


def load_manifest(folder: Path) -> Remediation:
    """Load ``folder/remediation.yaml``; raises :class:`ConfigError` naming the file and key."""
    real_folder = Path(folder).resolve()
    file = str(Path(folder) / MANIFEST)
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

    scripts_section = root.section("scripts", required=True)
    scripts = {p: _script(scripts_section, p, real_folder) for p in platforms}
    scripts_section.done()  # a script for an unlisted platform is an unknown key

    params = root.str_map("params", {})
    for name in params:
        if not _PARAM.match(name):
            raise root.error(f"params.{name}", "name must be 1-32 of a-z, 0-9, '_'", name)

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
    )
    root.done()
    return remediation


def load_library(folders: Iterable[Path]) -> tuple[dict[str, Remediation], list[ConfigError]]:
    """Every remediation under ``folders``, by id, and the errors of those that failed.

    Each subfolder holding a ``remediation.yaml`` is one remediation; other subfolders are
    ignored. A bad manifest lands in the error list and never stops the others. An id seen
    again (in a later folder) is an error; the first one wins. A library folder that cannot
    be listed is an error too.
    """
    found: dict[str, Remediation] = {}
    errors: list[ConfigError] = []
    for library in folders:
        try:
            children = sorted(p for p in Path(library).iterdir() if (p / MANIFEST).is_file())
        except OSError as exc:
            # An empty Section builds an error about the folder itself, with no value shown.
            errors.append(Section({}, str(library)).error("", f"cannot list: {exc.strerror}"))
            continue
        for child in children:
            try:
                rem = load_manifest(child)
            except ConfigError as exc:
                errors.append(exc)
                continue
            if rem.id in found:
                first = found[rem.id].folder / MANIFEST
                errors.append(
                    ConfigError(str(child / MANIFEST), "id", rem.id, f"duplicate id (see {first})")
                )
                continue
            found[rem.id] = rem
    return found, errors


def _script(section: Section, platform: str, folder: Path) -> Path:
    raw = section.get(platform, str)
    real = (folder / raw).resolve()
    if not real.is_relative_to(folder):
        raise section.error(platform, f"script must stay inside the folder {folder}", raw)
    if not real.exists():
        raise section.error(platform, "script not found", raw)
    if not real.is_file():
        raise section.error(platform, "script must be a regular file", raw)
    return real


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
