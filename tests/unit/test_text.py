"""Agent and admin text made safe: one plain line, or Markdown that renders as itself."""

from __future__ import annotations

import pytest

from vigil.collector.api.render import render_incident_report
from vigil.collector.text import markdown, one_line


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("laptop-1", "laptop-1"),
        ("disk.free", "disk.free"),
        ("not_fixed", "not_fixed"),
        (None, "-"),
        ("", "-"),
        ("a\n## Resolution", "a \\#\\# Resolution"),
        ("# heading", "\\# heading"),
        ("x #", "x \\#"),
        ("**bold** and *em*", "\\*\\*bold\\*\\* and \\*em\\*"),
        ("_em_", "\\_em\\_"),
        ("[click](http://evil)", "\\[click\\](http://evil)"),
        ("![img](http://evil/x.png)", "!\\[img\\](http://evil/x.png)"),
        ("`code`", "\\`code\\`"),
        ("<script>alert(1)</script>", "\\<script\\>alert(1)\\</script\\>"),
        ("<http://evil>", "\\<http://evil\\>"),
        ("&lt;entity", "\\&lt;entity"),
        ("a | b", "a \\| b"),
        ("~~struck~~", "\\~\\~struck\\~\\~"),
        ("back\\slash", "back\\\\slash"),
        ("- item", "\\- item"),
        ("+ item", "\\+ item"),
        ("> quote", "\\> quote"),
        ("1. first", "1\\. first"),
        ("2) second", "2\\) second"),
        ("===", "\\==="),
        ("a\r\nb\u2028c\x85d", "a b c d"),
        ("red\x1b[31m\x00\u202etxt", "red \\[31m txt"),
    ],
    ids=[
        "plain hostname", "dotted check", "intraword underscore", "none", "empty",
        "newline forging a heading", "heading", "closing heading run", "strong and emphasis",
        "underscore emphasis", "link", "image", "code span", "raw html", "autolink",
        "entity", "table pipe", "strikethrough", "backslash", "dash list", "plus list",
        "block quote", "ordered list", "ordered list paren", "setext underline",
        "line separators", "control and bidi characters",
    ],
)  # fmt: skip
def test_markdown_escapes_every_structure(text: str | None, expected: str) -> None:
    assert markdown(text) == expected


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("a\n\tb  c", None, "a b c"),
        ("  padded  ", None, "padded"),
        ("x\x07y", None, "x y"),
        ("abcdef", 4, "abc…"),
        ("abc", 4, "abc"),
        (None, None, ""),
    ],
    ids=["whitespace collapses", "trimmed", "bell", "cut with ellipsis", "short kept", "none"],
)
def test_one_line(text: str | None, limit: int | None, expected: str) -> None:
    assert one_line(text, limit) == expected


def test_a_hostname_cannot_forge_a_section_of_the_incident_report() -> None:
    forged = "pc-1\n\n## Resolution\n\n- **Resolution:** fixed by [admin](http://evil)"
    incident = {
        "id": 3, "check": "c\n# x", "hostname": forged, "host": "a`b", "state": "open",
        "priority": "P2", "opened_at": 0.0, "message": "m", "acknowledged_by": "<b>x</b>",
        "timeline": [{"at": 0.0, "text": "opened\n## Timeline"}],
    }  # fmt: skip
    report = render_incident_report(incident)
    headings = [line for line in report.splitlines() if line.startswith("#")]
    assert headings == [
        "# Incident 3: c \\# x on pc-1 \\#\\# Resolution - \\*\\*Resolution:\\*\\* fixed by"
        " \\[admin\\](http://evil)",
        "## What happened",
        "## Resolution",
        "## Timeline",
    ]
    assert report.count("- **Resolution:**") == 1
    assert "<b>" not in report and "`" not in report.replace("\\`", "")
