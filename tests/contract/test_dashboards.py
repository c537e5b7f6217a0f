"""The Grafana provisioning and dashboards are valid, stable and agree with the code.

- the datasource has the stable uid every panel names, and the dashboard provider points where
  the dashboards are mounted;
- the five dashboards exist with their stable uids, are current with deploy/grafana/generate.py,
  and every panel has a query on that datasource;
- every query parses (promtool checks it as a recording rule) and every metric it names is
  defined by the code or by a recording rule, so a renamed metric fails here rather than as an
  empty panel.

Whether each panel really returns data is tests/integration/ops/promql.py's
assert_all_panels_return_data, run by the end-to-end test against the live stack.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS_DIR = GRAFANA / "dashboards"
DATASOURCE_UID = "driftline-prometheus"
EXPECTED_UIDS = {
    "driftline-overview": "Overview",
    "driftline-streaming": "Streaming & Kafka",
    "driftline-features": "Features",
    "driftline-inference": "Inference",
    "driftline-drift": "Drift & Models",
}
PANEL_TYPES = {"timeseries", "stat", "gauge", "bargauge", "table", "row"}


def _load(name: str, path: Path) -> ModuleType:
    # tests/ and deploy/ are not packages; load by path so any pytest entry point works.
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


promql = _load("driftline_ops_promql", ROOT / "tests" / "integration" / "ops" / "promql.py")
generate = _load("driftline_grafana_generate", GRAFANA / "generate.py")


def _dashboards() -> dict[str, dict[str, Any]]:
    return promql.load_dashboards(DASHBOARDS_DIR)


def _panels() -> list[tuple[str, dict[str, Any]]]:
    return [(d["uid"], p) for d in _dashboards().values() for p in promql.iter_panels(d)]


# --- Provisioning --------------------------------------------------------------------------------


def test_datasource_is_prometheus_with_the_stable_uid_at_the_compose_address():
    document = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert document["apiVersion"] == 1
    (source,) = document["datasources"]
    assert source["uid"] == DATASOURCE_UID
    assert source["type"] == "prometheus"
    assert source["access"] == "proxy"
    assert source["url"] == "http://prometheus:9090"
    assert source["isDefault"] is True


def test_dashboard_provider_loads_the_mounted_dashboard_files():
    document = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "driftline.yml").read_text())
    assert document["apiVersion"] == 1
    (provider,) = document["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    compose = ROOT / "docker-compose.yml"
    if compose.exists():
        # The compose file mounts this directory where the provider reads, and the provisioning
        # directory where Grafana looks for it.
        text = compose.read_text()
        assert re.search(r"deploy/grafana/dashboards:/var/lib/grafana/dashboards\b", text), text
        assert re.search(r"deploy/grafana/provisioning:/etc/grafana/provisioning\b", text), text


# --- Dashboards ----------------------------------------------------------------------------------


def test_dashboards_are_current_with_their_generator():
    for name, text in generate.rendered().items():
        path = DASHBOARDS_DIR / name
        stale = f"{name} is out of date: run .venv/bin/python deploy/grafana/generate.py"
        assert path.exists(), stale
        assert path.read_text() == text, stale
    assert sorted(p.name for p in DASHBOARDS_DIR.glob("*.json")) == sorted(generate.rendered())


def test_the_five_dashboards_exist_with_stable_unique_uids():
    dashboards = list(_dashboards().values())
    uids = [d["uid"] for d in dashboards]
    assert len(uids) == len(set(uids))
    assert set(uids) == set(EXPECTED_UIDS)
    for dashboard in dashboards:
        assert dashboard["title"].endswith(EXPECTED_UIDS[dashboard["uid"]]), dashboard["title"]
    titles = [d["title"] for d in dashboards]
    assert len(titles) == len(set(titles))


def test_dashboards_are_grafana_json_of_a_recent_schema():
    for name, dashboard in _dashboards().items():
        assert 36 <= dashboard["schemaVersion"] <= 41, name
        assert "id" not in dashboard or dashboard["id"] is None, f"{name}: a provisioned dashboard has no id"
        assert dashboard["panels"], name
        ids = [p["id"] for p in dashboard["panels"]] + [
            q["id"] for p in dashboard["panels"] for q in p.get("panels", [])
        ]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"


def test_every_panel_has_a_known_type_a_grid_position_and_fits_the_grid():
    for uid, panel in _panels():
        assert panel["type"] in PANEL_TYPES, (uid, panel.get("title"))
        grid = panel["gridPos"]
        assert grid["w"] > 0, (uid, grid)
        assert grid["h"] > 0, (uid, grid)
        assert 0 <= grid["x"] <= 24 - grid["w"], (uid, grid)


def test_every_panel_queries_the_driftline_datasource():
    problems = []
    for uid, panel in _panels():
        title = panel.get("title")
        if panel.get("datasource", {}).get("uid") != DATASOURCE_UID:
            problems.append(f"{uid} / {title}: panel datasource {panel.get('datasource')}")
        targets = panel.get("targets", [])
        if not targets:
            problems.append(f"{uid} / {title}: no query")
        for target in targets:
            if not str(target.get("expr", "")).strip():
                problems.append(f"{uid} / {title} [{target.get('refId')}]: empty query")
            if target.get("datasource", {}).get("uid") != DATASOURCE_UID:
                problems.append(
                    f"{uid} / {title} [{target.get('refId')}]: datasource {target.get('datasource')}"
                )
        ref_ids = [t.get("refId") for t in targets]
        if len(ref_ids) != len(set(ref_ids)):
            problems.append(f"{uid} / {title}: duplicate refIds {ref_ids}")
    assert problems == []


def test_no_query_hides_missing_data_behind_a_constant():
    # `or vector(0)` would make every panel "return data" and the end-to-end panel check moot.
    offenders = [str(q) for q in promql.panel_queries(DASHBOARDS_DIR) if re.search(r"\bvector\s*\(", q.expr)]
    assert offenders == []


def test_every_metric_a_panel_queries_is_defined_in_code_or_by_a_recording_rule():
    series = promql.defined_series()
    recorded = promql.recorded_names(promql.load_rule_groups())
    missing = []
    for query in promql.panel_queries(DASHBOARDS_DIR):
        for metric in sorted(promql.undefined_metrics(query.expr, series, recorded)):
            missing.append(f"{query.dashboard} / {query.panel} [{query.ref_id}]: {metric}")
    assert missing == [], "panels query metrics no code under libs/ or services/ defines"


def test_every_panel_query_is_valid_promql(tmp_path: Path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not on PATH (Debian: apt-get install prometheus)", pytrace=False)
    queries = promql.panel_queries(DASHBOARDS_DIR)
    rules = [
        {"record": f"dashboard_query_{i}", "expr": promql.substitute_variables(q.expr)}
        for i, q in enumerate(queries)
    ]
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, (
        result.stdout
        + result.stderr
        + "\n"
        + "\n".join(f"dashboard_query_{i}: {q}" for i, q in enumerate(queries))
    )


def test_the_whole_loop_is_on_the_overview():
    # The overview shows each stage of the loop: events, predictions, latency, lag, drift,
    # champion, accuracy.
    exprs = " ".join(
        q.expr for q in promql.panel_queries(DASHBOARDS_DIR) if q.dashboard == "driftline-overview"
    )
    for metric in (
        "driftline_ingestion_consumed_total",
        "driftline_inference_predictions_total",
        "stage:driftline_inference_stage_seconds:p99_rate5m",
        "group_topic:driftline_kafka_consumer_lag:sum",
        "driftline_drift_state",
        "driftline_inference_model_info",
        "driftline_model_live_metric",
    ):
        assert metric in exprs, metric


def test_panel_queries_are_found_in_the_json(tmp_path: Path):
    # The helper the end-to-end test relies on reads every query, including those in rows.
    dashboard = {
        "uid": "t",
        "panels": [
            {
                "id": 1,
                "type": "row",
                "title": "r",
                "panels": [{"id": 2, "title": "in row", "targets": [{"expr": "a"}]}],
            },
            {"id": 3, "type": "timeseries", "title": "top", "targets": [{"refId": "A", "expr": "b"}]},
        ],
    }
    (tmp_path / "t.json").write_text(json.dumps(dashboard))
    assert [(q.panel, q.expr) for q in promql.panel_queries(tmp_path)] == [("in row", "a"), ("top", "b")]
