"""The Prometheus rules, their promtool unit tests, the runbook and the code agree.

- promtool accepts the rule files and their unit tests pass;
- every alert has a severity, a summary, a description and a runbook_url that points at an
  existing section of docs/operations.md;
- every alert has a unit test where it fires and one where it must not;
- every metric a rule uses is defined by the code (read from the source, so a renamed metric
  fails here instead of silently never alerting).
"""

from __future__ import annotations

import importlib.util
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
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
TEST_FILES = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
RUNBOOK = ROOT / "docs" / "operations.md"
SEVERITIES = {"critical", "warning"}


def _load_promql() -> ModuleType:
    # tests/ is not a package; load the shared helper by path (works with any pytest entry point).
    path = ROOT / "tests" / "integration" / "ops" / "promql.py"
    spec = importlib.util.spec_from_file_location("driftline_ops_promql", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


promql = _load_promql()


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is not on PATH (Debian: apt-get install prometheus)", pytrace=False)
    return found


def _alerts() -> list[dict[str, Any]]:
    return [rule for group in promql.load_rule_groups() for rule in group["rules"] if "alert" in rule]


def _github_anchor(heading: str) -> str:
    """The fragment GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _runbook_anchors() -> set[str]:
    return {
        _github_anchor(line.lstrip("#"))
        for line in RUNBOOK.read_text().splitlines()
        if re.match(r"^#{1,6} ", line)
    }


def test_there_are_rule_files_and_unit_tests():
    assert RULE_FILES, "no deploy/prometheus/rules/*.yml"
    assert TEST_FILES, "no deploy/prometheus/tests/*.yml"


def test_promtool_accepts_the_rule_files():
    result = subprocess.run(
        [_promtool(), "check", "rules", *map(str, RULE_FILES)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_of_the_rules_pass():
    result = subprocess.run(
        [_promtool(), "test", "rules", *map(str, TEST_FILES)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_required_alerts_exist():
    # The alerts issue 8 asks for, by name; more may be added.
    required = {
        "DriftlineDriftDetected",
        "DriftlineConsumerLagHigh",
        "DriftlinePredictionLatencyP99High",
        "DriftlineDeadLetterRateHigh",
        "DriftlineFeaturesStale",
        "DriftlineNoModelLoaded",
        "DriftlinePredictionLogDropping",
    }
    assert required <= {a["alert"] for a in _alerts()}


def test_alert_names_are_unique():
    names = [a["alert"] for a in _alerts()]
    assert len(names) == len(set(names))


def test_every_alert_has_severity_summary_description_and_runbook():
    anchors = _runbook_anchors()
    problems = []
    for alert in _alerts():
        name = alert["alert"]
        labels = alert.get("labels", {})
        annotations = alert.get("annotations", {})
        if labels.get("severity") not in SEVERITIES:
            problems.append(f"{name}: severity {labels.get('severity')!r} not one of {sorted(SEVERITIES)}")
        for key in ("summary", "description", "runbook_url"):
            if not str(annotations.get(key, "")).strip():
                problems.append(f"{name}: no {key} annotation")
        url = str(annotations.get("runbook_url", ""))
        page, _, anchor = url.partition("#")
        if not page.endswith("docs/operations.md"):
            problems.append(f"{name}: runbook_url {url!r} does not point into docs/operations.md")
        if anchor != _github_anchor(name):
            problems.append(f"{name}: runbook_url anchor {anchor!r} is not the alert's own section")
        elif anchor not in anchors:
            problems.append(f"{name}: docs/operations.md has no '### {name}' section")
    assert problems == []


def test_every_alert_has_a_firing_and_a_silent_unit_test():
    fires: set[str] = set()
    silent: set[str] = set()
    for path in TEST_FILES:
        for case in yaml.safe_load(path.read_text()).get("tests", []):
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {a["alert"] for a in _alerts()}
    assert sorted(names - fires) == [], "alerts never tested firing"
    assert sorted(names - silent) == [], "alerts never tested silent"


def test_every_metric_the_rules_use_is_defined_in_code():
    groups = promql.load_rule_groups()
    series = promql.defined_series()
    recorded = promql.recorded_names(groups)
    missing = []
    for group in groups:
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            for metric in sorted(promql.undefined_metrics(rule["expr"], series, recorded)):
                missing.append(f"{name}: {metric}")
    assert missing == [], "rules use metrics no code under libs/ or services/ defines"


def test_every_recording_rule_is_used_by_an_alert_or_a_dashboard():
    groups = promql.load_rule_groups()
    used: set[str] = set()
    for alert in _alerts():
        used |= promql.referenced_metrics(alert["expr"])
    for query in promql.panel_queries():
        used |= promql.referenced_metrics(query.expr)
    assert sorted(promql.recorded_names(groups) - used) == []
