"""The agent config's ``policy:`` section: which keys the agent trusts for bundles.

``trusted_keys`` lists public keys in text form (``ed25519:<base64>``) or files holding
such keys, one per line (``#`` comments allowed); relative paths resolve against the
config file's folder. Keys the collector offered at enrollment (``policy_keys`` in the
enrollment answer, stored in ``<state_dir>/policy_keys.json``) are trusted too. Without
any trusted key the agent applies no bundle (and says so once).

``require_signed_local: true`` refuses unsigned local remediation folders
(``remediation.folders`` must then be empty): every script the agent runs comes from a
signed bundle, fetched from the collector or given on disk as ``local_bundle`` (an
air-gapped site's ``.vpol`` file, verified like a fetched one).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from vigil.configio import Section
from vigil.policy_bundle import check_public_key

log = logging.getLogger("vigil.agent")

ENROLLED_KEYS_FILE = "policy_keys.json"


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """``trusted_keys``: public key texts from the config (files already read);
    ``require_signed_local``: see the module doc; ``local_bundle``: a signed ``.vpol``
    file to run when the collector assigns no policy (``None``: none)."""

    trusted_keys: tuple[str, ...] = ()
    require_signed_local: bool = False
    local_bundle: Path | None = None


def policy_settings(s: Section) -> PolicySettings:
    """Parse the ``policy`` section; a bad key names the file, key and value."""
    keys: list[str] = []
    for i, item in enumerate(s.str_list("trusted_keys", ())):
        key = f"trusted_keys[{i}]"
        if item.startswith("ed25519:"):
            try:
                keys.append(check_public_key(item))
            except ValueError as exc:
                raise s.error(key, str(exc), item) from None
            continue
        path = (s.base_dir / Path(item).expanduser()).resolve()
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise s.error(
                key, f"neither an ed25519: key nor a readable file ({exc.strerror})", item
            ) from None
        found = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
        if not found:
            raise s.error(key, f"no key in {path}", item)
        for line in found:
            try:
                keys.append(check_public_key(line))
            except ValueError as exc:
                raise s.error(key, f"{path}: {exc}", item) from None
    settings = PolicySettings(
        trusted_keys=tuple(dict.fromkeys(keys)),
        require_signed_local=s.get("require_signed_local", bool, False),
        local_bundle=s.path_value("local_bundle", None),
    )
    s.done()
    return settings


def enrolled_keys(state_dir: Path) -> tuple[str, ...]:
    """The keys the collector offered at enrollment (stored by ``vigil-agent enroll``);
    an unreadable or malformed file is logged and gives none."""
    path = Path(state_dir) / ENROLLED_KEYS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return ()
    except (OSError, ValueError) as exc:
        log.error("cannot read the enrolled policy keys %s: %s", path, exc)
        return ()
    keys: list[str] = []
    for text in data.get("policy_keys", []) if isinstance(data, dict) else []:
        try:
            keys.append(check_public_key(text))
        except (ValueError, AttributeError):
            log.error("enrolled policy key %r in %s is malformed; ignored", text, path)
    return tuple(keys)


def trusted_keys(settings: PolicySettings, state_dir: Path) -> tuple[str, ...]:
    """Every key the agent trusts: the config's, then the enrolled ones (no duplicates)."""
    return tuple(dict.fromkeys((*settings.trusted_keys, *enrolled_keys(state_dir))))
