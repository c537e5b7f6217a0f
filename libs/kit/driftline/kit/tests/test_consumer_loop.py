"""Unit tests of the consumer loop's decisions, with the Kafka client replaced by fakes.

The real at-least-once behaviour is proven against the broker in tests/integration/kit.
"""

from __future__ import annotations

import concurrent.futures

from confluent_kafka import KafkaError

from driftline.kit import kafka
from driftline.kit.settings import KafkaSettings
from driftline.kit.testing import FakeMessage, fake_messages
from driftline.kit.topics import TRANSACTIONS_RAW


class _Producer:
    def __init__(self):
        self.sent = []

    def send(self, topic, value, key=None, headers=None):
        name = topic if isinstance(topic, str) else topic.name
        self.sent.append((name, value, key, headers or []))
        future = concurrent.futures.Future()
        future.set_result(None)
        return future

    def produce(self, topic, value, key, headers, on_delivery):
        self.sent.append((topic, value, key, headers or []))
        on_delivery(None, FakeMessage(value, _topic=topic))

    def flush(self, timeout_s=None):
        return None


class _Consumer:
    def __init__(self):
        self.commits = []

    def commit(self, offsets, asynchronous):
        self.commits.append([(tp.topic, tp.partition, tp.offset) for tp in offsets])


def _loop(handler, producer, **kwargs):
    loop = kafka.ConsumerLoop(
        KafkaSettings(bootstrap_servers="127.0.0.1:1"),
        group_id="g",
        topics=[TRANSACTIONS_RAW],
        handler=handler,
        producer=producer,
        retry_backoff_s=0,
        **kwargs,
    )
    loop._consumer = _Consumer()
    return loop


def test_poison_message_goes_to_dead_letter_topic_with_reason_and_coordinates():
    def handler(message):
        if message.value() == b"bad":
            raise kafka.PoisonMessage("malformed_json", "expecting value")
        return [kafka.Output("out", message.value())]

    producer = _Producer()
    loop = _loop(kafka.per_message(handler), producer)
    loop._process(fake_messages([b"ok", b"bad", b"ok2"], topic=TRANSACTIONS_RAW.name))

    assert [s[0] for s in producer.sent] == ["out", "transactions.raw-dlq.v1", "out"]
    dlq = producer.sent[1]
    headers = dict(dlq[3])
    assert dlq[1] == b"bad"
    assert headers[kafka.DLQ_REASON] == b"malformed_json"
    assert headers[kafka.DLQ_SOURCE_TOPIC] == b"transactions.raw.v1"
    assert headers[kafka.DLQ_SOURCE_OFFSET] == b"1"
    assert loop._consumer.commits == [[("transactions.raw.v1", 0, 3)]]


def test_transient_error_is_retried_then_succeeds_without_dead_letter():
    calls = {"n": 0}

    def handler(messages):
        calls["n"] += 1
        if calls["n"] < 3:
            raise ConnectionError("redis down")
        return [[kafka.Output("out", m.value())] for m in messages]

    producer = _Producer()
    loop = _loop(handler, producer, max_retries=5)
    loop._process(fake_messages([b"a", b"b"], topic=TRANSACTIONS_RAW.name))
    assert calls["n"] == 3
    assert [s[0] for s in producer.sent] == ["out", "out"]


def test_persistent_failure_isolates_the_culprit_and_dead_letters_only_it():
    def handler(messages):
        if any(m.value() == b"boom" for m in messages):
            raise ValueError("cannot handle boom")
        return [[kafka.Output("out", m.value())] for m in messages]

    producer = _Producer()
    loop = _loop(handler, producer, max_retries=1)
    loop._process(fake_messages([b"a", b"boom", b"c"], topic=TRANSACTIONS_RAW.name))
    assert [s[0] for s in producer.sent] == ["out", "transactions.raw-dlq.v1", "out"]
    assert dict(producer.sent[1][3])[kafka.DLQ_REASON] == b"handler_error"


def test_commit_waits_for_before_commit_hook_after_outputs():
    order = []
    producer = _Producer()
    loop = _loop(
        kafka.per_message(lambda m: [kafka.Output("out", m.value())]),
        producer,
        hooks=kafka.ConsumerHooks(before_commit=lambda batch: order.append(("hook", len(producer.sent)))),
    )
    loop._process(fake_messages([b"a"], topic=TRANSACTIONS_RAW.name))
    assert order == [("hook", 1)]
    assert loop._consumer.commits


def test_failed_delivery_prevents_commit():
    import pytest

    class _FailingProducer(_Producer):
        def produce(self, topic, value, key, headers, on_delivery):
            on_delivery(
                KafkaError(KafkaError._MSG_TIMED_OUT, "broker said no"), FakeMessage(value, _topic=topic)
            )

    loop = _loop(kafka.per_message(lambda m: [kafka.Output("out", m.value())]), _FailingProducer())
    with pytest.raises(kafka.DeliveryError):
        loop._process(fake_messages([b"a"], topic=TRANSACTIONS_RAW.name))
    assert loop._consumer.commits == []


def test_poison_on_a_topic_without_dead_letter_topic_is_skipped_and_the_loop_goes_on():
    from driftline.kit.topics import PREDICTIONS

    def handler(message):
        if message.value() == b"bad":
            raise kafka.PoisonMessage("undecodable", "not a PredictionLog")
        return [kafka.Output("out", message.value())]

    producer = _Producer()
    loop = kafka.ConsumerLoop(
        KafkaSettings(bootstrap_servers="127.0.0.1:1"),
        group_id="g2",
        topics=[PREDICTIONS],
        handler=kafka.per_message(handler),
        producer=producer,
        retry_backoff_s=0,
    )
    loop._consumer = _Consumer()
    before = kafka.SKIPPED.labels("g2", PREDICTIONS.name, "undecodable")._value.get()
    loop._process(fake_messages([b"a", b"bad", b"c"], topic=PREDICTIONS.name))
    assert [s[1] for s in producer.sent] == [b"a", b"c"]
    assert kafka.SKIPPED.labels("g2", PREDICTIONS.name, "undecodable")._value.get() == before + 1
    assert loop._consumer.commits == [[(PREDICTIONS.name, 0, 3)]]
