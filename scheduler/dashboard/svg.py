"""Server-rendered SVG line charts (no JavaScript): pure functions from numbers to markup.

Each series is drawn as one ``<path class="series">``; axes carry min/max ticks and
time labels, so a chart reads without hovering.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 28, 36
COLOURS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c")


@dataclass(frozen=True)
class Series:
    label: str
    values: tuple[float, ...]  # one per x label; NaN-free


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e6:
        return f"{value / 1e6:.1f}M"
    if abs(value) >= 1e3:
        return f"{value / 1e3:.1f}k"
    if abs(value) >= 10:
        return f"{value:.0f}"
    return f"{value:.3g}"


def line_chart(
    title: str,
    x_labels: Sequence[str],
    series: Sequence[Series],
    empty_text: str,
    chart_id: str,
    x_caption: str = "",
) -> str:
    """An SVG chart of ``series`` over ``x_labels`` (equal spacing); ``empty_text`` when no
    series has a point."""
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="{escape(chart_id)}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" '
        f'aria-label="{escape(title)}">'
        f'<text x="{LEFT}" y="18" class="title">{escape(title)}</text>'
    )
    n = len(x_labels)
    if n == 0 or not any(s.values for s in series):
        return (
            head
            + f'<text x="{LEFT}" y="{HEIGHT // 2}" class="empty">{escape(empty_text)}</text></svg>'
        )
    top = max((v for s in series for v in s.values), default=0.0) or 1.0
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(i: int) -> float:
        return LEFT + (plot_w * i / (n - 1) if n > 1 else plot_w / 2)

    def y(v: float) -> float:
        return TOP + plot_h * (1 - v / top)

    parts = [
        head,
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{LEFT + plot_w}" y2="{TOP + plot_h}" class="axis"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}" class="axis"/>',
        f'<text x="{LEFT - 6}" y="{TOP + 4}" text-anchor="end" class="tick">{_fmt(top)}</text>',
        f'<text x="{LEFT - 6}" y="{TOP + plot_h + 4}" text-anchor="end" class="tick">0</text>',
    ]
    for i in sorted({0, n // 2, n - 1}):
        # the end labels stay inside the frame
        anchor = "start" if i == 0 and n > 1 else "end" if i == n - 1 and n > 1 else "middle"
        parts.append(
            f'<text x="{x(i):.1f}" y="{HEIGHT - 14}" text-anchor="{anchor}" class="tick">'
            f"{escape(x_labels[i])}</text>"
        )
    for k, s in enumerate(series):
        colour = COLOURS[k % len(COLOURS)]
        points = " L ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(s.values))
        parts.append(
            f'<path class="series" data-label="{escape(s.label)}" d="M {points}" fill="none" '
            f'stroke="{colour}" stroke-width="2"/>'
        )
        # legend in the title row, right-aligned, so it never covers the data
        parts.append(
            f'<text x="{WIDTH - RIGHT}" y="{18 + 13 * k}" text-anchor="end" '
            f'fill="{colour}" class="legend">{escape(s.label)}</text>'
        )
    if x_caption:
        parts.append(
            f'<text x="{LEFT + plot_w / 2:.1f}" y="{HEIGHT - 2}" text-anchor="middle" '
            f'class="tick">{escape(x_caption)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
