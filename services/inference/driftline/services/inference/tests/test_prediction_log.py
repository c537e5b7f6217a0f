from __future__ import annotations

import itertools
import threading
import time
from datetime import timedelta

import pytest
from prometheus_client import REGISTRY

from driftline.featurestore.vectors import EntityFeatures, FeatureFrame, FeatureStatus, FeatureValue
from driftline.inference.v1 import inference_pb2
from driftline.kit.codec import to_timestamp, utcnow
from driftline.kit.topics import PREDICTIONS
from driftline.services.inference.models import Role
from driftline.services.inference.prediction_log import PredictionLogger, RecordEncoder
from driftline.services.inference.predictor import PredictionResult


def dropped(reason: str) -> float:
    return (
        REGISTRY.get_sample_value("driftline_inference_prediction_log_dropped_total", {"reason": reason})
        or 0.0
    )


def frame_of(*rows: tuple[FeatureValue, ...]) -> FeatureFrame:
    """A frame of these entities' features (card-0, card-1, ...)."""
    return FeatureFrame.from_entities(
        [EntityFeatures(f"card-{i}", "transactions", 1, values) for i, values in enumerate(rows)]
    )


ONE_FEATURE = frame_of((FeatureValue("amount", 12.5, 1.0, 1.0, FeatureStatus.OK),))


def result(i: int) -> PredictionResult:
    return PredictionResult(
        prediction_id=f"p{i}",
        entity_id=f"card-{i}",
        event_id=f"e{i}",
        score=0.25,
        label=0,
        model_name="fraud",
        model_version=3,
        max_feature_age_seconds=1.0,
        frame=ONE_FEATURE,
        row=0,
        served_by=Role.CHALLENGER,
        predicted_at=utcnow(),
    )


class FakeProducer:
    """The confluent client's produce/poll/flush; acknowledges (or fails) each record at once."""

    def __init__(
        self, *, block: threading.Event | None = None, fail: bool = False, full: bool = False
    ) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.block = block
        self.fail = fail
        self.full = full
        self.pending = 0

    def produce(self, topic, value, key, on_delivery):
        if self.block is not None:
            self.block.wait(10)
        if self.full:
            raise BufferError("local queue full")
        self.sent.append((topic, value, key))
        on_delivery("broker gone" if self.fail else None, None)

    def poll(self, timeout):
        return 0

    def flush(self, timeout):
        return self.pending


def wait_for(predicate, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_records_are_sent_as_prediction_logs_keyed_by_entity():
    producer = FakeProducer()
    logger = PredictionLogger(producer, PREDICTIONS)
    logger.start()
    for i in range(5):
        logger.log(result(i))
    logger.close()
    assert [key for _, _, key in producer.sent] == [f"card-{i}".encode() for i in range(5)]
    assert logger.acknowledged == 5
    record = inference_pb2.PredictionLog.FromString(producer.sent[0][1])
    assert record.prediction_id == "p0"
    assert record.event_id == "e0"
    assert record.model_version == 3
    assert record.role == "challenger"
    assert list(record.feature_names) == ["amount"]
    assert list(record.feature_values) == [12.5]
    assert record.predicted_at.seconds > 0
    assert {topic for topic, _, _ in producer.sent} == {PREDICTIONS.name}


def test_a_full_client_queue_and_unacknowledged_records_at_shutdown_are_counted():
    producer = FakeProducer(full=True)
    logger = PredictionLogger(producer, PREDICTIONS)
    logger.start()
    before_full, before_shutdown = dropped("queue_full"), dropped("shutdown")
    for i in range(4):
        logger.log(result(i))
    producer.pending = 2
    logger.close()
    assert dropped("queue_full") - before_full == 4
    assert dropped("shutdown") - before_shutdown == 2


def test_a_full_buffer_drops_and_counts_instead_of_blocking():
    gate = threading.Event()
    producer = FakeProducer(block=gate)
    logger = PredictionLogger(producer, PREDICTIONS, capacity=10, batch=1)
    logger.start()
    before = dropped("buffer_full")
    started = time.perf_counter()
    for i in range(100):
        logger.log(result(i))
    assert time.perf_counter() - started < 1.0  # never waited on the stuck producer
    assert dropped("buffer_full") - before >= 89
    gate.set()
    logger.close()
    assert len(producer.sent) + logger.dropped == 100


def test_undelivered_records_are_counted_as_dropped():
    logger = PredictionLogger(FakeProducer(fail=True), PREDICTIONS)
    logger.start()
    before = dropped("delivery_failed")
    for i in range(3):
        logger.log(result(i))
    logger.close()
    wait_for(lambda: dropped("delivery_failed") - before >= 3)
    assert dropped("delivery_failed") - before == 3


def test_a_call_logs_its_rows_at_once_and_what_does_not_fit_is_dropped_and_counted():
    gate = threading.Event()
    producer = FakeProducer(block=gate)
    logger = PredictionLogger(producer, PREDICTIONS, capacity=10)
    logger.start()
    before = dropped("buffer_full")
    logger.log_many([result(i) for i in range(4)])
    logger.log_many([result(i) for i in range(4, 16)])
    assert dropped("buffer_full") - before == 6
    gate.set()
    logger.close()
    assert [key for _, _, key in producer.sent] == [f"card-{i}".encode() for i in range(10)]
    records = [inference_pb2.PredictionLog.FromString(value) for _, value, _ in producer.sent]
    assert all(record.predicted_at.seconds > 0 for record in records)


def _canonical(r: PredictionResult) -> inference_pb2.PredictionLog:
    """The record as one message built field by field: what the encoder's parts must add up to."""
    return inference_pb2.PredictionLog(
        prediction_id=r.prediction_id,
        entity_id=r.entity_id,
        event_id=r.event_id,
        model_name=r.model_name,
        model_version=r.model_version,
        score=r.score,
        label=r.label,
        feature_names=[f.name for f in r.features],
        feature_values=[f.value for f in r.features],
        predicted_at=to_timestamp(r.predicted_at),
        role=r.served_by.value,
    )


def test_records_built_from_shared_parts_read_back_as_the_whole_message():
    start = utcnow()
    calls = [start, start + timedelta(microseconds=1), start + timedelta(seconds=3)]
    three = frame_of(
        (
            FeatureValue("amount", -0.0, 1.0, 1.0, FeatureStatus.OK),
            FeatureValue("velocity", 0.0, None, None, FeatureStatus.MISSING),
            FeatureValue("pays_à_l'étranger", 1e300, 1.0, 99.0, FeatureStatus.STALE),
        ),
        (
            FeatureValue("amount", 7.25, 2.0, 0.5, FeatureStatus.OK),
            FeatureValue("velocity", -3.5, 2.0, 0.5, FeatureStatus.OK),
            FeatureValue("pays_à_l'étranger", 0.0, 2.0, 0.5, FeatureStatus.OK),
        ),
    )
    # (frame, row): rows of one frame in turn, as a call's results come, and other frames between.
    feature_sets = [(ONE_FEATURE, 0), (three, 0), (three, 1), (frame_of(()), 0), (three, 1)]
    encoder = RecordEncoder()
    cases = itertools.product(calls, ("fraud", "fraud-v2"), (0, 3, 2**31 - 1), list(Role), feature_sets)
    for i, (moment, model, version, role, (frame, row)) in enumerate(cases):
        r = result(i)._replace(
            prediction_id="p" * (i % 200),  # 0 to 199 bytes: one- and two-byte lengths
            entity_id=f"card-{i}-ü",
            event_id="" if i % 3 else f"e{i}",
            score=0.0 if i % 4 == 0 else i / 7,
            label=i % 2,
            model_name=model,
            model_version=version,
            frame=frame,
            row=row,
            served_by=role,
            predicted_at=moment,
        )
        assert inference_pb2.PredictionLog.FromString(encoder.encode(r)) == _canonical(r), r


def test_the_shared_parts_kept_are_bounded_and_records_stay_right_past_the_bound():
    encoder = RecordEncoder()
    for version in range(200):
        r = result(version)._replace(model_version=version)
        assert inference_pb2.PredictionLog.FromString(encoder.encode(r)) == _canonical(r)
    assert len(encoder._shared) <= 64


def test_a_call_time_that_cannot_be_encoded_fails_each_of_its_records_not_only_the_first():
    encoder = RecordEncoder()
    good = result(1)
    encoder.encode(good)
    broken_time = "not a datetime"
    for i in range(2):  # the second record of the call must not reuse the previous call's time
        with pytest.raises(Exception):  # noqa: B017 - whatever to_timestamp raises
            encoder.encode(result(i)._replace(predicted_at=broken_time))
    assert inference_pb2.PredictionLog.FromString(encoder.encode(good)) == _canonical(good)
