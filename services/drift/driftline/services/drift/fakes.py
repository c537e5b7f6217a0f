"""Test doubles: a scripted detector backend and an in-memory reference source."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from driftline.kit.errors import NotFound, Unavailable
from driftline.registry.v1 import registry_pb2
from driftline.services.drift.detectors import (
    Detector,
    FeatureSpec,
    FeatureStat,
    OnlineConfig,
    Status,
    Stream,
    Verdict,
    WindowConfig,
)


class ScriptedDetector:
    """DRIFT for every row whose first column is above 0.5; one verdict per ``every`` rows."""

    def __init__(self, name: str, specs: Sequence[FeatureSpec], every: int = 1) -> None:
        self.name = name
        self.specs = list(specs)
        self.every = every
        self.rows_seen: list[np.ndarray] = []

    def update(self, rows: np.ndarray, times: np.ndarray) -> list[Verdict]:
        verdicts = []
        for i, row in enumerate(rows):
            self.rows_seen.append(row)
            if len(self.rows_seen) % self.every:
                continue
            drifted = bool(row[0] > 0.5)
            stat = FeatureStat(
                self.specs[0].name, "fake", statistic=float(row[0]), threshold=0.5, drifted=drifted
            )
            verdicts.append(
                Verdict(
                    Status.DRIFT if drifted else Status.NO_DRIFT,
                    (stat,),
                    window_size=self.every,
                    window_start=float(times[i]),
                    window_end=float(times[i]),
                    reason="fake" if drifted else "",
                    row=i,
                )
            )
        return verdicts

    def reset(self) -> None:
        self.rows_seen = []


class ScriptedFactory:
    """Builds one ``ScriptedDetector`` named "window" per stream, and remembers what it built."""

    def __init__(self) -> None:
        self.builds: list[tuple[Stream, np.ndarray, list[FeatureSpec]]] = []
        self.detectors: dict[Stream, ScriptedDetector] = {}

    def build(
        self,
        stream: Stream,
        reference: np.ndarray,
        specs: Sequence[FeatureSpec],
        *,
        window: WindowConfig | None,
        online: OnlineConfig | None,
    ) -> list[Detector]:
        self.builds.append((stream, reference, list(specs)))
        detector = ScriptedDetector("window", specs)
        self.detectors[stream] = detector
        return [detector]


def model_version(
    version: int,
    feature_names: Sequence[str],
    values: np.ndarray,
    scores: np.ndarray | None = None,
    *,
    name: str = "fraud",
    decision_threshold: float | None = None,
    feature_set: str = "",
) -> registry_pb2.ModelVersion:
    values = np.asarray(values, dtype=float)
    params = {} if decision_threshold is None else {"decision_threshold": str(decision_threshold)}
    return registry_pb2.ModelVersion(
        name=name,
        version=version,
        feature_set=feature_set,
        params=params,
        reference=registry_pb2.ReferenceSample(
            feature_names=list(feature_names),
            rows=values.shape[0],
            values=values.ravel().tolist(),
            scores=[] if scores is None else np.asarray(scores, dtype=float).tolist(),
        ),
    )


class InMemoryReferenceSource:
    """Aliases pointing at registered versions; ``down`` makes every call fail as Unavailable."""

    def __init__(self) -> None:
        self.versions: dict[tuple[str, int], registry_pb2.ModelVersion] = {}
        self.aliases: dict[tuple[str, str], int] = {}
        self.down = False
        self.calls = 0

    def add(self, version: registry_pb2.ModelVersion, *, alias: str | None = None) -> None:
        self.versions[(version.name, version.version)] = version
        if alias:
            self.aliases[(version.name, alias)] = version.version

    def get_version(self, name: str, *, alias: str) -> registry_pb2.ModelVersion:
        self.calls += 1
        if self.down:
            raise Unavailable("registry is down")
        number = self.aliases.get((name, alias))
        if number is None:
            raise NotFound(f"no alias {alias} on {name}")
        return self.versions[(name, number)]
