"""The outbox relay against a fake publisher: acknowledged events are marked sent, unacknowledged
ones stay pending and go out later in order, and only the lease holder publishes."""

from __future__ import annotations

import asyncio
import concurrent.futures
from dataclasses import replace

import pytest

from driftline.kit.codec import decode
from driftline.kit.kafka import DeliveryError
from driftline.kit.topics import MODEL_EVENTS
from driftline.registry.v1 import registry_pb2 as pb
from driftline.services.registry import convert, testing
from driftline.services.registry.audit import AuditLog
from driftline.services.registry.core import Registry
from driftline.services.registry.domain import Run
from driftline.services.registry.outbox import (
    EVENT_ID_HEADER,
    Outbox,
    OutboxRelay,
    event_from_json,
    event_to_json,
)
from driftline.services.registry.security import OnnxValidator


class FakePublisher:
    """Records sends; acknowledges them at once, fails them, or leaves them in flight."""

    def __init__(self, mode: str = "ack") -> None:
        self.mode = mode
        self.sent: list[tuple[str, bytes, str, dict]] = []
        self.in_flight: list[concurrent.futures.Future] = []

    def send(self, topic, value, key=None, headers=None):
        future: concurrent.futures.Future = concurrent.futures.Future()
        if self.mode == "ack":
            self.sent.append((topic.name, value, key, dict(headers or [])))
            future.set_result(None)
        elif self.mode == "fail":
            future.set_exception(DeliveryError("broker unreachable"))
        else:
            self.sent.append((topic.name, value, key, dict(headers or [])))
            self.in_flight.append(future)
        return future


def _changes(registry, n_runs: int = 3) -> None:
    registry.register(convert.new_version_from_pb(testing.register_request()), "alice")
    registry.set_alias("fraud", "champion", 1, expected_version=0, actor="alice")
    for i in range(n_runs):
        registry.record_run(Run(run_id=f"r{i}", model_name="fraud"), "trainer")


def _relay(database, publisher, **kwargs) -> OutboxRelay:
    return OutboxRelay(Outbox(database), publisher, MODEL_EVENTS, convert.encode_event, **kwargs)


async def _stop_once_sent(
    relay: OutboxRelay, task: asyncio.Task, publisher: FakePublisher, count: int
) -> None:
    """Wait (up to 10 s) until ``count`` events went out, then stop the relay's loop."""
    for _ in range(500):
        if len(publisher.sent) == count:
            break
        await asyncio.sleep(0.02)
    relay.stop()
    await task


def _decoded(publisher: FakePublisher) -> list[pb.ModelEvent]:
    return [decode(pb.ModelEvent, value) for _, value, _, _ in publisher.sent]


async def test_pending_events_are_published_in_order_and_marked_sent(registry, database):
    _changes(registry)
    publisher = FakePublisher()
    relay = _relay(database, publisher, batch_size=2)
    assert await relay.publish_pending() == 5
    events = _decoded(publisher)
    assert [e.audit_seq for e in events] == [1, 2, 3, 4, 5]
    assert [e.type for e in events[:2]] == [
        pb.MODEL_EVENT_TYPE_VERSION_REGISTERED,
        pb.MODEL_EVENT_TYPE_ALIAS_SET,
    ]
    assert events[1].alias == "champion"
    assert events[1].version == 1
    topic, _, key, headers = publisher.sent[0]
    assert (topic, key) == (MODEL_EVENTS.name, "fraud")
    assert headers[EVENT_ID_HEADER].decode() == events[0].event_id
    assert Outbox(database).pending_count() == 0
    assert await relay.publish_pending() == 0
    assert len(publisher.sent) == 5


async def test_unacknowledged_events_stay_pending_then_go_out_once_in_order(registry, database):
    _changes(registry)
    down = _relay(database, FakePublisher("fail"))
    with pytest.raises(Exception, match="not acknowledged"):
        await down.publish_pending()
    assert Outbox(database).pending_count() == 5
    assert all(p.attempts == 1 for p in Outbox(database).pending(10))
    down.stop()
    await asyncio.to_thread(Outbox(database).release_lease, down.owner)

    publisher = FakePublisher()
    assert await _relay(database, publisher).publish_pending() == 5
    assert [e.audit_seq for e in _decoded(publisher)] == [1, 2, 3, 4, 5]


async def test_events_are_not_marked_sent_before_the_broker_acknowledges(registry, database):
    _changes(registry, n_runs=0)
    publisher = FakePublisher("hold")
    task = asyncio.create_task(_relay(database, publisher).publish_pending())
    while len(publisher.in_flight) < 2:
        await asyncio.sleep(0.01)
    assert Outbox(database).pending_count() == 2
    for future in publisher.in_flight:
        future.set_result(None)
    assert await task == 2
    assert Outbox(database).pending_count() == 0


async def test_a_failure_mid_batch_keeps_the_acknowledged_prefix_and_retries_the_rest(registry, database):
    _changes(registry)
    publisher = FakePublisher("hold")
    task = asyncio.create_task(_relay(database, publisher).publish_pending())
    while len(publisher.in_flight) < 5:
        await asyncio.sleep(0.01)
    publisher.in_flight[0].set_result(None)
    publisher.in_flight[1].set_result(None)
    for future in publisher.in_flight[2:]:
        future.set_exception(DeliveryError("timed out"))
    with pytest.raises(Exception, match="3 events not acknowledged"):
        await task
    assert [p.event.audit_seq for p in Outbox(database).pending(10)] == [3, 4, 5]


async def test_only_the_lease_holder_publishes(registry, database, clock):
    _changes(registry)
    first, second = FakePublisher(), FakePublisher()
    holder = _relay(database, first, clock=clock, lease_s=30)
    other = _relay(database, second, clock=clock, lease_s=30)
    assert await holder.publish_pending() == 5
    registry.record_run(Run(run_id="late", model_name="fraud"), "trainer")
    assert await other.publish_pending() == 0
    clock.advance(31)
    assert await other.publish_pending() == 1
    assert len(second.sent) == 1


async def test_run_loop_publishes_as_soon_as_a_change_commits(database, artifacts, clock):
    publisher = FakePublisher()
    # A poll interval of an hour: only the change's notification can wake the relay in time.
    relay = _relay(database, publisher, poll_interval_s=3600)
    registry = Registry(
        database, artifacts, OnnxValidator(1_000_000), AuditLog(), clock=clock, on_change=relay.notify
    )
    task = asyncio.create_task(relay.run())
    await asyncio.sleep(0.05)
    await asyncio.to_thread(_changes, registry, 0)
    await _stop_once_sent(relay, task, publisher, 2)
    assert len(publisher.sent) == 2


def test_event_json_and_protobuf_round_trip(registry, database):
    _changes(registry, n_runs=1)
    events = [p.event for p in Outbox(database).pending(10)]
    for event in events:
        assert event_from_json(event_to_json(event)) == event
        message = decode(pb.ModelEvent, convert.encode_event(event))
        assert (message.event_id, message.model_name, message.audit_seq) == (
            event.event_id,
            event.model_name,
            event.audit_seq,
        )
        assert convert.event_to_pb(replace(event)).occurred_at.ToDatetime().year == event.occurred_at.year


async def test_the_relay_outlives_a_database_it_cannot_use_and_publishes_after(tmp_path, artifacts, clock):
    from driftline.services.registry.store import Database

    path = tmp_path / "locked.db"
    database = Database(f"sqlite:///{path}", busy_timeout_s=0.1)
    database.create_schema()
    registry = Registry(database, artifacts, OnnxValidator(1_000_000), AuditLog(), clock=clock)
    await asyncio.to_thread(_changes, registry, 0)
    publisher = FakePublisher()
    relay = _relay(database, publisher, poll_interval_s=0.05)
    with testing.sqlite_write_lock(path):  # another writer holds the lock: the relay cannot lease
        task = asyncio.create_task(relay.run())
        await asyncio.sleep(0.5)  # several passes meet the locked database
        assert not task.done()
        assert publisher.sent == []
    await _stop_once_sent(relay, task, publisher, 2)
    assert len(publisher.sent) == 2
    database.dispose()
