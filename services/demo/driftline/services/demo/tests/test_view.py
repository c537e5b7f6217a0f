import io
import time

from rich.console import Console

from driftline.services.demo.observer import PhaseScores, Stats, event_index
from driftline.services.demo.view import render


class _Prom:
    def __init__(self, value):
        self.value = value
        self.queries = []

    def scalar(self, promql):
        self.queries.append(promql)
        return self.value


def _text(panel) -> str:
    console = Console(width=140, record=True, file=io.StringIO())
    console.print(panel)
    return console.export_text()


def test_live_view_shows_rates_versions_drift_and_loop_marks():
    stats = Stats()
    stats.predictions, stats.prediction_errors = 120, 0
    stats.latencies_ms.extend([1.0, 2.0, 3.0, 40.0])
    stats.served_versions = {1: 100, 2: 20}
    stats.champion_version = 2
    stats.drift_status = "DRIFT"
    stats.version_pairs[1] = [(1, 1), (0, 0), (1, 0), (0, 0)]  # (predicted, actual): 3 of 4 right
    started = time.time() - 30
    stats.timeline.drift_onset = started + 10
    prom = _Prom(150.0)
    text = _text(render(stats, prom, "after_drift", started, "note"))
    assert "150.0 /s" in text
    assert "v1: 100" in text
    assert "v2: 20" in text
    assert "DRIFT" in text
    assert "v1: 75.0%" in text
    assert "drift injected +10s" in text
    assert all('topic="transactions.raw.v1"' in q for q in prom.queries)


def test_live_view_copes_with_no_data_yet():
    text = _text(render(Stats(), _Prom(None), "before", time.time(), ""))
    assert "—" in text


def test_phase_scores_count_accuracy_recall_and_precision():
    scores = PhaseScores.of([(1, 1), (0, 1), (0, 0), (1, 0)])
    assert scores.labelled == 4
    assert scores.accuracy == 0.5
    assert scores.recall == 0.5
    assert scores.precision == 0.5
    assert PhaseScores.of([]).accuracy is None


def test_event_index_reads_the_simulators_event_ids():
    assert event_index("ev-abc123-000004512") == 4512
    assert event_index("not-a-simulated-id") is None
