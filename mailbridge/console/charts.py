"""The overview's charts, drawn by pygal as SVG on the server (no JavaScript in the browser).

Each chart is handed to the page as a ``data:`` image: an SVG shown through ``<img>`` runs no
script, and pygal's own tooltip script (fetched from a CDN by default) is switched off.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import pygal
from pygal.style import Style

from mailbridge.console.queries import buckets

STYLE = Style(
    background="white",
    plot_background="white",
    foreground="#333",
    foreground_strong="#111",
    foreground_subtle="#999",
    opacity=".9",
    opacity_hover="1",
    colors=("#2e7d32", "#c62828", "#ef6c00", "#6a1b9a", "#00838f", "#757575", "#1565c0", "#ad1457"),
    font_family="sans-serif",
    label_font_size=11,
    major_label_font_size=11,
    legend_font_size=12,
    title_font_size=14,
)


def _config(chart: pygal.Graph, title: str) -> pygal.Graph:
    chart.config.js = []  # no tooltip script from a CDN; the image is static
    chart.config.title = title
    chart.config.style = STYLE
    chart.config.width = 600
    chart.config.height = 280
    chart.config.legend_at_bottom = True
    chart.config.legend_at_bottom_columns = 4
    chart.config.show_minor_x_labels = False
    chart.config.x_label_rotation = 0
    chart.config.print_values = False
    chart.config.no_data_text = "—"
    return chart


def _labels(unit: str) -> list[str]:
    keys = buckets(unit)
    return [k[-2:] + "h" if unit == "hour" else k[5:] for k in keys]


def _major(unit: str, labels: list[str]) -> list[str]:
    return labels[::4] if unit == "hour" else labels


def stacked(
    title: str,
    unit: str,
    counts: dict[tuple[str, str], int],
    series: Sequence[tuple[str, Sequence[str]]],
    _: Callable[[str], str],
) -> str:
    """Stacked bars per hour or day; each series sums the states it names."""
    chart = _config(pygal.StackedBar(), title)
    labels = _labels(unit)
    chart.x_labels = labels
    chart.x_labels_major = _major(unit, labels)
    for name, states in series:
        values = [sum(counts.get((key, s), 0) for s in states) for key in buckets(unit)]
        chart.add(_(name), values)
    return str(chart.render_data_uri())


def reasons(title: str, rows: Sequence[tuple[str, int]]) -> str:
    chart = _config(pygal.HorizontalBar(), title)
    chart.config.show_legend = False
    chart.x_labels = [code for code, _n in rows]
    chart.add("", [n for _code, n in rows])
    return str(chart.render_data_uri())


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (the value a pct share of samples stay at or under)."""
    ordered = sorted(values)
    rank = max(1, round(pct / 100 * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


def latency(title: str, unit: str, samples: Sequence[tuple[datetime, float]]) -> str:
    """p50 and p99 per hour or day (None where no reply arrived)."""
    fmt = "%Y-%m-%d %H" if unit == "hour" else "%Y-%m-%d"
    chart = _config(pygal.Line(), title)
    keys = buckets(unit)
    labels = _labels(unit)
    chart.x_labels = labels
    chart.x_labels_major = _major(unit, labels)
    grouped: dict[str, list[float]] = {}
    for received, seconds in samples:
        grouped.setdefault(received.astimezone(UTC).strftime(fmt), []).append(seconds)
    chart.add("p50", [round(percentile(grouped[k], 50), 2) if k in grouped else None for k in keys])
    chart.add("p99", [round(percentile(grouped[k], 99), 2) if k in grouped else None for k in keys])
    return str(chart.render_data_uri())
