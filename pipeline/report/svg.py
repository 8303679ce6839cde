"""Inline SVG charts: the page needs no script library, no font file and no network to draw them."""

from __future__ import annotations

from html import escape

PALETTE = ("#3b6ea5", "#d9822b", "#8e5ea2", "#3c9d5d", "#c0392b")


def _num(v: float) -> str:
    return f"{v:,.0f}" if float(v).is_integer() else f"{v:,.3g}"


def hbars(items: list[tuple[str, float, str]], width: int = 620, color: str = PALETTE[0]) -> str:
    """Horizontal bars: (label, value, text shown after the bar)."""
    if not items:
        return '<p class="muted">nothing to show</p>'
    label_w, row_h = 250, 22
    top = max((v for _, v, _ in items), default=0) or 1
    bar_w = width - label_w - 120
    h = row_h * len(items) + 6
    parts = [f'<svg class="chart" viewBox="0 0 {width} {h}" width="{width}" height="{h}" role="img">']
    for k, (label, value, note) in enumerate(items):
        y = 3 + k * row_h
        w = max(1.0, bar_w * value / top) if value else 0
        parts.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">{escape(label[:40])}</text>'
                     f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 7}" fill="{color}"/>'
                     f'<text x="{label_w + w + 5:.1f}" y="{y + 15}">{escape(note)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def histograms(series: list[tuple[str, dict]], xlabel: str, width: int = 420, height: int = 170) -> str:
    """Overlaid histograms (same bins) as step lines, with a legend: `series` = (name, {edges, counts})."""
    series = [(n, h) for n, h in series if h and h.get("counts")]
    if not series:
        return '<p class="muted">no data</p>'
    left, right, top_pad, bottom = 40, 10, 22, 30
    edges = series[0][1]["edges"]
    lo, hi = edges[0], edges[-1]
    ymax = max(max(h["counts"]) for _, h in series) or 1
    pw, ph = width - left - right, height - top_pad - bottom

    def x(v: float) -> float:
        return left + pw * (v - lo) / ((hi - lo) or 1)

    def y(c: float) -> float:
        return top_pad + ph * (1 - c / ymax)

    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">',
             f'<line x1="{left}" y1="{top_pad + ph}" x2="{left + pw}" y2="{top_pad + ph}" stroke="#999"/>',
             f'<text x="{left}" y="{height - 16}" class="tick">{_num(lo)}</text>',
             f'<text x="{left + pw}" y="{height - 16}" class="tick" text-anchor="end">{_num(hi)}</text>',
             f'<text x="{left + pw / 2}" y="{height - 3}" text-anchor="middle" class="tick">{escape(xlabel)}</text>',
             f'<text x="{left - 4}" y="{top_pad + 4}" text-anchor="end" class="tick">{ymax:,}</text>']
    for k, (name, h) in enumerate(series):
        color = PALETTE[k % len(PALETTE)]
        pts = [f"{x(h['edges'][0]):.1f},{y(0):.1f}"]
        for c, e0, e1 in zip(h["counts"], h["edges"], h["edges"][1:]):
            pts += [f"{x(e0):.1f},{y(c):.1f}", f"{x(e1):.1f},{y(c):.1f}"]
        pts.append(f"{x(h['edges'][-1]):.1f},{y(0):.1f}")
        fill = ' fill-opacity="0.25"' if len(series) == 1 else ' fill-opacity="0.08"'
        parts.append(f'<polyline points="{" ".join(pts)}" fill="{color}"{fill} stroke="{color}" stroke-width="1.6"/>')
        parts.append(f'<rect x="{left + 8 + k * 90}" y="5" width="10" height="10" fill="{color}"/>'
                     f'<text x="{left + 22 + k * 90}" y="14">{escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)
