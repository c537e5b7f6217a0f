"""The running Prometheus of the local stack loads Driftline's rules, answers queries, and the
panel checker the end-to-end test uses tells panels with data from panels without."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from cryptography import x509

from driftline.kit.metrics import serve_metrics
from driftline.kit.settings import MetricsSettings
from driftline.kit.testing import Authority

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]


def _load_promql() -> ModuleType:
    # tests/ is not a package; load the helper by path so any pytest entry point works.
    spec = importlib.util.spec_from_file_location(
        "driftline_ops_promql", Path(__file__).with_name("promql.py")
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


promql = _load_promql()


def _prometheus_url() -> str:
    port = os.environ.get("PROMETHEUS_PORT")
    if port is None:
        for line in (ROOT / ".env").read_text().splitlines():
            if line.startswith("PROMETHEUS_PORT="):
                port = line.split("=", 1)[1].strip()
    return f"http://127.0.0.1:{port or 19090}"


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def prometheus() -> str:
    url = _prometheus_url()
    try:
        urllib.request.urlopen(f"{url}/-/ready", timeout=5).close()
    except (urllib.error.URLError, TimeoutError):
        pytest.fail(f"Prometheus is not reachable at {url}: run `make up` first", pytrace=False)
    return url


def _loaded_rules(prometheus: str) -> list[dict[str, Any]]:
    groups = _get(f"{prometheus}/api/v1/rules")["data"]["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_prometheus_loads_every_driftline_rule_and_evaluates_it(prometheus: str):
    # Reload so the running server reads the rule files as they are in this tree (the local stack
    # links its rules/ to deploy/prometheus/rules); a reload keeps data and targets.
    request = urllib.request.Request(f"{prometheus}/-/reload", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    groups = promql.load_rule_groups()
    expected = {rule.get("alert") or rule["record"] for group in groups for rule in group["rules"]}

    # Rules report health "unknown" until their group's first evaluation after the reload.
    deadline = time.monotonic() + 30
    while True:
        loaded = {rule["name"]: rule for rule in _loaded_rules(prometheus)}
        evaluated = all(loaded.get(n, {}).get("health") != "unknown" for n in expected)
        if (expected <= loaded.keys() and evaluated) or time.monotonic() > deadline:
            break
        time.sleep(1)

    assert sorted(expected - loaded.keys()) == [], (
        "rules in deploy/prometheus/rules that Prometheus did not load"
    )
    unhealthy = {
        n: loaded[n].get("lastError") or loaded[n]["health"] for n in expected if loaded[n]["health"] != "ok"
    }
    assert unhealthy == {}
    alerts = {n for n in expected if loaded[n]["type"] == "alerting"}
    assert "DriftlineNoModelLoaded" in alerts
    for name in alerts:
        assert loaded[name]["annotations"]["runbook_url"].startswith("docs/operations.md#"), name


def test_an_instant_query_returns_prometheus_own_target(prometheus: str):
    result = promql.query(prometheus, 'up{job="prometheus"}')
    assert [sample["metric"]["job"] for sample in result] == ["prometheus"]
    assert result[0]["value"][1] == "1"


def test_a_query_prometheus_refuses_raises_with_its_error(prometheus: str):
    with pytest.raises(promql.PrometheusError, match="parse error"):
        promql.query(prometheus, "sum(")


def _dashboard(path: Path, *panels: tuple[str, list[str]]) -> None:
    path.write_text(
        json.dumps(
            {
                "uid": "ops-test",
                "panels": [
                    {
                        "id": i,
                        "type": "timeseries",
                        "title": title,
                        "targets": [{"refId": chr(ord("A") + j), "expr": e} for j, e in enumerate(exprs)],
                    }
                    for i, (title, exprs) in enumerate(panels, start=1)
                ],
            }
        )
    )


def test_panel_check_passes_when_every_panel_has_data(prometheus: str, tmp_path: Path):
    _dashboard(
        tmp_path / "ok.json",
        ("targets", ['up{job=~"$job"}']),
        ("scrapes", ["sum(rate(prometheus_http_requests_total[$__rate_interval]))"]),
        # One empty query beside one with data: the panel still shows something.
        ("mixed", ["driftline_ops_test_never_defined", 'up{job="prometheus"}']),
    )
    promql.assert_all_panels_return_data(prometheus, tmp_path, variables={"job": "prometheus"})


def test_panel_check_names_every_panel_without_data(prometheus: str, tmp_path: Path):
    _dashboard(
        tmp_path / "partly_empty.json",
        ("has data", ['up{job="prometheus"}']),
        ("never scraped", ["driftline_ops_test_never_defined"]),
        ("mixed", ["driftline_ops_test_never_defined", 'up{job="prometheus"}']),
    )
    with pytest.raises(AssertionError) as failure:
        promql.assert_all_panels_return_data(prometheus, tmp_path)
    message = str(failure.value)
    assert "1 of 3 panels show no data" in message
    assert "ops-test / never scraped [A]" in message
    assert "has data" not in message
    assert "mixed" not in message

    # strict: every query of every panel must return series.
    with pytest.raises(AssertionError) as strict_failure:
        promql.assert_all_panels_return_data(prometheus, tmp_path, strict=True)
    assert "2 of 3 panels show no data" in str(strict_failure.value)


def test_strict_panel_check_spares_only_the_queries_named_incident_only(prometheus: str, tmp_path: Path):
    _dashboard(
        tmp_path / "incidents.json",
        ("has data", ['up{job="prometheus"}']),
        ("requests and rejections", ['up{job="prometheus"}', "driftline_ops_test_never_defined"]),
        ("never scraped", ["driftline_ops_test_never_defined"]),
    )
    spared = {("ops-test", 2, "B"): "rejections happen only under overload"}
    with pytest.raises(AssertionError) as failure:
        promql.assert_all_panels_return_data(prometheus, tmp_path, strict=True, incident_only=spared)
    message = str(failure.value)
    assert "1 of 3 panels show no data" in message
    assert "ops-test / never scraped [A]" in message
    assert "requests and rejections" not in message

    # A name that matches no query is refused: the list of exemptions cannot go stale.
    with pytest.raises(ValueError, match="ops-test"):
        promql.panels_without_data(
            prometheus, tmp_path, strict=True, incident_only={("ops-test", 9, "A"): "gone"}
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape_job(name: str, port: int, tls_config: dict[str, str]) -> dict[str, Any]:
    return {
        "job_name": name,
        "scheme": "https",
        "tls_config": tls_config,
        "static_configs": [{"targets": [f"127.0.0.1:{port}"]}],
    }


def test_a_real_prometheus_scrapes_metrics_served_under_mutual_tls_with_the_documented_config(
    tmp_path: Path,
):
    # The scrape config docs/operations.md gives: scheme https, the CA, a client certificate.
    platform = Authority(tmp_path, "platform")
    served, scraper = platform.issue("registry"), platform.issue("prometheus")
    settings = MetricsSettings(
        tls_cert_file=served.cert, tls_key_file=served.key, tls_client_ca_file=platform.ca_file
    )
    target = serve_metrics(0, settings, service="registry")
    ca = {"ca_file": str(platform.ca_file)}
    config = {
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [
            _scrape_job(
                "with_certificate",
                target,
                {**ca, "cert_file": str(scraper.cert), "key_file": str(scraper.key)},
            ),
            _scrape_job("without_certificate", target, ca),
        ],
    }
    (tmp_path / "prometheus.yml").write_text(json.dumps(config))  # YAML reads JSON
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("wb"),
    )
    try:
        deadline = time.monotonic() + 60
        up: dict[str, str] = {}
        while len(up) < 2 and time.monotonic() < deadline:
            time.sleep(1)
            try:
                up = {s["metric"]["job"]: s["value"][1] for s in promql.query(url, "up")}
            except promql.PrometheusError:
                continue  # not ready yet
        assert up == {"with_certificate": "1", "without_certificate": "0"}, (
            tmp_path / "prometheus.log"
        ).read_text()
        expiry = promql.query(url, 'driftline_tls_certificate_expiry_timestamp_seconds{port="metrics"}')
        certificate = x509.load_pem_x509_certificate(served.cert.read_bytes())
        assert [float(s["value"][1]) for s in expiry] == [certificate.not_valid_after_utc.timestamp()]
    finally:
        process.terminate()
        process.wait(timeout=30)
