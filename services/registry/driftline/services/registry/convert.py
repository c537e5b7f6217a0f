"""Protobuf <-> domain conversions for the servicer and the outbox relay."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from driftline.kit.codec import from_timestamp, to_timestamp
from driftline.kit.errors import InvalidArgument
from driftline.registry.v1 import registry_pb2 as pb
from driftline.services.registry.domain import (
    AliasChange,
    AuditRecord,
    AuditVerification,
    EventType,
    Lineage,
    ModelEvent,
    ModelLock,
    ModelVersion,
    NewVersion,
    ReferenceSample,
    Run,
    RunOutcome,
    Signature,
    TensorSpec,
)


def _time(ts: Timestamp, present: bool) -> datetime | None:
    return from_timestamp(ts) if present else None


def _set_time(target: Timestamp, moment: datetime | None) -> None:
    if moment is not None:
        target.CopyFrom(to_timestamp(moment))


def signature_from_pb(message: pb.Signature) -> Signature:
    return Signature(
        inputs=tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in message.inputs),
        outputs=tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in message.outputs),
        feature_names=tuple(message.feature_names),
    )


def signature_to_pb(signature: Signature) -> pb.Signature:
    return pb.Signature(
        inputs=[pb.TensorSpec(name=t.name, datatype=t.datatype, shape=t.shape) for t in signature.inputs],
        outputs=[pb.TensorSpec(name=t.name, datatype=t.datatype, shape=t.shape) for t in signature.outputs],
        feature_names=signature.feature_names,
    )


def lineage_from_pb(message: pb.Lineage) -> Lineage:
    return Lineage(
        data_start=_time(message.data_start, message.HasField("data_start")),
        data_end=_time(message.data_end, message.HasField("data_end")),
        data_hash=message.data_hash,
        code_revision=message.code_revision,
        parent_version=message.parent_version,
        trigger=message.trigger,
        trigger_id=message.trigger_id,
        run_id=message.run_id,
    )


def lineage_to_pb(lineage: Lineage) -> pb.Lineage:
    message = pb.Lineage(
        data_hash=lineage.data_hash,
        code_revision=lineage.code_revision,
        parent_version=lineage.parent_version,
        trigger=lineage.trigger,
        trigger_id=lineage.trigger_id,
        run_id=lineage.run_id,
    )
    _set_time(message.data_start, lineage.data_start)
    _set_time(message.data_end, lineage.data_end)
    return message


def reference_from_pb(message: pb.ReferenceSample) -> ReferenceSample | None:
    if message.rows == 0 and not message.values and not message.feature_names:
        return None
    return ReferenceSample(
        feature_names=tuple(message.feature_names),
        rows=message.rows,
        values=list(message.values),
        scores=list(message.scores),
    )


def reference_to_pb(reference: ReferenceSample) -> pb.ReferenceSample:
    return pb.ReferenceSample(
        feature_names=reference.feature_names,
        rows=reference.rows,
        values=reference.values,
        scores=reference.scores,
    )


def new_version_from_pb(request: pb.RegisterModelVersionRequest) -> NewVersion:
    return NewVersion(
        name=request.name,
        artifact=request.artifact,
        signature=signature_from_pb(request.signature),
        feature_set=request.feature_set,
        feature_set_version=request.feature_set_version,
        metrics=dict(request.metrics),
        params=dict(request.params),
        lineage=lineage_from_pb(request.lineage),
        reference=reference_from_pb(request.reference) if request.HasField("reference") else None,
        tags=dict(request.tags),
        reason=request.reason,
    )


def version_to_pb(mv: ModelVersion) -> pb.ModelVersion:
    message = pb.ModelVersion(
        name=mv.name,
        version=mv.version,
        artifact_sha256=mv.artifact_sha256,
        artifact_size=mv.artifact_size,
        signature=signature_to_pb(mv.signature),
        feature_set=mv.feature_set,
        feature_set_version=mv.feature_set_version,
        metrics=dict(mv.metrics),
        params=dict(mv.params),
        lineage=lineage_to_pb(mv.lineage),
        tags=dict(mv.tags),
        created_by=mv.created_by,
        aliases=mv.aliases,
    )
    if mv.reference is not None:
        message.reference.CopyFrom(reference_to_pb(mv.reference))
    _set_time(message.created_at, mv.created_at)
    _set_time(message.archived_at, mv.archived_at)
    return message


def alias_change_to_pb(change: AliasChange) -> pb.AliasChange:
    return pb.AliasChange(
        name=change.name,
        alias=change.alias,
        previous_version=change.previous_version,
        version=change.version,
        audit_seq=change.audit_seq,
    )


def lock_to_pb(lock: ModelLock) -> pb.ModelLock:
    return pb.ModelLock(name=lock.name, owner=lock.owner, locked=lock.locked)


def audit_to_pb(record: AuditRecord) -> pb.AuditRecord:
    message = pb.AuditRecord(
        seq=record.seq,
        actor=record.actor,
        action=record.action,
        model_name=record.model_name,
        reason=record.reason,
        before_json=record.before_json,
        after_json=record.after_json,
        prev_hash=record.prev_hash,
        hash=record.hash,
    )
    _set_time(message.at, record.at)
    return message


def verification_to_pb(result: AuditVerification) -> pb.VerifyAuditResponse:
    return pb.VerifyAuditResponse(ok=result.ok, records=result.records, broken_at=result.broken_at)


def run_from_pb(message: pb.Run) -> Run:
    try:
        outcome = RunOutcome(message.outcome)
    except ValueError as err:
        raise InvalidArgument(f"unknown run outcome {message.outcome}") from err
    return Run(
        run_id=message.run_id,
        model_name=message.model_name,
        params=dict(message.params),
        metrics=dict(message.metrics),
        data_start=_time(message.data_start, message.HasField("data_start")),
        data_end=_time(message.data_end, message.HasField("data_end")),
        data_hash=message.data_hash,
        code_revision=message.code_revision,
        duration_seconds=message.duration_seconds,
        outcome=outcome,
        outcome_reason=message.outcome_reason,
        version=message.version,
        trigger=message.trigger,
        trigger_id=message.trigger_id,
        started_at=_time(message.started_at, message.HasField("started_at")),
    )


def run_to_pb(run: Run) -> pb.Run:
    message = pb.Run(
        run_id=run.run_id,
        model_name=run.model_name,
        params=dict(run.params),
        metrics=dict(run.metrics),
        data_hash=run.data_hash,
        code_revision=run.code_revision,
        duration_seconds=run.duration_seconds,
        outcome=int(run.outcome),  # type: ignore[arg-type]
        outcome_reason=run.outcome_reason,
        version=run.version,
        trigger=run.trigger,
        trigger_id=run.trigger_id,
    )
    _set_time(message.data_start, run.data_start)
    _set_time(message.data_end, run.data_end)
    _set_time(message.started_at, run.started_at)
    return message


def event_to_pb(event: ModelEvent) -> pb.ModelEvent:
    message = pb.ModelEvent(
        event_id=event.event_id,
        type=int(event.type),  # type: ignore[arg-type]
        model_name=event.model_name,
        version=event.version,
        alias=event.alias,
        previous_version=event.previous_version,
        actor=event.actor,
        reason=event.reason,
        audit_seq=event.audit_seq,
        artifact_sha256=event.artifact_sha256,
        run_id=event.run_id,
    )
    _set_time(message.occurred_at, event.occurred_at)
    return message


def encode_event(event: ModelEvent) -> bytes:
    """The Kafka value of a model event: a serialised driftline.registry.v1.ModelEvent."""
    return event_to_pb(event).SerializeToString()


def event_type_name(event_type: EventType) -> str:
    return pb.ModelEventType.Name(int(event_type))  # type: ignore[arg-type]
