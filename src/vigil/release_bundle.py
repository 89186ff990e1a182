"""What an agent release bundle is, shared by the agent (which installs it) and the
collector (which refuses an upload that is not one) — neither imports the other.

A release is a signed policy bundle (:mod:`vigil.policy_bundle`: same format, keys,
expiry and downgrade rule) under the reserved name :data:`RELEASE_POLICY` whose serial is
the bundle version and whose only file is ``vigil-<version>-py3-none-any.whl``.
:func:`release_wheel` checks that shape and that the wheel really holds a Vigil agent at
the version its name says; it reads the wheel's zip directory and two small members only,
never extracts anything.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Mapping

# The bundle name an agent release is published under (reserved: no policy may use it).
RELEASE_POLICY = "vigil-agent"
# The agent's check for self-update: critical for a refused release or a rollback.
UPDATE_CHECK = "agent.update"
WHEEL_NAME = re.compile(r"^vigil-([0-9]+(?:\.[0-9]+)*)-py3-none-any\.whl$")
VERSION_LINE = re.compile(r'^__version__\s*=\s*"([0-9]+(?:\.[0-9]+)*)"\s*$', re.M)
# vigil/__init__.py is a few lines; read at most this much of it.
_INIT_MAX = 64 * 1024


class NotARelease(ValueError):
    """The bundle is not an agent release; the message says why (file names, versions)."""


def release_wheel(files: Mapping[str, bytes]) -> tuple[str, str]:
    """``(wheel file name, agent version)`` of a release bundle's files.

    Raises :class:`NotARelease` unless there is exactly one file, named like a Vigil
    wheel, that is a zip holding ``vigil/agent/cli.py`` and a ``vigil/__init__.py`` whose
    ``__version__`` equals the version in the file name.
    """
    names = sorted(files)
    if len(names) != 1 or not (match := WHEEL_NAME.match(names[0])):
        raise NotARelease(
            "an agent release holds exactly one vigil-<version>-py3-none-any.whl, "
            f"this one has {names[:5]}"
        )
    name, version = names[0], match.group(1)
    try:
        with zipfile.ZipFile(io.BytesIO(files[name])) as wheel:
            members = set(wheel.namelist())
            if "vigil/agent/cli.py" not in members or "vigil/__init__.py" not in members:
                raise NotARelease(f"{name} is not a vigil wheel (no vigil/agent/cli.py)")
            with wheel.open("vigil/__init__.py") as init:
                text = init.read(_INIT_MAX).decode("utf-8", errors="replace")
    except (zipfile.BadZipFile, OSError, RuntimeError) as exc:
        raise NotARelease(f"{name} is not a readable wheel: {exc}") from None
    found = VERSION_LINE.search(text)
    if not found or found.group(1) != version:
        raise NotARelease(
            f"{name}: vigil/__init__.py says {found and found.group(1)!r}, not {version!r}"
        )
    return name, version
