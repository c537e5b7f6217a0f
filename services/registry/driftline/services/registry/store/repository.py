"""Queries on models, versions, aliases, locks and runs. Each function takes the caller's
connection, so a change, its audit record and its outbox event share one transaction."""

from __future__ import annotations

import json
from array import array
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Row, and_, delete, func, insert, or_, select, true, update

from driftline.services.registry.domain import (
    Lineage,
    ModelVersion,
    ReferenceSample,
    Run,
    RunOutcome,
    Signature,
    TensorSpec,
)
from driftline.services.registry.store.schema import (
    aliases,
    archived,
    models,
    references,
    runs,
    versions,
)

# --- Encoding -----------------------------------------------------------------------------------


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def to_us(moment: datetime) -> int:
    """Exact integer microseconds since the epoch."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: registry times are timezone-aware UTC")
    return (moment - _EPOCH) // _MICROSECOND


def from_us(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def _opt_us(moment: datetime | None) -> int | None:
    return None if moment is None else to_us(moment)


def _opt_dt(value: int | None) -> datetime | None:
    return None if value is None else from_us(value)


def dumps(value: Any) -> str:
    """Canonical JSON: sorted keys, no spaces; the audit hash depends on it being stable."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def signature_json(signature: Signature) -> str:
    return dumps(
        {
            "inputs": [[t.name, t.datatype, list(t.shape)] for t in signature.inputs],
            "outputs": [[t.name, t.datatype, list(t.shape)] for t in signature.outputs],
            "feature_names": list(signature.feature_names),
        }
    )


def _signature(text: str) -> Signature:
    data = json.loads(text)
    return Signature(
        inputs=tuple(TensorSpec(n, d, tuple(s)) for n, d, s in data["inputs"]),
        outputs=tuple(TensorSpec(n, d, tuple(s)) for n, d, s in data["outputs"]),
        feature_names=tuple(data["feature_names"]),
    )


def lineage_json(lineage: Lineage) -> str:
    return dumps(
        {
            "data_start_us": _opt_us(lineage.data_start),
            "data_end_us": _opt_us(lineage.data_end),
            "data_hash": lineage.data_hash,
            "code_revision": lineage.code_revision,
            "parent_version": lineage.parent_version,
            "trigger": lineage.trigger,
            "trigger_id": lineage.trigger_id,
            "run_id": lineage.run_id,
        }
    )


def _lineage(text: str) -> Lineage:
    data = json.loads(text)
    return Lineage(
        data_start=_opt_dt(data["data_start_us"]),
        data_end=_opt_dt(data["data_end_us"]),
        data_hash=data["data_hash"],
        code_revision=data["code_revision"],
        parent_version=data["parent_version"],
        trigger=data["trigger"],
        trigger_id=data["trigger_id"],
        run_id=data["run_id"],
    )


def _floats(values: Sequence[float]) -> bytes:
    packed = array("d", values)
    if packed.itemsize != 8:  # pragma: no cover - every supported platform has 8-byte doubles
        raise RuntimeError("float64 is not 8 bytes here")
    return packed.tobytes()


def _unfloats(blob: bytes) -> list[float]:
    packed = array("d")
    packed.frombytes(blob)
    return packed.tolist()


# --- Models and versions ------------------------------------------------------------------------


def lock_model_row(conn: Connection, name: str) -> Row[Any] | None:
    """The model's row, locked until the transaction ends (PostgreSQL; SQLite holds the
    database write lock already)."""
    return conn.execute(select(models).where(models.c.name == name).with_for_update()).first()


def allocate_version(conn: Connection, name: str, now_us: int) -> int:
    """The next version number of ``name``, creating the model on its first version."""
    allocated = conn.execute(
        update(models)
        .where(models.c.name == name)
        .values(latest_version=models.c.latest_version + 1)
        .returning(models.c.latest_version)
    ).scalar()
    if allocated is not None:
        return int(allocated)
    # A concurrent first registration makes this INSERT fail on the primary key; the caller retries.
    conn.execute(insert(models).values(name=name, latest_version=1, locked=False, created_at_us=now_us))
    return 1


def insert_version(conn: Connection, mv: ModelVersion) -> None:
    conn.execute(
        insert(versions).values(
            name=mv.name,
            version=mv.version,
            artifact_sha256=mv.artifact_sha256,
            artifact_size=mv.artifact_size,
            signature_json=signature_json(mv.signature),
            feature_set=mv.feature_set,
            feature_set_version=mv.feature_set_version,
            metrics_json=dumps(dict(mv.metrics)),
            params_json=dumps(dict(mv.params)),
            lineage_json=lineage_json(mv.lineage),
            run_id=mv.lineage.run_id,
            tags_json=dumps(dict(mv.tags)),
            created_at_us=to_us(mv.created_at),
            created_by=mv.created_by,
        )
    )
    if mv.reference is not None:
        conn.execute(
            insert(references).values(
                name=mv.name,
                version=mv.version,
                feature_names_json=dumps(list(mv.reference.feature_names)),
                rows=mv.reference.rows,
                values=_floats(mv.reference.values),
                scores=_floats(mv.reference.scores),
            )
        )


def _version(
    conn: Connection,
    row: Row[Any],
    *,
    with_reference: bool,
    aliases_of: dict[tuple[str, int], list[str]] | None = None,
) -> ModelVersion:
    """The version of ``row``; ``aliases_of``: its model's aliases, read once for a listing."""
    reference = None
    if with_reference:
        ref = conn.execute(
            select(references).where(and_(references.c.name == row.name, references.c.version == row.version))
        ).first()
        if ref is not None:
            reference = ReferenceSample(
                feature_names=tuple(json.loads(ref.feature_names_json)),
                rows=ref.rows,
                values=_unfloats(ref.values),
                scores=_unfloats(ref.scores),
            )
    if aliases_of is None:
        aliases_of = _aliases_of(conn, and_(aliases.c.name == row.name, aliases.c.version == row.version))
    names = aliases_of.get((row.name, row.version), [])
    return ModelVersion(
        name=row.name,
        version=row.version,
        artifact_sha256=row.artifact_sha256,
        artifact_size=row.artifact_size,
        signature=_signature(row.signature_json),
        feature_set=row.feature_set,
        feature_set_version=row.feature_set_version,
        metrics=json.loads(row.metrics_json),
        params=json.loads(row.params_json),
        lineage=_lineage(row.lineage_json),
        reference=reference,
        tags=json.loads(row.tags_json),
        created_at=from_us(row.created_at_us),
        created_by=row.created_by,
        aliases=tuple(names),
        archived_at=_opt_dt(row.archived_at_us),
    )


def _aliases_of(conn: Connection, where: Any) -> dict[tuple[str, int], list[str]]:
    """Alias names by (model, version), in name order, for the alias rows ``where`` selects."""
    found: dict[tuple[str, int], list[str]] = {}
    query = select(aliases.c.name, aliases.c.version, aliases.c.alias).where(where).order_by(aliases.c.alias)
    for name, version, alias in conn.execute(query):
        found.setdefault((name, version), []).append(alias)
    return found


def _versions_query() -> Any:
    """Version rows with their archive time (NULL while live)."""
    joined = versions.outerjoin(
        archived, and_(archived.c.name == versions.c.name, archived.c.version == versions.c.version)
    )
    return select(versions, archived.c.archived_at_us).select_from(joined)


def get_version(
    conn: Connection, name: str, version: int, *, with_reference: bool = True
) -> ModelVersion | None:
    row = conn.execute(
        _versions_query().where(and_(versions.c.name == name, versions.c.version == version))
    ).first()
    return None if row is None else _version(conn, row, with_reference=with_reference)


def _is_archived_row() -> Any:
    """Correlated test, inside a query over ``versions``: is this row's version archived?"""
    return (
        select(archived.c.version)
        .where(and_(archived.c.name == versions.c.name, archived.c.version == versions.c.version))
        .exists()
    )


def latest_live_version_number(conn: Connection, name: str) -> int:
    """The newest version of ``name`` that is not archived; 0 when there is none."""
    query = select(func.max(versions.c.version)).where(and_(versions.c.name == name, ~_is_archived_row()))
    return int(conn.execute(query).scalar() or 0)


def version_exists(conn: Connection, name: str, version: int) -> bool:
    return (
        conn.execute(
            select(versions.c.version).where(and_(versions.c.name == name, versions.c.version == version))
        ).first()
        is not None
    )


def find_version_for_run(conn: Connection, name: str, run_id: str, sha256: str) -> int | None:
    """The version a run already registered with this artifact (makes a retried register a no-op)."""
    return conn.execute(
        select(versions.c.version).where(
            and_(versions.c.name == name, versions.c.run_id == run_id, versions.c.artifact_sha256 == sha256)
        )
    ).scalar()


def list_versions(conn: Connection, name: str | None) -> list[ModelVersion]:
    """Every version of ``name`` (of every model when None), in two queries however many."""
    query = _versions_query().order_by(versions.c.name, versions.c.version)
    if name:
        query = query.where(versions.c.name == name)
    aliases_of = _aliases_of(conn, aliases.c.name == name if name else true())
    return [_version(conn, row, with_reference=False, aliases_of=aliases_of) for row in conn.execute(query)]


def is_archived(conn: Connection, name: str, version: int) -> bool:
    return (
        conn.execute(
            select(archived.c.version).where(and_(archived.c.name == name, archived.c.version == version))
        ).first()
        is not None
    )


def archive_version(conn: Connection, name: str, version: int, now_us: int) -> None:
    """Mark the version archived and drop its reference sample (no detector will read it)."""
    conn.execute(insert(archived).values(name=name, version=version, archived_at_us=now_us))
    conn.execute(delete(references).where(and_(references.c.name == name, references.c.version == version)))


def live_digests(conn: Connection, digest: str | None = None) -> set[str]:
    """The artifact digests some live (not archived) version uses; only ``digest``, if given."""
    query = select(versions.c.artifact_sha256).where(~_is_archived_row()).distinct()
    if digest is not None:
        query = query.where(versions.c.artifact_sha256 == digest)
    return set(conn.execute(query).scalars())


def model_exists(conn: Connection, name: str) -> bool:
    return conn.execute(select(models.c.name).where(models.c.name == name)).first() is not None


# --- Aliases ------------------------------------------------------------------------------------


def alias_version(conn: Connection, name: str, alias: str) -> int:
    """Where the alias points now; 0 when unset."""
    found = conn.execute(
        select(aliases.c.version).where(and_(aliases.c.name == name, aliases.c.alias == alias))
    ).scalar()
    return int(found or 0)


def alias_swap(conn: Connection, name: str, alias: str, expected: int, version: int, now_us: int) -> bool:
    """Compare-and-swap in one statement: True only when the alias pointed at ``expected``.

    From unset (expected 0) it is an INSERT, which the (name, alias) primary key lets exactly one
    concurrent writer win; otherwise a conditional UPDATE, which matches no row once another writer
    has moved the alias.
    """
    if expected == 0:
        if alias_version(conn, name, alias) != 0:
            return False
        conn.execute(insert(aliases).values(name=name, alias=alias, version=version, updated_at_us=now_us))
        return True
    result = conn.execute(
        update(aliases)
        .where(and_(aliases.c.name == name, aliases.c.alias == alias, aliases.c.version == expected))
        .values(version=version, updated_at_us=now_us)
    )
    return result.rowcount == 1


def alias_remove(conn: Connection, name: str, alias: str, expected: int) -> bool:
    result = conn.execute(
        delete(aliases).where(
            and_(aliases.c.name == name, aliases.c.alias == alias, aliases.c.version == expected)
        )
    )
    return result.rowcount == 1


# --- Locks --------------------------------------------------------------------------------------


def take_lock(conn: Connection, name: str, owner: str) -> bool:
    """Lock for ``owner`` unless someone else holds it (conditional UPDATE, race-free)."""
    result = conn.execute(
        update(models)
        .where(
            and_(
                models.c.name == name,
                or_(models.c.locked.is_(False), models.c.lock_owner == owner),
            )
        )
        .values(locked=True, lock_owner=owner)
    )
    return result.rowcount == 1


def release_lock(conn: Connection, name: str, owner: str) -> bool:
    result = conn.execute(
        update(models)
        .where(and_(models.c.name == name, models.c.locked.is_(True), models.c.lock_owner == owner))
        .values(locked=False, lock_owner=None)
    )
    return result.rowcount == 1


# --- Runs ---------------------------------------------------------------------------------------


def _run_values(run: Run) -> dict[str, Any]:
    return {
        "model_name": run.model_name,
        "params_json": dumps(dict(run.params)),
        "metrics_json": dumps(dict(run.metrics)),
        "data_start_us": _opt_us(run.data_start),
        "data_end_us": _opt_us(run.data_end),
        "data_hash": run.data_hash,
        "code_revision": run.code_revision,
        "duration_seconds": run.duration_seconds,
        "outcome": int(run.outcome),
        "outcome_reason": run.outcome_reason,
        "version": run.version,
        "trigger": run.trigger,
        "trigger_id": run.trigger_id,
        "started_at_us": _opt_us(run.started_at),
    }


def run_document(run: Run) -> dict[str, Any]:
    """The run as a JSON-able dict (for the audit log's before/after)."""
    return {"run_id": run.run_id, **_run_values(run)}


def _run(row: Row[Any]) -> Run:
    return Run(
        run_id=row.run_id,
        model_name=row.model_name,
        params=json.loads(row.params_json),
        metrics=json.loads(row.metrics_json),
        data_start=_opt_dt(row.data_start_us),
        data_end=_opt_dt(row.data_end_us),
        data_hash=row.data_hash,
        code_revision=row.code_revision,
        duration_seconds=row.duration_seconds,
        outcome=RunOutcome(row.outcome),
        outcome_reason=row.outcome_reason,
        version=row.version,
        trigger=row.trigger,
        trigger_id=row.trigger_id,
        started_at=_opt_dt(row.started_at_us),
    )


def get_run(conn: Connection, run_id: str, *, for_update: bool = False) -> Run | None:
    query = select(runs).where(runs.c.run_id == run_id)
    if for_update:
        query = query.with_for_update()
    row = conn.execute(query).first()
    return None if row is None else _run(row)


def save_run(conn: Connection, run: Run, *, exists: bool, now_us: int) -> None:
    values = _run_values(run)
    if exists:
        conn.execute(update(runs).where(runs.c.run_id == run.run_id).values(**values, recorded_at_us=now_us))
    else:
        conn.execute(insert(runs).values(run_id=run.run_id, recorded_at_us=now_us, **values))


def list_runs(conn: Connection, model_name: str | None, limit: int) -> list[Run]:
    query = select(runs).order_by(runs.c.recorded_at_us.desc(), runs.c.run_id).limit(limit)
    if model_name:
        query = query.where(runs.c.model_name == model_name)
    return [_run(row) for row in conn.execute(query)]
