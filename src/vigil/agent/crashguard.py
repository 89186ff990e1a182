"""Crash-loop back-off on the agent's side: a crashing agent waits longer at each start.

A service manager restarts a crashed agent (systemd ``Restart=on-failure``, launchd
``KeepAlive``, Windows recovery actions), but a fault that survives restarts (a corrupt
state file, a full disk, a bad library) would make it start, crash and start again,
eating CPU on someone's laptop. So the agent keeps its own record: every start appends
its wall time to ``<state_dir>/crash-starts.json``, and a clean stop empties the file,
as does a run that lasted ``stable`` (a crash loop crashes soon after start).
A start that finds ``after`` or more earlier starts within ``window`` that never
stopped cleanly sleeps :func:`backoff_delay` seconds (exponential from ``base``, capped
at ``cap``) before doing any work. A process killed by a signal or the watchdog never
reaches the clean stop, so it counts as a crash too.

The decision (:func:`backoff_delay`, :func:`recent`) is pure; :class:`CrashRecord` does
the file I/O. The file holds at most :data:`MAX_KEPT` times (older ones are dropped).
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vigil.configio import Section

log = logging.getLogger("vigil.agent")

CRASH_FILE = "crash-starts.json"
MAX_KEPT = 64
# A start recorded further than this in the future (a wall clock set back) is ignored.
_FUTURE_SLACK_S = 60.0


@dataclass(frozen=True, slots=True)
class CrashBackoffConfig:
    """``agent.crash_backoff``: after ``after`` unclean starts within ``window_s`` seconds,
    wait ``base_s * 2**(n - after)`` seconds (at most ``cap_s``) before starting work,
    ``n`` being the number of such starts. ``after: 0`` turns the back-off off. A run
    that lasts ``stable_s`` seconds clears the record as a clean stop does."""

    after: int = 3
    window_s: float = 3600.0
    base_s: float = 10.0
    cap_s: float = 300.0
    stable_s: float = 600.0


def crash_backoff_config(agent: Section) -> CrashBackoffConfig:
    """The optional ``agent.crash_backoff`` section; the window must exceed the cap (else
    a loop at the cap would age out of the window and the delay would start over)."""
    s = agent.section("crash_backoff")
    cfg = CrashBackoffConfig(
        after=s.get("after", int, 3, minimum=0, maximum=1000),
        window_s=s.duration("window", 3600.0, minimum=1.0),
        base_s=s.duration("base", 10.0, minimum=0.01),
        cap_s=s.duration("cap", 300.0, minimum=0.01),
        stable_s=s.duration("stable", 600.0, minimum=0.1),
    )
    if cfg.cap_s < cfg.base_s:
        raise s.error("cap", "must be at least base", s.data.get("cap", cfg.cap_s))
    if cfg.window_s <= cfg.cap_s:
        raise s.error("window", "must be longer than cap", s.data.get("window", cfg.window_s))
    s.done()
    return cfg


def recent(starts: list[float], now: float, window_s: float) -> list[float]:
    """The start times (wall seconds) within ``window_s`` before ``now``, oldest first;
    times more than a minute in the future (a clock set back since) are dropped."""
    return sorted(t for t in starts if now - window_s <= t <= now + _FUTURE_SLACK_S)


def backoff_delay(unclean_starts: int, cfg: CrashBackoffConfig) -> float:
    """Seconds to wait before starting after ``unclean_starts`` recent crashed starts:
    0 below ``cfg.after``, then ``base``, ``2*base``, ``4*base`` ... up to ``cap``."""
    if cfg.after <= 0 or unclean_starts < cfg.after:
        return 0.0
    exponent = min(unclean_starts - cfg.after, 60)  # 2**60 * base is past any cap
    return min(cfg.cap_s, cfg.base_s * math.pow(2, exponent))


class CrashRecord:
    """The crash-start file in ``state_dir``. Unreadable or malformed content counts as
    no record (a corrupt file must not itself keep the agent from starting)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / CRASH_FILE

    def load(self) -> list[float]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []
        starts = data.get("unclean_starts") if isinstance(data, dict) else None
        if not isinstance(starts, list):
            return []
        return [
            float(t)
            for t in starts
            if isinstance(t, int | float) and not isinstance(t, bool) and math.isfinite(t)
        ]

    def save(self, starts: list[float]) -> None:
        """Replace the file (temp file + rename: a crash mid-write leaves old or new)."""
        text = json.dumps({"unclean_starts": starts[-MAX_KEPT:]})
        fd, tmp = tempfile.mkstemp(prefix=f".{CRASH_FILE}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def begin(self, now: float, cfg: CrashBackoffConfig) -> tuple[int, float]:
        """Record this start; return (earlier unclean starts within the window, delay s).

        A state folder that cannot be written is logged and treated as no record: the
        back-off then cannot work, but the agent must still try to run.
        """
        earlier = recent(self.load(), now, cfg.window_s)
        try:
            self.save([*earlier, now])
        except OSError as exc:
            log.warning("cannot record this start in %s: %s", self.path, exc)
        return len(earlier), backoff_delay(len(earlier), cfg)

    def clean_stop(self) -> None:
        """The agent stopped cleanly, or ran long enough: the crash loop, if any, is over."""
        try:
            self.save([])
        except OSError as exc:
            log.warning("cannot clear %s: %s", self.path, exc)
