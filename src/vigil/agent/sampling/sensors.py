"""Hardware sensors: battery charge and power, temperatures, fans; read every
``slow_interval`` (they change slowly and cost more than a ``/proc`` read)."""

from __future__ import annotations

from typing import Any

from vigil.agent.sampling.series import Item
from vigil.agent.sampling.slow import SlowReads


class Battery:
    """``battery.percent``, ``battery.plugged`` (1/0) and ``battery.seconds_left``; none,
    with a reason, on a machine without a battery."""

    def __init__(self, *, ps: Any, slow: SlowReads, reasons: dict[str, str]) -> None:
        self._ps = ps
        self._slow = slow
        self._reasons = reasons

    def read(self) -> list[Item]:
        """The cached reading, read again once per ``slow_interval``."""
        return self._slow.every("battery", self._read)

    def _read(self) -> list[Item]:
        battery = self._ps.sensors_battery()
        if battery is None:
            self._reasons["battery"] = "no battery (a desktop, or not reported by the OS)"
            return []
        self._reasons.pop("battery", None)
        items: list[Item] = [("battery.percent", battery.percent)]
        if battery.power_plugged is not None:
            items.append(("battery.plugged", 1.0 if battery.power_plugged else 0.0))
        # psutil uses negative sentinels for "unlimited" (plugged) and "unknown".
        if isinstance(battery.secsleft, int | float) and battery.secsleft >= 0:
            items.append(("battery.seconds_left", battery.secsleft))
        return items


class Sensors:
    """``temperature.celsius[<chip>]`` (the hottest reading per chip) and
    ``fan.rpm[<chip>:<label>]``; none, with a reason, where the OS reports none."""

    def __init__(self, *, ps: Any, slow: SlowReads, reasons: dict[str, str]) -> None:
        self._ps = ps
        self._slow = slow
        self._reasons = reasons

    def read(self) -> list[Item]:
        """The cached reading, read again once per ``slow_interval``."""
        return self._slow.every("sensors", self._read)

    def _read(self) -> list[Item]:
        items: list[Item] = []
        temps = getattr(self._ps, "sensors_temperatures", None)
        for chip, readings in ((temps() if temps else None) or {}).items():
            # The hottest reading per chip: one series per chip, not per core.
            current = [r.current for r in readings if r.current is not None]
            if current:
                items.append((f"temperature.celsius[{chip}]", max(current)))
        fans = getattr(self._ps, "sensors_fans", None)
        for chip, readings in ((fans() if fans else None) or {}).items():
            for i, r in enumerate(readings):
                items.append((f"fan.rpm[{chip}:{r.label or i}]", r.current))
        if not items:
            self._reasons["sensors"] = "no temperature or fan sensors reported by the OS"
        return items
