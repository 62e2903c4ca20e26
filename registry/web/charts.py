"""The model page's metric charts: each recorded metric (``accuracy@holdout``, ...) across the model's
versions as a small SVG drawn here, with where each alias points marked, so the page makes no request
elsewhere and needs no script.  Only numbers, version numbers and escaped names go into the SVG."""

from __future__ import annotations

from dataclasses import dataclass

from markupsafe import Markup, escape

from registry.catalog.metrics import list_metrics
from registry.db import Database

WIDTH, HEIGHT, PAD = 600, 140, 34
MAX_CHARTS = 6


@dataclass(frozen=True)
class Chart:
    metric: str
    points: list[tuple[int, float]]  # (version, its latest value)
    svg: Markup


def _svg(metric: str, points: list[tuple[int, float]], aliases: dict[str, int]) -> Markup:
    versions = [v for v, _ in points]
    low_v, high_v = min(versions), max(versions)
    values = [value for _, value in points]
    low, high = min(values), max(values)
    if high == low:
        low, high = low - 0.5 if low else -1.0, high + 0.5 if high else 1.0
    inner_w, inner_h = WIDTH - 2 * PAD, HEIGHT - 2 * PAD

    def x(version: int) -> float:
        return round(PAD + inner_w * ((version - low_v) / (high_v - low_v) if high_v > low_v else 0.5), 1)

    def y(value: float) -> float:
        return round(PAD + inner_h * (1 - (value - low) / (high - low)), 1)

    line = " ".join(f"{x(v)},{y(value)}" for v, value in points)
    dots = "".join(f'<circle cx="{x(v)}" cy="{y(value)}" r="3" data-version="{v}" data-value="{value:g}">'
                   f"<title>v{v}: {value:g}</title></circle>" for v, value in points)
    marks = "".join(
        f'<line class="alias-mark" data-alias="{escape(alias)}" x1="{x(v)}" y1="{PAD - 6}" x2="{x(v)}" '
        f'y2="{HEIGHT - PAD}" stroke="#c77" stroke-dasharray="3,3"/><text x="{x(v) + 3}" y="{PAD - 8}" '
        f'font-size="10" fill="#a44">{escape(alias)}</text>'
        for alias, v in sorted(aliases.items()) if low_v <= v <= high_v)
    return Markup(
        f'<svg class="metric-chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
        f'aria-label="{escape(metric)} across versions" data-metric="{escape(metric)}">'
        f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" stroke="#999"/>'
        f'<text x="2" y="{PAD + 4}" font-size="10">{high:.3g}</text>'
        f'<text x="2" y="{HEIGHT - PAD + 4}" font-size="10">{low:.3g}</text>'
        f'<text x="{PAD}" y="{HEIGHT - PAD + 14}" font-size="10">v{low_v}</text>'
        f'<text x="{WIDTH - PAD - 20}" y="{HEIGHT - PAD + 14}" font-size="10">v{high_v}</text>'
        f'{marks}<polyline fill="none" stroke="#2c5aa0" stroke-width="1.5" points="{line}"/>{dots}</svg>')


def metric_charts(db: Database, name: str, aliases: dict[str, int]) -> list[Chart]:
    """A chart per metric the model's versions recorded (the latest value per version), most recorded first."""
    latest: dict[str, dict[int, float]] = {}
    for m in list_metrics(db, name):  # oldest first: later values win
        latest.setdefault(m.name, {})[m.version] = m.value
    ranked = sorted(latest.items(), key=lambda item: (-len(item[1]), item[0]))[:MAX_CHARTS]
    return [Chart(metric, points, _svg(metric, points, aliases))
            for metric, by_version in ranked if (points := sorted(by_version.items()))]
