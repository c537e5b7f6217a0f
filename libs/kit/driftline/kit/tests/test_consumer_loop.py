"""Unit tests of the consumer loop's decisions, with the Kafka client replaced by fakes.

The real at-least-once behaviour is proven against the broker in tests/integration/kit.
"""

from __future__ import annotations

import concurrent.futures
import threading

import pytest
from confluent_kafka import KafkaError

from driftline.kit import kafka
from driftline.kit.kafka import consumer
from driftline.kit.settings import KafkaSettings
from driftline.kit.testing import REDIS_CANNOT_SERVE_REPLIES, FakeMessage, fake_messages
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


def _count(name, **labels):
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(f"driftline_kafka_{name}_total", labels) or 0.0


def _mixed_batch():
    """Two partitions, interleaved as a fetch returns them; two poison reasons."""
    raw = TRANSACTIONS_RAW.name
    return [
        FakeMessage(b"ok", _topic=raw, _partition=0, _offset=10),
        FakeMessage(b"bad", _topic=raw, _partition=1, _offset=4),
        FakeMessage(b"worse", _topic=raw, _partition=0, _offset=11),
        FakeMessage(b"bad", _topic=raw, _partition=0, _offset=12),
        FakeMessage(b"ok", _topic=raw, _partition=1, _offset=5),
    ]


def _poison(message):
    reasons = {b"bad": "malformed_json", b"worse": "not_in_enum"}
    if message.value() in reasons:
        raise kafka.PoisonMessage(reasons[message.value()], "")
    return [kafka.Output("out", message.value())]


def test_a_batch_is_counted_and_committed_per_partition_once_acknowledged():
    raw = TRANSACTIONS_RAW.name
    before = {
        reason: _count("dead_lettered", group="g", topic=raw, reason=reason)
        for reason in ("malformed_json", "not_in_enum")
    }
    consumed = _count("consumed", group="g", topic=raw)
    loop = _loop(kafka.per_message(_poison), _Producer())
    loop._process(_mixed_batch())

    for reason, added in (("malformed_json", 2), ("not_in_enum", 1)):
        assert _count("dead_lettered", group="g", topic=raw, reason=reason) - before[reason] == added
    assert _count("consumed", group="g", topic=raw) - consumed == 5
    # The next offset to read, per partition: one past the last message of each.
    assert sorted(loop._consumer.commits[0]) == [(raw, 0, 13), (raw, 1, 6)]


def test_dead_letters_are_not_counted_when_the_batch_is_not_acknowledged():
    import pytest

    class _FailingProducer(_Producer):
        def produce(self, topic, value, key, headers, on_delivery):
            on_delivery(
                KafkaError(KafkaError._MSG_TIMED_OUT, "broker said no"), FakeMessage(value, _topic=topic)
            )

    raw = TRANSACTIONS_RAW.name
    before = _count("dead_lettered", group="g", topic=raw, reason="malformed_json")
    loop = _loop(kafka.per_message(_poison), _FailingProducer())
    with pytest.raises(kafka.DeliveryError):
        loop._process(_mixed_batch())
    assert _count("dead_lettered", group="g", topic=raw, reason="malformed_json") == before
    assert loop._consumer.commits == []


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


class _Log:
    """A consumer over one partition's messages: consume reads from the position, seek moves it."""

    def __init__(self, messages, on_consume=None):
        self.messages = messages
        self.position = 0
        self.commits = []
        self.seeks = []
        self.on_consume = on_consume

    def subscribe(self, topics, on_revoke=None):
        pass

    def consume(self, num_messages, timeout):
        if self.on_consume is not None:
            self.on_consume(self)
        batch = self.messages[self.position : self.position + num_messages]
        self.position += len(batch)
        return batch

    def seek(self, partition):
        self.seeks.append((partition.topic, partition.partition, partition.offset))
        self.position = next(i for i, m in enumerate(self.messages) if m.offset() == partition.offset)

    def commit(self, offsets, asynchronous):
        self.commits.append([(tp.topic, tp.partition, tp.offset) for tp in offsets])

    def assignment(self):
        return []

    def close(self):
        pass


class _Outage(Exception):
    """A client's own "cannot reach the server" error."""


def _run_until_consumed(loop, log, stop_when):
    def on_consume(consumer):
        if stop_when(consumer):
            loop.stop()

    log.on_consume = on_consume
    loop._consumer = log
    loop.run()


def test_an_outage_holds_the_batch_back_whole_and_nothing_is_dead_lettered():
    from driftline.kit.outages import OUTAGE_WAITS, OutagePolicy

    calls = {"n": 0}

    def handler(messages):
        calls["n"] += 1
        if calls["n"] <= 3:
            raise _Outage("connection refused")
        return [[kafka.Output("out", m.value())] for m in messages]

    producer = _Producer()
    loop = _loop(handler, producer, max_retries=0, outages=OutagePolicy(errors=(_Outage,), base_s=0, cap_s=0))
    loop._settings = loop._settings.copy(update={"batch_size": 2})
    messages = fake_messages([b"a", b"b", b"c"], topic=TRANSACTIONS_RAW.name)
    log = _Log(messages)
    before = OUTAGE_WAITS.labels("g")._value.get()
    _run_until_consumed(loop, log, lambda consumer: consumer.position == len(messages))

    # Three attempts met the outage: each time the batch went back to its first offset.
    assert log.seeks == [(TRANSACTIONS_RAW.name, 0, 0)] * 3
    assert OUTAGE_WAITS.labels("g")._value.get() == before + 3
    # Then every message went through once; none was dead-lettered, and all were committed.
    assert [s[1] for s in producer.sent] == [b"a", b"b", b"c"]
    assert log.commits[-1] == [(TRANSACTIONS_RAW.name, 0, 3)]


def test_an_outage_never_dead_letters_even_at_stop():
    from driftline.kit.errors import Unavailable
    from driftline.kit.outages import OutagePolicy

    def handler(messages):
        raise Unavailable("registry is down")  # an outage by default, whatever the client

    producer = _Producer()
    loop = _loop(handler, producer, max_retries=0, outages=OutagePolicy(base_s=0, cap_s=0))
    messages = fake_messages([b"a", b"b"], topic=TRANSACTIONS_RAW.name)
    log = _Log(messages)
    attempts = {"n": 0}

    def stop_after_two(consumer):
        attempts["n"] += 1
        return attempts["n"] == 2

    _run_until_consumed(loop, log, stop_after_two)
    assert producer.sent == []
    assert log.commits == []  # the batch stays uncommitted: the next run handles it
    assert log.position == 0


def test_an_outage_met_while_isolating_a_culprit_holds_the_whole_batch_back():
    from driftline.kit.outages import OutagePolicy

    state = {"down": True}

    def handler(messages):
        if len(messages) > 1:
            raise ValueError("something in this batch is bad")
        if messages[0].value() == b"b" and state["down"]:
            state["down"] = False
            raise _Outage("connection reset")
        if messages[0].value() == b"c":
            raise ValueError("c is bad")
        return [[kafka.Output("out", messages[0].value())]]

    producer = _Producer()
    loop = _loop(handler, producer, max_retries=0, outages=OutagePolicy(errors=(_Outage,), base_s=0, cap_s=0))
    messages = fake_messages([b"a", b"b", b"c"], topic=TRANSACTIONS_RAW.name)
    log = _Log(messages)
    _run_until_consumed(loop, log, lambda consumer: consumer.position == len(messages) and log.commits)

    assert log.seeks == [(TRANSACTIONS_RAW.name, 0, 0)]
    # "a" was handled before the outage and again after it: its first outputs were never sent.
    assert [(s[0], s[1]) for s in producer.sent] == [
        ("out", b"a"),
        ("out", b"b"),
        ("transactions.raw-dlq.v1", b"c"),
    ]


def test_a_failure_at_stop_abandons_the_batch_uncommitted_and_dead_letters_nothing():
    raw = TRANSACTIONS_RAW.name
    loop = None

    def handler(messages):
        if messages[0].value() == b"c":
            loop.stop()  # SIGTERM arrives while the batch is handled
            raise ValueError("transient")  # would succeed on a retry: not the batch's fault
        return [[kafka.Output("out", m.value())] for m in messages]

    producer = _Producer()
    loop = _loop(handler, producer, max_retries=5)
    loop._settings = loop._settings.copy(update={"batch_size": 2})
    log = _Log(fake_messages([b"a", b"b", b"c", b"d"], topic=raw))
    _run_until_consumed(loop, log, lambda consumer: False)

    # The batch before it is delivered and committed; it and what follows it are neither.
    assert [(s[0], s[1]) for s in producer.sent] == [("out", b"a"), ("out", b"b")]
    assert log.commits
    assert all(commit == [(raw, 0, 2)] for commit in log.commits)
    assert log.seeks == [(raw, 0, 2)]


@pytest.mark.parametrize(
    ("stopped_by", "isolated"),
    [(b"a", [b"a"]), (b"b", [b"a", b"b"])],
    ids=["after_a_succeeds_alone", "as_b_fails_alone"],
)
def test_a_stop_while_isolating_abandons_the_whole_batch_uncommitted(stopped_by, isolated):
    loop = None
    handled = []

    def handler(messages):
        if len(messages) > 1:
            raise ValueError("something in this batch is bad")
        handled.append(messages[0].value())
        if messages[0].value() == stopped_by:
            loop.stop()
            if stopped_by == b"b":
                raise ValueError("b failed as the loop stopped")
        return [[kafka.Output("out", messages[0].value())]]

    producer = _Producer()
    loop = _loop(handler, producer, max_retries=0)
    log = _Log(fake_messages([b"a", b"b", b"c"], topic=TRANSACTIONS_RAW.name))
    _run_until_consumed(loop, log, lambda consumer: False)

    assert handled == isolated  # isolating stops there
    assert producer.sent == []  # not even the outputs of "a", isolated before the stop
    assert log.commits == []
    assert log.seeks == [(TRANSACTIONS_RAW.name, 0, 0)]


def test_a_failure_at_stop_drops_the_prepared_batch_with_the_abandoned_one():
    events = []

    class _FailsAtStop(_Preparing):
        def __call__(self, messages):
            self.events.append(("handle", [m.value() for m in messages]))
            loop.stop()
            raise ValueError("transient")

    batches = [_raw(b"a", b"b"), _raw(b"c", first_offset=2) + _raw(b"x", partition=1, first_offset=7)]
    loop = _preparing_loop(_FailsAtStop(events), events, batches, max_retries=5)
    loop.run()
    assert loop._consumer.seeks == [(TRANSACTIONS_RAW.name, 0, 0), (TRANSACTIONS_RAW.name, 1, 7)]
    assert [e for e in events if e[0] in ("produce", "commit")] == []
    assert [e for e in events if e[0] == "handle"] == [("handle", [b"a", b"b"])]  # no retry


def test_stop_cuts_the_retry_back_off_short():
    import time

    class _StoppedDuringTheWait(threading.Event):
        """SIGTERM arrives once the back-off has begun: stop() sets the event the wait is on."""

        def wait(self, timeout=None):
            if timeout:
                self.set()
            return super().wait(timeout)

    calls = {"n": 0}

    def handler(messages):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("transient")
        return [[kafka.Output("out", m.value())] for m in messages]

    producer = _Producer()
    loop = _loop(handler, producer, max_retries=5)
    loop._stopping = _StoppedDuringTheWait()
    loop._retry_backoff_s = 30.0
    started = time.monotonic()
    loop._process(fake_messages([b"a"], topic=TRANSACTIONS_RAW.name))
    assert time.monotonic() - started < 5
    # One more attempt once the wait is cut short: it succeeded, so the batch went through.
    assert calls["n"] == 2
    assert [(s[0], s[1]) for s in producer.sent] == [("out", b"a")]
    assert loop._consumer.commits == [[(TRANSACTIONS_RAW.name, 0, 1)]]


class _RecordingEvent(threading.Event):
    """A stop event whose waits return at once and are recorded; ``on_wait`` sees each timeout."""

    def __init__(self, on_wait=None):
        super().__init__()
        self.waits = []
        self._on_wait = on_wait

    def wait(self, timeout=None):
        self.waits.append(timeout)
        if self._on_wait is not None:
            self._on_wait(timeout)
        return super().wait(0)


def test_isolation_tries_each_message_alone_once_without_a_back_off():
    calls = []

    def handler(messages):
        calls.append([m.value() for m in messages])
        raise ValueError("every message fails")

    producer = _Producer()
    loop = _loop(handler, producer, max_retries=2)
    loop._retry_backoff_s = 1.0
    loop._stopping = _RecordingEvent()
    loop._process(fake_messages([b"a", b"b", b"c"], topic=TRANSACTIONS_RAW.name))

    # The batch: one attempt and two retries, with a back-off; then each message alone, once.
    assert calls == [[b"a", b"b", b"c"]] * 3 + [[b"a"], [b"b"], [b"c"]]
    assert loop._stopping.waits == [1.0, 2.0]
    assert [s[0] for s in producer.sent] == ["transactions.raw-dlq.v1"] * 3
    assert loop._consumer.commits == [[(TRANSACTIONS_RAW.name, 0, 3)]]


@pytest.mark.parametrize("reply", REDIS_CANNOT_SERVE_REPLIES)
def test_a_redis_server_that_cannot_serve_holds_the_batch_back_instead_of_dead_lettering(reply):
    from redis._parsers.base import BaseParser

    from driftline.kit.outages import OutagePolicy
    from driftline.kit.redis_clients import REDIS_OUTAGE

    calls = {"n": 0}

    def handler(messages):
        calls["n"] += 1
        if calls["n"] == 1:
            raise BaseParser.parse_error(reply)  # the exception redis-py raises for the reply
        return [[kafka.Output("out", m.value())] for m in messages]

    producer = _Producer()
    loop = _loop(
        handler, producer, max_retries=0, outages=OutagePolicy(errors=REDIS_OUTAGE, base_s=0, cap_s=0)
    )
    messages = fake_messages([b"a", b"b"], topic=TRANSACTIONS_RAW.name)
    log = _Log(messages)
    _run_until_consumed(loop, log, lambda consumer: consumer.position == len(messages) and log.commits)

    assert log.seeks == [(TRANSACTIONS_RAW.name, 0, 0)]
    assert [(s[0], s[1]) for s in producer.sent] == [("out", b"a"), ("out", b"b")]


def test_each_dead_letter_is_logged_only_at_debug_level(capsys, monkeypatch):
    import json

    import structlog

    from driftline.kit.logging import configure_logging
    from driftline.kit.settings import LogSettings

    def dead_letter_lines(level):
        structlog.reset_defaults()
        configure_logging(LogSettings(format="json", level=level))
        # A fresh logger: the module's caches the configuration of its first use.
        monkeypatch.setattr(consumer, "log", structlog.get_logger(consumer.__name__))
        try:
            capsys.readouterr()
            _loop(kafka.per_message(_poison), _Producer())._process(_mixed_batch())
            lines = capsys.readouterr().err.splitlines()
        finally:
            structlog.reset_defaults()
        records = [json.loads(line) for line in lines if line.startswith("{")]
        return [r for r in records if r["event"] == "dead_lettered"]

    # At INFO: the batch's one summary line, with the count per reason.
    (summary,) = dead_letter_lines("INFO")
    assert summary["reasons"] == {"malformed_json": 2, "not_in_enum": 1}
    # At DEBUG: one more line per message, with its coordinates.
    lines = dead_letter_lines("DEBUG")
    per_message = sorted((r["partition"], r["offset"], r["reason"]) for r in lines if "offset" in r)
    assert per_message == [(0, 11, "not_in_enum"), (0, 12, "malformed_json"), (1, 4, "malformed_json")]
    assert len(lines) == 4


class _ErrorsOnlyProducer:
    """Reports failed deliveries only, like ``KafkaProducer(reports="errors")``: outputs are
    outstanding until ``acknowledge`` (the broker's answers arriving) or ``flush`` settles them,
    calling back only for those in ``fail``."""

    reports = "errors"

    def __init__(self, events, fail=()):
        self.events = events
        self.fail = set(fail)
        self.queued = []

    def produce(self, topic, value, key, headers, on_delivery):
        self.events.append(("produce", value))
        self.queued.append((topic, value, on_delivery))

    def outstanding(self):
        return len(self.queued)

    def acknowledge(self):
        for topic, value, on_delivery in self.queued:
            if value in self.fail:
                on_delivery(
                    KafkaError(KafkaError._MSG_TIMED_OUT, "broker said no"), FakeMessage(value, _topic=topic)
                )
        self.queued = []

    def flush(self, timeout_s=None):
        self.events.append(("flush", len(self.queued)))
        self.acknowledge()


class _LoggingConsumer(_Consumer):
    def __init__(self, events):
        super().__init__()
        self.events = events

    def commit(self, offsets, asynchronous):
        super().commit(offsets, asynchronous)
        self.events.append(("commit", [tp.offset for tp in offsets]))


def _errors_only_loop(producer, events, max_in_flight_batches=4):
    loop = kafka.ConsumerLoop(
        KafkaSettings(bootstrap_servers="127.0.0.1:1", max_in_flight_batches=max_in_flight_batches),
        group_id="g",
        topics=[TRANSACTIONS_RAW],
        handler=kafka.per_message(lambda m: [kafka.Output("out", m.value())]),
        producer=producer,
    )
    loop._consumer = _LoggingConsumer(events)
    return loop


def _batch(*values, first_offset=0):
    return [
        FakeMessage(v, _topic=TRANSACTIONS_RAW.name, _offset=first_offset + i) for i, v in enumerate(values)
    ]


def test_with_errors_only_reports_batches_are_committed_once_nothing_is_outstanding():
    events = []
    producer = _ErrorsOnlyProducer(events)
    loop = _errors_only_loop(producer, events)

    loop._dispatch(_batch(b"a", b"b"))
    loop._dispatch(_batch(b"c", first_offset=2))  # a and b still outstanding: nothing committed
    producer.acknowledge()  # while the next batch is handled
    loop._dispatch(_batch(b"d", first_offset=3))
    assert events == [
        ("produce", b"a"),
        ("produce", b"b"),
        ("produce", b"c"),
        # Nothing outstanding once d is handled: both earlier batches are done, in order.
        ("commit", [2]),
        ("commit", [3]),
        ("produce", b"d"),
    ]
    loop._drain()
    assert events[-2:] == [("flush", 1), ("commit", [4])]


def test_with_errors_only_reports_a_full_pipeline_waits_for_a_flush():
    events = []
    loop = _errors_only_loop(_ErrorsOnlyProducer(events), events, max_in_flight_batches=1)
    loop._dispatch(_batch(b"a"))
    loop._dispatch(_batch(b"b", first_offset=1))
    assert events == [("produce", b"a"), ("produce", b"b"), ("flush", 2), ("commit", [1]), ("commit", [2])]


def test_with_errors_only_reports_a_reported_failure_stops_the_loop_before_commit_and_later_outputs():
    import pytest

    events = []
    producer = _ErrorsOnlyProducer(events, fail={b"b"})
    loop = _errors_only_loop(producer, events)
    loop._dispatch(_batch(b"a", b"b"))
    producer.acknowledge()
    with pytest.raises(kafka.DeliveryError):
        loop._dispatch(_batch(b"c", first_offset=2))
    assert ("produce", b"c") not in events
    assert loop._consumer.commits == []


def test_a_producer_reporting_errors_only_refuses_sends_that_need_every_report():
    import pytest

    producer = kafka.KafkaProducer(KafkaSettings(bootstrap_servers="127.0.0.1:1"), reports="errors")
    try:
        with pytest.raises(TypeError, match="errors only"):
            producer.send("out", b"v")
    finally:
        producer.close(timeout_s=0)


class _Preparing:
    """A batch handler with ``prepare``; it records what it is asked in ``events``."""

    def __init__(self, events, *, prepare_fails=False, outages=0):
        self.events = events
        self.prepare_fails = prepare_fails
        self.outages = outages

    def prepare(self, messages):
        self.events.append(("prepare", [m.value() for m in messages]))
        if self.prepare_fails:
            raise ConnectionError("redis is down")

    def __call__(self, messages):
        self.events.append(("handle", [m.value() for m in messages]))
        if self.outages:
            self.outages -= 1
            raise _Outage("connection refused")
        return [[kafka.Output("out", m.value())] for m in messages]


class _RecordingProducer(_Producer):
    def __init__(self, events):
        super().__init__()
        self.events = events

    def produce(self, topic, value, key, headers, on_delivery):
        self.events.append(("produce", value))
        super().produce(topic, value, key, headers, on_delivery)


class _Script:
    """A consumer that returns the scripted batches, one per poll, then stops the loop."""

    def __init__(self, loop, events, batches, on_poll=None):
        self.loop = loop
        self.events = events
        self.batches = list(batches)
        self.on_poll = on_poll
        self.polls = 0
        self.seeks = []

    def subscribe(self, topics, on_revoke=None):
        pass

    def consume(self, num_messages, timeout):
        self.events.append(("poll", timeout))
        self.polls += 1
        if self.on_poll is not None:
            self.on_poll(self.polls)
        if self.batches:
            return self.batches.pop(0)
        self.loop.stop()
        return []

    def seek(self, partition):
        self.seeks.append((partition.topic, partition.partition, partition.offset))

    def commit(self, offsets, asynchronous):
        self.events.append(("commit", sorted((tp.partition, tp.offset) for tp in offsets)))

    def assignment(self):
        return []

    def close(self):
        pass


def _preparing_loop(handler, events, batches, on_poll=None, **kwargs):
    loop = _loop(handler, _RecordingProducer(events), **kwargs)
    loop._consumer = _Script(loop, events, batches, on_poll)
    return loop


def _raw(*values, partition=0, first_offset=0):
    return [
        FakeMessage(v, _topic=TRANSACTIONS_RAW.name, _partition=partition, _offset=first_offset + i)
        for i, v in enumerate(values)
    ]


def test_a_handler_prepares_the_next_batch_while_the_loop_produces_the_current_one():
    events = []
    batches = [_raw(b"a", b"b"), _raw(b"c", first_offset=2), _raw(b"d", first_offset=3)]
    _preparing_loop(_Preparing(events), events, batches).run()

    poll = 0.5  # KafkaSettings().poll_timeout_s
    assert [e for e in events if e[0] != "commit"] == [
        ("poll", poll),
        ("prepare", [b"a", b"b"]),
        # A batch is waiting: the loop only takes what is already there.
        ("poll", 0),
        ("handle", [b"a", b"b"]),
        ("prepare", [b"c"]),  # before the handled batch's outputs are produced
        ("produce", b"a"),
        ("produce", b"b"),
        ("poll", 0),
        ("handle", [b"c"]),
        ("prepare", [b"d"]),
        ("produce", b"c"),
        ("poll", 0),  # nothing more there: the waiting batch is handled at once
        ("handle", [b"d"]),
        ("produce", b"d"),
    ]
    commits = [e[1] for e in events if e[0] == "commit"]
    assert commits[-1] == [(0, 4)]


def test_on_a_slow_stream_a_batch_waits_for_nothing():
    events = []
    _preparing_loop(_Preparing(events), events, [_raw(b"a"), [], _raw(b"b", first_offset=1)]).run()
    polls_and_handles = [e for e in events if e[0] in ("poll", "handle")]
    assert polls_and_handles[:5] == [
        ("poll", 0.5),
        ("poll", 0),  # found nothing: "a" is handled now, not after the next full poll
        ("handle", [b"a"]),
        ("poll", 0.5),
        ("poll", 0),
    ]
    assert ("handle", [b"b"]) in events


def test_a_failed_prepare_is_ignored_and_the_handler_meets_the_failure_itself():
    events = []
    handler = _Preparing(events, prepare_fails=True)
    _preparing_loop(handler, events, [_raw(b"a"), _raw(b"b", first_offset=1)]).run()
    assert [e[1] for e in events if e[0] == "produce"] == [b"a", b"b"]
    assert [e[1] for e in events if e[0] == "commit"][-1] == [(0, 2)]


def test_an_outage_holds_back_the_waiting_batch_and_drops_the_prepared_one_with_it():
    from driftline.kit.outages import OutagePolicy

    events = []
    # The next batch reaches a partition the held-back one does not: it must be rewound too.
    batches = [_raw(b"a", b"b"), _raw(b"c", first_offset=2) + _raw(b"x", partition=1, first_offset=7)]
    loop = _preparing_loop(
        _Preparing(events, outages=1),
        events,
        batches,
        max_retries=0,
        outages=OutagePolicy(errors=(_Outage,), base_s=0, cap_s=0),
    )
    loop.run()
    assert loop._consumer.seeks == [(TRANSACTIONS_RAW.name, 0, 0), (TRANSACTIONS_RAW.name, 1, 7)]
    # Nothing of either batch was produced or committed; the prepared batch was not handled.
    assert [e for e in events if e[0] in ("produce", "commit")] == []
    assert ("handle", [b"c", b"x"]) not in events


def test_a_rebalance_handles_delivers_and_commits_the_waiting_batch_first():
    events = []

    def revoke_on_second_poll(polls):
        if polls == 2:
            loop._on_revoke(loop._consumer, [])
            events.append(("revoked",))

    loop = _preparing_loop(_Preparing(events), events, [_raw(b"a"), []], on_poll=revoke_on_second_poll)
    loop.run()
    handled, revoked = events.index(("handle", [b"a"])), events.index(("revoked",))
    # Inside the revocation: handled, delivered and committed (the loop's commit, then the
    # revocation's own of every position committed so far).
    assert events[handled:revoked] == [
        ("handle", [b"a"]),
        ("produce", b"a"),
        ("commit", [(0, 1)]),
        ("commit", [(0, 1)]),
    ]
    assert events.count(("handle", [b"a"])) == 1


def test_a_revoked_partition_s_lag_is_left_to_its_new_owner():
    from confluent_kafka import TopicPartition
    from prometheus_client import REGISTRY

    loop = _loop(lambda messages: [[] for _ in messages], _Producer())
    raw = TRANSACTIONS_RAW.name
    kafka.CONSUMER_LAG.labels("g", raw, "0").set(500)
    kafka.CONSUMER_LAG.labels("g", raw, "1").set(7)
    loop._on_revoke(loop._consumer, [TopicPartition(raw, 0)])
    assert (
        REGISTRY.get_sample_value(
            "driftline_kafka_consumer_lag", {"group": "g", "topic": raw, "partition": "0"}
        )
        is None
    )
    assert (
        REGISTRY.get_sample_value(
            "driftline_kafka_consumer_lag", {"group": "g", "topic": raw, "partition": "1"}
        )
        == 7
    )
    loop._on_revoke(loop._consumer, [TopicPartition(raw, 0)])  # twice: nothing left to remove


def test_a_batch_that_fails_slowly_hands_back_what_isolation_did_not_reach_in_time():
    class _Clock:
        now = 0.0

        def __call__(self):
            return self.now

    class _SeekingConsumer(_Consumer):
        def __init__(self):
            super().__init__()
            self.seeks = []

        def seek(self, tp):
            self.seeks.append((tp.topic, tp.partition, tp.offset))

    clock = _Clock()
    calls = []

    def handler(messages):
        calls.append([m.value() for m in messages])
        clock.now += 1.0  # every try takes a second, and fails
        raise ValueError("slow and failing")

    producer = _Producer()
    # max.poll.interval.ms 10 s: a failing batch may take 5 s before the rest is handed back.
    loop = _loop(handler, producer, max_retries=1, config={"max.poll.interval.ms": 10_000})
    loop._clock = clock
    loop._consumer = _SeekingConsumer()
    batch = fake_messages([b"a", b"b", b"c", b"d", b"e", b"f", b"g"], topic=TRANSACTIONS_RAW.name)
    handed_back_before = _count("handed_back", group="g")
    following = [FakeMessage(b"next", _topic=TRANSACTIONS_RAW.name, _offset=7)]
    assert loop._dispatch(batch, then_prepare=following) is False
    loop._drain()

    # Two tries of the batch, then one message alone per second until the budget is spent:
    # a, b, c and d; e, f and g are consumed again, as is the next batch, not prepared.
    assert calls == [[b"a", b"b", b"c", b"d", b"e", b"f", b"g"]] * 2 + [[b"a"], [b"b"], [b"c"], [b"d"]]
    assert [s[1] for s in producer.sent] == [b"a", b"b", b"c", b"d"]  # dead-lettered
    assert loop._consumer.commits == [[(TRANSACTIONS_RAW.name, 0, 4)]]
    assert loop._consumer.seeks == [(TRANSACTIONS_RAW.name, 0, 4)]
    assert _count("handed_back", group="g") - handed_back_before == 3


def test_a_handed_back_tail_rewinds_each_partition_to_its_first_message_not_reached():
    clock = {"now": 0.0}

    def handler(messages):
        clock["now"] += 1.0
        raise ValueError("fails")

    producer = _Producer()
    loop = _loop(handler, producer, max_retries=0, config={"max.poll.interval.ms": 10_000})
    loop._clock = lambda: clock["now"]
    seeks = []
    loop._consumer.seek = lambda tp: seeks.append((tp.partition, tp.offset))
    topic = TRANSACTIONS_RAW.name
    # Partitions interleaved as a consume returns them: p0 at 10.., p1 at 20.., p2 at 30.
    batch = [
        FakeMessage(b"p0-10", _topic=topic, _partition=0, _offset=10),
        FakeMessage(b"p1-20", _topic=topic, _partition=1, _offset=20),
        FakeMessage(b"p0-11", _topic=topic, _partition=0, _offset=11),
        FakeMessage(b"p1-21", _topic=topic, _partition=1, _offset=21),
        FakeMessage(b"p2-30", _topic=topic, _partition=2, _offset=30),
        FakeMessage(b"p0-12", _topic=topic, _partition=0, _offset=12),
        FakeMessage(b"p1-22", _topic=topic, _partition=1, _offset=22),
    ]
    assert loop._dispatch(batch) is False
    loop._drain()
    # One try of the batch (1 s), then one message alone a second until the 5 s budget is
    # spent: p0-10 .. p2-30 (2..6 s) go out; p0-12 and p1-22 are consumed again.
    assert [s[1] for s in producer.sent] == [b"p0-10", b"p1-20", b"p0-11", b"p1-21", b"p2-30"]
    assert sorted(loop._consumer.commits[0]) == [(topic, 0, 12), (topic, 1, 22), (topic, 2, 31)]
    assert sorted(seeks) == [(0, 12), (1, 22)]


def test_retries_stop_at_the_budget():
    tries = []

    def handler(messages):
        tries.append(len(messages))
        loop._clock = lambda: 1.5 * len(tries)  # 1.5 s a try
        raise ValueError("fails")

    producer = _Producer()
    loop = _loop(handler, producer, max_retries=5, config={"max.poll.interval.ms": 10_000})
    loop._consumer.seek = lambda tp: None
    loop._clock = lambda: 0.0
    assert loop._dispatch(fake_messages([b"a", b"b"], topic=TRANSACTIONS_RAW.name)) is False
    assert tries == [2, 2, 2, 2, 1]  # four tries of the batch, not the six allowed; then `a` alone


def test_isolation_makes_progress_even_when_the_budget_is_already_spent():
    def handler(messages):
        loop._clock = lambda: 1e9  # far past the budget from the first try on
        raise ValueError("fails")

    producer = _Producer()
    loop = _loop(handler, producer, max_retries=5)
    loop._consumer.seek = lambda tp: None
    assert loop._dispatch(fake_messages([b"a", b"b"], topic=TRANSACTIONS_RAW.name)) is False
    loop._drain()
    assert [s[1] for s in producer.sent] == [b"a"]
    assert loop._consumer.commits == [[(TRANSACTIONS_RAW.name, 0, 1)]]


def test_no_retry_starts_whose_back_off_would_end_past_the_budget():
    now = {"t": 0.0}

    def handler(messages):
        raise ValueError("fails")

    producer = _Producer()
    loop = _loop(handler, producer, max_retries=5, config={"max.poll.interval.ms": 10_000})
    loop._clock = lambda: now["t"]
    loop._retry_backoff_s = 1.0
    # The back-offs pass on the fake clock; the tries themselves take no time.
    loop._stopping = _RecordingEvent(on_wait=lambda timeout: now.__setitem__("t", now["t"] + timeout))
    loop._process(fake_messages([b"a"], topic=TRANSACTIONS_RAW.name))
    # Back-offs of 1 and 2 s; a third (3 s, ending at 6 s) would pass the 5 s budget.
    assert loop._stopping.waits == [1.0, 2.0]
    assert [s[0] for s in producer.sent] == ["transactions.raw-dlq.v1"]


class _Reader:
    """A consumer whose ``committed`` answers from a script: an exception is raised."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = 0

    def committed(self, partitions, timeout):
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_committed_offsets_wait_for_a_coordinator_that_is_not_ready_yet():
    from confluent_kafka import TopicPartition

    ready = [TopicPartition("t", 0, 5)]
    reader = _Reader(
        kafka.KafkaException(KafkaError(KafkaError.NOT_COORDINATOR)),
        kafka.KafkaException(KafkaError(KafkaError.COORDINATOR_LOAD_IN_PROGRESS)),
        ready,
    )
    assert kafka.committed_offsets(reader, [TopicPartition("t", 0)], timeout_s=10) == ready
    assert reader.calls == 3


def test_committed_offsets_raise_other_errors_and_give_up_at_the_timeout():
    from confluent_kafka import TopicPartition

    timed_out = _Reader(kafka.KafkaException(KafkaError(KafkaError._TIMED_OUT)))
    with pytest.raises(kafka.KafkaException):
        kafka.committed_offsets(timed_out, [TopicPartition("t", 0)], timeout_s=10)
    assert timed_out.calls == 1
    never_ready = _Reader(*[kafka.KafkaException(KafkaError(KafkaError.NOT_COORDINATOR))] * 100)
    with pytest.raises(kafka.KafkaException):
        kafka.committed_offsets(never_ready, [TopicPartition("t", 0)], timeout_s=0.5)
    assert 0 < never_ready.calls <= 4
    assert kafka.committed_offsets(_Reader(), [], timeout_s=1) == []  # nothing asked, nothing read
