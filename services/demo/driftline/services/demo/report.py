"""The demo's report: PNG plots drawn from Prometheus data and an HTML page around them."""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from driftline.services.demo.prom import Prometheus


@dataclass(frozen=True)
class Chart:
    title: str
    promql: str
    unit: str


CHARTS: tuple[Chart, ...] = (
    Chart(
        "Events consumed per second, by topic",
        "sum by (topic) (rate(driftline_kafka_consumed_total[15s]))",
        "events/s",
    ),
    Chart(
        "Dead-lettered per second, by reason",
        "sum by (reason) (rate(driftline_kafka_dead_lettered_total[15s]))",
        "events/s",
    ),
    Chart(
        "Prediction latency p99 (total)",
        "histogram_quantile(0.99, sum by (le) "
        '(rate(driftline_inference_stage_seconds_bucket{stage="total"}[15s])))',
        "seconds",
    ),
    Chart("Consumer lag, by group", "sum by (group) (driftline_kafka_consumer_lag)", "messages"),
)


@dataclass(frozen=True)
class Summary:
    detection_delay_s: float | None
    retrain_s: float | None
    onset_to_new_champion_serving_s: float | None
    accuracy_before: float | None
    accuracy_after_drift: float | None
    accuracy_after_promotion: float | None
    recall_before: float | None
    recall_after_drift: float | None
    recall_after_promotion: float | None
    #: Every champion promoted after the drift, in order.
    champions_after_drift: list[int]
    onset_to_final_champion_serving_s: float | None
    #: The last champion's last labelled predictions (at most after_promotion_labels).
    final_champion_labelled: int
    final_champion_accuracy: float | None
    final_champion_recall: float | None
    #: Of its fraud verdicts, the share that were fraud (recall alone hides false positives).
    final_champion_precision: float | None
    predictions: int
    prediction_errors: int
    false_alarms_before_drift: int
    promotions_before_drift: int
    champion_before: int
    champion_after: int


def write_report(out_dir: Path, prom: Prometheus, start: float, end: float, summary: Summary) -> Path:
    """Draw every chart over [start, end] and write index.html and summary.json into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    step = max(1.0, (end - start) / 300)
    figures = []
    for i, chart in enumerate(CHARTS):
        try:
            series = prom.query_range(chart.promql, start, end, step)
        except Exception as err:  # noqa: BLE001 - a missing chart must not lose the report
            series = []
            chart = Chart(f"{chart.title} (query failed: {err})", chart.promql, chart.unit)
        fig, ax = plt.subplots(figsize=(9, 3.2))
        for s in series:
            xs = [t - start for t, _ in s.points]
            ys = [v for _, v in s.points]
            label = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) or chart.title
            ax.plot(xs, ys, label=label[:60])
        ax.set_title(chart.title)
        ax.set_xlabel("seconds since the demo started")
        ax.set_ylabel(chart.unit)
        if series:
            ax.legend(fontsize=7, loc="upper left")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        fig.tight_layout()
        name = f"chart-{i}.png"
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        figures.append((chart, name))
    (out_dir / "summary.json").write_text(json.dumps(asdict(summary), indent=2))
    rows = "".join(
        f"<tr><th>{html.escape(k.replace('_', ' '))}</th><td>{_cell(v)}</td></tr>"
        for k, v in asdict(summary).items()
    )
    images = "".join(
        f"<h3>{html.escape(c.title)}</h3><p><code>{html.escape(c.promql)}</code></p><img src='{n}'>"
        for c, n in figures
    )
    page = out_dir / "index.html"
    page.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>Driftline demo report</title>"
        "<style>body{font-family:sans-serif;max-width:980px;margin:auto}th{text-align:left;padding-right:2em}"
        "img{max-width:100%}</style></head><body><h1>Driftline demo report</h1>"
        f"<table>{rows}</table>{images}</body></html>"
    )
    return page


def _cell(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))
