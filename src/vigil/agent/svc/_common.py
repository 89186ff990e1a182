"""What every platform module returns."""

from __future__ import annotations

from typing import NamedTuple


class ServiceState(NamedTuple):
    """``active``: running (True), not running (False) or unknown (None).

    ``detail`` is the platform's own words (``active (running)``, ``stopped``) or, when
    unknown, the reason.
    """

    active: bool | None
    detail: str
