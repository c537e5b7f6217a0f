"""In-memory stand-ins for the trainer's collaborators, for unit tests (like MLServer's SumModel).

``InMemoryRegistry`` keeps the registry's contract that matters to the trainer: versions
numbered from 1, aliases moved only by compare-and-swap (``Aborted`` otherwise), ``NotFound``
for unknown versions and aliases, archiving refused while an alias points at a version (and an
archived version never aliased: ``FailedPrecondition``), and an audit list of every alias
change and archive with its reason.
``FrameFeatureSource`` answers point-in-time lookups from a data frame of feature rows.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from driftline.kit.codec import to_timestamp, utcnow
from driftline.kit.errors import Aborted, FailedPrecondition, NotFound
from driftline.registry.v1 import registry_pb2
from driftline.services.trainer.dataset import canonical_hash


@dataclass
class AuditEntry:
    action: str
    alias: str
    version: int
    previous_version: int
    reason: str


@dataclass
class InMemoryRegistry:
    versions: dict[str, list[registry_pb2.ModelVersion]] = field(default_factory=dict)
    artifacts: dict[tuple[str, int], bytes] = field(default_factory=dict)
    aliases: dict[tuple[str, str], int] = field(default_factory=dict)
    runs: list[registry_pb2.Run] = field(default_factory=list)
    audit: list[AuditEntry] = field(default_factory=list)
    archived: set[tuple[str, int]] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def register(self, request: registry_pb2.RegisterModelVersionRequest) -> registry_pb2.ModelVersion:
        with self._lock:
            versions = self.versions.setdefault(request.name, [])
            number = len(versions) + 1
            mv = registry_pb2.ModelVersion(
                name=request.name,
                version=number,
                artifact_sha256=hashlib.sha256(request.artifact).hexdigest(),
                artifact_size=len(request.artifact),
                signature=request.signature,
                feature_set=request.feature_set,
                feature_set_version=request.feature_set_version,
                metrics=request.metrics,
                params=request.params,
                lineage=request.lineage,
                reference=request.reference,
                tags=request.tags,
                created_at=to_timestamp(utcnow()),
            )
            versions.append(mv)
            self.artifacts[(request.name, number)] = bytes(request.artifact)
            self.audit.append(AuditEntry("register", "", number, 0, request.reason))
            return mv

    def set_alias(
        self, name: str, alias: str, version: int, expected_version: int, reason: str
    ) -> registry_pb2.AliasChange:
        with self._lock:
            current = self.aliases.get((name, alias), 0)
            if current != expected_version:
                raise Aborted(f"alias {alias} points at v{current}, not v{expected_version}")
            if (name, version) not in self.artifacts:
                raise NotFound(f"{name} v{version} does not exist")
            if (name, version) in self.archived:
                raise FailedPrecondition(f"{name} v{version} is archived")
            self.aliases[(name, alias)] = version
            self.audit.append(AuditEntry("set_alias", alias, version, current, reason))
            return registry_pb2.AliasChange(name=name, alias=alias, previous_version=current, version=version)

    def get_version(
        self, name: str, *, version: int | None = None, alias: str | None = None
    ) -> registry_pb2.ModelVersion:
        with self._lock:
            if alias is not None:
                version = self.aliases.get((name, alias))
                if version is None:
                    raise NotFound(f"{name} has no alias {alias}")
            for mv in self.versions.get(name, []):
                if mv.version == version:
                    return mv
            raise NotFound(f"{name} v{version} does not exist")

    def fetch_artifact(self, name: str, version: int) -> bytes:
        with self._lock:
            try:
                return self.artifacts[(name, version)]
            except KeyError:
                raise NotFound(f"{name} v{version} does not exist") from None

    def record_run(self, run: registry_pb2.Run) -> registry_pb2.Run:
        with self._lock:
            self.runs.append(run)
            return run

    def list_versions(self, name: str) -> list[registry_pb2.ModelVersion]:
        """Copies of ``name``'s versions with their aliases and archive times, as the registry lists."""
        with self._lock:
            listed = []
            for mv in self.versions.get(name, []):
                copy = registry_pb2.ModelVersion()
                copy.CopyFrom(mv)
                copy.ClearField("reference")
                copy.aliases.extend(self._pointing_at(name, mv.version))
                if (name, mv.version) in self.archived:
                    copy.archived_at.CopyFrom(to_timestamp(utcnow()))
                listed.append(copy)
            return listed

    def archive(self, name: str, version: int, reason: str) -> registry_pb2.ModelVersion:
        with self._lock:
            if (name, version) not in self.artifacts:
                raise NotFound(f"{name} v{version} does not exist")
            pointing = self._pointing_at(name, version)
            if pointing:
                raise FailedPrecondition(f"{', '.join(pointing)} of {name} point at v{version}")
            if (name, version) not in self.archived:
                self.archived.add((name, version))
                self.audit.append(AuditEntry("archive", "", version, 0, reason))
            return self.versions[name][version - 1]

    def _pointing_at(self, name: str, version: int) -> list[str]:
        return sorted(alias for (model, alias), v in self.aliases.items() if model == name and v == version)

    def champion(self, name: str = "fraud") -> int:
        return self.aliases.get((name, "champion"), 0)


class FrameFeatureSource:
    """Point-in-time lookups over a frame of feature rows (entity_id, event_time, features...).

    Each label row gets the newest feature row of its entity at or before its event time.
    """

    def __init__(
        self,
        rows: pd.DataFrame,
        feature_names: Sequence[str],
        *,
        feature_set: str = "test_features",
        feature_set_version: int = 1,
    ) -> None:
        rows = rows.assign(event_time=pd.to_datetime(rows["event_time"], utc=True).dt.as_unit("us"))
        self._rows = rows.sort_values("event_time", kind="mergesort").reset_index(drop=True)
        self._names = list(feature_names)
        self._feature_set = feature_set
        self._version = feature_set_version

    @property
    def feature_set(self) -> str:
        return self._feature_set

    @property
    def feature_set_version(self) -> int:
        return self._version

    @property
    def feature_names(self) -> Sequence[str]:
        return self._names

    def join(self, labels: pd.DataFrame) -> pd.DataFrame:
        left = labels.reset_index()
        left["event_time"] = pd.to_datetime(left["event_time"], utc=True).dt.as_unit("us")
        left = left.sort_values("event_time", kind="mergesort")
        right = self._rows[["entity_id", "event_time", *self._names]]
        merged = pd.merge_asof(
            left, right, on="event_time", by="entity_id", direction="backward", allow_exact_matches=True
        )
        return merged.sort_values("index").drop(columns="index").reset_index(drop=True)

    def content_hash(self, frame: pd.DataFrame) -> str:
        return canonical_hash(frame, self._names)
