"""Agent and admin text made safe for the formats people read it in.

Hostnames, check and remediation names, script output, notes and CAPA fields come from
agents and admins: they are data, and must never add structure to what shows them.
Every renderer goes through this module:

- :func:`one_line` for plain-text fields (notification summaries and descriptions,
  Alertmanager labels and annotations): one line, no control or format characters
  (no forged lines, no terminal escapes, no bidi overrides), bounded length.
- :func:`markdown` for Markdown reports: :func:`one_line`, then every character that
  can start Markdown structure is backslash-escaped (CommonMark allows escaping any
  ASCII punctuation), so the text renders as itself wherever it is placed: in a
  heading, a table cell, a list item or a line of its own.
"""

from __future__ import annotations

import re
import unicodedata

# Control (Cc), format (Cf: bidi overrides, zero-width), surrogate (Cs), line and
# paragraph separators (Zl, Zp): each becomes a space, and spaces then collapse.
_INVISIBLE = frozenset(("Cc", "Cf", "Cs", "Zl", "Zp"))
# Characters with Markdown meaning anywhere in a line: escapes, code spans, emphasis,
# links and images, raw HTML and autolinks, entities, tables, strikethrough, headings
# (a trailing ``#`` run closes an ATX heading). An ``_`` between two letters or digits
# cannot open or close emphasis (CommonMark's flanking rules), so ``not_fixed`` stays
# readable; every other ``_`` is escaped.
_ANYWHERE = re.compile(r"([\\`*\[\]<>&|~#]|(?<![^\W_])_|_(?![^\W_]))")
# Markers that matter only at the start of a line: list items, block quotes (``>`` is
# already escaped), setext underlines, thematic breaks, ordered lists ("1." / "1)").
_LINE_START = re.compile(r"^(?:([-+=])|(\d+)([.)]))")
ELLIPSIS = "…"


def one_line(text: str | None, limit: int | None = None) -> str:
    """``text`` as one line of plain text: every run of whitespace, control or format
    characters is one space, leading/trailing ones are dropped; longer than ``limit``
    characters, it is cut and ends with ``…``. ``None`` is the empty string."""
    if not text:
        return ""
    cleaned = "".join(
        " " if unicodedata.category(c) in _INVISIBLE else c for c in text
    )  # fmt: skip
    line = " ".join(cleaned.split())
    if limit is not None and len(line) > limit:
        line = line[: max(limit - 1, 0)] + ELLIPSIS
    return line


def markdown(text: str | None, limit: int | None = None) -> str:
    """``text`` (see :func:`one_line`) escaped to render as itself inside Markdown;
    empty or ``None`` is ``-``."""
    line = one_line(text, limit)
    if not line:
        return "-"
    line = _ANYWHERE.sub(r"\\\1", line)
    return _LINE_START.sub(_escape_marker, line, count=1)


def _escape_marker(match: re.Match[str]) -> str:
    bullet, digits, delimiter = match.groups()
    return "\\" + bullet if bullet else f"{digits}\\{delimiter}"
