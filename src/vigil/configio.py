"""Strict YAML config reading shared by the agent and the collector.

Every error names the file, the key path and the bad value, and unknown keys are errors
rather than silently ignored (a typo'd ``critcal:`` must not disable an alert). The CLIs
turn :class:`ConfigError` into a one-line message and exit status 2.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")
_MISSING: Any = object()

CONFIG_EXIT_CODE = 2


class ConfigError(Exception):
    """A config file is unreadable or holds a bad value.

    ``file`` is the file's path, ``key`` the dotted key path (``checks[2].critical``),
    ``value`` the offending value (or ``None`` when the key is missing).
    """

    def __init__(self, file: str, key: str, value: Any, message: str) -> None:
        self.file = file
        self.key = key
        self.value = value
        self.message = message
        where = f"{file}: {key}" if key else file
        shown = "" if value is _MISSING else f" (got {value!r})"
        super().__init__(f"{where}: {message}{shown}")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with ``yaml.safe_load``; an empty file is an empty mapping."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(p), "", _MISSING, f"cannot read config: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(str(p), "", _MISSING, f"invalid YAML: {where}{problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(p), "", type(data).__name__, "top level must be a mapping")
    return data


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|KiB|MB|MiB|GB|GiB|TB|TiB)?\s*$", re.IGNORECASE)
_UNIT_BYTES = {
    "b": 1,
    "kb": 10**3,
    "kib": 2**10,
    "mb": 10**6,
    "mib": 2**20,
    "gb": 10**9,
    "gib": 2**30,
    "tb": 10**12,
    "tib": 2**40,
    None: 1,
}


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string such as ``500ms``, ``15s``, ``2m``, ``1h``, ``7d``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 2m or 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    else:
        raise ValueError("expected a duration such as 30s, 2m or 1h")
    if seconds < 0:
        raise ValueError("must not be negative")
    return seconds


def parse_size(value: Any) -> int:
    """Bytes from a number or a string such as ``64KiB``, ``100MB``, ``1GiB``."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 512KiB or 100MB")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (m := _SIZE.match(value)):
        unit = m.group(2).lower() if m.group(2) else None
        size = int(float(m.group(1)) * _UNIT_BYTES[unit])
    else:
        raise ValueError("expected a size such as 512KiB or 100MB")
    if size < 0:
        raise ValueError("must not be negative")
    return size


class Section:
    """A strict reader over one mapping of a config file.

    Read keys with :meth:`get` (and friends), then call :meth:`done`, which raises on
    any key that was never read. Relative paths resolve against the config file's folder
    so a config means the same thing whatever the working directory.
    """

    def __init__(self, data: Mapping[str, Any], file: str, path: str = "") -> None:
        self.data = data
        self.file = file
        self.path = path
        self._seen: set[str] = set()

    @property
    def base_dir(self) -> Path:
        return Path(self.file).resolve().parent

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, message: str, value: Any = _MISSING) -> ConfigError:
        """A :class:`ConfigError` for key ``name`` of this section."""
        return ConfigError(self.file, self.key(name), value, message)

    def has(self, name: str) -> bool:
        return name in self.data

    def _lookup(self, name: str, default: Any) -> tuple[bool, Any]:
        """``(True, raw value)``, or ``(False, default)`` when ``name`` is absent (or null
        with a default); raises when it is absent and required. Marks ``name`` as read."""
        self._seen.add(name)
        if name not in self.data or (self.data[name] is None and default is not _MISSING):
            if default is _MISSING:
                raise self.error(name, "missing required key")
            return False, default
        return True, self.data[name]

    def get(
        self,
        name: str,
        kind: type[T] | tuple[type, ...],
        default: Any = _MISSING,
        *,
        choices: tuple[Any, ...] | None = None,
        minimum: float | None = None,
        maximum: float | None = None,
    ) -> T:
        """The value of ``name``, type-checked (ints are accepted where floats are)."""
        found, value = self._lookup(name, default)
        if not found:
            return value
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            want = " or ".join(_type_name(k) for k in kinds)
            raise self.error(name, f"expected {want}", value)
        if choices is not None and value not in choices:
            raise self.error(name, f"must be one of {list(choices)}", value)
        if minimum is not None and value < minimum:
            raise self.error(name, f"must be at least {minimum}", value)
        if maximum is not None and value > maximum:
            raise self.error(name, f"must be at most {maximum}", value)
        return value  # type: ignore[return-value]

    def convert(self, name: str, parse: Callable[[Any], T], default: Any = _MISSING) -> T:
        """The value of ``name`` passed through ``parse``; its ``ValueError`` names the key."""
        found, value = self._lookup(name, default)
        if not found:
            return value
        try:
            return parse(value)
        except (ValueError, TypeError) as exc:
            raise self.error(name, str(exc), value) from None

    def duration(self, name: str, default: Any = _MISSING, *, minimum: float = 0.0) -> float:
        """Seconds; accepts ``30``, ``"30s"``, ``"2m"``, ``"1h"``."""
        seconds = self.convert(name, parse_duration, default)
        if seconds is not None and seconds < minimum:
            raise self.error(name, f"must be at least {minimum}s", self.data.get(name))
        return seconds

    def size(self, name: str, default: Any = _MISSING) -> int:
        """Bytes; accepts ``1048576``, ``"1MiB"``, ``"100MB"``."""
        return self.convert(name, parse_size, default)

    def path_value(self, name: str, default: Any = _MISSING) -> Path:
        """A filesystem path; relative paths resolve against the config file's folder."""
        raw = self.get(name, str, default)
        if raw is None or isinstance(raw, Path):
            return raw
        return (self.base_dir / Path(raw).expanduser()).resolve()

    def str_list(self, name: str, default: Any = _MISSING) -> tuple[str, ...]:
        raw = self.get(name, list, default)
        if raw is default:
            return raw
        for i, item in enumerate(raw):
            if not isinstance(item, str):
                raise self.error(f"{name}[{i}]", "expected a string", item)
        return tuple(raw)

    def str_map(self, name: str, default: Any = _MISSING) -> dict[str, str]:
        raw = self.get(name, dict, default)
        if raw is default:
            return raw
        out: dict[str, str] = {}
        for k, v in raw.items():
            if not isinstance(v, str | int | float) or isinstance(v, bool):
                raise self.error(f"{name}.{k}", "expected a string", v)
            out[str(k)] = str(v)
        return out

    def section(self, name: str, *, required: bool = False) -> Section:
        """The nested mapping ``name`` (empty when absent and not required)."""
        raw = self.get(name, dict, _MISSING if required else {})
        return Section(raw, self.file, self.key(name))

    def sections(self, name: str) -> Iterator[Section]:
        """Each mapping in the list ``name`` (none when absent)."""
        raw = self.get(name, list, [])
        for i, item in enumerate(raw):
            if not isinstance(item, dict):
                raise self.error(f"{name}[{i}]", "expected a mapping", item)
            yield Section(item, self.file, f"{self.key(name)}[{i}]")

    def check_keys(self, *known: str) -> None:
        """Raise on an unknown key before reading any value, so that a typo is reported
        as itself rather than as the missing key it was meant to be."""
        for name in self.data:
            if name not in known:
                raise self.error(
                    str(name),
                    f"unknown key (known keys: {', '.join(sorted(known))})",
                    self.data[name],
                )

    def done(self) -> None:
        """Raise on the first key that was never read (a typo or an unsupported option)."""
        for name in self.data:
            if name not in self._seen:
                known = sorted(self._seen)
                raise self.error(
                    str(name), f"unknown key (known keys: {', '.join(known)})", self.data[name]
                )


def setup_logging(level: str) -> None:
    """The one log format both programs write to stderr (level name such as ``INFO``)."""
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def _type_name(kind: type) -> str:
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        list: "a list",
        dict: "a mapping",
    }.get(kind, kind.__name__)
