"""The model page's shadow panel: per alias with a shadow (or shadowed in the last day), its agreement
over time as a small SVG drawn here, so the page makes no request elsewhere and needs no script."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from markupsafe import Markup

from registry import catalog
from registry.db import Database

SPAN = timedelta(hours=24)
WIDTH, HEIGHT, PAD = 600, 120, 30


@dataclass(frozen=True)
class Panel:
    alias: str
    version: int
    shadow_version: int | None
    requests: int
    compared: int
    agreed: int
    dropped: int
    errors: int
    mean_abs_diff: float | None
    max_abs_diff: float | None
    chart: Markup | None

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.compared if self.compared else None


def _chart(points: list[tuple[datetime, float, int]], since: datetime, until: datetime) -> Markup | None:
    """Agreement (0-100 %) per window over [since, until): a line with a dot per window (its tooltip
    says when, how much and on how many inputs).  Only numbers and formatted times go into it."""
    if not points:
        return None
    span = (until - since).total_seconds()
    inner_w, inner_h = WIDTH - 2 * PAD, HEIGHT - 2 * PAD // 2

    def xy(at: datetime, rate: float) -> tuple[float, float]:
        x = PAD + inner_w * max(0.0, min(1.0, (at - since).total_seconds() / span))
        return round(x, 1), round(PAD // 2 + inner_h * (1 - rate), 1)

    coords = [xy(at, rate) for at, rate, _ in points]
    dots = "".join(
        f'<circle cx="{x}" cy="{y}" r="2.5"><title>{at:%Y-%m-%d %H:%M} UTC: {rate:.1%} of {n} inputs</title>'
        "</circle>" for (x, y), (at, rate, n) in zip(coords, points))
    top, bottom = PAD // 2, PAD // 2 + inner_h
    return Markup(
        f'<svg class="shadow-chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
        f'aria-label="agreement per window, {since:%Y-%m-%d %H:%M} to {until:%Y-%m-%d %H:%M} UTC">'
        f'<line x1="{PAD}" y1="{top}" x2="{WIDTH - PAD}" y2="{top}" stroke="#ddd"/>'
        f'<line x1="{PAD}" y1="{bottom}" x2="{WIDTH - PAD}" y2="{bottom}" stroke="#999"/>'
        f'<text x="2" y="{top + 4}" font-size="10">100%</text><text x="8" y="{bottom + 4}" font-size="10">0%</text>'
        f'<text x="{PAD}" y="{HEIGHT - 2}" font-size="10">{since:%m-%d %H:%M}</text>'
        f'<text x="{WIDTH - PAD}" y="{HEIGHT - 2}" font-size="10" text-anchor="end">{until:%m-%d %H:%M} UTC</text>'
        f'<polyline fill="none" stroke="#2a6" stroke-width="1.5" points="{" ".join(f"{x},{y}" for x, y in coords)}"/>'
        f'<g fill="#2a6">{dots}</g></svg>')


def panels(db: Database, name: str, now: datetime | None = None) -> list[Panel]:
    """One panel per alias of ``name`` that has a shadow version or was shadowed in the last 24 hours."""
    until = now or datetime.now(timezone.utc)
    since = until - SPAN
    found = []
    for report in catalog.shadow_overview(db, name, since, until):
        by_start: dict[datetime, list] = {}
        for w in report.windows:
            by_start.setdefault(w.window_start, []).append(w)
        points = [(start, sum(w.agreed for w in ws) / compared, compared)
                  for start, ws in sorted(by_start.items()) if (compared := sum(w.compared for w in ws))]
        windows = report.windows
        values = sum(w.values for w in windows)
        setting = report.setting
        found.append(Panel(
            setting.alias, setting.version, setting.shadow_version, sum(w.requests for w in windows),
            sum(w.compared for w in windows), sum(w.agreed for w in windows), sum(w.dropped for w in windows),
            sum(w.errors for w in windows), sum(w.sum_abs_diff for w in windows) / values if values else None,
            max((w.max_abs_diff for w in windows), default=0.0) if values else None, _chart(points, since, until)))
    return found
