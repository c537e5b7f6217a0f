"""The publisher: rate, feedback timing, and delivery accounting (with a fake producer)."""

from __future__ import annotations

import concurrent.futures
import threading
from datetime import UTC, datetime, timedelta

import pytest

from driftline.feedback.v1 import feedback_pb2
from driftline.kit.topics import FEEDBACK, TRANSACTIONS_RAW, Topic
from driftline.services.ingestion.produce import Publisher, PublishStats
from driftline.services.ingestion.traffic import Kind, TrafficConfig, simulated
from driftline.simulator import SimulatorConfig

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


class FakeSender:
    def __init__(self, fail_every: int = 0) -> None:
        self.sent: list[tuple[str, bytes, bytes | None]] = []
        self.flushed = 0
        self.fail_every = fail_every

    def send(self, topic: Topic | str, value: bytes, key: bytes | str | None = None, headers: object = None):  # type: ignore[no-untyped-def]
        name = topic if isinstance(topic, str) else topic.name
        self.sent.append((name, value, key if not isinstance(key, str) else key.encode()))
        future: concurrent.futures.Future[object] = concurrent.futures.Future()
        if self.fail_every and len(self.sent) % self.fail_every == 0:
            future.set_exception(RuntimeError("nack"))
        else:
            future.set_result(None)
        return future

    def flush(self, timeout_s: float | None = None) -> None:
        self.flushed += 1


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept += seconds
        self.now += seconds


def traffic(count: int, **kwargs: object) -> TrafficConfig:
    return TrafficConfig(
        simulator=SimulatorConfig(start=NOW - timedelta(hours=1), label_delay_s=2.0),
        count=count,
        **kwargs,  # type: ignore[arg-type]
    )


def test_every_message_goes_to_the_raw_topic_and_every_valid_event_gets_one_label() -> None:
    sender = FakeSender()
    messages = list(simulated(traffic(2_000, garbage_rate=0.05, duplicate_rate=0.05), now=NOW))
    stats = Publisher(sender).run(messages)
    raw = [s for s in sender.sent if s[0] == TRANSACTIONS_RAW.name]
    labels = [feedback_pb2.FeedbackLabel.FromString(s[1]) for s in sender.sent if s[0] == FEEDBACK.name]
    valid = [m for m in messages if m.kind is Kind.VALID]
    assert [s[1] for s in raw] == [m.value for m in messages]
    assert sorted(lb.event_id for lb in labels) == sorted(m.event.event_id for m in valid if m.event)
    assert stats.sent == 2_000
    assert stats.feedback == len(valid)
    assert stats.by_kind[Kind.VALID] == len(valid)
    assert sum(stats.garbage_reasons.values()) == stats.by_kind[Kind.GARBAGE]
    assert sender.flushed == 1
    assert {s[2] for s in sender.sent if s[0] == FEEDBACK.name} <= {m.key for m in valid}


def test_labels_go_out_in_label_time_order_interleaved_with_events() -> None:
    sender = FakeSender()
    messages = list(simulated(traffic(3_000), now=NOW))
    Publisher(sender).run(messages)
    events = {m.event.event_id: m.event for m in messages if m.event}
    label_times = [
        events[feedback_pb2.FeedbackLabel.FromString(value).event_id].label_time
        for topic, value, _ in sender.sent
        if topic == FEEDBACK.name
    ]
    assert label_times == sorted(label_times)
    topics = [s[0] for s in sender.sent]
    assert topics.index(FEEDBACK.name) < len(topics) // 2


def test_labels_wait_for_their_label_time_in_the_stream() -> None:
    sender = FakeSender()
    messages = list(simulated(traffic(1_000), now=NOW))
    Publisher(sender).run(messages)
    newest_event_time = None
    by_value = {m.value: m.event for m in messages if m.event}
    events = {m.event.event_id: m.event for m in messages if m.event}
    last_event_time = max(e.event_time for e in events.values())
    for topic, value, _ in sender.sent:
        if topic == TRANSACTIONS_RAW.name:
            newest_event_time = by_value[value].event_time
        else:
            label_time = events[feedback_pb2.FeedbackLabel.FromString(value).event_id].label_time
            assert newest_event_time is not None
            assert label_time <= newest_event_time or newest_event_time == last_event_time


def test_no_feedback_means_no_labels() -> None:
    sender = FakeSender()
    stats = Publisher(sender).run(simulated(traffic(500), now=NOW), feedback=False)
    assert stats.feedback == 0
    assert {s[0] for s in sender.sent} == {TRANSACTIONS_RAW.name}


def test_the_rate_paces_the_messages() -> None:
    sender = FakeSender()
    fake = FakeTime()
    stats = Publisher(sender, clock=fake.clock, sleep=fake.sleep).run(
        simulated(traffic(1_000), now=NOW), rate=200, feedback=False
    )
    assert fake.slept == pytest.approx(999 / 200, abs=0.01)
    assert stats.rate == pytest.approx(200, rel=0.01)


def test_stop_ends_the_run_early() -> None:
    sender = FakeSender()
    stop = threading.Event()
    seen: list[int] = []

    def progress(stats: PublishStats) -> None:
        seen.append(stats.sent)
        if stats.sent >= 100:
            stop.set()

    stats = Publisher(sender).run(
        simulated(traffic(1_000), now=NOW), stop=stop, on_progress=progress, progress_every=50
    )
    assert stats.sent == 100
    assert seen[:2] == [50, 100]


def test_unacknowledged_messages_are_counted_as_failed() -> None:
    stats = Publisher(FakeSender(fail_every=10)).run(simulated(traffic(100), now=NOW), feedback=False)
    assert stats.failed == 10


def test_namespaced_topics_are_used() -> None:
    sender = FakeSender()
    raw, feedback = TRANSACTIONS_RAW.namespaced("p."), FEEDBACK.namespaced("p.")
    Publisher(sender, raw_topic=raw, feedback_topic=feedback).run(simulated(traffic(300), now=NOW))
    assert {s[0] for s in sender.sent} == {raw.name, feedback.name}
