"""Server-rendered SVG charts for the service-quality page: no script, no style
attributes (the console's CSP forbids inline styles; SVG presentation attributes are
not styles), a ``<title>`` and ``role="img"`` with a label for screen readers.

Pure: data in, markup out; every text is escaped.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

BAR_HEIGHT = 18
GAP = 6
LABEL_W = 160
WIDTH = 560
COLORS = ("#1b6e3a", "#b3261e")  # first and second series (green, red): 4.5:1 on white


def stacked_bars(
    title: str, rows: Sequence[tuple[str, float, float]], legend: tuple[str, str]
) -> Markup:
    """Horizontal bars, one per row ``(label, a, b)``: ``a`` and ``b`` stacked, scaled to
    the largest total. Empty rows give a short "no data" chart."""
    t = escape(title)
    if not rows:
        return Markup(
            '<svg role="img" aria-label="{0}: no data" width="{1}" height="30"'
            ' viewBox="0 0 {1} 30"><title>{0}</title>'
            '<text x="0" y="20" fill="#333">no data in this period</text></svg>'
        ).format(t, WIDTH)
    top = max((a + b) for _, a, b in rows) or 1.0
    span = WIDTH - LABEL_W - 60
    height = len(rows) * (BAR_HEIGHT + GAP) + 24
    parts = [
        Markup(
            '<svg role="img" aria-label="{0}" width="{1}" height="{2}" viewBox="0 0 {1} {2}">'
            "<title>{0}</title>"
        ).format(t, WIDTH, height)
    ]
    for i, (label, a, b) in enumerate(rows):
        y = i * (BAR_HEIGHT + GAP)
        wa, wb = span * a / top, span * b / top
        parts.append(
            Markup(
                '<text x="0" y="{y}" fill="#222">{label}</text>'
                '<rect x="{x0}" y="{ry}" width="{wa:.1f}" height="{h}" fill="{ca}"/>'
                '<rect x="{x1:.1f}" y="{ry}" width="{wb:.1f}" height="{h}" fill="{cb}"/>'
                '<text x="{xt:.1f}" y="{y}" fill="#222">{a:g} / {b:g}</text>'
            ).format(
                y=y + 14,
                ry=y,
                label=escape(label[:24]),
                x0=LABEL_W,
                wa=wa,
                h=BAR_HEIGHT,
                ca=COLORS[0],
                x1=LABEL_W + wa,
                wb=wb,
                cb=COLORS[1],
                xt=LABEL_W + wa + wb + 4,
                a=a,
                b=b,
            )
        )
    ly = len(rows) * (BAR_HEIGHT + GAP) + 14
    parts.append(
        Markup(
            '<rect x="0" y="{ry}" width="12" height="12" fill="{ca}"/>'
            '<text x="16" y="{y}" fill="#222">{la}</text>'
            '<rect x="140" y="{ry}" width="12" height="12" fill="{cb}"/>'
            '<text x="156" y="{y}" fill="#222">{lb}</text></svg>'
        ).format(ry=ly - 10, y=ly, ca=COLORS[0], cb=COLORS[1], la=legend[0], lb=legend[1])
    )
    return Markup("").join(parts)
