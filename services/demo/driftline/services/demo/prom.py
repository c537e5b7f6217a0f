"""A small Prometheus HTTP API client: instant and range queries."""

from __future__ import annotations

import math
from dataclasses import dataclass

import requests


@dataclass(frozen=True)
class Series:
    labels: dict[str, str]
    points: list[tuple[float, float]]


class Prometheus:
    def __init__(self, url: str, timeout_s: float = 3.0) -> None:
        self._url = url.rstrip("/")
        self._timeout_s = timeout_s

    def query(self, promql: str) -> list[Series]:
        return self._get("/api/v1/query", {"query": promql})

    def scalar(self, promql: str) -> float | None:
        """The first sample of an instant query, or None when it returns nothing (or NaN)."""
        try:
            series = self.query(promql)
        except requests.RequestException:
            return None
        for s in series:
            value = s.points[-1][1]
            if not math.isnan(value):
                return value
        return None

    def query_range(self, promql: str, start: float, end: float, step_s: float) -> list[Series]:
        return self._get("/api/v1/query_range", {"query": promql, "start": start, "end": end, "step": step_s})

    def _get(self, path: str, params: dict[str, str | float]) -> list[Series]:
        reply = requests.get(self._url + path, params=params, timeout=self._timeout_s)
        reply.raise_for_status()
        data = reply.json()["data"]
        out = []
        for item in data["result"]:
            if "values" in item:
                points = [(float(t), float(v)) for t, v in item["values"]]
            else:
                t, v = item["value"]
                points = [(float(t), float(v))]
            out.append(Series(item.get("metric", {}), points))
        return out
