"""Inline SVG charts for the HTML report: no JavaScript library, no network, drawn by the browser.

Each function returns one ``<svg>`` element as a string; series are ``(label, [(x, y), ...])``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from ..skip.naming import method_of

Series = tuple[str, Sequence[tuple[float, float]]]
PARTS = ("#6b6ecf", "#b5cf6b", "#e7ba52", "#d6616b")  # stacked parts of a bar (no method's colour)
# one colour per method in every chart (a label "method-..." takes its method's); others hash
# into EXTRA, never into a method's colour
FRONT = "Pareto front"
COLOURS = {
    "dense": "#7f7f7f",
    "ffnskip": "#1f77b4",
    "spread": "#2ca02c",
    "static": "#e377c2",
    "random": "#ff7f0e",
    "shortgpt": "#8c564b",
    "skipdecode": "#9467bd",
    "hf": "#17becf",
    FRONT: "#000000",
}
EXTRA = ("#bcbd22", "#393b79", "#637939", "#843c39", "#7b4173", "#3182bd")
W, H = 520, 300
LEFT, RIGHT, TOP, BOTTOM = 60, 130, 20, 45


def colour(label: str) -> str:
    """The colour of a series: its method's (``static-0.25`` is ``static``'s); a method without
    one (a user's rule) gets a stable extra, the same for all its configurations."""
    if label in COLOURS:
        return COLOURS[label]
    method = method_of(label)
    if method in COLOURS:
        return COLOURS[method]
    return EXTRA[sum(map(ord, method)) % len(EXTRA)]


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values from at or below ``lo`` to at or above ``hi``."""
    if hi <= lo:
        hi = lo + 1
    step = 10 ** math.floor(math.log10((hi - lo) / n))
    step *= next(m for m in (1, 2, 5, 10) if (hi - lo) / (step * m) <= n)
    start = math.floor(lo / step) * step
    return [start + i * step for i in range(math.ceil((hi - start) / step - 1e-9) + 1)]


def _text(x: float, y: float, text: str, cls: str, anchor: str = "start", transform: str = "") -> str:
    rotate = f' transform="{transform}"' if transform else ""
    return f'<text x="{x:.1f}" y="{y:.1f}" class="{cls}" text-anchor="{anchor}"{rotate}>{escape(text)}</text>'


class _Frame:
    """Axes mapping data to pixels, with ticks, labels and a legend."""

    def __init__(self, xs: list[float], ys: list[float], x_label: str, y_label: str) -> None:
        self.xt, self.yt = _ticks(min(xs), max(xs)), _ticks(min(ys), max(ys))
        self.x_label, self.y_label = x_label, y_label

    def x(self, v: float) -> float:
        lo, hi = self.xt[0], self.xt[-1]
        return LEFT + (v - lo) / ((hi - lo) or 1) * (W - LEFT - RIGHT)

    def y(self, v: float) -> float:
        lo, hi = self.yt[0], self.yt[-1]
        return H - BOTTOM - (v - lo) / ((hi - lo) or 1) * (H - TOP - BOTTOM)

    def axes(self, x_ticks: bool = True) -> list[str]:
        """Grid lines, tick labels (x ticks optional) and axis labels."""
        parts = []
        for t in self.xt if x_ticks else ():
            x = self.x(t)
            parts.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{H - BOTTOM}" class="grid"/>')
            parts.append(_text(x, H - BOTTOM + 16, f"{t:g}", "tick", "middle"))
        for t in self.yt:
            y = self.y(t)
            parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{W - RIGHT}" y2="{y:.1f}" class="grid"/>')
            parts.append(_text(LEFT - 6, y + 4, f"{t:.4g}", "tick", "end"))
        # the plot area, drawn invisibly so a reader (or a test) can check marks stay inside it
        parts.append(
            f'<rect x="{LEFT}" y="{TOP}" width="{W - LEFT - RIGHT}" height="{H - TOP - BOTTOM}" '
            'class="plot" fill="none"/>'
        )
        mid_y = (TOP + H - BOTTOM) / 2
        parts.append(_text((LEFT + W - RIGHT) / 2, H - 8, self.x_label, "label", "middle"))
        parts.append(_text(14, mid_y, self.y_label, "label", "middle", f"rotate(-90 14 {mid_y:.0f})"))
        return parts

    @staticmethod
    def legend(labels: list[str], colours: Sequence[str] = ()) -> list[str]:
        """Swatches beside the plot: each label's ``colour`` unless ``colours`` are given."""
        parts = []
        for i, label in enumerate(labels):
            y = TOP + 8 + 18 * i
            color = colours[i] if colours else colour(label)
            parts.append(
                f'<rect x="{W - RIGHT + 12}" y="{y - 8}" width="12" height="12" fill="{color}" '
                f'class="swatch" data-label="{escape(label)}"/>'
            )
            parts.append(_text(W - RIGHT + 30, y + 2, label, "tick"))
        return parts


def _svg(title: str, body: list[str]) -> str:
    return (
        f'<svg class="chart" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>{"".join(body)}</svg>'
    )


def line_chart(
    title: str,
    series: list[Series],
    x_label: str,
    y_label: str,
    shade: Sequence[tuple[float, float]] = (),
    scatter: Sequence[str] = (),
    colours: dict[str, str] | None = None,
    y_span: Sequence[float] = (),
    front: Sequence[tuple[float, float]] = (),
) -> str:
    """Lines with markers (the series named in ``scatter``: markers alone); ``shade`` greys x-ranges;
    ``colours`` overrides the method colours (series that are not methods, such as models); the
    y axis covers ``y_span`` as well as the data (charts meant to be compared side by side);
    ``front`` (points of the series, the Pareto front) is a line beneath every marker."""
    paint = {label: (colours or {}).get(label) or colour(label) for label, _ in series}
    series = [(label, sorted(pts)) for label, pts in series if pts]
    if not series:
        return ""
    labels = [label for label, _ in series] + ([FRONT] if front else [])
    paint[FRONT] = colour(FRONT)
    xs = [x for _, pts in series for x, _ in pts]
    ys = [y for _, pts in series for _, y in pts] + list(y_span)
    frame = _Frame(xs, ys, x_label, y_label)
    body = [
        f'<rect x="{frame.x(a):.1f}" y="{TOP}" width="{frame.x(b) - frame.x(a):.1f}" '
        f'height="{H - TOP - BOTTOM}" class="shade"/>'
        for a, b in shade
    ]
    body += frame.axes()
    if front:
        coords = " ".join(f"{frame.x(x):.1f},{frame.y(y):.1f}" for x, y in sorted(front))
        body.append(
            f'<polyline points="{coords}" fill="none" stroke="{paint[FRONT]}" stroke-width="1.5" '
            'stroke-dasharray="5 3" class="series front"/>'
        )
    for label, pts in series:
        color = paint[label]
        coords = " ".join(f"{frame.x(x):.1f},{frame.y(y):.1f}" for x, y in pts)
        if label not in scatter and len(pts) > 1:
            body.append(
                f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="2" class="series"/>'
            )
        for x, y in pts:
            body.append(
                f'<circle cx="{frame.x(x):.1f}" cy="{frame.y(y):.1f}" r="3.5" fill="{color}" class="point">'
                f"<title>{escape(label)}: ({x:.4g}, {y:.4g})</title></circle>"
            )
    body += frame.legend(labels, [paint[label] for label in labels])
    return _svg(title, body)


def band_chart(
    title: str,
    mean: Sequence[float],
    spread: Sequence[float],
    x_label: str,
    y_label: str,
    shade: Sequence[tuple[float, float]] = (),
) -> str:
    """One line (per-layer mean) with a +-spread band, and shaded x-ranges (the cold regions)."""
    lo = [m - s for m, s in zip(mean, spread, strict=True)]
    hi = [m + s for m, s in zip(mean, spread, strict=True)]
    xs = list(range(len(mean)))
    frame = _Frame([float(x) for x in xs], lo + hi, x_label, y_label)
    body = [
        f'<rect x="{frame.x(a):.1f}" y="{TOP}" width="{frame.x(b) - frame.x(a):.1f}" '
        f'height="{H - TOP - BOTTOM}" class="shade"/>'
        for a, b in shade
    ]
    body += frame.axes()
    outline = [(frame.x(x), frame.y(v)) for x, v in zip(xs, hi, strict=True)]
    outline += [(frame.x(x), frame.y(v)) for x, v in reversed(list(zip(xs, lo, strict=True)))]
    body.append(f'<polygon points="{" ".join(f"{a:.1f},{b:.1f}" for a, b in outline)}" class="band"/>')
    coords = " ".join(f"{frame.x(x):.1f},{frame.y(v):.1f}" for x, v in zip(xs, mean, strict=True))
    body.append(f'<polyline points="{coords}" fill="none" stroke="#333333" stroke-width="2" class="series"/>')
    return _svg(title, body)


def bar_chart(
    title: str, labels: Sequence[str], stacks: list[tuple[str, Sequence[float]]], y_label: str
) -> str:
    """Stacked vertical bars, one per label; ``stacks`` are (part name, value per label)."""
    if not labels:
        return ""
    totals = [sum(values[i] for _, values in stacks) for i in range(len(labels))]
    frame = _Frame([0.0, float(len(labels))], [0.0, max(totals) or 1.0], "", y_label)
    body = frame.axes(x_ticks=False)  # bars carry their labels
    width = (W - LEFT - RIGHT) / len(labels)
    for i, label in enumerate(labels):
        base = 0.0
        for j, (part, values) in enumerate(stacks):
            top = base + values[i]
            body.append(
                f'<rect x="{LEFT + i * width + 4:.1f}" y="{frame.y(top):.1f}" width="{width - 8:.1f}" '
                f'height="{frame.y(base) - frame.y(top):.1f}" fill="{PARTS[j % len(PARTS)]}" class="bar">'
                f"<title>{escape(label)} {escape(part)}: {values[i]:.4g}</title></rect>"
            )
            base = top
        body.append(
            f'<text x="{LEFT + (i + 0.5) * width:.1f}" y="{H - BOTTOM + 16}" class="tick" '
            f'text-anchor="middle">{escape(label)}</text>'
        )
    body += frame.legend([part for part, _ in stacks], [PARTS[j % len(PARTS)] for j in range(len(stacks))])
    return _svg(title, body)
