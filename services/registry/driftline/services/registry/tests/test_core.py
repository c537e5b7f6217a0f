"""The registry core over real SQLite: versions, compare-and-swap aliases, locks, runs, and the
rule that a change, its audit record and its outbox event commit together or not at all."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import replace

import pytest
from sqlalchemy import func, select

from driftline.kit.errors import (
    Aborted,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from driftline.services.registry import convert, testing
from driftline.services.registry.audit import AuditLog
from driftline.services.registry.core import Registry
from driftline.services.registry.domain import EventType, Lineage, NewVersion, Run, RunOutcome
from driftline.services.registry.outbox import Outbox
from driftline.services.registry.security import OnnxValidator
from driftline.services.registry.store.schema import aliases, audit, outbox


def _new(name: str = "fraud", **changes) -> NewVersion:
    return replace(convert.new_version_from_pb(testing.register_request(name)), **changes)


def _count(database, table) -> int:
    with database.read() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def test_versions_are_numbered_per_model_and_keep_their_metadata(registry):
    v1 = registry.register(_new(), "alice")
    v2 = registry.register(_new(metrics={"auc": 0.95}), "alice")
    other = registry.register(_new("churn"), "bob")
    assert (v1.version, v2.version, other.version) == (1, 2, 1)

    got = registry.get_version("fraud", version=1)
    assert got.artifact_sha256 == v1.artifact_sha256
    assert got.signature.feature_names == testing.FEATURES
    assert got.signature.inputs[0].shape == (-1, 3)
    assert got.metrics == {"auc": 0.91}
    assert got.params == {"learning_rate": "0.1"}
    assert got.tags == {"team": "risk"}
    assert got.lineage.code_revision == "deadbeef"
    assert got.reference is not None
    assert list(got.reference.values) == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert got.created_by == "alice"
    assert registry.get_version("fraud").version == 2
    assert registry.get_version("fraud", include_reference=False).reference is None
    assert [v.version for v in registry.list_versions("fraud")] == [1, 2]
    assert [(v.name, v.version) for v in registry.list_versions()] == [
        ("churn", 1),
        ("fraud", 1),
        ("fraud", 2),
    ]


def test_listings_carry_each_versions_own_aliases(registry):
    for name in ("fraud", "fraud", "fraud", "churn"):
        registry.register(_new(name), "alice")
    registry.set_alias("fraud", "champion", 2, expected_version=0, actor="alice")
    registry.set_alias("fraud", "shadow", 2, expected_version=0, actor="alice")
    registry.set_alias("fraud", "challenger", 3, expected_version=0, actor="alice")
    registry.set_alias("churn", "champion", 1, expected_version=0, actor="alice")
    everything = {(v.name, v.version): v.aliases for v in registry.list_versions()}
    assert everything == {
        ("churn", 1): ("champion",),
        ("fraud", 1): (),
        ("fraud", 2): ("champion", "shadow"),
        ("fraud", 3): ("challenger",),
    }
    assert [v.aliases for v in registry.list_versions("fraud")] == [
        (),
        ("champion", "shadow"),
        ("challenger",),
    ]
    assert registry.get_version("fraud", version=2).aliases == ("champion", "shadow")


def test_artifact_is_returned_verified(registry):
    v1 = registry.register(_new(), "alice")
    digest, content = registry.get_artifact("fraud", 1)
    assert digest == v1.artifact_sha256
    assert content == testing.tiny_model()


def test_tampered_artifact_is_data_loss(registry, artifacts):
    v1 = registry.register(_new(), "alice")
    path = artifacts.path_for(v1.artifact_sha256)
    path.chmod(0o644)
    path.write_bytes(testing.tiny_model(weights=(9.0, 9.0, 9.0)))
    with pytest.raises(DataLoss):
        registry.get_artifact("fraud", 1)


def test_missing_artifact_file_is_data_loss(registry, artifacts):
    v1 = registry.register(_new(), "alice")
    artifacts.path_for(v1.artifact_sha256).unlink()
    with pytest.raises(DataLoss, match="missing"):
        registry.get_artifact("fraud", 1)


def test_retried_registration_of_the_same_run_returns_the_first_version(registry, database):
    lineage = Lineage(run_id="run-42", trigger="drift")
    first = registry.register(_new(lineage=lineage), "trainer")
    again = registry.register(_new(lineage=lineage), "trainer")
    assert again.version == first.version == 1
    assert _count(database, audit) == 1
    different = registry.register(
        _new(artifact=testing.tiny_model(weights=(1.0, 1.0, 1.0)), lineage=lineage), "t"
    )
    assert different.version == 2


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "../x"}, "'..'"),
        ({"artifact": testing.pickle_bytes()}, "pickle"),
        ({"metrics": {"auc": float("nan")}}, "finite"),
        ({"lineage": Lineage(trigger="because")}, "trigger"),
        ({"lineage": Lineage(parent_version=7)}, "parent_version 7"),
        ({"lineage": Lineage(run_id="../../run")}, "run_id"),
        ({"tags": {"": "x"}}, "key"),
        ({"params": {"k": "v" * 5000}}, "longer"),
        ({"reason": "r" * 3000}, "reason"),
    ],
)
def test_invalid_registrations_are_rejected_and_leave_no_trace(registry, database, changes, message):
    with pytest.raises(InvalidArgument, match=message):
        registry.register(_new(**changes), "alice")
    assert _count(database, audit) == 0
    assert _count(database, outbox) == 0


def test_signature_must_agree_with_the_graph(registry):
    from driftline.services.registry.domain import Signature, TensorSpec

    wrong_name = Signature(inputs=(TensorSpec("x", "FP32", (-1, 3)),), outputs=(TensorSpec("score", "FP32"),))
    with pytest.raises(InvalidArgument, match="do not match"):
        registry.register(_new(signature=wrong_name), "alice")
    wrong_type = Signature(
        inputs=(TensorSpec("features", "INT64", (-1, 3)),), outputs=(TensorSpec("score", "FP32"),)
    )
    with pytest.raises(InvalidArgument, match="INT64"):
        registry.register(_new(signature=wrong_type), "alice")
    with pytest.raises(InvalidArgument, match="3 columns"):
        registry.register(_new(signature=Signature(feature_names=("a", "b")), reference=None), "alice")


def test_reference_sample_shape_is_checked(registry):
    from driftline.services.registry.domain import ReferenceSample

    bad = ReferenceSample(testing.FEATURES, rows=2, values=[1.0] * 5)
    with pytest.raises(InvalidArgument, match="rows \\* features"):
        registry.register(_new(reference=bad), "alice")
    nan = ReferenceSample(testing.FEATURES, rows=1, values=[1.0, float("inf"), 2.0])
    with pytest.raises(InvalidArgument, match="NaN or infinite"):
        registry.register(_new(reference=nan), "alice")


def test_oversized_artifact_is_resource_exhausted(database, artifacts, clock):
    small = Registry(database, artifacts, OnnxValidator(100), AuditLog(), clock=clock)
    with pytest.raises(ResourceExhausted):
        small.register(_new(), "alice")


def test_alias_moves_only_from_the_expected_version(registry):
    registry.register(_new(), "a")
    registry.register(_new(), "a")
    first = registry.set_alias("fraud", "champion", 1, expected_version=0, actor="a")
    assert (first.previous_version, first.version) == (0, 1)
    with pytest.raises(Aborted, match="points at v1, not nothing"):
        registry.set_alias("fraud", "champion", 2, expected_version=0, actor="a")
    with pytest.raises(Aborted, match="not v2"):
        registry.set_alias("fraud", "champion", 1, expected_version=2, actor="a")
    moved = registry.set_alias("fraud", "champion", 2, expected_version=1, reason="better auc", actor="a")
    assert (moved.previous_version, moved.version) == (1, 2)
    assert registry.get_version("fraud", alias="champion").version == 2
    assert registry.get_version("fraud", version=2).aliases == ("champion",)


def test_alias_to_a_missing_version_or_model_is_not_found(registry):
    with pytest.raises(NotFound):
        registry.set_alias("fraud", "champion", 1, expected_version=0, actor="a")
    registry.register(_new(), "a")
    with pytest.raises(NotFound, match="no version 5"):
        registry.set_alias("fraud", "champion", 5, expected_version=0, actor="a")
    with pytest.raises(NotFound, match="no alias"):
        registry.get_version("fraud", alias="champion")


def test_delete_alias_is_compare_and_swap_too(registry):
    registry.register(_new(), "a")
    registry.set_alias("fraud", "challenger", 1, expected_version=0, actor="a")
    with pytest.raises(Aborted):
        registry.delete_alias("fraud", "challenger", expected_version=2, actor="a")
    deleted = registry.delete_alias("fraud", "challenger", expected_version=1, actor="a")
    assert (deleted.previous_version, deleted.version) == (1, 0)
    with pytest.raises(NotFound):
        registry.get_version("fraud", alias="challenger")
    registry.set_alias("fraud", "challenger", 1, expected_version=0, actor="a")


def test_concurrent_alias_movers_exactly_one_wins(registry, database):
    for _ in range(9):
        registry.register(_new(), "a")
    registry.set_alias("fraud", "champion", 1, expected_version=0, actor="a")
    barrier = threading.Barrier(8)
    outcomes: dict[int, str] = {}

    def move(version: int) -> None:
        barrier.wait()
        try:
            registry.set_alias("fraud", "champion", version, expected_version=1, actor=f"mover{version}")
            outcomes[version] = "won"
        except Aborted:
            outcomes[version] = "aborted"

    threads = [threading.Thread(target=move, args=(v,)) for v in range(2, 10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [v for v, o in outcomes.items() if o == "won"]
    assert len(winners) == 1
    assert sorted(o for o in outcomes.values()) == ["aborted"] * 7 + ["won"]
    assert registry.get_version("fraud", alias="champion").version == winners[0]
    with database.read() as conn:
        assert conn.execute(select(aliases.c.version)).scalars().all() == [winners[0]]
    assert registry.verify_audit().ok


def test_concurrent_first_setters_exactly_one_wins(registry):
    registry.register(_new(), "a")
    registry.register(_new(), "a")
    barrier = threading.Barrier(2)
    results: list[str] = []

    def move(version: int) -> None:
        barrier.wait()
        try:
            registry.set_alias("fraud", "champion", version, expected_version=0, actor="a")
            results.append("won")
        except Aborted:
            results.append("aborted")

    threads = [threading.Thread(target=move, args=(v,)) for v in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["aborted", "won"]


def test_locked_model_moves_aliases_only_for_its_owner(registry):
    registry.register(_new(), "a")
    registry.register(_new(), "a")
    registry.set_alias("fraud", "champion", 1, expected_version=0, actor="a")
    lock = registry.lock("fraud", "release-42", reason="deploy window", actor="a")
    assert (lock.owner, lock.locked) == ("release-42", True)
    with pytest.raises(FailedPrecondition, match="locked by release-42"):
        registry.set_alias("fraud", "champion", 2, expected_version=1, actor="a")
    with pytest.raises(FailedPrecondition):
        registry.set_alias("fraud", "champion", 2, expected_version=1, lock_owner="someone-else", actor="a")
    with pytest.raises(FailedPrecondition):
        registry.delete_alias("fraud", "champion", expected_version=1, actor="a")
    registry.set_alias("fraud", "champion", 2, expected_version=1, lock_owner="release-42", actor="a")
    with pytest.raises(FailedPrecondition, match="already locked"):
        registry.lock("fraud", "other", actor="a")
    with pytest.raises(FailedPrecondition):
        registry.unlock("fraud", "other", actor="a")
    assert registry.lock("fraud", "release-42", actor="a").locked
    assert not registry.unlock("fraud", "release-42", actor="a").locked
    assert not registry.unlock("fraud", "release-42", actor="a").locked
    registry.set_alias("fraud", "champion", 1, expected_version=2, actor="a")


def test_a_lock_binds_its_owner_name_to_the_token_that_took_it(registry):
    registry.register(_new(), "ops")
    registry.register(_new(), "ops")
    registry.set_alias("fraud", "champion", 1, expected_version=0, actor="ops")
    registry.lock("fraud", "freeze", actor="ops:alice")
    # The owner's name is no secret (the audit log shows it): another token cannot use it.
    with pytest.raises(PermissionDenied, match="token of ops"):
        registry.set_alias("fraud", "champion", 2, expected_version=1, lock_owner="freeze", actor="trainer")
    with pytest.raises(PermissionDenied):
        registry.delete_alias("fraud", "champion", expected_version=1, lock_owner="freeze", actor="trainer")
    with pytest.raises(PermissionDenied):
        registry.unlock("fraud", "freeze", actor="trainer")
    with pytest.raises(PermissionDenied):
        registry.lock("fraud", "freeze", actor="trainer")
    assert registry.get_version("fraud", alias="champion").version == 1
    # The same token, whatever name its client declares, may.
    registry.set_alias("fraud", "champion", 2, expected_version=1, lock_owner="freeze", actor="ops:bob")
    assert not registry.unlock("fraud", "freeze", actor="ops").locked
    # Unlocked, the lock's old holder no longer matters.
    registry.set_alias("fraud", "champion", 1, expected_version=2, actor="trainer")


def test_a_lock_taken_again_belongs_to_its_new_token(registry):
    registry.register(_new(), "ops")
    registry.set_alias("fraud", "champion", 1, expected_version=0, actor="ops")
    registry.lock("fraud", "freeze", actor="ops")
    registry.unlock("fraud", "freeze", actor="ops")
    registry.lock("fraud", "freeze", actor="trainer")  # the same owner's name, another token
    with pytest.raises(PermissionDenied, match="token of trainer"):
        registry.delete_alias("fraud", "champion", expected_version=1, lock_owner="freeze", actor="ops")
    registry.delete_alias("fraud", "champion", expected_version=1, lock_owner="freeze", actor="trainer")


def test_a_lock_no_audit_record_accounts_for_lets_no_token_through(registry, database):
    from sqlalchemy import update

    from driftline.services.registry.store.schema import models

    registry.register(_new(), "ops")
    with database.write() as conn:  # a database edited by hand: locked, with no `locked` record
        conn.execute(update(models).where(models.c.name == "fraud").values(locked=True, lock_owner="freeze"))
    for actor in ("ops", "trainer"):
        with pytest.raises(PermissionDenied, match="no audit record"):
            registry.set_alias("fraud", "champion", 1, expected_version=0, lock_owner="freeze", actor=actor)
        with pytest.raises(PermissionDenied):
            registry.unlock("fraud", "freeze", actor=actor)


@pytest.fixture
def breakable(database, artifacts, clock) -> Registry:
    """A registry whose token ``admin`` may break locks."""
    return Registry(
        database, artifacts, OnnxValidator(1_000_000), AuditLog(), clock=clock, lock_breakers=["admin"]
    )


def test_a_lock_breaker_forces_open_a_lock_whose_token_is_gone(breakable):
    breakable.register(_new(), "ops")
    breakable.set_alias("fraud", "champion", 1, expected_version=0, actor="ops")
    breakable.lock("fraud", "freeze", actor="ops")  # then the ops token is removed from TOKENS
    with pytest.raises(PermissionDenied, match="token of ops"):
        breakable.unlock("fraud", "freeze", actor="admin")  # without force, admin is any token
    breakable.register(_new(), "trainer")
    with pytest.raises(PermissionDenied):
        breakable.set_alias("fraud", "champion", 2, expected_version=1, lock_owner="freeze", actor="admin")

    released = breakable.unlock("fraud", "freeze", reason="token revoked", actor="admin:carol", force=True)

    assert not released.locked
    record = breakable.list_audit("fraud")[-1]
    assert (record.action, record.actor, record.subject, record.reason) == (
        "unlocked",
        "admin:carol",
        "freeze",
        "token revoked",
    )
    assert json.loads(record.before_json) == {"locked": True, "owner": "freeze", "holder": "ops"}
    assert json.loads(record.after_json) == {"locked": False, "owner": "", "forced": True}
    assert breakable.verify_audit().ok
    breakable.set_alias("fraud", "champion", 2, expected_version=1, actor="trainer")
    # Forcing a lock that is already open changes nothing and records nothing.
    records = len(breakable.list_audit("fraud"))
    assert not breakable.unlock("fraud", "freeze", reason="again", actor="admin", force=True).locked
    assert len(breakable.list_audit("fraud")) == records


def test_forcing_a_lock_open_takes_a_lock_breaker_a_reason_and_the_right_owner(breakable):
    breakable.register(_new(), "ops")
    breakable.lock("fraud", "freeze", actor="ops")
    with pytest.raises(PermissionDenied, match="ops is not one"):
        breakable.unlock("fraud", "freeze", reason="mine now", actor="ops", force=True)
    with pytest.raises(PermissionDenied, match="trainer is not one"):
        breakable.unlock("fraud", "freeze", reason="mine now", actor="trainer:admin", force=True)
    with pytest.raises(InvalidArgument, match="needs a reason"):
        breakable.unlock("fraud", "freeze", actor="admin", force=True)
    with pytest.raises(FailedPrecondition, match="locked by freeze, not release"):
        breakable.unlock("fraud", "release", reason="wrong lock", actor="admin", force=True)
    assert breakable.get_version("fraud").version == 1
    assert [r.action for r in breakable.list_audit("fraud")] == ["version_registered", "locked"]


def test_a_lock_breaker_opens_a_lock_no_audit_record_accounts_for(breakable, database):
    from sqlalchemy import update

    from driftline.services.registry.store.schema import models

    breakable.register(_new(), "ops")
    with database.write() as conn:  # a database edited by hand: locked, with no `locked` record
        conn.execute(update(models).where(models.c.name == "fraud").values(locked=True, lock_owner="freeze"))
    with pytest.raises(PermissionDenied, match="forced unlock"):
        breakable.unlock("fraud", "freeze", actor="admin")

    breakable.unlock("fraud", "freeze", reason="hand edit", actor="admin", force=True)

    assert json.loads(breakable.list_audit("fraud")[-1].before_json)["holder"] == ""
    breakable.set_alias("fraud", "champion", 1, expected_version=0, actor="ops")


def test_lock_of_unknown_model_is_not_found(registry):
    with pytest.raises(NotFound):
        registry.lock("ghost", "me", actor="a")


def test_every_change_writes_one_outbox_event_in_its_transaction(registry, database):
    registry.register(_new(), "alice")
    registry.set_alias("fraud", "champion", 1, expected_version=0, reason="go", actor="alice")
    registry.lock("fraud", "ops", actor="alice")
    registry.unlock("fraud", "ops", actor="alice")
    registry.delete_alias("fraud", "champion", expected_version=1, actor="alice")
    registry.record_run(Run(run_id="r1", model_name="fraud"), "trainer")
    events = [p.event for p in Outbox(database).pending(100)]
    assert [e.type for e in events] == [
        EventType.VERSION_REGISTERED,
        EventType.ALIAS_SET,
        EventType.LOCKED,
        EventType.UNLOCKED,
        EventType.ALIAS_DELETED,
        EventType.RUN_RECORDED,
    ]
    assert [e.audit_seq for e in events] == [1, 2, 3, 4, 5, 6]
    assert events[0].artifact_sha256
    assert events[0].version == 1
    assert (events[1].alias, events[1].version, events[1].previous_version, events[1].reason) == (
        "champion",
        1,
        0,
        "go",
    )
    assert events[5].run_id == "r1"
    assert len({e.event_id for e in events}) == 6


def test_a_failed_transaction_leaves_neither_change_nor_audit_nor_event(registry, database, monkeypatch):
    registry.register(_new(), "alice")
    before = (_count(database, audit), _count(database, outbox))

    def broken_enqueue(conn, event):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Outbox, "enqueue", staticmethod(broken_enqueue))
    with pytest.raises(RuntimeError):
        registry.set_alias("fraud", "champion", 1, expected_version=0, actor="alice")
    assert (_count(database, audit), _count(database, outbox)) == before
    with pytest.raises(NotFound):
        registry.get_version("fraud", alias="champion")


def test_runs_are_recorded_listed_and_updated(registry, clock, database):
    run = Run(
        run_id="r1",
        model_name="fraud",
        params={"lr": "0.1"},
        metrics={"auc": 0.9},
        outcome=RunOutcome.PENDING_APPROVAL,
        trigger="drift",
        trigger_id="report-7",
        duration_seconds=12.5,
    )
    assert registry.record_run(run, "trainer") == run
    assert registry.record_run(run, "trainer") == run
    assert _count(database, audit) == 1
    clock.advance(60)
    registry.record_run(Run(run_id="r2", model_name="fraud", metrics={"auc": 0.8}), "trainer")
    registry.record_run(replace(run, outcome=RunOutcome.PROMOTED, version=1), "trainer")
    assert registry.get_run("r1").outcome == RunOutcome.PROMOTED
    assert [r.run_id for r in registry.list_runs("fraud")] == ["r1", "r2"]
    assert registry.list_runs("fraud", limit=1)[0].run_id == "r1"
    update = registry.list_audit()[-1]
    assert json.loads(update.before_json)["outcome"] == RunOutcome.PENDING_APPROVAL
    assert json.loads(update.after_json)["outcome"] == RunOutcome.PROMOTED
    with pytest.raises(NotFound):
        registry.get_run("nope")


def test_run_without_id_gets_one(registry):
    run = registry.record_run(Run(run_id="", model_name="fraud"), "trainer")
    assert len(run.run_id) == 32
    assert registry.get_run(run.run_id).model_name == "fraud"


@pytest.mark.parametrize(
    "run",
    [
        Run(run_id="../r", model_name="fraud"),
        Run(run_id="r", model_name="a/b"),
        Run(run_id="r", model_name="fraud", metrics={"auc": float("inf")}),
        Run(run_id="r", model_name="fraud", duration_seconds=-1),
        Run(run_id="r", model_name="fraud", trigger="whim"),
    ],
)
def test_invalid_runs_are_rejected(registry, run):
    with pytest.raises(InvalidArgument):
        registry.record_run(run, "trainer")


# --- Archive and artifact collection ------------------------------------------------------------


def _model_bytes(bias: float) -> bytes:
    return testing.tiny_model(bias=bias)


def test_an_archived_version_keeps_its_record_and_loses_its_uses(registry, clock):
    registry.register(_new(artifact=_model_bytes(0.1)), "ops")
    registry.register(_new(artifact=_model_bytes(0.2)), "ops")
    registry.set_alias("fraud", "champion", 2, expected_version=0, actor="ops")

    archived = registry.archive("fraud", 1, reason="lost the gate", actor="ops:carol")

    assert archived.archived_at == clock()
    found = registry.get_version("fraud", version=1)
    assert found.archived_at == clock()
    assert found.reference is None  # dropped: no detector reads an archived version's sample
    assert (found.metrics, found.lineage) == (archived.metrics, archived.lineage)
    assert [v.archived_at is not None for v in registry.list_versions("fraud")] == [True, False]
    with pytest.raises(FailedPrecondition, match="archived; its artifact is no longer served"):
        registry.get_artifact("fraud", 1)
    with pytest.raises(FailedPrecondition, match="archived; no alias may point at it"):
        registry.set_alias("fraud", "champion", 1, expected_version=2, actor="ops")
    assert registry.get_version("fraud", alias="champion").version == 2
    record = registry.list_audit("fraud")[-1]
    assert (record.action, record.subject, record.actor, record.reason) == (
        "version_archived",
        "1",
        "ops:carol",
        "lost the gate",
    )
    # Archiving again changes nothing and records nothing.
    assert registry.archive("fraud", 1, actor="ops").archived_at == archived.archived_at
    assert len(registry.list_audit("fraud")) == record.seq
    assert registry.verify_audit().ok


def test_the_latest_version_is_the_newest_live_one(registry):
    for bias in (0.1, 0.2, 0.3):
        registry.register(_new(artifact=_model_bytes(bias)), "ops")
    registry.archive("fraud", 3, actor="ops")
    assert registry.get_version("fraud").version == 2
    registry.archive("fraud", 1, actor="ops")
    assert registry.get_version("fraud").version == 2
    registry.archive("fraud", 2, actor="ops")
    with pytest.raises(NotFound, match="every version of model fraud is archived"):
        registry.get_version("fraud")
    assert registry.get_version("fraud", version=3).archived_at is not None  # by number: still there
    with pytest.raises(NotFound, match="no model ghost"):
        registry.get_version("ghost")


def test_a_version_an_alias_points_at_is_not_archived(registry):
    registry.register(_new(), "ops")
    registry.set_alias("fraud", "champion", 1, expected_version=0, actor="ops")
    registry.set_alias("fraud", "shadow", 1, expected_version=0, actor="ops")
    with pytest.raises(FailedPrecondition, match="champion, shadow of fraud point at v1; move them first"):
        registry.archive("fraud", 1, actor="ops")
    with pytest.raises(NotFound):
        registry.archive("fraud", 2, actor="ops")
    with pytest.raises(NotFound):
        registry.archive("ghost", 1, actor="ops")
    with pytest.raises(InvalidArgument):
        registry.archive("fraud", 0, actor="ops")
    with pytest.raises(InvalidArgument, match=r"'\.\.'"):
        registry.archive("../../etc/cron.d/x", 1, actor="ops")
    assert registry.get_version("fraud", version=1).archived_at is None


def test_archiving_a_locked_model_takes_its_lock_owner(registry):
    registry.register(_new(), "ops")
    registry.lock("fraud", "freeze", actor="ops")
    with pytest.raises(FailedPrecondition, match="locked by freeze"):
        registry.archive("fraud", 1, actor="ops")
    with pytest.raises(PermissionDenied):
        registry.archive("fraud", 1, lock_owner="freeze", actor="trainer")
    assert registry.archive("fraud", 1, lock_owner="freeze", actor="ops").archived_at is not None


def test_archiving_announces_the_version_and_its_artifact(registry, database):
    registered = registry.register(_new(), "ops")
    registry.archive("fraud", 1, reason="old", actor="ops")
    event = [p.event for p in Outbox(database).pending(100)][-1]
    assert (event.type, event.version, event.artifact_sha256, event.reason) == (
        EventType.VERSION_ARCHIVED,
        1,
        registered.artifact_sha256,
        "old",
    )


def test_collection_removes_only_artifacts_no_live_version_uses(registry, artifacts):
    one = registry.register(_new(artifact=_model_bytes(0.1)), "ops").artifact_sha256
    two = registry.register(_new(artifact=_model_bytes(0.2)), "ops").artifact_sha256
    shared = registry.register(_new("churn", artifact=_model_bytes(0.2)), "ops").artifact_sha256
    orphan = artifacts.put(b"left by a registration whose transaction failed")
    assert two == shared
    registry.archive("fraud", 1, actor="ops")
    registry.archive("fraud", 2, actor="ops")  # its bytes are churn v1's too

    removed, freed = registry.collect_artifacts(grace_s=0)

    assert removed == 2
    assert freed == len(_model_bytes(0.1)) + len(b"left by a registration whose transaction failed")
    assert not artifacts.exists(one)
    assert not artifacts.exists(orphan)
    assert registry.get_artifact("churn", 1)[1] == _model_bytes(0.2)
    assert registry.collect_artifacts(grace_s=0) == (0, 0)
    # The version's record outlives its bytes.
    assert registry.get_version("fraud", version=1).artifact_sha256 == one


def test_collection_spares_artifacts_stored_within_the_grace_period(registry, artifacts):
    digest = artifacts.put(b"a registration under way")
    assert registry.collect_artifacts(grace_s=3600) == (0, 0)
    assert artifacts.exists(digest)
    path = artifacts.path_for(digest)
    two_hours_ago = path.stat().st_mtime - 7200
    os.utime(path, (two_hours_ago, two_hours_ago))
    artifacts.put(b"a registration under way")  # stored again: its time is renewed
    assert registry.collect_artifacts(grace_s=3600) == (0, 0)
    os.utime(path, (two_hours_ago, two_hours_ago))
    assert registry.collect_artifacts(grace_s=3600)[0] == 1
    assert not artifacts.exists(digest)


def test_a_registration_committed_during_a_removal_gets_its_artifact_back(registry, artifacts, monkeypatch):
    """The collector read "unused"; a registration of the same bytes found them stored (before
    they were taken out of reach) and committed before the collector asked again: they go back."""
    registry.register(_new(artifact=_model_bytes(0.1)), "ops")
    registry.register(_new(artifact=_model_bytes(0.2)), "ops")
    registry.archive("fraud", 1, actor="ops")
    remove = artifacts.remove

    def remove_while_registering(digest, keep):
        def register_then_keep():
            with monkeypatch.context() as stored_before:
                stored_before.setattr(artifacts, "put", lambda data: hashlib.sha256(data).hexdigest())
                registry.register(_new("churn", artifact=_model_bytes(0.1)), "ops")
            return keep()

        return remove(digest, register_then_keep)

    monkeypatch.setattr(artifacts, "remove", remove_while_registering)

    assert registry.collect_artifacts(grace_s=0) == (0, 0)
    assert registry.get_artifact("churn", 1)[1] == _model_bytes(0.1)


def test_a_registration_committed_after_a_removal_stores_its_artifact_again(registry, artifacts, monkeypatch):
    """A whole collection ran between a registration's store and its commit."""
    put = artifacts.put
    calls = []

    def put_then_collect(data):
        digest = put(data)
        if not calls:
            assert registry.collect_artifacts(grace_s=0) == (1, len(data))
        calls.append(digest)
        return digest

    monkeypatch.setattr(artifacts, "put", put_then_collect)

    registry.register(_new(artifact=_model_bytes(0.3)), "ops")

    assert len(calls) == 2
    assert registry.get_artifact("fraud", 1)[1] == _model_bytes(0.3)
