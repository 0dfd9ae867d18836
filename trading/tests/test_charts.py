from __future__ import annotations

import math
import xml.etree.ElementTree as ET  # noqa: S405 -- parsing our own output in tests

import pytest
from django.utils.safestring import SafeString

from trading import charts

SVG = "{http://www.w3.org/2000/svg}"


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)  # noqa: S314 -- our own output
    assert root.tag == f"{SVG}svg"
    return root


def texts(root: ET.Element) -> list[str]:
    return [el.text or "" for el in root.iter() if el.tag in (f"{SVG}text", f"{SVG}title")]


@pytest.mark.parametrize(
    "render",
    [
        lambda: charts.line_chart([(0, 1), (1, 3), (2, 2)], title="Equity"),
        lambda: charts.line_chart([(0, 1), (1, 3), (2, 2), (3, -4)], drawdown=True, x_labels=("09:15", "15:30")),
        lambda: charts.histogram([1.0, 2.0, 2.5, 9.0], bins=4),
        lambda: charts.scatter([(1, -2), (2, 3)], title="R"),
    ],
)
def test_it_renders_valid_svg_marked_safe(render):
    out = render()
    assert isinstance(out, SafeString)
    parse(out)


@pytest.mark.parametrize(
    "render",
    [
        lambda: charts.line_chart([]),
        lambda: charts.line_chart([], drawdown=True),
        lambda: charts.histogram([]),
        lambda: charts.scatter([]),
        lambda: charts.line_chart([(0, math.nan), (1, math.inf)]),
        lambda: charts.histogram([math.nan]),
    ],
)
def test_it_renders_an_empty_frame_for_no_data(render):
    root = parse(render())
    assert "no data" in texts(root)
    assert not list(root.iter(f"{SVG}polyline"))
    assert not list(root.iter(f"{SVG}rect"))


def test_it_handles_degenerate_input():
    # One point, a flat line and identical values must not divide by zero.
    one = parse(charts.line_chart([(5, 5)]))
    assert len(list(one.iter(f"{SVG}circle"))) == 1
    parse(charts.line_chart([(0, 2), (1, 2), (2, 2)], drawdown=True))
    flat = parse(charts.histogram([3.0, 3.0, 3.0]))
    bars = list(flat.iter(f"{SVG}rect"))
    assert len(bars) == 1
    assert bars[0].find(f"{SVG}title").text.endswith(": 3")


def test_it_escapes_titles_and_labels():
    evil = '<script>alert("x")</script> & "q"'
    for out in (
        charts.line_chart([(0, 1), (1, 2)], title=evil, x_labels=(evil, "<b>")),
        charts.histogram([1, 2], title=evil, unit="<u>"),
        charts.scatter([(0, 1)], title=evil),
        charts.line_chart([], title=evil),
    ):
        assert "<script>" not in out
        root = parse(out)
        assert not list(root.iter("script")) and not list(root.iter(f"{SVG}script"))
        assert evil in texts(root)
        assert root.get("aria-label") == evil


def test_it_counts_histogram_values_into_bins():
    root = parse(charts.histogram([0, 0, 0, 5, 10], bins=2, unit="ms"))
    tips = [r.find(f"{SVG}title").text for r in root.iter(f"{SVG}rect")]
    # Two bins: [0, 5) holds three values, [5, 10] holds the other two.
    assert [t.rsplit(": ", 1)[1] for t in tips] == ["3", "2"]
    assert all("ms" in t for t in tips)


def test_it_shades_drawdown_between_peak_and_curve():
    rising = parse(charts.line_chart([(0, 0), (1, 1), (2, 2)], drawdown=True))
    poly = rising.find(f"{SVG}polygon")
    assert poly is not None
    # With no drawdown, the peak path and the curve coincide: the polygon has no area.
    coords = [tuple(map(float, p.split(","))) for p in poly.get("points").split()]
    n = len(coords) // 2
    assert sorted(coords[:n]) == sorted(coords[n:])

    dipping = parse(charts.line_chart([(0, 0), (1, 10), (2, 4), (3, 12)], drawdown=True))
    coords = [tuple(map(float, p.split(","))) for p in dipping.find(f"{SVG}polygon").get("points").split()]
    n = len(coords) // 2
    assert sorted(coords[:n]) != sorted(coords[n:])


def test_it_plots_higher_values_higher():
    root = parse(charts.line_chart([(0, 0), (1, 100)]))
    pts = [tuple(map(float, p.split(","))) for p in root.find(f"{SVG}polyline").get("points").split()]
    assert pts[0][0] < pts[1][0]
    assert pts[0][1] > pts[1][1]  # SVG y grows downwards


def test_a_live_chart_moves_only_its_live_layer_while_the_point_stays_within_the_scale():
    history = [(float(m * 60), v) for m, v in enumerate([0, 1200, 900, 1500, 700, 1100])]
    x_end = 6 * 60.0
    base, live = charts.live_line_chart(
        history, (330.0, 1150.0), x_end=x_end, title="Equity", x_labels=("09:15", "09:21")
    )
    for svg in (base, live):
        assert isinstance(svg, SafeString)
        parse(svg)
    assert parse(base).find(f"{SVG}polyline") is not None and parse(base).find(f"{SVG}polygon") is not None
    assert parse(live).find(f"{SVG}line") is not None and parse(live).find(f"{SVG}circle") is not None
    # A second later the book is ₹40 better: the same history layer, a new live one.
    moved_base, moved_live = charts.live_line_chart(
        history, (331.0, 1190.0), x_end=x_end, title="Equity", x_labels=("09:15", "09:21")
    )
    assert moved_base == base and moved_live != live
    # A point far outside the scale redraws the history at the new scale.
    far_base, _ = charts.live_line_chart(
        history, (332.0, 9000.0), x_end=x_end, title="Equity", x_labels=("09:15", "09:21")
    )
    assert far_base != base


def test_a_live_chart_with_one_point_or_none_renders():
    base, live = charts.live_line_chart([], (10.0, 5.0), x_end=60.0)
    assert parse(base).find(f"{SVG}circle") is not None and live == ""
    base, live = charts.live_line_chart([], None, x_end=0.0, title="Equity")
    assert "no data" in base and live == ""
