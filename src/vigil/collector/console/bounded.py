"""What keeps the incident pages within the page weight (≤ 150 KB with their scripts and
styles, images aside; docs/console.md): an incident may carry up to
``INCIDENT_RUNS_LIMIT`` remediation attempts of up to 16,384 characters of output each
and a timeline of any length, so a page shows a window of them with excerpts, and links
to the rest (paged views, and each attempt's output or timeline entry in full as plain
text).

Budgets are in bytes of the *escaped* HTML (``&`` costs five bytes, ``é`` two): a
budget in characters would let an output full of ``&`` or of non-Latin text swell five
or four times. Pure functions over plain data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup, escape

RUNS_SHOWN = 20  # latest attempts on the incident page; also attempts per paged view
TIMELINE_SHOWN = 30  # latest timeline entries on the incident page
TIMELINE_PAGE = 100  # timeline entries per page of the whole timeline
RUN_EXCERPT_BYTES = 1536  # escaped bytes of one attempt's output shown on a page
ENTRY_BYTES = 600  # escaped bytes of one timeline entry shown on a page


@dataclass(frozen=True, slots=True)
class Excerpt:
    """``html``: escaped text of at most the budget's bytes (head and tail of a longer
    text, joined by a line saying how many characters were left out); ``clipped``:
    whether characters were left out."""

    html: Markup
    clipped: bool


def _cost(char: str) -> int:
    return len(str(escape(char)).encode())


def _fit(chars: Sequence[str], budget: int) -> int:
    """How many of ``chars``, from the first, fit in ``budget`` escaped bytes."""
    used = n = 0
    for char in chars:
        used += _cost(char)
        if used > budget:
            break
        n += 1
    return n


def excerpt(text: str, budget: int) -> Excerpt:
    """``text`` escaped, whole if it fits in ``budget`` bytes, else its head and tail
    (about half the budget each: a failure usually says why at the end) around a
    "[… N characters left out …]" line."""
    whole = escape(text)
    if len(str(whole).encode()) <= budget:
        return Excerpt(whole, False)
    half = max(budget - 64, 2) // 2  # 64: room for the marker line
    # Each character costs at least one byte: ``half`` characters bound the scan.
    head = _fit(text[:half], half)
    tail = _fit(text[::-1][:half], half)
    left_out = len(text) - head - tail
    marker = Markup("\n[… {} characters left out …]\n").format(left_out)
    body = escape(text[:head]) + marker + escape(text[len(text) - tail :])
    return Excerpt(Markup(body), True)


@dataclass(frozen=True, slots=True)
class Window:
    """A slice of a list for a page: ``rows`` as ``(number, item)`` with ``number``
    1-based in the whole list (oldest first), ``total`` items in all, and the offsets
    of the previous and next pages (None: there is none)."""

    rows: list[tuple[int, Any]]
    total: int
    offset: int
    previous: int | None
    next: int | None


def page_of(items: Sequence[Any], offset: int, size: int) -> Window:
    """``size`` items of ``items`` from ``offset`` (clamped to the list)."""
    offset = min(max(offset, 0), max(len(items) - 1, 0))
    rows = [(offset + k + 1, item) for k, item in enumerate(items[offset : offset + size])]
    previous = max(offset - size, 0) if offset > 0 else None
    following = offset + size if offset + size < len(items) else None
    return Window(rows, len(items), offset, previous, following)


def latest(items: Sequence[Any], size: int) -> Window:
    """The last ``size`` items of ``items`` (oldest first, as :func:`page_of`)."""
    return page_of(items, max(len(items) - size, 0), size)
