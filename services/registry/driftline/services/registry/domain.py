"""The registry's domain types. They know nothing of protobuf, gRPC, SQL or Kafka."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class TensorSpec:
    name: str
    #: KServe v2 datatype name (FP32, INT64, ...), or the ONNX type for non-tensors.
    datatype: str
    #: -1 for a dynamic dimension.
    shape: tuple[int, ...] = ()


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    #: Feature names in input column order.
    feature_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Lineage:
    data_start: datetime | None = None
    data_end: datetime | None = None
    data_hash: str = ""
    code_revision: str = ""
    parent_version: int = 0
    trigger: str = ""
    trigger_id: str = ""
    run_id: str = ""


@dataclass(frozen=True)
class ReferenceSample:
    feature_names: tuple[str, ...]
    rows: int
    #: Row-major, rows * len(feature_names) values.
    values: Sequence[float]
    #: Model scores on the same rows (empty or one per row).
    scores: Sequence[float] = ()


@dataclass(frozen=True)
class NewVersion:
    """What a caller hands in to register a version."""

    name: str
    artifact: bytes
    signature: Signature = field(default_factory=Signature)
    feature_set: str = ""
    feature_set_version: int = 0
    metrics: Mapping[str, float] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)
    lineage: Lineage = field(default_factory=Lineage)
    reference: ReferenceSample | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    reason: str = ""


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    artifact_sha256: str
    artifact_size: int
    signature: Signature
    feature_set: str
    feature_set_version: int
    metrics: Mapping[str, float]
    params: Mapping[str, str]
    lineage: Lineage
    reference: ReferenceSample | None
    tags: Mapping[str, str]
    created_at: datetime
    created_by: str
    aliases: tuple[str, ...] = ()
    #: When the version was archived; None while it is live.
    archived_at: datetime | None = None


@dataclass(frozen=True)
class AliasChange:
    name: str
    alias: str
    previous_version: int
    #: 0 when the alias was deleted.
    version: int
    audit_seq: int


@dataclass(frozen=True)
class ModelLock:
    name: str
    owner: str
    locked: bool


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    at: datetime
    actor: str
    action: str
    model_name: str
    #: What the action was about: the alias, the version number, the run id or the lock owner.
    subject: str
    reason: str
    before_json: str
    after_json: str
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class AuditVerification:
    ok: bool
    records: int
    #: First sequence number that does not verify; 0 when ok.
    broken_at: int = 0


class RunOutcome(enum.IntEnum):
    """Same numbers as driftline.registry.v1.RunOutcome."""

    UNSPECIFIED = 0
    PROMOTED = 1
    REJECTED = 2
    PENDING_APPROVAL = 3
    FAILED = 4
    DEFERRED = 5


@dataclass(frozen=True)
class Run:
    run_id: str
    model_name: str
    params: Mapping[str, str] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    data_start: datetime | None = None
    data_end: datetime | None = None
    data_hash: str = ""
    code_revision: str = ""
    duration_seconds: float = 0.0
    outcome: RunOutcome = RunOutcome.UNSPECIFIED
    outcome_reason: str = ""
    version: int = 0
    trigger: str = ""
    trigger_id: str = ""
    started_at: datetime | None = None


class EventType(enum.IntEnum):
    """Same numbers as driftline.registry.v1.ModelEventType."""

    UNSPECIFIED = 0
    VERSION_REGISTERED = 1
    ALIAS_SET = 2
    ALIAS_DELETED = 3
    LOCKED = 4
    UNLOCKED = 5
    RUN_RECORDED = 6
    VERSION_ARCHIVED = 7


class Action(enum.StrEnum):
    """Audit actions; each one has the event type announced with it."""

    VERSION_REGISTERED = "version_registered"
    ALIAS_SET = "alias_set"
    ALIAS_DELETED = "alias_deleted"
    LOCKED = "locked"
    UNLOCKED = "unlocked"
    RUN_RECORDED = "run_recorded"
    VERSION_ARCHIVED = "version_archived"

    @property
    def event_type(self) -> EventType:
        return EventType[self.name]


@dataclass(frozen=True)
class ModelEvent:
    """A change announcement, written to the outbox in the change's own transaction."""

    event_id: str
    type: EventType
    model_name: str
    occurred_at: datetime
    audit_seq: int
    actor: str = ""
    reason: str = ""
    version: int = 0
    alias: str = ""
    previous_version: int = 0
    artifact_sha256: str = ""
    run_id: str = ""
