"""The report's inline SVG charts: well-formed XML, one bar per value with lengths proportional to the values, the
value as text and tooltip, accessible names, and labels escaped (markup, quotes, control characters).
"""
from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from pipeline.tag.report_charts import Bar, Series, bar_chart, histogram, nice_ticks, share_bar, stacked_bars

NS: dict[str, str] = {}  # inline SVG: the HTML parser gives it its namespace
EVIL = '<script>alert("x")</script>&\'"\x00\x07'


def _bars(svg: str) -> list[ET.Element]:
    root = ET.fromstring(svg)  # raises on malformed XML
    assert root.get("role") == "img" and root.get("aria-label")
    return root.findall(".//rect[@class='bar']", NS)


def test_bar_chart_lengths_are_proportional_and_values_are_shown():
    svg = str(bar_chart([Bar("PER", 40), Bar("LOC", 10), Bar("ORG", 0)], "Entities per type", "entities"))
    bars = _bars(svg)
    widths = [float(b.get("width")) for b in bars]
    assert len(bars) == 3 and widths[0] == pytest.approx(4 * widths[1]) and widths[2] == 0
    assert [b.find("title", NS).text for b in bars] == ["PER: 40", "LOC: 10", "ORG: 0"]
    texts = [t.text for t in ET.fromstring(svg).iter("text")]
    assert {"PER", "40", "entities"} <= set(texts)
    assert "Entities per type: PER 40, LOC 10, ORG 0" == ET.fromstring(svg).get("aria-label")


def test_histogram_stacks_series_with_heights_proportional():
    svg = str(histogram([0, 0.5, 1], [Series("PER", [2, 6], "#f00"), Series("LOC", [2, 0], "#0f0")], "Scores",
                        "score", "entities"))
    bars = _bars(svg)
    heights = [float(b.get("height")) for b in bars]  # bin 0: PER, LOC; bin 1: PER, LOC
    assert len(bars) == 4 and heights[0] == pytest.approx(heights[1]) and heights[2] == pytest.approx(3 * heights[0], rel=1e-3)
    assert heights[3] == 0 and "PER, score 0.5-1: 6" in [b.find("title", NS).text for b in bars]


def test_stacked_percent_bars_fill_the_width_by_share():
    svg = str(stacked_bars(["all"], [Series("a", [0.25], "#111"), Series("b", [0.75], "#222")], "Share", "share",
                           percent=True))
    w = [float(b.get("width")) for b in _bars(svg)]
    assert w[1] == pytest.approx(3 * w[0]) and ET.fromstring(svg).get("aria-label") == "Share: all: a 25%, b 75%"
    strip = [float(b.get("width")) for b in _bars(str(share_bar([0.5, None, 0.5], ["o", "g", "r"], ["#1", "#2", "#3"],
                                                                "e", width=100)))]
    assert strip == [50, 0, 50]


def test_labels_are_escaped_and_control_characters_dropped():
    svg = str(bar_chart([Bar(EVIL, 3)], EVIL, EVIL))
    assert "<script" not in svg and "\x00" not in svg and "\x07" not in svg
    root = ET.fromstring(svg)
    assert root.get("aria-label").startswith('<script>alert("x")</script>&\'"')  # the text survives, escaped
    assert not root.findall(".//script", NS)


def test_nice_ticks_are_round_and_cover_the_top():
    assert nice_ticks(37) == [0, 10, 20, 30, 40] and nice_ticks(1.0) == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert nice_ticks(0) == [0.0, 1.0]
