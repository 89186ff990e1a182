"""The collector's ``policy:`` config section (see ``config/collector.yaml``)."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from pathlib import Path

from vigil.collector.policy.rollout import (
    DEFAULT_ADVANCE_SHARE,
    OPTIONAL_OUTCOMES,
    GuardRules,
    check_rings,
)
from vigil.configio import Section

DEFAULT_RINGS = (0.05, 0.25, 1.0)
DEFAULT_SOAK_S = 600.0
DEFAULT_RUN_NOW_TTL_S = 86400.0
# Seconds between reloads of the rollouts, halts and run-now requests from the storage:
# how soon a change made by the CLI or another collector process reaches the acks (a
# change through this process's API reaches them at once).
DEFAULT_REFRESH_S = 1.0
_KEY_PREFIX = "ed25519:"


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """``trusted_keys``: public keys (``ed25519:<base64>``) an uploaded bundle must be
    signed by, also offered to agents at enrollment; ``rings``/``soak_s``: a publish's
    defaults; ``advance_share``: the share of a ring's hosts seen during its soak that
    must run the new version before it soaks towards an automatic advance; ``guard``:
    the blast-radius guard; ``run_now_ttl_s``: how long a run-now request is offered to
    hosts that have not run it yet."""

    trusted_keys: tuple[str, ...] = ()
    rings: tuple[float, ...] = DEFAULT_RINGS
    soak_s: float = DEFAULT_SOAK_S
    advance_share: float = DEFAULT_ADVANCE_SHARE
    guard: GuardRules = field(default_factory=GuardRules)
    run_now_ttl_s: float = DEFAULT_RUN_NOW_TTL_S
    refresh_s: float = DEFAULT_REFRESH_S


def parse_policy(section: Section) -> PolicyConfig:
    """Read the ``policy`` section; raises ``ConfigError`` naming file, key and value."""
    keys = []
    for i, raw in enumerate(section.str_list("trusted_keys", ())):
        keys.append(_public_key(section, f"trusted_keys[{i}]", raw))
    rings_raw = section.get("rings", list, list(DEFAULT_RINGS))
    try:
        rings = check_rings(rings_raw)
    except ValueError as exc:
        raise section.error("rings", str(exc), rings_raw) from None
    guard = section.section("guard")
    include = guard.str_list("include", ())
    for i, outcome in enumerate(include):
        if outcome not in OPTIONAL_OUTCOMES:
            raise guard.error(
                f"include[{i}]", f"must be one of {sorted(OPTIONAL_OUTCOMES)}", outcome
            )
    rules = GuardRules(
        failure_rate=guard.get("failure_rate", float, 0.5, minimum=0.0, maximum=1.0),
        min_runs=guard.get("min_runs", int, 3, minimum=1, maximum=1_000_000),
        include=frozenset(include),
    )
    guard.done()
    config = PolicyConfig(
        trusted_keys=tuple(keys),
        rings=rings,
        soak_s=section.duration("soak", DEFAULT_SOAK_S),
        advance_share=section.get(
            "advance_share", float, DEFAULT_ADVANCE_SHARE, minimum=0.0, maximum=1.0
        ),
        guard=rules,
        run_now_ttl_s=section.duration("run_now_ttl", DEFAULT_RUN_NOW_TTL_S, minimum=60.0),
        refresh_s=section.duration("refresh", DEFAULT_REFRESH_S, minimum=0.1),
    )
    section.done()
    return config


def _public_key(section: Section, key: str, raw: str) -> str:
    """``raw`` is the key text itself or a file holding it (relative to the config)."""
    text = raw.strip()
    if not text.startswith(_KEY_PREFIX):
        path = Path(text)
        if not path.is_absolute():
            path = section.base_dir / path
        try:
            text = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise section.error(
                key, f"is neither an ed25519: key nor a readable file ({exc.strerror})", raw
            ) from None
    try:
        decoded = base64.b64decode(text[len(_KEY_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if not text.startswith(_KEY_PREFIX) or len(decoded) != 32:
        raise section.error(key, "must be ed25519:<base64 of 32 bytes>", raw)
    return text
