"""Server-rendered SVG charts from query rows: the pictures of the overview page.

Rows come as the dashboards' queries return them: time series in long form
(time, label, value) or wide form (time, value, value, ...), bars as
(label, value, ...), stats as one value.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from html import escape
from typing import Any

WIDTH, HEIGHT = 640, 260
LEFT, RIGHT, TOP, BOTTOM = 56, 130, 34, 30
COLORS = ("#3274d9", "#e0752d", "#56a64b", "#c4162a", "#8f3bb8", "#f2cc0c", "#6e7079")


def _time(value: Any) -> float:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()
    return datetime.fromisoformat(str(value)).replace(tzinfo=timezone.utc).timestamp()


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _frame(title: str, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
            f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" '
            'font-family="DejaVu Sans, sans-serif" font-size="11">'
            f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#fff"/>'
            f'<text x="12" y="20" font-size="14" font-weight="bold">{escape(title)}</text>'
            + "".join(body) + "</svg>")


def _nice(v: float) -> str:
    if v >= 1e6:
        return f"{v / 1e6:.1f}M"
    if v >= 1e3:
        return f"{v / 1e3:.1f}k"
    return f"{v:g}" if v == int(v) else f"{v:.2f}"


def _ceiling(v: float) -> float:
    """Round an axis maximum up to 1, 2, 2.5 or 5 times a power of ten (even ticks)."""
    if v <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(v))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= v)


def _axes(ymax: float) -> list[str]:
    out = []
    plot_h = HEIGHT - TOP - BOTTOM
    for i in range(5):
        y = TOP + plot_h - plot_h * i / 4
        out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#555">'
                   f'{_nice(ymax * i / 4)}</text>')
    return out


def _legend(names: list[str]) -> list[str]:
    out = []
    for i, name in enumerate(names[:10]):
        y = TOP + 6 + i * 16
        out.append(f'<rect x="{WIDTH - RIGHT + 12}" y="{y - 8}" width="10" height="10" '
                   f'fill="{COLORS[i % len(COLORS)]}"/>')
        out.append(f'<text x="{WIDTH - RIGHT + 26}" y="{y + 1}">{escape(str(name))[:18]}</text>')
    return out


def _empty(title: str) -> str:
    return _frame(title, [f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" '
                          'fill="#888">no data in this range</text>'])


def line_chart(title: str, rows: list[tuple], columns: list[str]) -> str:
    series: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        t = _time(row[0])
        if len(row) == 3 and isinstance(row[1], str):
            series.setdefault(row[1], []).append((t, _num(row[2])))
        else:
            for name, value in zip(columns[1:], row[1:]):
                series.setdefault(name, []).append((t, _num(value)))
    points = [p for s in series.values() for p in s]
    if not points:
        return _empty(title)
    t0, t1 = min(p[0] for p in points), max(p[0] for p in points)
    ymax = _ceiling(max(p[1] for p in points))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def xy(t: float, v: float) -> str:
        x = LEFT + (plot_w * (t - t0) / (t1 - t0) if t1 > t0 else plot_w / 2)
        return f"{x:.1f},{TOP + plot_h - plot_h * v / ymax:.1f}"

    body = _axes(ymax)
    for i, (name, pts) in enumerate(series.items()):
        pts.sort()
        color = COLORS[i % len(COLORS)]
        if len(pts) == 1:
            x, y = xy(*pts[0]).split(",")
            body.append(f'<circle cx="{x}" cy="{y}" r="3" fill="{color}"/>')
        else:
            body.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" '
                        f'points="{" ".join(xy(t, v) for t, v in pts)}"/>')
    for t, anchor in ((t0, "start"), (t1, "end")):
        x = LEFT if anchor == "start" else WIDTH - RIGHT
        label = datetime.fromtimestamp(t, timezone.utc).strftime("%H:%M UTC")
        body.append(f'<text x="{x}" y="{HEIGHT - 10}" text-anchor="{anchor}" fill="#555">{label}</text>')
    return _frame(title, body + _legend(list(series)))


def bar_chart(title: str, rows: list[tuple], columns: list[str]) -> str:
    if not rows:
        return _empty(title)
    names = columns[1:]
    values = [[_num(v) for v in row[1:]] for row in rows]
    ymax = _ceiling(max(max(v) for v in values))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    group_w = plot_w / len(rows)
    bar_w = max(2.0, group_w * 0.8 / len(names))
    body = _axes(ymax)
    for g, (row, vals) in enumerate(zip(rows, values)):
        for i, v in enumerate(vals):
            h = plot_h * v / ymax
            x = LEFT + g * group_w + group_w * 0.1 + i * bar_w
            body.append(f'<rect x="{x:.1f}" y="{TOP + plot_h - h:.1f}" width="{bar_w:.1f}" '
                        f'height="{h:.1f}" fill="{COLORS[i % len(COLORS)]}"/>')
        body.append(f'<text x="{LEFT + (g + 0.5) * group_w:.1f}" y="{HEIGHT - 10}" '
                    f'text-anchor="middle" fill="#555">{escape(str(row[0]))[:12]}</text>')
    return _frame(title, body + (_legend(names) if len(names) > 1 else []))


def stat(title: str, rows: list[tuple], unit: str) -> str:
    value = _num(rows[0][0]) if rows and rows[0] else 0.0
    text = f"{value * 100:.1f}%" if unit == "percentunit" else _nice(value)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="200" height="90" viewBox="0 0 200 90" '
            f'role="img" aria-label="{escape(title)}" font-family="DejaVu Sans, sans-serif">'
            '<rect width="200" height="90" fill="#fff"/>'
            f'<text x="12" y="22" font-size="12" fill="#555">{escape(title)}</text>'
            f'<text x="12" y="68" font-size="34" font-weight="bold" fill="#3274d9">{text}</text></svg>')
