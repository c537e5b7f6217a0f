"""The registry's core: every operation, transport-free. Adapters (gRPC servicer, CLI via the
client) convert wire types to the domain types of ``domain.py`` and call ``Registry``.

Each change runs in one database transaction that (1) locks the rows it depends on, (2) makes the
change with a conditional statement, (3) appends to the audit chain and (4) writes the outbox
event. Either all four happen or none does. Methods are synchronous; the servicer runs them in
worker threads.
"""

from __future__ import annotations

import functools
import math
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import datetime
from typing import Any

import structlog
from prometheus_client import Counter
from sqlalchemy import Connection, Row
from sqlalchemy.exc import IntegrityError

from driftline.kit.codec import utcnow
from driftline.kit.errors import (
    Aborted,
    DataLoss,
    DriftlineError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from driftline.services.registry import security, validation
from driftline.services.registry.artifacts import ArtifactStore
from driftline.services.registry.audit import AuditLog
from driftline.services.registry.domain import (
    Action,
    AliasChange,
    AuditRecord,
    AuditVerification,
    ModelEvent,
    ModelLock,
    ModelVersion,
    NewVersion,
    Run,
)
from driftline.services.registry.outbox import Outbox, new_event_id
from driftline.services.registry.security import OnnxValidator
from driftline.services.registry.store import Database
from driftline.services.registry.store import repository as repo

log = structlog.get_logger(__name__)

_RETRIES = 3

REGISTERED = Counter("driftline_registry_versions_registered_total", "Model versions registered.")
ALIAS_MOVES = Counter("driftline_registry_alias_moves_total", "Alias compare-and-swap attempts.", ["result"])
REJECTED = Counter("driftline_registry_uploads_rejected_total", "Uploads refused.", ["reason"])
COLLECTED = Counter(
    "driftline_registry_artifacts_collected_total", "Stored artifacts removed as no live version uses them."
)


class Registry:
    """Models, versions, aliases, locks, runs and the audit trail, over a metadata database and
    an artifact store."""

    def __init__(
        self,
        database: Database,
        artifacts: ArtifactStore,
        validator: OnnxValidator,
        audit: AuditLog,
        *,
        clock: Callable[[], datetime] = utcnow,
        on_change: Callable[[], None] | None = None,
        lock_breakers: Iterable[str] = (),
    ) -> None:
        self._db = database
        self._lock_breakers = frozenset(lock_breakers)
        self._artifacts = artifacts
        self._validator = validator
        self._audit = audit
        self._clock = clock
        self._on_change = on_change or (lambda: None)

    # --- Versions -------------------------------------------------------------------------------

    def register(self, new: NewVersion, actor: str) -> ModelVersion:
        """Validate, store the artifact, and record a new version (numbered 1, 2, ...).

        A retry of the same run's registration (same lineage.run_id and artifact) returns the
        version registered the first time instead of adding another.
        """
        name = security.validate_name(new.name)
        reason = validation.check_reason(new.reason)
        try:
            summary = self._validator.validate(new.artifact)
        except DriftlineError as err:
            REJECTED.labels(err.code).inc()
            log.info("upload_rejected", model=name, reason=err.code, detail=str(err))
            raise
        signature = validation.merge_signature(new.signature, summary.signature)
        validation.check_floats(new.metrics, "metrics")
        validation.check_strings(new.params, "params")
        validation.check_strings(new.tags, "tags")
        validation.check_lineage(new.lineage)
        reference = validation.check_reference(new.reference, signature)
        digest = self._artifacts.put(new.artifact)

        def change(conn: Connection, now: datetime) -> ModelVersion:
            # Serialise registrations of this model first, so a retried run is found, not duplicated.
            repo.lock_model_row(conn, name)
            if new.lineage.run_id:
                existing = repo.find_version_for_run(conn, name, new.lineage.run_id, digest)
                if existing is not None:
                    found = repo.get_version(conn, name, existing, with_reference=False)
                    assert found is not None
                    return found
            parent = new.lineage.parent_version
            if parent and not repo.version_exists(conn, name, parent):
                raise InvalidArgument(f"lineage.parent_version {parent} of {name} does not exist")
            version = repo.allocate_version(conn, name, repo.to_us(now))
            registered = ModelVersion(
                name=name,
                version=version,
                artifact_sha256=digest,
                artifact_size=len(new.artifact),
                signature=signature,
                feature_set=new.feature_set,
                feature_set_version=new.feature_set_version,
                metrics=dict(new.metrics),
                params=dict(new.params),
                lineage=new.lineage,
                reference=reference,
                tags=dict(new.tags),
                created_at=now,
                created_by=actor,
            )
            repo.insert_version(conn, registered)
            record = self._audit.append(
                conn,
                now=now,
                actor=actor,
                action=Action.VERSION_REGISTERED,
                model_name=name,
                subject=str(version),
                reason=reason,
                before=None,
                after={
                    "version": version,
                    "artifact_sha256": digest,
                    "artifact_size": len(new.artifact),
                    "feature_set": new.feature_set,
                    "feature_set_version": new.feature_set_version,
                    "run_id": new.lineage.run_id,
                    "parent_version": parent,
                    "trigger": new.lineage.trigger,
                },
            )
            self._announce(
                conn,
                record,
                version=version,
                artifact_sha256=digest,
                run_id=new.lineage.run_id,
            )
            REGISTERED.inc()
            log.info("version_registered", model=name, version=version, sha256=digest, actor=actor)
            return registered

        registered = self._write(change)
        # Stored again now that a live version holds them: a collector that judged these bytes
        # unused before the commit may have removed them since (``collect_artifacts``).
        self._artifacts.put(new.artifact)
        return registered

    def get_version(
        self, name: str, *, version: int = 0, alias: str = "", include_reference: bool = True
    ) -> ModelVersion:
        """A version by number, by alias, or (neither given) the newest live one."""
        security.validate_name(name)
        with self._db.read() as conn:
            if alias:
                security.validate_name(alias, "alias")
                number = repo.alias_version(conn, name, alias)
                if number == 0:
                    raise NotFound(f"model {name} has no alias {alias}")
            elif version:
                number = version
            else:
                number = repo.latest_live_version_number(conn, name)
                if number == 0:
                    if repo.model_exists(conn, name):
                        raise NotFound(f"every version of model {name} is archived")
                    raise NotFound(f"no model {name}")
            found = repo.get_version(conn, name, number, with_reference=include_reference)
        if found is None:
            raise NotFound(f"model {name} has no version {number}")
        return found

    def list_versions(self, name: str = "") -> list[ModelVersion]:
        """Every version of ``name`` (of every model when empty), without reference samples."""
        if name:
            security.validate_name(name)
        with self._db.read() as conn:
            if name and not repo.model_exists(conn, name):
                raise NotFound(f"no model {name}")
            return repo.list_versions(conn, name or None)

    def get_artifact(self, name: str, version: int) -> tuple[str, bytes]:
        """The artifact's digest and bytes, verified against the digest (DataLoss otherwise)."""
        if version <= 0:
            raise InvalidArgument("version must be a positive number")
        found = self.get_version(name, version=version, include_reference=False)
        if found.archived_at is not None:
            raise FailedPrecondition(f"{name} v{version} is archived; its artifact is no longer served")
        try:
            content = self._artifacts.get(found.artifact_sha256)
        except NotFound as err:
            raise DataLoss(f"artifact of {name} v{version} is missing from the store") from err
        return found.artifact_sha256, content

    def archive(
        self, name: str, version: int, *, reason: str = "", lock_owner: str = "", actor: str
    ) -> ModelVersion:
        """Retire ``version``: no alias may point at it, now or later, and its artifact is no
        longer served. Its reference sample is dropped; its artifact's bytes go at the next
        ``collect_artifacts`` unless a live version shares them. Idempotent."""
        security.validate_name(name)
        if version <= 0:
            raise InvalidArgument("version must be a positive number")
        reason = validation.check_reason(reason)

        def change(conn: Connection, now: datetime) -> ModelVersion:
            self._check_lock(conn, self._model(conn, name), lock_owner, actor)
            found = repo.get_version(conn, name, version, with_reference=False)
            if found is None:
                raise NotFound(f"model {name} has no version {version}")
            if found.archived_at is not None:
                return found
            if found.aliases:
                raise FailedPrecondition(
                    f"{', '.join(found.aliases)} of {name} point at v{version}; move them first"
                )
            repo.archive_version(conn, name, version, repo.to_us(now))
            record = self._audit.append(
                conn,
                now=now,
                actor=actor,
                action=Action.VERSION_ARCHIVED,
                model_name=name,
                subject=str(version),
                reason=reason,
                before={"version": version, "archived": False},
                after={"version": version, "archived": True, "artifact_sha256": found.artifact_sha256},
            )
            self._announce(conn, record, version=version, artifact_sha256=found.artifact_sha256)
            log.info("version_archived", model=name, version=version, actor=actor)
            return replace(found, archived_at=now)

        return self._write(change)

    def collect_artifacts(self, grace_s: float) -> tuple[int, int]:
        """Remove the stored artifacts no live version uses, once they are ``grace_s`` old:
        those of archived versions, and those a failed registration left. Returns how many
        artifacts and bytes it freed.

        Safe beside registrations: each artifact is taken out of reach before the database is
        asked again whether a live version uses it (it is put back if one does), and a
        registration stores its bytes again once its version is committed.
        """
        with self._db.read() as conn:
            live = repo.live_digests(conn)
        cutoff = time.time() - grace_s  # the files' times are the wall clock's
        removed = freed = 0
        for digest, stored_at in list(self._artifacts.entries()):
            if digest in live or stored_at > cutoff:
                continue
            size = self._artifacts.remove(digest, keep=functools.partial(self._is_live, digest))
            if size:
                removed += 1
                freed += size
                log.info("artifact_collected", sha256=digest, bytes=size)
        COLLECTED.inc(removed)
        return removed, freed

    def _is_live(self, digest: str) -> bool:
        with self._db.read() as conn:
            return bool(repo.live_digests(conn, digest))

    # --- Aliases --------------------------------------------------------------------------------

    def set_alias(
        self,
        name: str,
        alias: str,
        version: int,
        *,
        expected_version: int,
        reason: str = "",
        lock_owner: str = "",
        actor: str,
    ) -> AliasChange:
        """Point ``alias`` at ``version`` if it points at ``expected_version`` now (0: unset).

        Exactly one of several concurrent movers with the same expectation wins; the others get
        Aborted and may re-read and retry.
        """
        security.validate_name(name)
        security.validate_name(alias, "alias")
        if version <= 0:
            raise InvalidArgument("version must be a positive number")
        if expected_version < 0:
            raise InvalidArgument("expected_version must be 0 (unset) or a version number")
        reason = validation.check_reason(reason)

        def change(conn: Connection, now: datetime) -> AliasChange:
            self._check_lock(conn, self._model(conn, name), lock_owner, actor)
            if not repo.version_exists(conn, name, version):
                raise NotFound(f"model {name} has no version {version}")
            if repo.is_archived(conn, name, version):
                raise FailedPrecondition(f"{name} v{version} is archived; no alias may point at it")
            current = repo.alias_version(conn, name, alias)
            if not repo.alias_swap(conn, name, alias, expected_version, version, repo.to_us(now)):
                raise _lost_race(name, alias, expected_version, current)
            record = self._audit.append(
                conn,
                now=now,
                actor=actor,
                action=Action.ALIAS_SET,
                model_name=name,
                subject=alias,
                reason=reason,
                before={"alias": alias, "version": expected_version},
                after={"alias": alias, "version": version},
            )
            self._announce(conn, record, version=version, alias=alias, previous_version=expected_version)
            log.info("alias_set", model=name, alias=alias, version=version, previous=expected_version)
            return AliasChange(name, alias, expected_version, version, record.seq)

        return self._alias_write(change)

    def delete_alias(
        self,
        name: str,
        alias: str,
        *,
        expected_version: int,
        reason: str = "",
        lock_owner: str = "",
        actor: str,
    ) -> AliasChange:
        """Unset ``alias`` if it points at ``expected_version`` now."""
        security.validate_name(name)
        security.validate_name(alias, "alias")
        if expected_version <= 0:
            raise InvalidArgument("expected_version must be the version the alias points at")
        reason = validation.check_reason(reason)

        def change(conn: Connection, now: datetime) -> AliasChange:
            self._check_lock(conn, self._model(conn, name), lock_owner, actor)
            current = repo.alias_version(conn, name, alias)
            if not repo.alias_remove(conn, name, alias, expected_version):
                raise _lost_race(name, alias, expected_version, current)
            record = self._audit.append(
                conn,
                now=now,
                actor=actor,
                action=Action.ALIAS_DELETED,
                model_name=name,
                subject=alias,
                reason=reason,
                before={"alias": alias, "version": expected_version},
                after={"alias": alias, "version": 0},
            )
            self._announce(conn, record, alias=alias, previous_version=expected_version)
            log.info("alias_deleted", model=name, alias=alias, previous=expected_version)
            return AliasChange(name, alias, expected_version, 0, record.seq)

        return self._alias_write(change)

    def resolve_alias_at(self, name: str, alias: str, at: datetime) -> int:
        """The version ``alias`` pointed at, at time ``at``, from the audit log (0: nowhere)."""
        security.validate_name(name)
        security.validate_name(alias, "alias")
        with self._db.read() as conn:
            return self._audit.alias_at(conn, model_name=name, alias=alias, at=at)

    # --- Deployment lock ------------------------------------------------------------------------

    def lock(self, name: str, owner: str, *, reason: str = "", actor: str) -> ModelLock:
        """Lock the model's aliases for ``owner``; idempotent for the same owner."""
        security.validate_name(name)
        security.validate_owner(owner)
        reason = validation.check_reason(reason)

        def change(conn: Connection, now: datetime) -> ModelLock:
            model = self._model(conn, name)
            if model.locked:
                if model.lock_owner == owner:
                    self._check_holder(conn, name, owner, actor)
                    return ModelLock(name, owner, True)
                raise FailedPrecondition(f"model {name} is already locked by {model.lock_owner}")
            if not repo.take_lock(conn, name, owner):
                raise Aborted(f"model {name} was locked concurrently")
            record = self._audit.append(
                conn,
                now=now,
                actor=actor,
                action=Action.LOCKED,
                model_name=name,
                subject=owner,
                reason=reason,
                before={"locked": False, "owner": ""},
                after={"locked": True, "owner": owner},
            )
            self._announce(conn, record)
            return ModelLock(name, owner, True)

        return self._write(change)

    def unlock(
        self, name: str, owner: str, *, reason: str = "", actor: str, force: bool = False
    ) -> ModelLock:
        """Release the lock ``owner`` holds; idempotent when the model is not locked.

        ``force`` breaks the lock whichever token took it (one since removed, or none a hand
        edit left): only a lock breaker may, naming the owner it breaks and saying why, and the
        ``unlocked`` record keeps both the holder's token and the fact that it was forced.
        """
        security.validate_name(name)
        security.validate_owner(owner)
        reason = validation.check_reason(reason)
        if force:
            self._check_breaker(actor, reason)

        def change(conn: Connection, now: datetime) -> tuple[ModelLock, bool]:
            """The lock, now released, and whether this call released it."""
            model = self._model(conn, name)
            if not model.locked:
                return ModelLock(name, "", False), False
            if model.lock_owner != owner:
                raise FailedPrecondition(f"model {name} is locked by {model.lock_owner}, not {owner}")
            before: dict[str, object] = {"locked": True, "owner": owner}
            after: dict[str, object] = {"locked": False, "owner": ""}
            if force:
                holder = self._audit.last_actor(conn, model_name=name, subject=owner, action=Action.LOCKED)
                before["holder"] = security.principal(holder) if holder is not None else ""
                after["forced"] = True
            else:
                self._check_holder(conn, name, owner, actor)
            if not repo.release_lock(conn, name, owner):
                raise Aborted(f"the lock on {name} changed concurrently")
            record = self._audit.append(
                conn,
                now=now,
                actor=actor,
                action=Action.UNLOCKED,
                model_name=name,
                subject=owner,
                reason=reason,
                before=before,
                after=after,
            )
            self._announce(conn, record)
            return ModelLock(name, "", False), True

        released, changed = self._write(change)
        if force and changed:
            log.warning("lock_forced_open", model=name, owner=owner, actor=actor, reason=reason)
        return released

    # --- Audit ----------------------------------------------------------------------------------

    def list_audit(self, model_name: str = "", after_seq: int = 0, limit: int = 100) -> list[AuditRecord]:
        if model_name:
            security.validate_name(model_name)
        with self._db.read() as conn:
            return self._audit.list(
                conn, model_name=model_name, after_seq=after_seq, limit=validation.list_limit(limit)
            )

    def verify_audit(self) -> AuditVerification:
        with self._db.read() as conn:
            result = self._audit.verify(conn)
        if not result.ok:
            log.error("audit_chain_broken", broken_at=result.broken_at, records=result.records)
        return result

    # --- Runs -----------------------------------------------------------------------------------

    def record_run(self, run: Run, actor: str) -> Run:
        """Create or update an experiment run; recording the same content again changes nothing."""
        run = replace(run, run_id=run.run_id or uuid.uuid4().hex)
        security.validate_name(run.run_id, "run id")
        security.validate_name(run.model_name)
        validation.check_floats(run.metrics, "metrics")
        validation.check_strings(run.params, "params")
        if run.trigger not in validation.TRIGGERS:
            raise InvalidArgument(f"trigger must be one of {sorted(validation.TRIGGERS - {''})}")
        if not math.isfinite(run.duration_seconds) or run.duration_seconds < 0:
            raise InvalidArgument("duration_seconds must be a finite, non-negative number")
        if run.version < 0:
            raise InvalidArgument("version must be 0 (none registered) or a version number")
        if len(run.outcome_reason) > validation.MAX_VALUE_CHARS:
            raise InvalidArgument(f"outcome_reason is longer than {validation.MAX_VALUE_CHARS} characters")

        def change(conn: Connection, now: datetime) -> Run:
            existing = repo.get_run(conn, run.run_id, for_update=True)
            if existing is not None and repo.run_document(existing) == repo.run_document(run):
                return existing
            if existing is not None and existing.model_name != run.model_name:
                raise FailedPrecondition(f"run {run.run_id} belongs to model {existing.model_name}")
            repo.save_run(conn, run, exists=existing is not None, now_us=repo.to_us(now))
            record = self._audit.append(
                conn,
                now=now,
                actor=actor,
                action=Action.RUN_RECORDED,
                model_name=run.model_name,
                subject=run.run_id,
                reason=run.outcome_reason[: validation.MAX_REASON_CHARS],
                before=None if existing is None else repo.run_document(existing),
                after=repo.run_document(run),
            )
            self._announce(conn, record, version=run.version, run_id=run.run_id)
            return run

        return self._write(change)

    def list_runs(self, model_name: str = "", limit: int = 100) -> list[Run]:
        if model_name:
            security.validate_name(model_name)
        with self._db.read() as conn:
            return repo.list_runs(conn, model_name or None, validation.list_limit(limit))

    def get_run(self, run_id: str) -> Run:
        security.validate_name(run_id, "run id")
        with self._db.read() as conn:
            found = repo.get_run(conn, run_id)
        if found is None:
            raise NotFound(f"no run {run_id}")
        return found

    # --- Plumbing -------------------------------------------------------------------------------

    def _write(self, change: Callable[[Connection, datetime], Any]) -> Any:
        """Run ``change`` in a write transaction; retry when a concurrent first insert collided."""
        for attempt in range(1, _RETRIES + 1):
            try:
                with self._db.write() as conn:
                    result = change(conn, self._clock())
            except IntegrityError as err:
                if attempt == _RETRIES:
                    raise Aborted("the change collided with concurrent ones; retry") from err
                continue
            self._on_change()
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _alias_write(self, change: Callable[[Connection, datetime], AliasChange]) -> AliasChange:
        try:
            with self._db.write() as conn:
                result = change(conn, self._clock())
        except Aborted:
            ALIAS_MOVES.labels("aborted").inc()
            raise
        except IntegrityError as err:
            # Two movers both found the alias unset; the primary key let one insert win.
            ALIAS_MOVES.labels("aborted").inc()
            raise Aborted("the alias was set concurrently; re-read it and retry") from err
        ALIAS_MOVES.labels("moved").inc()
        self._on_change()
        return result

    @staticmethod
    def _model(conn: Connection, name: str) -> Row[Any]:
        model = repo.lock_model_row(conn, name)
        if model is None:
            raise NotFound(f"no model {name}")
        return model

    def _check_lock(self, conn: Connection, model: Row[Any], lock_owner: str, actor: str) -> None:
        if not model.locked:
            return
        if lock_owner != model.lock_owner:
            raise FailedPrecondition(
                f"model {model.name} is locked by {model.lock_owner}; only that lock_owner may move aliases"
            )
        self._check_holder(conn, model.name, model.lock_owner, actor)

    def _check_breaker(self, actor: str, reason: str) -> None:
        """Breaking another token's lock is for the tokens named in LOCK_BREAKERS, on the
        record: the reason is what the next reader of the audit log needs."""
        if security.principal(actor) not in self._lock_breakers:
            raise PermissionDenied(
                f"only a lock breaker may force an unlock; {security.principal(actor)} is not one "
                "(DRIFTLINE_REGISTRY_LOCK_BREAKERS)"
            )
        if not reason:
            raise InvalidArgument("a forced unlock needs a reason")

    def _check_holder(self, conn: Connection, name: str, owner: str, actor: str) -> None:
        """A held lock binds its owner's name to the token that took it: the name is no secret
        (the audit log shows it, and so does a refusal), so the name alone would let every
        token through. The holder is the actor of the lock's ``locked`` audit record, written in
        the same transaction as the lock; a lock without one (a database edited by hand) lets no
        token through; a lock breaker's forced unlock (``unlock(force=True)``) still can."""
        holder = self._audit.last_actor(conn, model_name=name, subject=owner, action=Action.LOCKED)
        if holder is None:
            raise PermissionDenied(
                f"model {name} is locked by {owner}, but no audit record says with which token; "
                "only a lock breaker's forced unlock can release it"
            )
        if security.principal(holder) != security.principal(actor):
            raise PermissionDenied(
                f"model {name} was locked with the token of {security.principal(holder)}; "
                "only that token may move its aliases or unlock it (or a lock breaker force it open)"
            )

    @staticmethod
    def _announce(
        conn: Connection,
        record: AuditRecord,
        *,
        version: int = 0,
        alias: str = "",
        previous_version: int = 0,
        artifact_sha256: str = "",
        run_id: str = "",
    ) -> None:
        Outbox.enqueue(
            conn,
            ModelEvent(
                event_id=new_event_id(),
                type=Action(record.action).event_type,
                model_name=record.model_name,
                occurred_at=record.at,
                audit_seq=record.seq,
                actor=record.actor,
                reason=record.reason,
                version=version,
                alias=alias,
                previous_version=previous_version,
                artifact_sha256=artifact_sha256,
                run_id=run_id,
            ),
        )


def _lost_race(name: str, alias: str, expected: int, current: int) -> Aborted:
    now = f"v{current}" if current else "nothing"
    wanted = f"v{expected}" if expected else "nothing (unset)"
    return Aborted(f"alias {alias} of {name} points at {now}, not {wanted}; re-read and retry")


__all__ = ["Registry"]
