"""The whole loop on the real local stack, asserted within a bounded time:
events in → predictions out → drift injected → drift detected → retrain → promotion →
predictions served by the new champion; then every dashboard panel has data."""

from __future__ import annotations

import importlib.util
import io
import os
import sys
from pathlib import Path

import pytest
from rich.console import Console

from driftline.kit.redis_clients import redis_client
from driftline.registry.v1 import registry_pb2
from driftline.services.demo.app import Demo
from driftline.services.demo.config import Settings

# The run is bounded by its settings (max_duration_s, the warm-up, the panel wait), which can add
# up past the suite-wide 600 s on a slow machine; a hang still fails.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]


def _promql_helpers():
    spec = importlib.util.spec_from_file_location("e2e_promql", ROOT / "tests/integration/ops/promql.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


#: Dashboard queries that a healthy run may leave empty, by (dashboard uid, panel id, ref id):
#: each counts an incident the demo does not cause. Every other query must return series.
INCIDENT_ONLY = {
    # The loop closes on a drift report or on a performance degradation, not always on both.
    ("driftline-drift", 9, "C"): "drift reports: only once a detector changes state",
    ("driftline-drift", 9, "D"): "performance degradations: only once a live metric falls",
    ("driftline-features", 2, "B"): "features dead letters: the demo sends none past ingestion",
    ("driftline-features", 6, "A"): "late events: the simulator's events arrive in order",
    ("driftline-overview", 13, "B"): "features dead letters",
    ("driftline-streaming", 6, "B"): "features dead letters",
    ("driftline-streaming", 2, "B"): "handler retries: no transient failure in a healthy run",
    ("driftline-streaming", 2, "C"): "outage waits: no dependency goes down",
    ("driftline-inference", 7, "B"): "rejected requests: no overload, no bad input",
    ("driftline-inference", 16, "B"): "model load failures: every version loads",
}

#: Chosen by the demo for each run, under a Redis key prefix of its own that it deletes at the end.
_RUN_KEY_PREFIXES = ("DRIFTLINE_FEATURES_KEY_PREFIX", "DRIFTLINE_INGESTION_DEDUP_KEY_PREFIX")


@pytest.fixture
def isolated_state(tmp_path, monkeypatch):
    """Fresh registry, offline store and trainer state for this run; the demo gives it Redis keys
    of its own (the broker and Redis are shared; the demo moves the services' consumer groups
    past earlier runs' data)."""
    env = {
        "DRIFTLINE_REGISTRY_DATA_DIR": str(tmp_path / "registry"),
        "DRIFTLINE_FEATURES_OFFLINE_ROOT": str(tmp_path / "offline"),
        "DRIFTLINE_FEATURES_DATA_DIR": str(tmp_path / "faust"),
        "DRIFTLINE_TRAINER_OFFLINE_STORE_DIR": str(tmp_path / "offline"),
        "DRIFTLINE_TRAINER_DATA_DIR": str(tmp_path / "trainer"),
        "DRIFTLINE_LOG_FORMAT": "json",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in _RUN_KEY_PREFIXES:
        monkeypatch.delenv(key, raising=False)
    yield tmp_path
    for key in _RUN_KEY_PREFIXES:
        os.environ.pop(key, None)  # set by the demo, for its services


def test_loop_closes_on_the_real_stack(kafka_settings, redis_settings, isolated_state):
    settings = Settings(
        rate=100.0,
        drift_after_s=45.0,
        after_promotion_labels=300,
        # CI asserts that the loop closes: the first champion after the drift ends the run.
        # Waiting for one that also catches the new fraud (make demo's default) takes minutes more.
        recovered_recall=0.0,
        recovered_precision=0.0,
        max_duration_s=300.0,
        live=False,
        run_dir=isolated_state / "run",
        out_dir=isolated_state / "report",
    )
    demo = Demo(settings, Console(file=io.StringIO()))
    try:
        demo.start_services()
        demo.drive()
        summary = demo.summary()
        t = demo.stats.timeline
        if t.new_champion_version:
            new_champion, run = demo.champion_run(t.new_champion_version)
            lineage = new_champion.lineage
        else:
            lineage, run = None, None
        # While every service still runs (stopped targets' series go stale in Prometheus).
        _promql_helpers().assert_all_panels_return_data(
            settings.prometheus_url, strict=True, incident_only=INCIDENT_ONLY, wait_s=30.0
        )
    finally:
        demo.stop()
    logs = f"service logs under {settings.run_dir / 'logs'}"
    assert summary.predictions > 0, f"no prediction was served; {logs}"
    assert t.drift_onset is not None, "drift was never injected"
    assert t.first_drift_report is not None, f"drift was not detected; {logs}"
    signals = demo.stats.drift_signals_after_onset
    assert t.new_champion_version > summary.champion_before, f"no new champion was promoted; {logs}"
    # The new champion was trained because of a signal seen after the onset, and says which.
    assert lineage is not None, f"v{t.new_champion_version} has no lineage"
    assert run is not None, f"v{t.new_champion_version} names no run"
    assert lineage.trigger in signals, f"v{t.new_champion_version} was trained on {lineage.trigger!r}"
    assert signals[lineage.trigger] > 0, f"{lineage.trigger} trigger but no such signal: {signals}"
    assert lineage.trigger_id, "the lineage names no trigger id"
    assert lineage.parent_version == summary.champion_before
    assert run.run_id == lineage.run_id
    assert run.outcome == registry_pb2.RUN_OUTCOME_PROMOTED, run.outcome_reason
    assert t.first_served_by_new_champion is not None, f"the new champion served nothing; {logs}"
    assert demo.stats.served_versions.get(t.new_champion_version, 0) > 0
    assert summary.prediction_errors == 0, demo.stats.error_codes
    # The run's online features and de-duplication claims are gone with it.
    client = redis_client(redis_settings)
    try:
        assert os.environ["DRIFTLINE_INGESTION_DEDUP_KEY_PREFIX"].startswith(demo._run_keys)
        assert next(client.scan_iter(match=f"{demo._run_keys}*", count=1000), None) is None
    finally:
        client.close()
    assert summary.promotions_before_drift == 0, "a champion was replaced before any drift"
    assert summary.accuracy_before is not None, "no labelled prediction before the drift"

    report = demo.report(settings.out_dir, summary)
    assert report.exists()
    assert (settings.out_dir / "chart-0.png").exists()
