"""Strict YAML config reading shared by the agent and the collector.

Every error names the file, the key path and the bad value, and unknown keys are errors
rather than silently ignored (a typo'd ``critcal:`` must not disable an alert). The CLIs
turn :class:`ConfigError` into a one-line message and exit status 2.

The reader is also the one guard against careless or hostile files, so every program
gets the same limits: a file is valid UTF-8 of at most :data:`MAX_FILE_BYTES`, nests at
most :data:`MAX_DEPTH` levels, expands to at most :data:`MAX_NODES` values with its YAML
aliases followed (an alias bomb is refused before anything expands it), repeats no key
in a mapping, and holds no ``.nan``/``.inf`` where a number is read (a NaN timeout would
never fire). Echoed values are cut to :data:`MAX_SHOWN` characters.
"""

from __future__ import annotations

import logging
import math
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")
_MISSING: Any = object()

CONFIG_EXIT_CODE = 2
# Generous for any real config (the annotated examples are a few KiB) and small enough that
# reading, parsing and formatting errors about a file stay cheap.
MAX_FILE_BYTES = 1024 * 1024
MAX_DEPTH = 32
# Values in the document once every alias is expanded; real configs have a few hundred.
MAX_NODES = 100_000
# Longest excerpt of a bad value quoted in an error message.
MAX_SHOWN = 80
# Sizes are byte counts handed to the OS and SQLite: signed 64-bit at most.
MAX_SIZE = 2**63 - 1
# Longest duration any setting (or the silences API) takes: a year and a day. Every
# interval, timeout, window, retention and SLA target in Vigil is far shorter; a larger
# one is a typo ("9999999d") that would push deadlines past what timestamps can hold and
# in effect disable the limit it sets. The wire caps durations at the same value.
MAX_DURATION_S = 366 * 86400.0
# Secrets (bearer tokens, webhook signing keys): at least this long
# (``secrets.token_urlsafe(32)`` gives 43 characters), and never an example config's
# ``change-me...`` placeholder, which anyone who read the example can guess.
MIN_SECRET_LENGTH = 32
PLACEHOLDER_PREFIX = "change-me"
SECRET_ADVICE = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"


def shown(value: Any, limit: int = MAX_SHOWN) -> str:
    """``repr(value)`` cut to ``limit`` characters, with the full length when cut.

    Error messages and logs quote what they reject; a quote must never be as large as
    the input that caused it.
    """
    text = _bounded_repr(value, limit + 1)
    if len(text) <= limit:
        return text
    size = f"{len(value)} characters" if isinstance(value, str) else type(value).__name__
    return f"{text[:limit]}… ({size})"


def _bounded_repr(value: Any, limit: int) -> str:
    """``repr`` that stops early for big strings and containers (never walks them whole)."""
    if isinstance(value, str | bytes):
        return repr(value[:limit])
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"<integer of about {int(value.bit_length() * 0.30103) + 1} digits>"
    if isinstance(value, list | tuple | dict):
        return f"<{type(value).__name__} of {len(value)} items>"
    return repr(value)[:limit]


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
        quoted = "" if value is _MISSING else f" (got {shown(value)})"
        super().__init__(f"{where}: {message}{quoted}")


class _StrictLoader(yaml.SafeLoader):
    """``SafeLoader`` that refuses duplicate keys, deep nesting and alias bombs.

    Both limits are checked on the composed node graph, before any value is constructed,
    so a hostile file costs about its own size to reject.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_document(self) -> Any:
        node = super().compose_document()
        if _expanded_size(node) > MAX_NODES:
            raise yaml.YAMLError(f"expands to more than {MAX_NODES} values (through aliases)")
        return node

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.MarkedYAMLError(
                    problem=f"nested deeper than {MAX_DEPTH} levels", problem_mark=mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key; the base class reports it
                break
            if duplicate:
                raise yaml.MarkedYAMLError(
                    problem=f"duplicate key {shown(key)}", problem_mark=key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


def _expanded_size(root: yaml.Node) -> int:
    """How many nodes ``root`` stands for once every alias is expanded.

    An alias is the same node object as its anchor, so sizes are memoised by identity
    and the walk is linear in the file; the count stops growing once past the limit.
    """
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if children_done or not children:
            total = 1 + sum(sizes.get(id(c), 1) for c in children)
            sizes[id(node)] = min(total, MAX_NODES + 1)
            continue
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping strictly; an empty file is an empty mapping.

    Safe loading only (no Python objects), within the limits in the module docstring;
    every refusal is a :class:`ConfigError` naming the file (and the line where YAML can
    tell it).
    """
    p = Path(path)
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(str(p), "", _MISSING, f"cannot read config: {exc.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(str(p), "", _MISSING, f"larger than {MAX_FILE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            str(p), "", _MISSING, f"not valid UTF-8 (byte {exc.start} of the file)"
        ) from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(str(p), "", _MISSING, f"invalid YAML: {where}{problem}") from None
    except RecursionError:  # a guard for what the depth count cannot see (long flow keys)
        raise ConfigError(str(p), "", _MISSING, "invalid YAML: nested too deeply") from None
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


def finite(value: float) -> float:
    """``value`` if it is a finite number; ``ValueError`` for NaN and ±infinity.

    NaN compares false with everything, so a NaN limit silently disables the check that
    uses it (a timeout that never fires); infinity overflows whatever multiplies it.
    """
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string such as ``500ms``, ``15s``, ``2m``, ``1h``, ``7d``.

    Finite, not negative and at most :data:`MAX_DURATION_S` (366 days); ``ValueError``
    otherwise.
    """
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 2m or 1h")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an integer too large for a float
            raise ValueError("must be a finite number") from None
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    else:
        raise ValueError("expected a duration such as 30s, 2m or 1h")
    finite(seconds)
    if seconds < 0:
        raise ValueError("must not be negative")
    if seconds > MAX_DURATION_S:
        raise ValueError(f"must be at most {MAX_DURATION_S / 86400:g} days")
    return seconds


def parse_size(value: Any) -> int:
    """Bytes from a number or a string such as ``64KiB``, ``100MB``, ``1GiB``.

    At most :data:`MAX_SIZE` and not negative; ``ValueError`` otherwise.
    """
    if isinstance(value, bool):
        raise ValueError("expected a size such as 512KiB or 100MB")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (m := _SIZE.match(value)):
        unit = m.group(2).lower() if m.group(2) else None
        amount = finite(float(m.group(1))) * _UNIT_BYTES[unit]
        if amount > MAX_SIZE:
            raise ValueError(f"must be at most {MAX_SIZE} bytes")
        size = int(amount)
    else:
        raise ValueError("expected a size such as 512KiB or 100MB")
    if size < 0:
        raise ValueError("must not be negative")
    if size > MAX_SIZE:
        raise ValueError(f"must be at most {MAX_SIZE} bytes")
    return size


def secret_problem(value: str) -> str | None:
    """Why ``value`` is not fit to be a secret (see :meth:`Section.secret`), or None.
    The message never quotes the value."""
    if not value or any(ch.isspace() for ch in value):
        return "must be non-empty with no whitespace"
    if value.lower().startswith(PLACEHOLDER_PREFIX):
        return "is the example's placeholder, not a secret"
    if len(value) < MIN_SECRET_LENGTH:
        return f"is {len(value)} characters long; at least {MIN_SECRET_LENGTH} are required"
    return None


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
            try:
                value = float(value)
            except OverflowError:  # an integer too large for a float
                raise self.error(name, "must be a finite number", value) from None
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            want = " or ".join(_type_name(k) for k in kinds)
            raise self.error(name, f"expected {want}", value)
        if isinstance(value, float) and not math.isfinite(value):
            raise self.error(name, "must be a finite number", value)
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

    def secret(self, name: str, default: Any = _MISSING, *, what: str = "secret") -> str:
        """A string ``name`` holds that is fit to be a secret: non-empty, no whitespace,
        not the ``change-me...`` placeholder and at least :data:`MIN_SECRET_LENGTH`
        characters; otherwise a :class:`ConfigError` that says how to generate one.

        The value is never echoed (the error would put it in logs). ``what`` names the
        kind in the advice ("token", "secret").
        """
        found, value = self._lookup(name, default)
        if found and not isinstance(value, str):
            # Not self.get(): its type error would quote the value, i.e. the secret.
            problem: str | None = f"expected a string, got {_type_name(type(value))}"
        elif value is None:
            return value  # an optional secret left out
        else:
            problem = secret_problem(value)
        if problem:
            raise self.error(name, f"{problem}; generate a {what} with: {SECRET_ADVICE}")
        return value

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
