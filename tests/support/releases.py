"""Agent releases for tests: a small but real wheel of a fake "vigil" agent, signed as a
release bundle with the real policy-bundle code.

The fake agent's ``python -m vigil.agent`` writes a line to ``$VIGIL_TEST_RELEASE_LOG``
(its version and argv) and exits with ``$VIGIL_TEST_RELEASE_EXIT`` (default 0): enough to
see which release the launcher ran and to make a release that crashes at start.
"""

from __future__ import annotations

import io
import time
import zipfile

from vigil import policy_bundle
from vigil.agent.update.release import RELEASE_POLICY
from vigil.policy_build import manifest_for

_MAIN = """\
import os, sys
import vigil
log = os.environ.get("VIGIL_TEST_RELEASE_LOG")
if log:
    with open(log, "a") as f:
        f.write(f"release {vigil.__version__} {' '.join(sys.argv[1:])}\\n")
sys.exit(int(os.environ.get("VIGIL_TEST_RELEASE_EXIT", "0")))
"""


def fake_wheel(
    version: str,
    *,
    requires: tuple[str, ...] = ("psutil>=5.9", 'aiohttp>=3.9; extra == "collector"'),
    extra: dict[str, bytes] | None = None,
    init_version: str | None = None,
    broken_import: bool = False,
) -> tuple[str, bytes]:
    """``(file name, wheel bytes)`` of a fake agent at ``version``."""
    members = {
        "vigil/__init__.py": f'__version__ = "{init_version or version}"\n'.encode(),
        "vigil/agent/__init__.py": b"",
        "vigil/agent/__main__.py": _MAIN.encode(),
        "vigil/agent/cli.py": b"raise ImportError('broken release')\n"
        if broken_import
        else b"def main():\n    return 0\n",
        "vigil/agent/service.py": b"",
        f"vigil-{version}.dist-info/METADATA": (
            "Metadata-Version: 2.1\nName: vigil\n"
            f"Version: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
        ).encode(),
        **(extra or {}),
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return f"vigil-{version}-py3-none-any.whl", buf.getvalue()


def release_document(
    wheel: tuple[str, bytes],
    serial: int,
    private_pem: bytes,
    *,
    expires_in_s: float = 86400.0,
    min_agent_version: str = "0.1.0",
) -> bytes:
    """The signed release bundle document carrying ``wheel``."""
    now = time.time()
    files = {wheel[0]: wheel[1]}
    manifest = manifest_for(
        files,
        policy=RELEASE_POLICY,
        version=serial,
        created_at=now,
        expires_at=now + expires_in_s,
        min_agent_version=min_agent_version,
        target={},
        config={"checks": [], "remediation": {"enabled": {}, "schedule": {}}},
    )
    return policy_bundle.pack(manifest, [policy_bundle.sign(manifest, private_pem)], files)
