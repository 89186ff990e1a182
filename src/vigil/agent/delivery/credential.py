"""The agent's per-agent credential: stored in its state folder, used as the bearer token,
rotated before it expires.

``<state_dir>/credential.json`` holds ``{"agent_id", "token", "issued_at",
"expires_at"}``, mode 0600, written atomically by ``vigil-agent enroll`` and by rotation.
It is bound to the agent id it was issued for: a file whose ``agent_id`` is not this
agent's (a new id after ``enroll --new-id``, a state folder copied around) is ignored with
a warning. Without a usable file the agent falls back to the shared ``collector.token``
of its config (the pre-enrollment scheme, see ``docs/security.md``).

The file is re-read when it changes on disk (one ``stat`` per request), so enrolling a
running agent needs no restart.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vigil.agent.identity import write_atomically

log = logging.getLogger("vigil.agent.credential")

CREDENTIAL_FILE = "credential.json"
# The request header asking the collector for a rotated credential (the collector's
# ``identity.service.ROTATE_HEADER``; the agent never imports the collector).
ROTATE_HEADER = "Vigil-Credential-Rotate"
# Ask for a new credential once this fraction of the current one's lifetime has passed
# (the collector grants rotation in the second half of a lifetime only).
ROTATE_AT_FRACTION = 0.75


@dataclass(frozen=True, slots=True)
class Credential:
    """One issued credential; times are epoch seconds (collector clock)."""

    agent_id: str
    token: str
    issued_at: float
    expires_at: float


def read_credential(path: Path) -> Credential | None:
    """The credential stored at ``path``; None when missing or unusable (logged)."""
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
        credential = Credential(
            agent_id=str(data["agent_id"]),
            token=str(data["token"]),
            issued_at=float(data["issued_at"]),
            expires_at=float(data["expires_at"]),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.error("credential file %s is unreadable (%s); not using it", path, exc)
        return None
    if not credential.token or any(ch.isspace() for ch in credential.token):
        log.error("credential file %s holds an empty or malformed token", path)
        return None
    return credential


def write_credential(path: Path, credential: Credential) -> None:
    """Store ``credential`` at ``path`` atomically (temp file, fsync, rename), mode 0600
    (see :func:`~vigil.agent.identity.write_atomically`)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # json.dumps escapes non-ASCII: the text is ASCII, as write_atomically needs.
    write_atomically(path, json.dumps(asdict(credential)))


class CredentialSource:
    """The bearer token for the shipper: this agent's credential if it is enrolled, else
    ``fallback_token`` (the shared token; may be empty). ``clock`` gives epoch seconds."""

    def __init__(
        self,
        state_dir: Path,
        agent_id: str,
        fallback_token: str,
        *,
        clock: Callable[[], float],
    ) -> None:
        self.path = Path(state_dir) / CREDENTIAL_FILE
        self._agent_id = agent_id
        self._fallback = fallback_token
        self._clock = clock
        self._stamp: tuple[int, int] | None = None
        self._credential: Credential | None = None

    @property
    def credential(self) -> Credential | None:
        """The stored credential for this agent, re-read if the file changed."""
        try:
            st = os.stat(self.path)
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_ino)
        except OSError:
            stamp = None
        if stamp != self._stamp:
            self._stamp = stamp
            credential = read_credential(self.path) if stamp is not None else None
            if credential is not None and credential.agent_id != self._agent_id:
                log.warning(
                    "credential file %s was issued to agent %s, not to this agent (%s): "
                    "ignored; run vigil-agent enroll",
                    self.path,
                    credential.agent_id,
                    self._agent_id,
                )
                credential = None
            self._credential = credential
        return self._credential

    def token(self) -> str:
        """The bearer token to send now."""
        credential = self.credential
        return credential.token if credential is not None else self._fallback

    def wants_rotation(self) -> bool:
        """Whether to ask the collector for a new credential on the next report."""
        credential = self.credential
        if credential is None:
            return False
        lifetime = credential.expires_at - credential.issued_at
        return self._clock() >= credential.issued_at + lifetime * ROTATE_AT_FRACTION

    def accept(self, token: str, expires_at: float) -> None:
        """Store a rotated credential the collector sent; it is used from the next
        request on (the collector keeps the old one valid until then)."""
        if not token or any(ch.isspace() for ch in token):
            log.error("collector sent a malformed rotated credential; keeping the current one")
            return
        write_credential(
            self.path, Credential(self._agent_id, token, self._clock(), float(expires_at))
        )
        log.info("credential rotated; the new one expires at %.0f", expires_at)

    def take_from_ack(self, ack: str) -> None:
        """Store the rotated credential a report's ack carries, if any. A missing or
        unusable one is logged and asked for again on the next report (the collector
        keeps the current credential valid until a new one is used)."""
        try:
            issued = json.loads(ack).get("credential")
            if issued is not None:
                self.accept(str(issued["token"]), float(issued["expires_at"]))
        except (ValueError, TypeError, KeyError, AttributeError, OSError) as exc:
            log.error("cannot store the rotated credential: %s; asking again later", exc)
