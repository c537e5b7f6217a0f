"""The audit chain: every change recorded with who, when, why, before and after; tampering of any
kind detected; "which version was alias X at time T" answered from it."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import pytest
from sqlalchemy import delete, text, update

from driftline.services.registry import convert, testing
from driftline.services.registry.audit import AuditLog
from driftline.services.registry.core import Registry
from driftline.services.registry.security import OnnxValidator
from driftline.services.registry.store import GENESIS_HASH
from driftline.services.registry.store.schema import audit, audit_head


def _history(registry: Registry, clock) -> dict[str, object]:
    """v1, v2, v3 registered; champion: unset -> 1 -> 2 -> deleted -> 3, a minute apart."""
    new = convert.new_version_from_pb(testing.register_request())
    for _ in range(3):
        registry.register(new, "alice")
    times = {"before": clock.advance(60)}
    steps = [
        (
            "v1",
            lambda: registry.set_alias(
                "fraud", "champion", 1, expected_version=0, reason="first", actor="alice"
            ),
        ),
        (
            "v2",
            lambda: registry.set_alias(
                "fraud", "champion", 2, expected_version=1, reason="better", actor="bob"
            ),
        ),
        (
            "none",
            lambda: registry.delete_alias(
                "fraud", "champion", expected_version=2, reason="incident", actor="carol"
            ),
        ),
        (
            "v3",
            lambda: registry.set_alias(
                "fraud", "champion", 3, expected_version=0, reason="fixed", actor="alice"
            ),
        ),
    ]
    for label, change in steps:
        clock.advance(30)
        change()
        # Half-way to the next change: the state "label" holds then.
        times[label] = clock.advance(30)
    return times


def _drop_append_only_triggers(database) -> None:
    """What an attacker with database access would do first."""
    with database.write() as conn:
        conn.execute(text("DROP TRIGGER audit_log_no_update"))
        conn.execute(text("DROP TRIGGER audit_log_no_delete"))


def test_records_say_who_when_why_and_before_after(registry, clock):
    _history(registry, clock)
    records = registry.list_audit("fraud")
    assert [r.action for r in records] == ["version_registered"] * 3 + [
        "alias_set",
        "alias_set",
        "alias_deleted",
        "alias_set",
    ]
    move = records[4]
    assert (move.actor, move.reason, move.subject) == ("bob", "better", "champion")
    assert json.loads(move.before_json) == {"alias": "champion", "version": 1}
    assert json.loads(move.after_json) == {"alias": "champion", "version": 2}
    assert records[0].prev_hash == GENESIS_HASH
    assert all(later.prev_hash == earlier.hash for earlier, later in itertools.pairwise(records))
    assert [r.seq for r in registry.list_audit(after_seq=5)] == [6, 7]
    assert [r.seq for r in registry.list_audit(limit=2)] == [1, 2]
    assert registry.list_audit("churn") == []


def test_alias_at_time_t_follows_the_history(registry, clock):
    times = _history(registry, clock)
    assert registry.resolve_alias_at("fraud", "champion", times["before"]) == 0
    assert registry.resolve_alias_at("fraud", "champion", times["v1"]) == 1
    assert registry.resolve_alias_at("fraud", "champion", times["v2"]) == 2
    assert registry.resolve_alias_at("fraud", "champion", times["none"]) == 0
    assert registry.resolve_alias_at("fraud", "champion", times["v3"]) == 3
    assert registry.resolve_alias_at("fraud", "challenger", times["v3"]) == 0


def test_intact_chain_verifies(registry, clock):
    _history(registry, clock)
    assert registry.verify_audit() == registry.verify_audit()
    result = registry.verify_audit()
    assert (result.ok, result.records, result.broken_at) == (True, 7, 0)


def test_the_database_refuses_to_edit_or_delete_audit_records(registry, clock, database):
    from sqlalchemy.exc import DatabaseError

    _history(registry, clock)
    with pytest.raises(DatabaseError, match="append-only"), database.write() as conn:
        conn.execute(update(audit).where(audit.c.seq == 2).values(actor="mallory"))
    with pytest.raises(DatabaseError, match="append-only"), database.write() as conn:
        conn.execute(delete(audit).where(audit.c.seq == 2))


def test_an_edited_record_breaks_the_chain_at_that_record(registry, clock, database):
    _history(registry, clock)
    _drop_append_only_triggers(database)
    with database.write() as conn:
        conn.execute(update(audit).where(audit.c.seq == 5).values(reason="nothing to see"))
    result = registry.verify_audit()
    assert (result.ok, result.broken_at, result.records) == (False, 5, 4)


def test_an_edit_with_a_recomputed_hash_breaks_the_next_link(registry, clock, database):
    _history(registry, clock)
    _drop_append_only_triggers(database)
    log = AuditLog()
    record = registry.list_audit(after_seq=3, limit=1)[0]
    forged_after = json.dumps({"alias": "champion", "version": 3}, separators=(",", ":"), sort_keys=True)
    forged_hash = log.record_hash(
        seq=record.seq,
        at_us=int(record.at.timestamp() * 1_000_000),
        actor=record.actor,
        action=record.action,
        model_name=record.model_name,
        subject=record.subject,
        reason=record.reason,
        before_json=record.before_json,
        after_json=forged_after,
        prev_hash=record.prev_hash,
    )
    with database.write() as conn:
        conn.execute(update(audit).where(audit.c.seq == 4).values(after_json=forged_after, hash=forged_hash))
    result = registry.verify_audit()
    assert (result.ok, result.broken_at) == (False, 5)


def test_a_deleted_record_is_detected(registry, clock, database):
    _history(registry, clock)
    _drop_append_only_triggers(database)
    with database.write() as conn:
        conn.execute(delete(audit).where(audit.c.seq == 3))
    result = registry.verify_audit()
    assert (result.ok, result.broken_at) == (False, 3)


def test_a_truncated_tail_is_detected(registry, clock, database):
    _history(registry, clock)
    _drop_append_only_triggers(database)
    with database.write() as conn:
        conn.execute(delete(audit).where(audit.c.seq >= 6))
    result = registry.verify_audit()
    assert (result.ok, result.records, result.broken_at) == (False, 5, 6)


def test_a_rewound_head_is_detected(registry, clock, database):
    _history(registry, clock)
    with database.write() as conn:
        conn.execute(update(audit_head).values(seq=3))
    assert registry.verify_audit().ok is False


def test_with_an_audit_key_a_chain_rebuilt_without_it_fails(database, artifacts, clock):
    keyed = Registry(database, artifacts, OnnxValidator(1_000_000), AuditLog(b"k" * 32), clock=clock)
    _history(keyed, clock)
    assert keyed.verify_audit().ok
    unkeyed = Registry(database, artifacts, OnnxValidator(1_000_000), AuditLog(), clock=clock)
    assert unkeyed.verify_audit().broken_at == 1


def test_time_never_runs_backwards_in_the_log(registry, clock):
    registry.register(convert.new_version_from_pb(testing.register_request()), "a")
    first = registry.list_audit()[0].at
    clock.now = clock.now.replace(year=2020)
    registry.register(replace(convert.new_version_from_pb(testing.register_request()), reason="x"), "a")
    assert registry.list_audit()[1].at == first
