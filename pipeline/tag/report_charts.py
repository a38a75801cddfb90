"""Inline SVG charts of the report (horizontal bars, stacked bars, a stacked histogram, a one-line share bar).

Built with xml.etree so every label is escaped and the markup is well-formed; no script, no external asset. Each chart
is an `<svg role="img" aria-label=...>` with axis labels, values as text and a `<title>` tooltip on every bar.
"""
from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Callable, Sequence

from markupsafe import Markup

__all__ = ["Bar", "Series", "bar_chart", "stacked_bars", "histogram", "share_bar", "nice_ticks", "clean"]

INK, MUTED, GRID = "#222", "#666", "#e6e6e6"
_CHAR_PX = 6.6  # average width of a 11 px sans-serif character, to size label columns
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffe\uffff]")  # not allowed in XML 1.0


@dataclass
class Bar:
    """One bar: its category label, value, fill and tooltip (default `label: value`)."""

    label: str
    value: float
    colour: str = "#6a8fd8"
    tooltip: str | None = None


@dataclass
class Series:
    """One layer of stacked bars: a name (legend), one value per category, a fill."""

    name: str
    values: Sequence[float]
    colour: str


def clean(text: object, limit: int = 0) -> str:
    """`text` as a string XML can hold (control characters dropped), cut to `limit` characters with an ellipsis."""
    s = _CONTROL.sub("", "" if text is None else str(text))
    return s if not limit or len(s) <= limit else s[: limit - 1] + "…"


def _count(v: float) -> str:
    return f"{v:,.0f}" if float(v).is_integer() else f"{v:,.2f}"


def nice_ticks(top: float, most: int = 5) -> list[float]:
    """0 and round steps (1, 2, 5 x 10^k) up to at least `top`, at most `most` + 1 values."""
    if not top > 0 or not math.isfinite(top):
        return [0.0, 1.0]
    raw = top / most
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    return [i * step for i in range(int(math.ceil(top / step - 1e-9)) + 1)]


def _svg(width: float, height: float, label: str) -> ET.Element:
    svg = ET.Element("svg", {"width": f"{width:.0f}", "height": f"{height:.0f}",
                             "viewBox": f"0 0 {width:.0f} {height:.0f}", "role": "img", "aria-label": clean(label, 600),
                             "font-family": "system-ui, sans-serif", "font-size": "11"})
    ET.SubElement(svg, "title").text = clean(label, 600)
    return svg


def _text(parent: ET.Element, x: float, y: float, text: str, anchor: str = "start", fill: str = INK,
          **attrs: str) -> ET.Element:
    t = ET.SubElement(parent, "text", {"x": f"{x:.1f}", "y": f"{y:.1f}", "text-anchor": anchor, "fill": fill, **attrs})
    t.text = text
    return t


def _rect(parent: ET.Element, x: float, y: float, w: float, h: float, fill: str, tip: str, cls: str = "bar") -> None:
    r = ET.SubElement(parent, "rect", {"class": cls, "x": f"{x:.2f}", "y": f"{y:.2f}", "width": f"{max(w, 0):.2f}",
                                       "height": f"{max(h, 0):.2f}", "fill": fill})
    ET.SubElement(r, "title").text = clean(tip, 600)


def _legend(svg: ET.Element, series: Sequence[Series], x: float, y: float, width: float) -> float:
    """Swatches and names from (x, y), wrapping at `width`; returns the height used."""
    cx, cy = x, y
    for s in series:
        name = clean(s.name, 30)
        w = 16 + len(name) * _CHAR_PX + 12
        if cx + w > x + width and cx > x:
            cx, cy = x, cy + 16
        ET.SubElement(svg, "rect", {"x": f"{cx:.1f}", "y": f"{cy:.1f}", "width": "11", "height": "11", "rx": "2",
                                    "fill": s.colour})
        _text(svg, cx + 15, cy + 9.5, name, fill=MUTED)
        cx += w
    return cy - y + 16


def _render(svg: ET.Element) -> Markup:
    return Markup(ET.tostring(svg, encoding="unicode"))  # noqa: S704 -- ElementTree escaped every text and attribute


def _label_width(labels: Sequence[str], width: float) -> float:
    """Width of the category label column left of horizontal bars (at most 42% of the chart)."""
    return min(max((len(s) for s in labels), default=4) * _CHAR_PX + 10, width * 0.42)


def _size(svg: ET.Element, width: float, height: float) -> None:
    svg.set("height", f"{height:.0f}")
    svg.set("viewBox", f"0 0 {width:.0f} {height:.0f}")


def _value_axis(svg: ET.Element, x0: float, plot_w: float, y0: float, y1: float, top: float, label: str,
                fmt: Callable[[float], str]) -> float:
    """Vertical gridlines at round values, their numbers under the rows and the axis label; returns the scale max."""
    ticks = nice_ticks(top)
    hi = ticks[-1] or 1.0
    for t in ticks:
        x = x0 + plot_w * t / hi
        ET.SubElement(svg, "line", {"x1": f"{x:.1f}", "x2": f"{x:.1f}", "y1": f"{y0:.1f}", "y2": f"{y1:.1f}",
                                    "stroke": GRID})
        _text(svg, x, y1 + 12, fmt(t), "middle", MUTED)
    _text(svg, x0 + plot_w / 2, y1 + 27, clean(label, 80), "middle", MUTED, **{"class": "axis-label"})
    return hi


def bar_chart(bars: Sequence[Bar], title: str, value_label: str, width: float = 420, row: float = 24,
              fmt: Callable[[float], str] = _count, label_limit: int = 28) -> Markup:
    """Horizontal bars, one per category (top to bottom in the given order), the value written at each bar's end."""
    labels = [clean(b.label, label_limit) for b in bars]
    summary = ", ".join(f"{clean(b.label, 60)} {fmt(b.value)}" for b in bars[:12])
    svg, y = _svg(width, 0, f"{title}: {summary or 'none'}"), 6
    x0 = _label_width(labels, width)
    plot_w = width - x0 - 46
    _size(svg, width, y + len(bars) * row + 34)
    hi = _value_axis(svg, x0, plot_w, y, y + len(bars) * row, max((b.value for b in bars), default=0), value_label,
                     fmt)
    for i, (b, label) in enumerate(zip(bars, labels)):
        cy = y + i * row
        w = plot_w * max(b.value, 0) / hi
        _text(svg, x0 - 6, cy + row / 2 + 4, label, "end")
        _rect(svg, x0, cy + 4, w, row - 8, b.colour, b.tooltip or f"{clean(b.label, 200)}: {fmt(b.value)}")
        _text(svg, x0 + w + 4, cy + row / 2 + 4, fmt(b.value), **{"class": "value"})
    return _render(svg)


def stacked_bars(categories: Sequence[str], series: Sequence[Series], title: str, value_label: str,
                 width: float = 420, row: float = 24, percent: bool = False, totals: Sequence[str] | None = None,
                 label_limit: int = 28) -> Markup:
    """Horizontal bars split into the series' values (a legend on top); `percent`: each bar is its shares of 100%.

    `totals`: text written after each bar (e.g. the count it stands for).
    """
    labels = [clean(c, label_limit) for c in categories]
    sums = [sum(max(s.values[i], 0) for s in series) for i in range(len(categories))]
    fmt = (lambda v: f"{v:.0%}") if percent else _count
    shown = [[s.values[i] / sums[i] if percent and sums[i] else s.values[i] for s in series]
             for i in range(len(categories))]
    parts = [f"{clean(c, 60)}: " + ", ".join(f"{clean(s.name, 40)} {fmt(v)}" for s, v in zip(series, shown[i]))
             for i, c in enumerate(categories[:12])]
    svg = _svg(width, 0, f"{title}: " + ("; ".join(parts) or "none"))
    legend_h = _legend(svg, series, 0, 2, width)
    x0, y = _label_width(labels, width), legend_h + 8
    plot_w = width - x0 - (46 if totals else 12)
    _size(svg, width, y + len(labels) * row + 34)
    hi = _value_axis(svg, x0, plot_w, y, y + len(labels) * row, 1.0 if percent else max(sums, default=0), value_label,
                     fmt)
    for i, label in enumerate(labels):
        cy, x = y + i * row, x0
        _text(svg, x0 - 6, cy + row / 2 + 4, label, "end")
        for s in series:
            v = max(s.values[i], 0)
            share = v / sums[i] if sums[i] else 0.0
            w = plot_w * (share if percent else v / hi)
            shown = fmt(share if percent else v)
            _rect(svg, x, cy + 4, w, row - 8, s.colour, f"{clean(categories[i], 200)} · {clean(s.name, 60)}: {shown}"
                  + (f" ({_count(v)})" if not percent else ""))
            if w >= len(shown) * _CHAR_PX + 6:
                _text(svg, x + w / 2, cy + row / 2 + 4, shown, "middle", **{"class": "value"})
            x += w
        if totals:
            _text(svg, x + 4, cy + row / 2 + 4, clean(totals[i], 20), fill=MUTED)
    return _render(svg)


def histogram(edges: Sequence[float], series: Sequence[Series], title: str, x_label: str, y_label: str,
              width: float = 420, height: float = 230) -> Markup:
    """Vertical bins between `edges` (len(edges) - 1 bins), stacked by series, each bin's total written on top."""
    n = len(edges) - 1
    totals = [sum(max(s.values[i], 0) for s in series) for i in range(n)]
    desc = ", ".join(f"{edges[i]:g}-{edges[i + 1]:g}: {_count(t)}" for i, t in enumerate(totals))
    svg = _svg(width, height, f"{title}: {desc}")
    legend_h = _legend(svg, series, 44, 2, width - 44)
    left, bottom, top = 44, 40, legend_h + 20
    plot_w, plot_h = width - left - 8, height - bottom - top
    ticks = nice_ticks(max(totals, default=0), 4)
    hi = ticks[-1] or 1.0
    y_base = top + plot_h
    for t in ticks:
        y = y_base - plot_h * t / hi
        ET.SubElement(svg, "line", {"x1": f"{left}", "x2": f"{left + plot_w:.1f}", "y1": f"{y:.1f}", "y2": f"{y:.1f}",
                                    "stroke": GRID})
        _text(svg, left - 5, y + 4, _count(t), "end", MUTED)
    _text(svg, 12, top + plot_h / 2, clean(y_label, 40), "middle", MUTED,
          **{"class": "axis-label", "transform": f"rotate(-90 12 {top + plot_h / 2:.1f})"})
    bw = plot_w / max(n, 1)
    for i in range(n):
        x, y = left + i * bw, y_base
        for s in series:
            h = plot_h * max(s.values[i], 0) / hi
            y -= h
            _rect(svg, x + 1.5, y, bw - 3, h, s.colour,
                  f"{clean(s.name, 60)}, score {edges[i]:g}-{edges[i + 1]:g}: {_count(s.values[i])}")
        if totals[i]:
            _text(svg, x + bw / 2, y - 3, _count(totals[i]), "middle", **{"class": "value"})
    for i, e in enumerate(edges):
        if i % max(1, n // 5) == 0 or i == n:
            _text(svg, left + i * bw, y_base + 13, f"{e:g}", "middle", MUTED)
    _text(svg, left + plot_w / 2, height - 8, clean(x_label, 80), "middle", MUTED, **{"class": "axis-label"})
    return _render(svg)


def share_bar(shares: Sequence[float | None], names: Sequence[str], colours: Sequence[str], label: str,
              width: float = 120, height: float = 10) -> Markup:
    """A single bar split into shares of 1 (no axes): the per-entity routing strip of a tweet card."""
    vals = [v if isinstance(v, (int, float)) and math.isfinite(v) and v > 0 else 0.0 for v in shares]
    total = sum(vals) or 1.0
    tip = ", ".join(f"{n} {v / total:.0%}" for n, v in zip(names, vals))
    svg = _svg(width, height, f"{label}: {tip}")
    x = 0.0
    for v, name, colour in zip(vals, names, colours):
        w = width * v / total
        _rect(svg, x, 0, w, height, colour, f"{clean(label, 200)} · {name}: {v / total:.0%}")
        x += w
    return _render(svg)
