"""Small server-rendered SVG charts: no JavaScript, no plotting library.

Each function is pure: numbers in, one ``<svg>`` element out, marked safe for
templates. Every piece of text that reaches the markup goes through
``html.escape`` first, so titles and labels from the database cannot inject
markup. Empty or degenerate input (no points, one point, all values equal,
NaN or infinity) renders an empty frame with a "no data" note instead of
raising, because a dashboard panel must always render.

Styling is by CSS class (``qh-chart``, ``qh-line``, ``qh-dd``, ``qh-bar``,
``qh-dot``, ``qh-axis``) with sensible inline defaults, so the stylesheet can
override colours without touching the code.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from html import escape

from django.utils.safestring import SafeString, mark_safe

# Margins leave room for the axis labels: left for y values, bottom for x.
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 10, 22, 22


def _finite(values: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    out = []
    for x, y in values:
        fx, fy = float(x), float(y)
        if math.isfinite(fx) and math.isfinite(fy):
            out.append((fx, fy))
    return out


def _fmt(v: float) -> str:
    """Coordinates with two decimals: small markup, stable output."""
    s = f"{v:.2f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def _label(v: float) -> str:
    """Compact human label for an axis value (1.2k, 3.4M)."""
    a = abs(v)
    if a >= 1e7:
        return f"{v / 1e6:.0f}M"
    if a >= 1e6:
        return f"{v / 1e6:.1f}M"
    if a >= 1e4:
        return f"{v / 1e3:.0f}k"
    if a >= 1e3:
        return f"{v / 1e3:.1f}k"
    if a >= 10 or v == 0:
        return f"{v:.0f}"
    return f"{v:.2g}"


def _open(width: int, height: int, title: str, kind: str) -> list[str]:
    t = escape(title)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="qh-chart qh-{kind}" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img"'
        + (f' aria-label="{t}"' if t else "")
        + ">"
    ]
    if t:
        parts.append(f"<title>{t}</title>")
        parts.append(f'<text x="{_LEFT}" y="14" class="qh-title" font-size="12" fill="currentColor">{t}</text>')
    return parts


def _empty(width: int, height: int, title: str, kind: str) -> SafeString:
    parts = _open(width, height, title, kind)
    parts.append(
        f'<text x="{width / 2:.0f}" y="{height / 2:.0f}" text-anchor="middle" class="qh-empty" '
        f'font-size="12" fill="#888">no data</text>'
    )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 -- every interpolated text was escaped above


class _Scale:
    """Maps data ranges onto the plot area (y grows downwards in SVG)."""

    def __init__(self, xs: Sequence[float], ys: Sequence[float], width: int, height: int, *, y_zero: bool) -> None:
        self.x0, self.x1 = min(xs), max(xs)
        self.y0, self.y1 = min(ys), max(ys)
        if y_zero:
            self.y0, self.y1 = min(self.y0, 0.0), max(self.y1, 0.0)
        # A flat series still needs a non-zero span to divide by.
        if self.x1 == self.x0:
            self.x0, self.x1 = self.x0 - 0.5, self.x1 + 0.5
        if self.y1 == self.y0:
            pad = abs(self.y0) * 0.05 or 1.0
            self.y0, self.y1 = self.y0 - pad, self.y1 + pad
        self.pw = width - _LEFT - _RIGHT
        self.ph = height - _TOP - _BOTTOM
        self.width, self.height = width, height

    def x(self, v: float) -> float:
        return _LEFT + (v - self.x0) / (self.x1 - self.x0) * self.pw

    def y(self, v: float) -> float:
        return _TOP + (self.y1 - v) / (self.y1 - self.y0) * self.ph

    def axes(self, *, x_labels: tuple[str, str] | None = None) -> list[str]:
        bottom = _TOP + self.ph
        parts = [
            f'<g class="qh-axis" stroke="#999" stroke-width="1" fill="none">'
            f'<line x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}" y2="{_fmt(bottom)}"/>'
            f'<line x1="{_LEFT}" y1="{_fmt(bottom)}" x2="{_fmt(_LEFT + self.pw)}" y2="{_fmt(bottom)}"/></g>',
            f'<g class="qh-axis-labels" font-size="10" fill="#888">'
            f'<text x="{_LEFT - 4}" y="{_TOP + 4}" text-anchor="end">{escape(_label(self.y1))}</text>'
            f'<text x="{_LEFT - 4}" y="{_fmt(bottom)}" text-anchor="end">{escape(_label(self.y0))}</text>',
        ]
        if x_labels:
            lo, hi = x_labels
            parts.append(f'<text x="{_LEFT}" y="{self.height - 6}">{escape(lo)}</text>')
            parts.append(
                f'<text x="{_fmt(_LEFT + self.pw)}" y="{self.height - 6}" text-anchor="end">{escape(hi)}</text>'
            )
        parts.append("</g>")
        if self.y0 < 0 < self.y1:
            zy = _fmt(self.y(0.0))
            parts.append(
                f'<line class="qh-zero" x1="{_LEFT}" y1="{zy}" x2="{_fmt(_LEFT + self.pw)}" y2="{zy}" '
                f'stroke="#bbb" stroke-dasharray="3 3"/>'
            )
        return parts


def _drawdown_polygon(sc: _Scale, pts) -> str:
    """The drawdown area: along the running peak forwards, back along the curve."""
    peak = -math.inf
    peaks = []
    for _, y in pts:
        peak = max(peak, y)
        peaks.append(peak)
    upper = " ".join(f"{_fmt(sc.x(x))},{_fmt(sc.y(p))}" for (x, _), p in zip(pts, peaks, strict=True))
    lower = " ".join(f"{_fmt(sc.x(x))},{_fmt(sc.y(y))}" for x, y in reversed(pts))
    return f'<polygon class="qh-dd" points="{upper} {lower}" fill="#d9534f" fill-opacity="0.25" stroke="none"/>'


def line_chart(
    points: list[tuple[float, float]],
    *,
    width: int = 640,
    height: int = 180,
    title: str = "",
    drawdown: bool = False,
    x_labels: tuple[str, str] | None = None,
) -> SafeString:
    """A polyline through ``points`` (sorted by x).

    With ``drawdown=True`` the area between the running peak and the curve is
    shaded, which is how an equity curve shows its drawdowns at a glance.
    ``x_labels`` optionally names the two ends of the x axis (e.g. times).
    """
    pts = sorted(_finite(points))
    if not pts:
        return _empty(width, height, title, "line")
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    sc = _Scale(xs, ys, width, height, y_zero=drawdown)
    parts = _open(width, height, title, "line")
    parts.extend(sc.axes(x_labels=x_labels))
    if drawdown and len(pts) > 1:
        parts.append(_drawdown_polygon(sc, pts))
    coords = " ".join(f"{_fmt(sc.x(x))},{_fmt(sc.y(y))}" for x, y in pts)
    if len(pts) == 1:
        x, y = pts[0]
        parts.append(f'<circle class="qh-dot" cx="{_fmt(sc.x(x))}" cy="{_fmt(sc.y(y))}" r="3" fill="#2a6fdb"/>')
    else:
        parts.append(f'<polyline class="qh-line" points="{coords}" fill="none" stroke="#2a6fdb" stroke-width="1.5"/>')
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 -- numbers only, text escaped


def _nice_bounds(lo: float, hi: float) -> tuple[float, float]:
    """Bounds around [lo, hi] (lo <= 0 <= hi) on multiples of a quarter of the span's
    order of magnitude, with some headroom: a value moving within them leaves the
    scale, and so every other coordinate, exactly as it was."""
    span = hi - lo
    if span <= 0:
        return lo - 1.0, hi + 1.0
    quarter = 10 ** math.floor(math.log10(span)) / 4
    head = span * 0.05
    low = math.floor((lo - head) / quarter) * quarter if lo < 0 else lo
    high = math.ceil((hi + head) / quarter) * quarter if hi > 0 else hi
    return low, high


def live_line_chart(
    history: list[tuple[float, float]],
    live: tuple[float, float] | None,
    *,
    x_end: float,
    width: int = 640,
    height: int = 180,
    title: str = "",
    x_labels: tuple[str, str] | None = None,
) -> tuple[SafeString, SafeString]:
    """An equity curve that moves every second, as two layers of one chart: the
    ``history`` (sorted by x, with its drawdowns shaded) up to ``x_end``, and the
    ``live`` point's last segment on a transparent layer of the same size drawn over
    it. The scale's bounds are rounded (``_nice_bounds``), so while the live point
    moves within them only the small live layer changes; the history layer changes
    when a point is added, the scale moves or ``x_end`` does.
    """
    pts = sorted(_finite(history))
    tail = _finite([live]) if live is not None else []
    if not pts:  # a lone point is drawn on the history layer
        pts, tail = tail, []
    if not pts:
        return _empty(width, height, title, "line"), mark_safe("")  # noqa: S308 -- nothing interpolated
    ys = [p[1] for p in pts + tail]
    y0, y1 = _nice_bounds(min(min(ys), 0.0), max(max(ys), 0.0))
    xs = [p[0] for p in pts + tail]
    base = _history_layer(tuple(pts), min(xs), max(x_end, max(xs)), y0, y1, width, height, title, x_labels)
    if not tail:
        return base, mark_safe("")  # noqa: S308 -- nothing interpolated
    sc = _Scale([min(xs), max(x_end, max(xs))], [y0, y1], width, height, y_zero=True)
    (lx, ly), (x, y) = pts[-1], tail[0]
    peak = max(p[1] for p in pts)
    high = max(peak, y)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="qh-chart qh-line qh-live" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" aria-hidden="true">',
        f'<polygon class="qh-dd" points="{_fmt(sc.x(lx))},{_fmt(sc.y(peak))} {_fmt(sc.x(x))},{_fmt(sc.y(high))} '
        f'{_fmt(sc.x(x))},{_fmt(sc.y(y))} {_fmt(sc.x(lx))},{_fmt(sc.y(ly))}" fill="#d9534f" fill-opacity="0.25" '
        f'stroke="none"/>',
        f'<line class="qh-line" x1="{_fmt(sc.x(lx))}" y1="{_fmt(sc.y(ly))}" x2="{_fmt(sc.x(x))}" '
        f'y2="{_fmt(sc.y(y))}" stroke="#2a6fdb" stroke-width="1.5"/>',
        f'<circle class="qh-dot" cx="{_fmt(sc.x(x))}" cy="{_fmt(sc.y(y))}" r="2.5" fill="#2a6fdb"/>',
        "</svg>",
    ]
    return base, mark_safe("".join(parts))  # noqa: S308 -- numbers only


@functools.lru_cache(maxsize=16)
def _history_layer(
    pts: tuple[tuple[float, float], ...],
    x0: float,
    x1: float,
    y0: float,
    y1: float,
    width: int,
    height: int,
    title: str,
    x_labels: tuple[str, str] | None,
) -> SafeString:
    # Cached: every page of every account shares the few layers of the current minute.
    sc = _Scale([x0, x1], [y0, y1], width, height, y_zero=True)
    parts = _open(width, height, title, "line")
    parts.extend(sc.axes(x_labels=x_labels))
    if len(pts) > 1:
        parts.append(_drawdown_polygon(sc, pts))
        coords = " ".join(f"{_fmt(sc.x(x))},{_fmt(sc.y(y))}" for x, y in pts)
        parts.append(f'<polyline class="qh-line" points="{coords}" fill="none" stroke="#2a6fdb" stroke-width="1.5"/>')
    elif pts:
        x, y = pts[0]
        parts.append(f'<circle class="qh-dot" cx="{_fmt(sc.x(x))}" cy="{_fmt(sc.y(y))}" r="3" fill="#2a6fdb"/>')
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 -- numbers only, text escaped


def histogram(
    values: list[float],
    *,
    bins: int = 20,
    width: int = 640,
    height: int = 160,
    unit: str = "ms",
    title: str = "",
) -> SafeString:
    """Counts of ``values`` in ``bins`` equal-width bins between min and max."""
    vals = [float(v) for v in values if math.isfinite(float(v))]
    if not vals or bins < 1:
        return _empty(width, height, title, "hist")
    lo, hi = min(vals), max(vals)
    if hi == lo:
        bins, lo, hi = 1, lo - 0.5, hi + 0.5
    span = (hi - lo) / bins
    counts = [0] * bins
    for v in vals:
        counts[min(int((v - lo) / span), bins - 1)] += 1
    sc = _Scale([lo, hi], [0.0, float(max(counts))], width, height, y_zero=True)
    parts = _open(width, height, title, "hist")
    u = f" {unit}" if unit else ""
    parts.extend(sc.axes(x_labels=(f"{_label(lo)}{u}", f"{_label(hi)}{u}")))
    bar_w = sc.pw / bins
    for i, c in enumerate(counts):
        if not c:
            continue
        left = lo + i * span
        x = sc.x(left)
        y = sc.y(float(c))
        h = sc.y(0.0) - y
        tip = escape(f"{_label(left)}–{_label(left + span)}{u}: {c}")
        parts.append(
            f'<rect class="qh-bar" x="{_fmt(x + 0.5)}" y="{_fmt(y)}" width="{_fmt(max(bar_w - 1, 0.5))}" '
            f'height="{_fmt(h)}" fill="#2a6fdb"><title>{tip}</title></rect>'
        )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 -- numbers only, text escaped


def scatter(
    points: list[tuple[float, float]],
    *,
    width: int = 640,
    height: int = 180,
    title: str = "",
    x_labels: tuple[str, str] | None = None,
    radius: float = 2.5,
) -> SafeString:
    """One dot per point; the y axis includes zero so signs read correctly."""
    pts = _finite(points)
    if not pts:
        return _empty(width, height, title, "scatter")
    sc = _Scale([p[0] for p in pts], [p[1] for p in pts], width, height, y_zero=True)
    parts = _open(width, height, title, "scatter")
    parts.extend(sc.axes(x_labels=x_labels))
    r = _fmt(radius)
    for x, y in pts:
        parts.append(
            f'<circle class="qh-dot" cx="{_fmt(sc.x(x))}" cy="{_fmt(sc.y(y))}" r="{r}" fill="#2a6fdb" fill-opacity="0.7"/>'
        )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 -- numbers only, text escaped


def heatmap(
    xs: Sequence,
    ys: Sequence,
    values: Sequence[Sequence[float | None]],
    *,
    x_name: str = "",
    y_name: str = "",
    title: str = "",
    cell: int = 64,
) -> SafeString:
    """A grid of cells, ``values[row][column]`` for ``ys[row]`` × ``xs[column]``,
    green for gains and red for losses, the shade by size against the largest."""
    finite = [float(v) for row in values for v in row if v is not None and math.isfinite(float(v))]
    width, height = _LEFT + cell * max(len(xs), 1) + _RIGHT, _TOP + cell * max(len(ys), 1) + _BOTTOM + 14
    if not finite or not xs or not ys:
        return _empty(width, height, title, "heatmap")
    top = max(abs(v) for v in finite) or 1.0
    parts = _open(width, height, title, "heatmap")
    for r, (y, row) in enumerate(zip(ys, values, strict=True)):
        cy = _TOP + r * cell
        parts.append(
            f'<text class="qh-axis" x="{_LEFT - 4}" y="{cy + cell / 2 + 4}" text-anchor="end" font-size="10">'
            f"{escape(str(y))}</text>"
        )
        for c, value in enumerate(row):
            cx = _LEFT + c * cell
            if value is None or not math.isfinite(float(value)):
                fill, label, opacity = "#999", "—", 0.2
            else:
                v = float(value)
                fill, label, opacity = ("#2e8b57" if v >= 0 else "#d9534f"), _label(v), 0.15 + 0.85 * abs(v) / top
            parts.append(
                f'<rect class="qh-cell" x="{cx}" y="{cy}" width="{cell - 2}" height="{cell - 2}" '
                f'fill="{fill}" fill-opacity="{_fmt(opacity)}"/>'
                f'<text x="{cx + cell / 2 - 1}" y="{cy + cell / 2 + 4}" text-anchor="middle" font-size="10">'
                f"{escape(label)}</text>"
            )
    for c, x in enumerate(xs):
        parts.append(
            f'<text class="qh-axis" x="{_LEFT + c * cell + cell / 2}" y="{_TOP + len(ys) * cell + 12}" '
            f'text-anchor="middle" font-size="10">{escape(str(x))}</text>'
        )
    parts.append(
        f'<text class="qh-axis" x="{_LEFT + cell * len(xs) / 2}" y="{height - 4}" text-anchor="middle" '
        f'font-size="10">{escape(x_name)} →</text>'
        f'<text class="qh-axis" x="4" y="{_TOP - 6}" font-size="10">↓ {escape(y_name)}</text>'
    )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 -- numbers only, text escaped
