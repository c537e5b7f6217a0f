"""PromQL helpers for the operations tests.

- which metrics the code defines (read from the source with ``ast``, so the list follows the
  services as they change), and the series names prometheus_client exposes for them;
- which metrics a PromQL expression, an alert rule or a Grafana panel uses;
- :func:`assert_all_panels_return_data`: runs every dashboard panel's query against a real
  Prometheus and fails with the panels whose query returned no series.

Only the standard library and PyYAML, so the end-to-end test can call it from anywhere:

    from tests.integration.ops.promql import assert_all_panels_return_data   # python -m pytest
    assert_all_panels_return_data("http://127.0.0.1:19090", ROOT / "deploy/grafana/dashboards")
"""

from __future__ import annotations

import ast
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[3]
DASHBOARDS_DIR = ROOT / "deploy" / "grafana" / "dashboards"
RULES_DIR = ROOT / "deploy" / "prometheus" / "rules"

# Where metrics are defined: every library and service, not their tests or generated code.
SOURCE_DIRS = ("libs", "services")
METRIC_CLASSES = frozenset({"Counter", "Gauge", "Histogram", "Summary", "Info", "Enum"})

# Series that exist without any Driftline code defining them.
BUILTIN_SERIES = frozenset(
    {
        "up",
        "scrape_duration_seconds",
        "scrape_samples_scraped",
        "scrape_samples_post_metric_relabeling",
        "scrape_series_added",
        "ALERTS",
        "ALERTS_FOR_STATE",
    }
)

# Grafana's built-in interval variables, replaced by fixed windows for an instant query.
GRAFANA_INTERVALS = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "5m",
}


# --- Metrics the code defines --------------------------------------------------------------------


@dataclass(frozen=True)
class MetricDefinition:
    """One ``prometheus_client`` metric constructed in the source."""

    name: str  # the family name as prometheus_client normalises it (no _total, no _info)
    kind: str  # Counter, Gauge, Histogram, Summary, Info or Enum
    labels: tuple[str, ...]
    path: str  # relative to the repository root
    line: int

    def series_names(self) -> tuple[str, ...]:
        """The sample names this metric is scraped as."""
        n = self.name
        return {
            "Counter": (f"{n}_total", f"{n}_created"),
            "Gauge": (n,),
            "Histogram": (f"{n}_bucket", f"{n}_count", f"{n}_sum", f"{n}_created"),
            "Summary": (f"{n}_count", f"{n}_sum", f"{n}_created"),
            "Info": (f"{n}_info",),
            "Enum": (n,),
        }[self.kind]


def _source_files(root: Path) -> Iterator[Path]:
    for base in SOURCE_DIRS:
        for path in sorted((root / base).rglob("*.py")):
            parts = path.relative_to(root).parts
            if "tests" in parts or "__pycache__" in parts:
                continue
            if parts[:2] == ("libs", "proto"):
                continue
            yield path


def _call_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _str_arg(call: ast.Call, position: int, keyword: str) -> str | None:
    node: ast.expr | None = None
    if len(call.args) > position:
        node = call.args[position]
    for kw in call.keywords:
        if kw.arg == keyword:
            node = kw.value
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _labels_arg(call: ast.Call) -> tuple[str, ...]:
    node: ast.expr | None = call.args[2] if len(call.args) > 2 else None
    for kw in call.keywords:
        if kw.arg == "labelnames":
            node = kw.value
    if isinstance(node, ast.List | ast.Tuple):
        return tuple(e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str))
    return ()


def _family_name(call: ast.Call, kind: str) -> str | None:
    """The name prometheus_client gives the family, or None when it is not a literal."""
    name = _str_arg(call, 0, "name")
    if name is None:
        return None
    parts = [p for p in (_str_arg(call, 99, "namespace"), _str_arg(call, 99, "subsystem"), name) if p]
    full = "_".join(parts)
    unit = _str_arg(call, 99, "unit")
    if unit and not full.endswith(f"_{unit}"):
        full = f"{full}_{unit}"
    if kind == "Counter" and full.endswith("_total"):
        full = full[: -len("_total")]
    return full


def defined_metrics(root: Path = ROOT) -> dict[str, MetricDefinition]:
    """Every metric family that the code under libs/ and services/ constructs, by family name."""
    found: dict[str, MetricDefinition] = {}
    for path in _source_files(root):
        try:
            tree = ast.parse(path.read_text(errors="replace"), filename=str(path))
        except SyntaxError:
            # A file mid-edit by its owner; its own lint and tests report it.
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            kind = _call_name(node.func)
            if kind not in METRIC_CLASSES:
                continue
            name = _family_name(node, kind)
            # Only metric-shaped literals: Counter() from collections has no string first argument.
            if name is None or not name.startswith("driftline_"):
                continue
            found[name] = MetricDefinition(
                name=name,
                kind=kind,
                labels=_labels_arg(node),
                path=str(path.relative_to(root)),
                line=node.lineno,
            )
    return found


def defined_series(root: Path = ROOT) -> dict[str, MetricDefinition]:
    """Every scraped sample name the code can produce, mapped to its definition."""
    series: dict[str, MetricDefinition] = {}
    for definition in defined_metrics(root).values():
        for name in definition.series_names():
            series[name] = definition
    return series


# --- Metrics an expression uses ------------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_BRACES = re.compile(r"\{[^{}]*\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w:.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])")
_NAME_MATCHER = re.compile(r'__name__\s*=\s*"([a-zA-Z_:][a-zA-Z0-9_:]*)"')
# Binary operators and modifiers spelled as words; functions and aggregations are told apart by the
# parenthesis that follows them.
_WORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
        "atan2",
        "inf",
        "nan",
        "start",
        "end",
    }
)


def referenced_metrics(expr: str) -> set[str]:
    """The metric (or recording-rule) names a PromQL expression selects."""
    names = set(_NAME_MATCHER.findall(expr))
    text = _STRING.sub('""', expr)
    text = _BRACES.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    # Durations ([5m], [1m:10s]) and numbers (0.99, 1e-3) are not names.
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"(?<![\w:])\d[\w.+-]*", " ", text)
    for match in _IDENT.finditer(text):
        word = match.group(1)
        if text[match.end() :].lstrip().startswith("(") or word.lower() in _WORDS:
            continue
        names.add(word)
    return names


def undefined_metrics(expr: str, series: Mapping[str, object], recorded: set[str]) -> set[str]:
    """The names ``expr`` uses that neither the code, a recording rule nor Prometheus defines."""
    return {
        n
        for n in referenced_metrics(expr)
        if n not in series and n not in recorded and n not in BUILTIN_SERIES
    }


# --- Rules ---------------------------------------------------------------------------------------


def load_rule_groups(rules_dir: Path = RULES_DIR) -> list[dict[str, Any]]:
    """Every rule group in the rule files that Prometheus loads (``rules/*.yml``)."""
    groups: list[dict[str, Any]] = []
    for path in sorted(rules_dir.glob("*.yml")):
        document = yaml.safe_load(path.read_text()) or {}
        groups.extend(document.get("groups", []))
    return groups


def recorded_names(groups: list[dict[str, Any]]) -> set[str]:
    return {rule["record"] for group in groups for rule in group.get("rules", []) if "record" in rule}


# --- Dashboards ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PanelQuery:
    """One query of one panel of one dashboard."""

    dashboard: str  # uid
    panel_id: int
    panel: str  # title
    ref_id: str
    expr: str

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel} [{self.ref_id}]: {self.expr}"


def load_dashboards(dashboards_dir: Path | str = DASHBOARDS_DIR) -> dict[str, dict[str, Any]]:
    """Every dashboard JSON file in the directory, by file name."""
    return {p.name: json.loads(p.read_text()) for p in sorted(Path(dashboards_dir).glob("*.json"))}


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows; rows themselves are skipped."""
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def panel_queries(dashboards_dir: Path | str = DASHBOARDS_DIR) -> list[PanelQuery]:
    queries = []
    for dashboard in load_dashboards(dashboards_dir).values():
        for panel in iter_panels(dashboard):
            for target in panel.get("targets", []):
                queries.append(
                    PanelQuery(
                        dashboard=dashboard["uid"],
                        panel_id=int(panel.get("id", 0)),
                        panel=panel.get("title", f"panel {panel.get('id')}"),
                        ref_id=target.get("refId", "?"),
                        expr=target.get("expr", ""),
                    )
                )
    return queries


def substitute_variables(expr: str, variables: Mapping[str, str] | None = None) -> str:
    """Replace Grafana variables with values Prometheus accepts in an instant query.

    Interval variables become fixed windows; a template variable takes its value from
    ``variables`` and otherwise ``.*`` (Grafana's "All"), which is why dashboards use template
    variables only in regex matchers (``=~"$model"``).
    """
    values = {**GRAFANA_INTERVALS, **(variables or {})}

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        return values.get(name, ".*")

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)", replace, expr)


# --- Against a real Prometheus -------------------------------------------------------------------


class PrometheusError(RuntimeError):
    """Prometheus refused a query or could not be reached."""


def query(prometheus_url: str, expr: str, *, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """An instant query through the HTTP API; returns its result list (vector or matrix)."""
    url = f"{prometheus_url.rstrip('/')}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as err:
        detail = err.read().decode(errors="replace")
        raise PrometheusError(f"HTTP {err.code} for {expr!r}: {detail}") from err
    except (urllib.error.URLError, TimeoutError) as err:
        raise PrometheusError(f"cannot reach Prometheus at {prometheus_url}: {err}") from err
    if body.get("status") != "success":
        raise PrometheusError(f"{expr!r}: {body.get('errorType')}: {body.get('error')}")
    data = body["data"]
    if data["resultType"] in ("scalar", "string"):
        return [{"value": data["result"]}]
    return list(data["result"])


def panels_without_data(
    prometheus_url: str,
    dashboards_dir: Path | str = DASHBOARDS_DIR,
    *,
    variables: Mapping[str, str] | None = None,
    strict: bool = False,
    incident_only: Mapping[tuple[str, int, str], str] | None = None,
) -> list[tuple[PanelQuery, str]]:
    """The queries of every panel that shows nothing, each with the reason.

    A panel shows data when any of its queries returns a series: a panel may pair a metric that
    always has series with one that only has some after an incident (requests and rejections,
    say). ``strict`` asks for data from every query instead, except those ``incident_only``
    names by (dashboard uid, panel id, ref id), each with why it may be empty; a name there
    that matches no query is an error, so the list cannot go stale.
    """
    queries = panel_queries(dashboards_dir)
    exempt = dict(incident_only or {})
    unknown = set(exempt) - {(q.dashboard, q.panel_id, q.ref_id) for q in queries}
    if unknown:
        raise ValueError(f"incident_only names queries the dashboards do not have: {sorted(unknown)}")
    by_panel: dict[tuple[str, int], list[tuple[PanelQuery, str | None]]] = {}
    for panel_query in queries:
        expr = substitute_variables(panel_query.expr, variables)
        reason: str | None = None
        try:
            if not query(prometheus_url, expr):
                reason = f"no series for {expr}"
        except PrometheusError as err:
            reason = str(err)
        by_panel.setdefault((panel_query.dashboard, panel_query.panel_id), []).append((panel_query, reason))
    failing: list[tuple[PanelQuery, str]] = []
    for results in by_panel.values():
        empty = [(q, why) for q, why in results if why is not None]
        errors = [(q, why) for q, why in empty if not why.startswith("no series")]
        if strict:
            failing.extend((q, why) for q, why in empty if (q.dashboard, q.panel_id, q.ref_id) not in exempt)
            failing.extend((q, why) for q, why in errors if (q.dashboard, q.panel_id, q.ref_id) in exempt)
        elif len(empty) == len(results):
            failing.extend(empty)
        else:
            failing.extend(errors)  # a query Prometheus refuses is a bug even beside one with data
    return failing


def assert_all_panels_return_data(
    prometheus_url: str,
    dashboards_dir: Path | str = DASHBOARDS_DIR,
    *,
    variables: Mapping[str, str] | None = None,
    strict: bool = False,
    incident_only: Mapping[tuple[str, int, str], str] | None = None,
    wait_s: float = 0.0,
    poll_s: float = 2.0,
) -> None:
    """Fail with every dashboard panel whose queries return no series from ``prometheus_url``.

    Runs each panel query as an instant query through ``/api/v1/query``, with Grafana's
    interval variables replaced by fixed windows (``$__rate_interval`` is 1m) and template
    variables by ``variables`` or ``.*``. ``wait_s`` keeps asking until every panel has data or
    that many seconds have passed (a freshly started service needs a scrape or two before a
    rate exists). See :func:`panels_without_data` for ``strict`` and ``incident_only``.
    """
    deadline = time.monotonic() + wait_s
    while True:
        failing = panels_without_data(
            prometheus_url, dashboards_dir, variables=variables, strict=strict, incident_only=incident_only
        )
        if not failing or time.monotonic() >= deadline:
            break
        time.sleep(poll_s)
    if failing:
        panels = {(q.dashboard, q.panel_id) for q, _ in failing}
        total = len({(q.dashboard, q.panel_id) for q in panel_queries(dashboards_dir)})
        lines = "\n".join(f"  - {q.dashboard} / {q.panel} [{q.ref_id}]: {why}" for q, why in failing)
        raise AssertionError(f"{len(panels)} of {total} panels show no data from {prometheus_url}:\n{lines}")
