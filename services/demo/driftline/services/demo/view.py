"""The live terminal view: one rich table, refreshed every second."""

from __future__ import annotations

import time

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from driftline.kit.topics import TRANSACTIONS_RAW
from driftline.services.demo.observer import Stats
from driftline.services.demo.prom import Prometheus


def _fmt(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}{unit}"


def render(stats: Stats, prom: Prometheus, phase: str, started: float, note: str) -> Panel:
    raw = TRANSACTIONS_RAW.name
    events_per_s = prom.scalar(f'sum(rate(driftline_kafka_consumed_total{{topic="{raw}"}}[15s]))')
    dead_per_s = prom.scalar(f'sum(rate(driftline_kafka_dead_lettered_total{{topic="{raw}"}}[15s]))')
    with stats.lock:
        predictions = stats.predictions
        errors = stats.prediction_errors
        champion = stats.champion_version
        drift = stats.drift_status
        served = dict(stats.served_versions)
        timeline = stats.timeline
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold cyan", width=28)
    table.add_column()
    table.add_row("elapsed", f"{time.time() - started:5.0f} s   phase: [bold]{phase}[/bold]")
    table.add_row(
        "events in (ingestion)", f"{_fmt(events_per_s, ' /s')}   dead-lettered {_fmt(dead_per_s, ' /s', 2)}"
    )
    table.add_row(
        "predictions",
        f"{predictions} ok, {errors} failed   p50 {_fmt(stats.latency_quantile(0.5), ' ms', 2)}"
        f"   p99 {_fmt(stats.latency_quantile(0.99), ' ms', 2)}",
    )
    table.add_row("served by version", "  ".join(f"v{v}: {n}" for v, n in sorted(served.items())) or "—")
    drift_style = {"DRIFT": "bold red", "NO_DRIFT": "green"}.get(drift, "yellow")
    table.add_row("drift status", Text(drift, style=drift_style))
    table.add_row("champion version", f"v{champion}" if champion else "—")
    table.add_row(
        "live accuracy (last 500)",
        "  ".join(
            f"v{v}: {_fmt(acc * 100 if acc is not None else None, '%')}"
            for v in sorted(served)
            for acc in [stats.live_accuracy(v)]
        )
        or "—",
    )
    marks = [
        ("drift injected", timeline.drift_onset),
        ("drift detected", timeline.first_drift_report),
        ("new champion", timeline.new_champion_registered),
        ("served by new champion", timeline.first_served_by_new_champion),
    ]
    table.add_row(
        "loop",
        "   ".join(
            f"{name} +{moment - started:.0f}s" if moment else f"[dim]{name}[/dim]" for name, moment in marks
        ),
    )
    return Panel(Group(table, Text(note, style="dim")), title="Driftline demo — Ctrl-C stops everything")
