"""Nagios / monitoring-plugins compatibility: run a plugin, read its verdict and perfdata.

The contract (Monitoring Plugins Development Guidelines): exit status 0/1/2/3 is
OK/WARNING/CRITICAL/UNKNOWN; the first line of stdout is the status text, optionally
followed by ``|`` and performance data; further lines are long output, and a ``|`` in
them starts more performance data. Perfdata items are
``'label'=value[UOM];[warn];[crit];[min];[max]``, space separated.

:func:`run_plugin` runs one plugin the way remediation scripts run (through
:func:`vigil.agent.exec.process.run_bounded`, after the vetting of
:func:`vigil.agent.exec.vetting.vet_program`): an argv list and never a shell, stdin from
the null device, a clean environment, its own process group (session), a timeout that
kills the whole group, and stdout capped in memory (stderr is discarded). It never raises for a
plugin problem: a missing program, a timeout or an exit status outside 0-3 is an
``unknown`` result with a reason.

Perfdata values become series ``plugin.<label>[<check id>]`` in base units: ``ms`` and
``us`` become seconds, ``KB``/``MB``/``GB``/``TB`` become bytes (powers of 1024, as
``check_disk`` and ``check_swap`` mean them); ``%``, ``c`` and bare numbers are as given.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from vigil.agent.exec.process import NEUTRAL_CWD, child_env, run_bounded
from vigil.agent.exec.vetting import vet_program
from vigil.wire import CheckState

OUTPUT_CAP_BYTES = 16 * 1024
"""Plugin stdout kept in memory (head and tail); status text and perfdata come first."""

_STATES: dict[int, CheckState] = {0: "ok", 1: "warning", 2: "critical", 3: "unknown"}
_UNITS = {
    "s": 1.0,
    "ms": 1e-3,
    "us": 1e-6,
    "b": 1.0,
    "kb": 1024.0,
    "mb": 1024.0**2,
    "gb": 1024.0**3,
    "tb": 1024.0**4,
}
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_PERF_ITEM = re.compile(
    rf"(?:'(?P<qlabel>(?:[^']|'')+)'|(?P<label>[^\s=']+))=(?P<value>{_NUMBER}|U)(?P<unit>[^;\s]*)"
    r"(?P<rest>;\S*)?"
)
_LABEL_CHARS = re.compile(r"[^A-Za-z0-9_.:/\-]+")


@dataclass(frozen=True, slots=True)
class PerfDatum:
    """One perfdata item, ``value`` in base units (see the module docstring)."""

    label: str
    value: float
    unit: str


@dataclass(frozen=True, slots=True)
class PluginResult:
    """What one plugin run said.

    ``state`` comes from the exit status (``unknown`` for anything else, with ``reason``);
    ``text`` is the status line (or the reason when there is none); ``perfdata`` the
    parsed items; ``long_output`` the further lines. ``exit_code`` is ``None`` when the
    plugin never started or was killed on timeout. ``duration_s`` is wall time.
    """

    state: CheckState
    text: str
    exit_code: int | None
    duration_s: float
    perfdata: tuple[PerfDatum, ...] = ()
    long_output: str = ""
    timed_out: bool = False
    reason: str | None = None
    truncated: bool = field(default=False)

    def series(self, check_id: str) -> dict[str, float]:
        """Perfdata as sampled series ``plugin.<label>[<check id>]``."""
        return {f"plugin.{series_label(p.label)}[{check_id}]": p.value for p in self.perfdata}


def series_label(label: str) -> str:
    """A perfdata label made safe for a series name (``'/ free'`` -> ``/_free``)."""
    return _LABEL_CHARS.sub("_", label.strip()) or "value"


def parse_perfdata(text: str) -> tuple[PerfDatum, ...]:
    """Parse perfdata items; malformed items and ``U`` (unknown) values are skipped."""
    items: list[PerfDatum] = []
    for m in _PERF_ITEM.finditer(text):
        raw = m.group("value")
        if raw == "U":
            continue
        label = m.group("qlabel").replace("''", "'") if m.group("qlabel") else m.group("label")
        unit = m.group("unit")
        scale = _UNITS.get(unit.lower(), 1.0) if unit not in ("%", "c") else 1.0
        value = float(raw) * scale
        if math.isfinite(value):
            items.append(PerfDatum(label, value, unit))
    return tuple(items)


def parse_output(output: str) -> tuple[str, tuple[PerfDatum, ...], str]:
    """(status text, perfdata, long output) from a plugin's stdout."""
    lines = output.splitlines()
    if not lines:
        return "", (), ""
    first, _, perf = lines[0].partition("|")
    long_lines: list[str] = []
    perf_parts = [perf]
    for i, line in enumerate(lines[1:], start=1):
        if "|" in line:
            before, _, after = line.partition("|")
            long_lines.append(before)
            perf_parts += [after, *lines[i + 1 :]]
            break
        long_lines.append(line)
    long_output = "\n".join(long_lines).strip()
    return first.strip(), parse_perfdata(" ".join(perf_parts)), long_output


async def run_plugin(
    argv: Sequence[str],
    *,
    timeout_s: float,
    output_cap_bytes: int = OUTPUT_CAP_BYTES,
) -> PluginResult:
    """Run one plugin (``argv[0]`` an absolute path) and interpret it; never raises.

    See the module docstring for the limits. Cancelling the call kills the plugin's
    process group before the cancellation propagates.
    """
    started = time.monotonic()

    def unknown(reason: str, *, timed_out: bool = False) -> PluginResult:
        return PluginResult(
            "unknown", reason, None, time.monotonic() - started, timed_out=timed_out, reason=reason
        )

    if not argv:
        return unknown("empty command")
    if problem := vet_program(argv[0]):
        return unknown(problem)
    try:
        run = await run_bounded(
            argv,
            env=child_env(None),
            cwd=NEUTRAL_CWD,
            timeout_s=timeout_s,
            output_cap_bytes=output_cap_bytes,
            merge_stderr=False,
            # Most plugins exit with their output already written: give the pipe a moment
            # to drain before the group is stopped (which also reaps leftovers).
            settle_s=1.0,
        )
    except (OSError, ValueError) as exc:
        return unknown(f"cannot start {argv[0]}: {getattr(exc, 'strerror', None) or exc}")

    if run.timed_out:
        return unknown(f"plugin timed out after {timeout_s:g}s", timed_out=True)
    text, perfdata, long_output = parse_output(run.output)
    code = run.exit_code
    state = _STATES.get(code) if code is not None else None
    reason = None
    if state is None:
        state = "unknown"
        reason = f"plugin exited with {code} (not 0-3)"
        text = f"{text} ({reason})" if text else reason
    elif not text:
        text = f"{state.upper()} (plugin printed nothing)"
    return PluginResult(
        state=state,
        text=text,
        exit_code=code,
        duration_s=time.monotonic() - started,
        perfdata=perfdata,
        long_output=long_output,
        reason=reason,
        truncated=run.truncated,
    )
