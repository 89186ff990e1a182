"""What bounds the incident pages: excerpts within a budget of escaped bytes, and the
windows of a list a page shows."""

from __future__ import annotations

import pytest

from vigil.collector.console.bounded import excerpt, latest, page_of


@pytest.mark.parametrize(
    "text",
    ["&" * 10_000, "é" * 10_000, "𝄞" * 10_000, "plain text\n" * 2_000, "&<>\"'€𝄞x" * 3_000],
    ids=["ampersands", "two-byte", "four-byte", "ascii", "mixed"],
)
def test_an_excerpt_stays_within_its_budget_of_escaped_bytes(text: str) -> None:
    clipped = excerpt(text, 1536)
    assert clipped.clipped
    assert len(str(clipped.html).encode()) <= 1536
    assert "characters left out" in clipped.html


def test_a_text_that_fits_is_whole_and_escaped() -> None:
    whole = excerpt("a < b & c", 100)
    assert (str(whole.html), whole.clipped) == ("a &lt; b &amp; c", False)


def test_an_excerpt_keeps_the_head_and_the_tail() -> None:
    text = "first line\n" + "x" * 5000 + "\nError: disk is read-only"
    clipped = excerpt(text, 512)
    assert clipped.html.startswith("first line\n")
    assert clipped.html.endswith("\nError: disk is read-only")
    head, rest = str(clipped.html).split("\n[… ")
    left_out, tail = rest.split(" characters left out …]\n")
    assert len(head) + int(left_out) + len(tail) == len(text)


def test_the_latest_window_numbers_its_rows_from_the_oldest() -> None:
    window = latest(list("abcdefg"), 3)
    assert window.rows == [(5, "e"), (6, "f"), (7, "g")]
    assert (window.total, window.offset, window.previous, window.next) == (7, 4, 1, None)


def test_pages_clamp_their_offset_and_link_both_ways() -> None:
    assert page_of(list("abcdefg"), 3, 3).rows == [(4, "d"), (5, "e"), (6, "f")]
    middle = page_of(list("abcdefg"), 3, 3)
    assert (middle.previous, middle.next) == (0, 6)
    assert page_of(list("abc"), 99, 2).rows == [(3, "c")]
    assert page_of([], 0, 5).rows == []
