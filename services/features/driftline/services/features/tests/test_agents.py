from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import faust
import pytest
import redis
from confluent_kafka import KafkaError

from driftline.events.v1 import transaction_pb2
from driftline.features.v1 import features_pb2
from driftline.featurestore.definitions import TRANSACTION_FEATURES
from driftline.featurestore.events import epoch_seconds
from driftline.kit import kafka
from driftline.kit.codec import to_timestamp
from driftline.kit.outages import OUTAGE_WAITS, OutagePolicy
from driftline.kit.redis_clients import REDIS_OUTAGE
from driftline.services.features.agents import (
    KafkaPublisher,
    PoisonEvent,
    TransactionsAgent,
    decode_transaction,
)
from driftline.services.features.fakes import MemoryState
from driftline.services.features.processor import FeatureProcessor
from driftline.services.features.state import EntityState

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class FakeMessage:
    value: bytes | None
    key: bytes | None = b"c1"
    topic: str = "transactions.clean.v1"
    partition: int = 1
    offset: int = 0
    timestamp: float = 1_700_000_000.5
    headers: list[tuple[str, bytes]] = field(default_factory=list)


@dataclass
class FakeEvent:
    message: FakeMessage


class FakePublisher:
    """Records sends by topic; every send is acknowledged at flush."""

    def __init__(self) -> None:
        self.sent: dict[str, list[dict[str, Any]]] = {"vectors": [], "dlq": []}
        self.flushes = 0

    def send(
        self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]] | None = None
    ) -> None:
        self.sent[topic].append({"value": value, "key": key, "headers": headers or []})

    async def flush(self) -> None:
        self.flushes += 1


def tx(event_id: str, card: str = "c1", seconds: float = 0.0, amount: float = 10.0) -> bytes:
    message = transaction_pb2.CleanTransaction(
        event_id=event_id,
        card_id=card,
        merchant_id="m1",
        amount=amount,
        currency="EUR",
        merchant_category="grocery",
        country="NL",
        channel="pos",
    )
    message.event_time.CopyFrom(to_timestamp(T0 + timedelta(seconds=seconds)))
    return message.SerializeToString()


def make_agent(state: Any, publisher: FakePublisher, **options: Any) -> TransactionsAgent:
    settings: dict[str, Any] = {"max_retries": 1, "retry_backoff_s": 0.0, **options}
    return TransactionsAgent(
        FeatureProcessor(TRANSACTION_FEATURES, state, allowed_lateness_s=5.0),
        publisher,
        vectors_topic="vectors",
        dead_letter_topic="dlq",
        source_name="transactions.clean.v1",
        **settings,
    )


async def test_valid_events_publish_one_vector_each_and_poison_goes_to_dead_letters() -> None:
    publisher = FakePublisher()
    vectors, dlq = publisher.sent["vectors"], publisher.sent["dlq"]
    agent = make_agent(MemoryState(), publisher)
    batch = [
        FakeEvent(FakeMessage(tx("e1", seconds=0), offset=0)),
        FakeEvent(FakeMessage(b"\xff\xfenot protobuf", offset=1, headers=[("content-type", b"x")])),
        FakeEvent(FakeMessage(tx("e2", seconds=1, amount=30.0), offset=2)),
        FakeEvent(FakeMessage(None, offset=3)),
    ]
    await agent.handle(batch)  # type: ignore[arg-type]

    assert [s["key"] for s in vectors] == [b"c1", b"c1"]
    vector = features_pb2.FeatureVector.FromString(vectors[1]["value"])
    assert vector.event_id == "e2"
    assert vector.feature_set == "card_transactions"
    assert [v.name for v in vector.values] == TRANSACTION_FEATURES.feature_names
    assert {v.name: v.value for v in vector.values}["amount_mean_10m"] == 20.0
    assert epoch_seconds(vector.event_time) == epoch_seconds(T0) + 1

    assert len(dlq) == 2
    poison = dlq[0]
    headers = dict(poison["headers"])
    assert poison["value"] == b"\xff\xfenot protobuf"
    assert headers[kafka.DLQ_REASON] == b"decode_error"
    assert headers[kafka.DLQ_SOURCE_OFFSET] == b"1"
    assert headers[kafka.DLQ_SOURCE_PARTITION] == b"1"
    assert headers[kafka.DLQ_SOURCE_TOPIC] == b"transactions.clean.v1"
    assert headers[kafka.DLQ_SERVICE] == b"features"
    assert headers["content-type"] == b"x"  # original headers kept
    assert dict(dlq[1]["headers"])[kafka.DLQ_REASON] == b"empty_value"


async def test_the_kit_counters_count_the_agent_under_its_group_for_the_dead_letter_alert() -> None:
    # The dead-letter-ratio alert divides the kit's dead-lettered by its consumed counter per
    # group and topic: the faust agent must feed both, as every ConsumerLoop does.
    from prometheus_client import REGISTRY

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    group, topic = "features-counted", "transactions.clean.v1"
    consumed = sample("driftline_kafka_consumed_total", group=group, topic=topic)
    dead = sample("driftline_kafka_dead_lettered_total", group=group, topic=topic, reason="decode_error")
    publisher = FakePublisher()
    agent = make_agent(MemoryState(), publisher, group=group)
    batch = [
        FakeEvent(FakeMessage(tx("e1"), offset=0)),
        FakeEvent(FakeMessage(b"\xffnot protobuf", offset=1)),
        FakeEvent(FakeMessage(tx("e2", seconds=1), offset=2)),
    ]
    await agent.handle(batch)  # type: ignore[arg-type]

    assert sample("driftline_kafka_consumed_total", group=group, topic=topic) == consumed + 3
    assert (
        sample("driftline_kafka_dead_lettered_total", group=group, topic=topic, reason="decode_error")
        == dead + 1
    )


async def test_a_batch_whose_outputs_were_lost_counts_nothing_so_its_replay_counts_once() -> None:
    from prometheus_client import REGISTRY

    class LostPublisher(FakePublisher):
        async def flush(self) -> None:
            raise kafka.DeliveryError(KafkaError(KafkaError._TIMED_OUT, "outputs left unacknowledged"))

    group, topic = "features-lost", "transactions.clean.v1"
    agent = make_agent(MemoryState(), LostPublisher(), group=group)
    batch = [
        FakeEvent(FakeMessage(tx("e1"), offset=0)),
        FakeEvent(FakeMessage(b"\xffnot protobuf", offset=1)),
    ]
    with pytest.raises(kafka.DeliveryError):
        await agent.handle(batch)  # type: ignore[arg-type]
    assert not REGISTRY.get_sample_value("driftline_kafka_consumed_total", {"group": group, "topic": topic})
    dead = {"group": group, "topic": topic, "reason": "decode_error"}
    assert not REGISTRY.get_sample_value("driftline_kafka_dead_lettered_total", dead)


class FlakyState(MemoryState):
    """Fails every load that touches the entity ``bad``; others succeed."""

    async def load(self, entity_ids: Sequence[str]) -> dict[str, EntityState]:
        if "bad" in entity_ids:
            raise RuntimeError("state of bad is corrupt")
        return await super().load(entity_ids)


async def test_handler_error_is_retried_then_only_the_culprit_is_dead_lettered() -> None:
    publisher = FakePublisher()
    vectors, dlq = publisher.sent["vectors"], publisher.sent["dlq"]
    agent = make_agent(FlakyState(), publisher)
    batch = [
        FakeEvent(FakeMessage(tx("e1", card="c1"), offset=0)),
        FakeEvent(FakeMessage(tx("e2", card="bad"), key=b"bad", offset=1)),
        FakeEvent(FakeMessage(tx("e3", card="c2"), key=b"c2", offset=2)),
    ]
    await agent.handle(batch)  # type: ignore[arg-type]
    assert sorted(features_pb2.FeatureVector.FromString(s["value"]).event_id for s in vectors) == [
        "e1",
        "e3",
    ]
    assert len(dlq) == 1
    headers = dict(dlq[0]["headers"])
    assert headers[kafka.DLQ_REASON] == b"handler_error"
    assert b"corrupt" in headers[kafka.DLQ_DETAIL]
    assert dlq[0]["key"] == b"bad"


async def test_transient_error_is_retried_without_dead_letters() -> None:
    publisher = FakePublisher()
    vectors, dlq = publisher.sent["vectors"], publisher.sent["dlq"]
    state = MemoryState()
    state.fail_next = 1
    agent = make_agent(state, publisher)
    await agent.handle([FakeEvent(FakeMessage(tx("e1")))])  # type: ignore[arg-type]
    assert len(vectors) == 1
    assert dlq == []


class DownState(MemoryState):
    """Redis refuses connections for the first ``outages`` loads."""

    def __init__(self, outages: int) -> None:
        super().__init__()
        self.outages = outages

    async def load(self, entity_ids: Sequence[str]) -> dict[str, EntityState]:
        if self.outages:
            self.outages -= 1
            raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:16379. Connection refused.")
        return await super().load(entity_ids)


async def test_a_redis_outage_is_waited_out_however_long_and_nothing_is_dead_lettered() -> None:
    publisher = FakePublisher()
    vectors, dlq = publisher.sent["vectors"], publisher.sent["dlq"]
    # One retry (make_agent's): an outage does not count towards it.
    agent = make_agent(
        DownState(outages=6), publisher, outages=OutagePolicy(errors=REDIS_OUTAGE, base_s=0.0, cap_s=0.0)
    )
    waits = OUTAGE_WAITS.labels("features.transactions")._value.get()
    batch = [
        FakeEvent(FakeMessage(tx("e1", card="c1"), offset=0)),
        FakeEvent(FakeMessage(tx("e2", card="c2"), offset=1)),
    ]
    await agent.handle(batch)  # type: ignore[arg-type]
    assert sorted(features_pb2.FeatureVector.FromString(s["value"]).event_id for s in vectors) == ["e1", "e2"]
    assert dlq == []
    assert OUTAGE_WAITS.labels("features.transactions")._value.get() == waits + 6


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "empty_value"),
        (b"\x08\x96\x01garbage\xff", "decode_error"),
        (transaction_pb2.CleanTransaction(card_id="c1").SerializeToString(), "invalid_event"),
        (transaction_pb2.CleanTransaction(event_id="e", card_id="c1").SerializeToString(), "invalid_event"),
    ],
)
def test_bad_transactions_are_poison_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(PoisonEvent) as caught:
        decode_transaction(payload)
    assert caught.value.reason == reason


def test_nan_amount_is_poison() -> None:
    message = transaction_pb2.CleanTransaction.FromString(tx("e1"))
    message.amount = float("nan")
    with pytest.raises(PoisonEvent, match="amount"):
        decode_transaction(message.SerializeToString())


async def test_agent_processes_its_stream_in_a_faust_test_context() -> None:
    app = faust.App("features-test", broker="kafka://127.0.0.1:9", store="memory://", value_serializer="raw")
    source = app.topic("transactions.clean.v1", value_type=bytes, value_serializer="raw")
    publisher = FakePublisher()
    vectors, dlq = publisher.sent["vectors"], publisher.sent["dlq"]
    handler = make_agent(MemoryState(), publisher)
    agent = app.agent(source, name="features-test-agent")(handler)
    async with agent.test_context() as context:
        await context.put(tx("e1"), key=b"c1")
        await context.put(b"garbage", key=b"c1")
        for _ in range(100):
            if len(vectors) + len(dlq) == 2:
                break
            await asyncio.sleep(0.02)
    assert len(vectors) == 1
    assert len(dlq) == 1
    assert handler.batches >= 1


class FakeProducer:
    """The kit producer's produce/flush: deliveries are reported at flush, failing the chosen ones."""

    def __init__(self, fail: set[bytes]) -> None:
        self.fail = fail
        self.queued: list[tuple[str, bytes, Any]] = []

    def produce(self, topic: str, value: bytes, key: Any, headers: Any, on_delivery: Any) -> None:
        self.queued.append((topic, value, on_delivery))

    def flush(self, timeout_s: float | None = None) -> None:
        for topic, value, on_delivery in self.queued:
            message = type("Delivered", (), {"topic": lambda self, t=topic: t})()
            error = KafkaError(KafkaError._MSG_TIMED_OUT) if value in self.fail else None
            on_delivery(error, message)
        self.queued.clear()


async def test_publisher_flush_raises_when_any_output_was_not_acknowledged() -> None:
    producer = FakeProducer(fail={b"lost"})
    publisher = KafkaPublisher(producer)  # type: ignore[arg-type]
    before = kafka.PRODUCED.labels("vectors")._value.get()
    publisher.send("vectors", b"a", b"c1")
    publisher.send("vectors", b"b", b"c1")
    await publisher.flush()
    assert kafka.PRODUCED.labels("vectors")._value.get() == before + 2
    publisher.send("vectors", b"lost", b"c1")
    publisher.send("vectors", b"c", b"c1")
    with pytest.raises(kafka.DeliveryError):
        await publisher.flush()
    publisher.send("vectors", b"d", b"c1")
    await publisher.flush()  # a failure is reported once, by the flush that covers it


async def test_a_batch_whose_outputs_were_lost_stops_the_worker_and_stays_unacked() -> None:
    class LostPublisher(FakePublisher):
        async def flush(self) -> None:
            raise kafka.DeliveryError(KafkaError(KafkaError._TIMED_OUT, "outputs left unacknowledged"))

    app = faust.App(
        "features-fail-test", broker="kafka://127.0.0.1:9", store="memory://", value_serializer="raw"
    )
    source = app.topic("transactions.clean.v1", value_type=bytes, value_serializer="raw")
    stopped: list[BaseException] = []
    handler = make_agent(MemoryState(), LostPublisher(), on_failure=stopped.append)
    agent = app.agent(source, name="features-fail-agent")(handler)
    async with agent.test_context() as context:
        await context.put(tx("e1"), key=b"c1")  # the agent ends: no error left for faust to keep
    assert len(stopped) == 1
    assert isinstance(stopped[0], kafka.DeliveryError)
    assert handler.batches == 0  # never finished, so never acked
