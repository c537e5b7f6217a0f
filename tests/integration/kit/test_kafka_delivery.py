"""The kit's Kafka plumbing against the real broker: round trip, at-least-once, dead letters,
and a broker restart mid-stream."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from confluent_kafka import Consumer, TopicPartition

from driftline.kit import kafka
from driftline.kit.settings import KafkaSettings
from driftline.kit.testing import consume, create_test_topics, delete_topics, unique_prefix, wait_for, written
from driftline.kit.topics import Topic

pytestmark = pytest.mark.integration


@pytest.fixture
def topics(kafka_settings: KafkaSettings):
    prefix = unique_prefix()
    source = Topic(
        name=f"{prefix}kit.source.v1",
        key="k",
        message=None,
        partitions=2,
        dead_letter=Topic(name=f"{prefix}kit.source-dlq.v1", key="k", message=None, partitions=1),
    )
    sink = Topic(name=f"{prefix}kit.sink.v1", key="k", message=None, partitions=2)
    create_test_topics(kafka_settings, [source, sink])
    yield source, sink
    delete_topics(kafka_settings, [source, sink])


def _produce(settings: KafkaSettings, topic: str, values: list[bytes]) -> None:
    producer = kafka.KafkaProducer(settings)
    futures = [producer.send(topic, v, key=v) for v in values]
    producer.flush(30)
    kafka.wait_all(futures, 30)
    producer.close()


def _run_loop(loop: kafka.ConsumerLoop) -> threading.Thread:
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    return thread


def test_produce_then_consume_round_trip(kafka_settings, topics):
    source, _ = topics
    values = [f"m{i}".encode() for i in range(50)]
    _produce(kafka_settings, source.name, values)
    got = consume(kafka_settings, source.name, expected=50, timeout_s=30)
    assert sorted(m.value() for m in got) == sorted(values)


@pytest.mark.parametrize("reports", ["all", "errors"])
def test_poison_message_lands_in_dead_letter_topic_while_consumer_keeps_going(
    kafka_settings, topics, reports
):
    source, sink = topics

    def handler(message):
        if message.value().startswith(b"poison"):
            raise kafka.PoisonMessage("bad_value", "value starts with poison")
        return [kafka.Output(sink.name, message.value().upper(), message.key())]

    _produce(kafka_settings, source.name, [b"a", b"poison-1", b"b", b"c"])
    producer = kafka.KafkaProducer(kafka_settings, reports=reports)
    loop = kafka.ConsumerLoop(
        kafka_settings,
        group_id=f"{source.name}-g",
        topics=[source],
        handler=kafka.per_message(handler),
        producer=producer,
    )
    thread = _run_loop(loop)
    try:
        out = consume(kafka_settings, sink.name, expected=3, timeout_s=30)
        dead = consume(kafka_settings, source.dead_letter_topic().name, expected=1, timeout_s=30)
        _produce(kafka_settings, source.name, [b"after"])  # still consuming after the poison
        out += [
            m for m in consume(kafka_settings, sink.name, expected=4, timeout_s=30) if m.value() == b"AFTER"
        ]
    finally:
        loop.stop()
        thread.join(15)
        producer.close()
    assert sorted(m.value() for m in out) == [b"A", b"AFTER", b"B", b"C"]
    assert len(dead) == 1
    headers = dict(dead[0].headers())
    assert dead[0].value() == b"poison-1"
    assert headers[kafka.DLQ_REASON] == b"bad_value"
    assert headers[kafka.DLQ_SOURCE_TOPIC] == source.name.encode()
    assert int(headers[kafka.DLQ_SOURCE_PARTITION]) in range(source.partitions)
    assert int(headers[kafka.DLQ_SOURCE_OFFSET]) >= 0
    # Every message handled and delivered is committed, the poison included.
    assert _committed(kafka_settings, f"{source.name}-g", source) == 5


def _committed(settings: KafkaSettings, group: str, topic: Topic) -> int:
    """Messages of ``topic`` the group has committed, over all partitions."""
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": group})
    try:
        partitions = [TopicPartition(topic.name, p) for p in range(topic.partitions)]
        return sum(max(tp.offset, 0) for tp in consumer.committed(partitions, timeout=10))
    finally:
        consumer.close()


class _SlowForward:
    """Forwards each message to ``sink``, a tenth of a second a batch; counts what it prepares."""

    def __init__(self, sink: str) -> None:
        self.sink = sink
        self.prepared = 0

    def prepare(self, messages: list) -> None:
        self.prepared += 1

    def __call__(self, messages: list) -> list:
        time.sleep(0.1)  # a backlog builds up: the next batch is always there, waiting
        return [[kafka.Output(self.sink, m.value(), m.key())] for m in messages]


def test_a_member_joining_mid_stream_makes_a_preparing_loop_lose_and_repeat_nothing(kafka_settings, topics):
    source, sink = topics
    values = [f"v{i}".encode() for i in range(6000)]
    _produce(kafka_settings, source.name, values)
    settings = kafka_settings.copy(update={"batch_size": 100})
    group = f"{source.name}-join"
    handlers = [_SlowForward(sink.name), _SlowForward(sink.name)]
    producers = [kafka.KafkaProducer(settings, reports="errors") for _ in handlers]
    loops = [
        kafka.ConsumerLoop(
            settings,
            group_id=group,
            topics=[source],
            handler=handler,
            producer=producer,
            config={"heartbeat.interval.ms": 300},  # the first member learns of the join soon
        )
        for handler, producer in zip(handlers, producers, strict=True)
    ]
    threads = [_run_loop(loops[0])]
    try:
        wait_for(lambda: handlers[0].prepared >= 3, 60, "the first member to prepare batches")
        threads.append(_run_loop(loops[1]))  # the group rebalances while batches wait
        wait_for(
            lambda: _committed(kafka_settings, group, source) == len(values), 120, "every message committed"
        )
    finally:
        for loop in loops:
            loop.stop()
        for thread in threads:
            thread.join(30)
        for producer in producers:
            producer.close()
    assert handlers[1].prepared > 0  # the second member took over partitions and prepared too
    # Every message forwarded exactly once: none lost, none repeated across the rebalance.
    assert written(kafka_settings, sink) == len(values)
    out = consume(kafka_settings, sink.name, expected=len(values), timeout_s=60)
    assert sorted(m.value() for m in out) == sorted(values)


def test_a_transient_failure_at_stop_leaves_the_batch_for_the_next_run_and_dead_letters_nothing(
    kafka_settings, topics
):
    source, sink = topics
    values = [f"s{i}".encode() for i in range(3)]
    _produce(kafka_settings, source.name, values)
    group = f"{source.name}-stop"

    def fails_as_it_stops(messages: list) -> list:
        first.stop()  # SIGTERM arrives while the handler meets an error a retry would get past
        raise ValueError("transient")

    def forward(messages: list) -> list:
        return [[kafka.Output(sink.name, m.value(), m.key())] for m in messages]

    producer = kafka.KafkaProducer(kafka_settings)
    try:
        first = kafka.ConsumerLoop(
            kafka_settings, group_id=group, topics=[source], handler=fails_as_it_stops, producer=producer
        )
        first.run()  # returns once it met the failure and stopped
        assert _committed(kafka_settings, group, source) == 0
        # The same group, restarted: every message comes again and goes through.
        second = kafka.ConsumerLoop(
            kafka_settings, group_id=group, topics=[source], handler=forward, producer=producer
        )
        thread = _run_loop(second)
        try:
            wait_for(
                lambda: _committed(kafka_settings, group, source) == len(values),
                60,
                "every message committed",
            )
        finally:
            second.stop()
            thread.join(30)
    finally:
        producer.close()
    out = consume(kafka_settings, sink.name, expected=len(values), timeout_s=30)
    assert sorted(m.value() for m in out) == sorted(values)
    assert written(kafka_settings, source.dead_letter_topic()) == 0


_CRASHING_WORKER = textwrap.dedent(
    """
    import json, os, sys
    from driftline.kit import kafka
    from driftline.kit.settings import KafkaSettings
    from driftline.kit.topics import Topic

    source_name, sink_name, group, crash = sys.argv[1:5]
    settings = KafkaSettings()
    source = Topic(name=source_name, key="k", message=None)
    producer = kafka.KafkaProducer(settings)

    def die_before_commit(batch):
        if crash == "crash":
            # Name the batch it dies on: the first poll may hold one partition's records or both.
            print("crashed-batch", json.dumps([m.value().decode() for m in batch]), flush=True)
            os._exit(17)  # outputs are acknowledged, offsets are not committed

    loop = kafka.ConsumerLoop(
        settings, group_id=group, topics=[source], producer=producer,
        handler=kafka.per_message(lambda m: [kafka.Output(sink_name, m.value(), m.key())]),
        hooks=kafka.ConsumerHooks(before_commit=die_before_commit),
    )
    kafka.install_signal_handlers(loop.stop)
    loop.run()
    producer.close()
    """
)


def test_consumer_killed_before_commit_reprocesses_its_batch(kafka_settings, topics):
    source, sink = topics
    values = [f"e{i}".encode() for i in range(20)]
    _produce(kafka_settings, source.name, values)
    group = f"{source.name}-crash"
    env = {**os.environ, "DRIFTLINE_KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers}
    cmd = [sys.executable, "-c", _CRASHING_WORKER, source.name, sink.name, group]

    crashed = subprocess.run(
        [*cmd, "crash"], env=env, timeout=120, check=False, capture_output=True, text=True
    )
    assert crashed.returncode == 17, crashed.stderr
    marker = next(line for line in crashed.stdout.splitlines() if line.startswith("crashed-batch "))
    batch = sorted(v.encode() for v in json.loads(marker.removeprefix("crashed-batch ")))
    assert batch
    assert set(batch) <= set(values)
    first = consume(kafka_settings, sink.name, expected=len(values), timeout_s=10)
    assert sorted(m.value() for m in first) == batch  # that batch's outputs, and nothing after it

    worker = subprocess.Popen([*cmd, "ok"], env=env)
    try:
        # The restarted worker starts from the last commit (none), so everything comes again.
        both = consume(kafka_settings, sink.name, expected=len(values) + len(batch), timeout_s=60)
    finally:
        worker.terminate()
        assert worker.wait(timeout=30) == 0
    counts = {v: sum(1 for m in both if m.value() == v) for v in values}
    assert counts == {v: 2 if v in batch else 1 for v in values}


@pytest.mark.disruptive
def test_broker_restart_mid_stream_loses_no_acknowledged_message(kafka_settings, topics, stack):
    source, _ = topics
    producer = kafka.KafkaProducer(kafka_settings)
    acknowledged: list[bytes] = []
    failed: list[bytes] = []
    stop = threading.Event()

    def keep_sending() -> None:
        i = 0
        while not stop.is_set():
            value = f"r{i}".encode()
            future = producer.send(source.name, value, key=value)
            future.add_done_callback(lambda f, v=value: (failed if f.exception() else acknowledged).append(v))
            i += 1
            time.sleep(0.005)

    sender = threading.Thread(target=keep_sending, daemon=True)
    sender.start()
    time.sleep(1.0)
    restart = stack("restart-kafka")
    time.sleep(2.0)
    stop.set()
    sender.join(10)
    producer.flush(120)
    producer.close()
    assert restart.returncode == 0
    assert acknowledged, "nothing was acknowledged"
    got = {m.value() for m in consume(kafka_settings, source.name, expected=len(acknowledged), timeout_s=60)}
    missing = [v for v in acknowledged if v not in got]
    assert missing == []
