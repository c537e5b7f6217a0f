from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from prometheus_client import REGISTRY

from driftline.drift.v1 import drift_pb2
from driftline.feedback.v1 import feedback_pb2
from driftline.kit.codec import to_timestamp
from driftline.kit.errors import DeadlineExceeded, DriftlineError, Unavailable
from driftline.kit.kafka import DeadLetter
from driftline.kit.testing import FakeMessage
from driftline.kit.topics import DRIFT_REPORTS, FEEDBACK, PERFORMANCE_DEGRADATIONS, RETRAIN_REQUESTS
from driftline.services.trainer.consumer import LabelHandler, TriggerHandler
from driftline.services.trainer.labels import LabelLog
from driftline.services.trainer.triggers import Trigger
from driftline.trainer.v1 import trainer_pb2

WHEN = datetime(2025, 1, 1, tzinfo=UTC)


def handler(champion: Callable[[], int] = lambda: 1) -> tuple[TriggerHandler, list[Trigger]]:
    seen: list[Trigger] = []
    return TriggerHandler("fraud", seen.append, champion=champion, clock=lambda: 42.0), seen


def report(status: int, model: str = "fraud", version: int = 1, report_id: str = "rep-1") -> bytes:
    return drift_pb2.DriftReport(
        report_id=report_id,
        model_name=model,
        model_version=version,
        detector="ks",
        status=status,  # type: ignore[arg-type]
    ).SerializeToString()


def degradation(version: int, event_id: str = "deg-1") -> bytes:
    return drift_pb2.PerformanceDegradation(
        event_id=event_id, model_name="fraud", model_version=version, metric="auc", value=0.6, threshold=0.8
    ).SerializeToString()


def ignored(topic: str, reason: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "driftline_trainer_trigger_messages_ignored_total", {"topic": topic, "reason": reason}
        )
        or 0.0
    )


def test_drift_report_with_drift_status_becomes_a_drift_trigger() -> None:
    h, seen = handler()
    outcomes = h([FakeMessage(report(drift_pb2.DRIFT_STATUS_DRIFT), _topic=DRIFT_REPORTS.name)])
    assert outcomes == [[]]
    assert seen == [Trigger("drift", "rep-1", "fraud", 42.0, "ks")]


def test_reports_without_drift_and_other_models_start_nothing() -> None:
    h, seen = handler()
    h(
        [
            FakeMessage(report(drift_pb2.DRIFT_STATUS_NO_DRIFT), _topic=DRIFT_REPORTS.name),
            FakeMessage(report(drift_pb2.DRIFT_STATUS_INSUFFICIENT_DATA), _topic=DRIFT_REPORTS.name),
            FakeMessage(report(drift_pb2.DRIFT_STATUS_DRIFT, model="other"), _topic=DRIFT_REPORTS.name),
        ]
    )
    assert seen == []


def test_degradation_and_retrain_request_become_triggers() -> None:
    h, seen = handler()
    degradation = drift_pb2.PerformanceDegradation(
        event_id="deg-1", model_name="fraud", metric="auc", value=0.61, threshold=0.8
    ).SerializeToString()
    request = trainer_pb2.RetrainRequest(
        request_id="req-1", model_name="fraud", trigger="manual", requested_by="alice"
    ).SerializeToString()
    h(
        [
            FakeMessage(degradation, _topic=PERFORMANCE_DEGRADATIONS.name),
            FakeMessage(request, _topic=RETRAIN_REQUESTS.name),
        ]
    )
    assert [(t.kind, t.trigger_id) for t in seen] == [("degradation", "deg-1"), ("manual", "req-1")]
    assert seen[0].detail == "auc=0.6100 < 0.8000"
    assert seen[1].detail == "requested by alice"


def test_trigger_without_an_id_gets_its_kafka_coordinates_as_id() -> None:
    h, seen = handler()
    request = trainer_pb2.RetrainRequest(model_name="fraud").SerializeToString()
    h([FakeMessage(request, _topic=RETRAIN_REQUESTS.name, _partition=0, _offset=17)])
    assert seen[0].trigger_id == f"{RETRAIN_REQUESTS.name}:0:17"


def test_undecodable_trigger_message_is_skipped_and_the_batch_goes_on() -> None:
    h, seen = handler()
    outcomes = h(
        [
            FakeMessage(b"\xff\xff garbage", _topic=DRIFT_REPORTS.name),
            FakeMessage(report(drift_pb2.DRIFT_STATUS_DRIFT), _topic=DRIFT_REPORTS.name, _offset=1),
        ]
    )
    # The trigger topics have no dead-letter topic: nothing is dead-lettered, nothing is raised.
    assert outcomes == [[], []]
    assert [t.trigger_id for t in seen] == ["rep-1"]


def test_reports_about_a_version_that_is_not_the_champion_start_no_retrain() -> None:
    # v2 was promoted; late labels and drift about the old champion v1 must not retrain against v2.
    h, seen = handler(champion=lambda: 2)
    drift_before = ignored(DRIFT_REPORTS.name, "not_champion")
    degradation_before = ignored(PERFORMANCE_DEGRADATIONS.name, "not_champion")
    outcomes = h(
        [
            FakeMessage(report(drift_pb2.DRIFT_STATUS_DRIFT, version=1), _topic=DRIFT_REPORTS.name),
            FakeMessage(degradation(1), _topic=PERFORMANCE_DEGRADATIONS.name),
            FakeMessage(degradation(2, "deg-2"), _topic=PERFORMANCE_DEGRADATIONS.name),
        ]
    )
    assert outcomes == [[], [], []]
    assert [t.trigger_id for t in seen] == ["deg-2"]
    assert ignored(DRIFT_REPORTS.name, "not_champion") == drift_before + 1
    assert ignored(PERFORMANCE_DEGRADATIONS.name, "not_champion") == degradation_before + 1


def test_a_report_handled_after_its_version_lost_the_champion_alias_is_skipped() -> None:
    champion = [1]
    h, seen = handler(champion=lambda: champion[0])
    h([FakeMessage(report(drift_pb2.DRIFT_STATUS_DRIFT, version=1), _topic=DRIFT_REPORTS.name)])
    champion[0] = 2  # promoted between the next report's detection and its handling
    h(
        [
            FakeMessage(
                report(drift_pb2.DRIFT_STATUS_DRIFT, version=1, report_id="rep-2"), _topic=DRIFT_REPORTS.name
            )
        ]
    )
    assert [t.trigger_id for t in seen] == ["rep-1"]


def test_triggers_without_a_model_version_do_not_ask_for_the_champion() -> None:
    asked: list[int] = []

    def champion() -> int:
        asked.append(1)
        return 5

    h, seen = handler(champion=champion)
    request = trainer_pb2.RetrainRequest(request_id="req-1", model_name="fraud", trigger="degradation")
    h(
        [
            FakeMessage(request.SerializeToString(), _topic=RETRAIN_REQUESTS.name),
            FakeMessage(degradation(0), _topic=PERFORMANCE_DEGRADATIONS.name),
            FakeMessage(report(drift_pb2.DRIFT_STATUS_NO_DRIFT, version=1), _topic=DRIFT_REPORTS.name),
        ]
    )
    assert [t.trigger_id for t in seen] == ["req-1", "deg-1"]
    assert asked == []
    # Versioned messages ask once per batch, however many there are.
    h([FakeMessage(degradation(5, f"deg-{i}"), _topic=PERFORMANCE_DEGRADATIONS.name) for i in range(3)])
    assert len(seen) == 5
    assert asked == [1]


@pytest.mark.parametrize(
    "failure",
    [
        Unavailable("registry is down"),
        DeadlineExceeded("the registry did not answer in time"),
        DriftlineError("INTERNAL: database is locked"),
        RuntimeError("Event loop is closed"),
    ],
)
def test_a_registry_that_cannot_name_the_champion_holds_the_batch_back(failure: Exception) -> None:
    # Not the triggers' fault, and their topics have no dead-letter topic: dead-lettering would
    # skip them. An outage holds the batch back until the registry answers.
    def champion() -> int:
        raise failure

    h, seen = handler(champion=champion)
    with pytest.raises(Unavailable):
        h([FakeMessage(report(drift_pb2.DRIFT_STATUS_DRIFT), _topic=DRIFT_REPORTS.name)])
    assert seen == []


def feedback(**fields: object) -> bytes:
    base: dict[str, object] = {
        "feedback_id": "fb-1",
        "entity_id": "card-1",
        "event_id": "ev-1",
        "label": 1,
        "label_time": to_timestamp(WHEN),
        "event_time": to_timestamp(WHEN),
    }
    base.update(fields)
    return feedback_pb2.FeedbackLabel(**base).SerializeToString()  # type: ignore[arg-type]


def test_feedback_labels_are_appended_to_the_label_log(tmp_path) -> None:
    log = LabelLog(tmp_path)
    outcomes = LabelHandler(log)(
        [
            FakeMessage(feedback(), _topic=FEEDBACK.name),
            FakeMessage(feedback(event_id="ev-2", label=0, feedback_id="fb-2"), _topic=FEEDBACK.name),
        ]
    )
    assert outcomes == [[], []]
    frame = log.read()
    assert frame[["entity_id", "event_id", "label"]].values.tolist() == [
        ["card-1", "ev-1", 1],
        ["card-1", "ev-2", 0],
    ]
    assert frame["event_time"].iloc[0] == WHEN


def test_json_feedback_is_read_like_protobuf_as_the_drift_service_reads_it(tmp_path) -> None:
    from google.protobuf import json_format

    from driftline.kit.kafka import CONTENT_TYPE, JSON

    label = feedback_pb2.FeedbackLabel.FromString(feedback(event_id="ev-json"))
    log = LabelLog(tmp_path)
    outcomes = LabelHandler(log)(
        [
            FakeMessage(
                json_format.MessageToJson(label).encode(),
                _topic=FEEDBACK.name,
                _headers=[(CONTENT_TYPE, JSON.encode())],
            )
        ]
    )
    assert outcomes == [[]]
    assert log.read()[["event_id", "label"]].values.tolist() == [["ev-json", 1]]


def _labels(disposition: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("driftline_trainer_labels_total", {"disposition": disposition}) or 0.0


def test_bad_feedback_is_counted_and_skipped_not_dead_lettered_twice_and_good_feedback_is_kept(
    tmp_path,
) -> None:
    # The drift service dead-letters bad feedback (it owns the contract); a second record from
    # the trainer's group would make a replay of the dead-letter topic send the label twice.
    log = LabelLog(tmp_path)
    undecodable = _labels("undecodable")
    invalid = _labels("invalid_label")
    outcomes = LabelHandler(log)(
        [
            FakeMessage(b"\x08\x96", _topic=FEEDBACK.name),  # truncated varint
            FakeMessage(feedback(label=7), _topic=FEEDBACK.name),
            FakeMessage(feedback(event_id="ev-3"), _topic=FEEDBACK.name),
        ]
    )
    assert outcomes == [[], [], []]
    assert not any(isinstance(o, DeadLetter) for o in outcomes)
    assert _labels("undecodable") == undecodable + 1
    assert _labels("invalid_label") == invalid + 1
    assert log.read()["event_id"].tolist() == ["ev-3"]


def test_feedback_keyed_only_by_prediction_id_is_skipped_not_dead_lettered(tmp_path) -> None:
    log = LabelLog(tmp_path)
    message = feedback_pb2.FeedbackLabel(
        feedback_id="fb-9", prediction_id="pred-1", label=1
    ).SerializeToString()
    outcomes = LabelHandler(log)([FakeMessage(message, _topic=FEEDBACK.name)])
    assert outcomes == [[]]
    assert log.read().empty


def test_a_label_log_that_cannot_be_written_is_an_outage_not_bad_labels(tmp_path) -> None:
    import errno

    import pytest

    from driftline.kit.errors import Unavailable
    from driftline.kit.outages import OutagePolicy

    class FullDisk(LabelLog):
        def append(self, records):  # type: ignore[no-untyped-def]
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(Unavailable, match="No space left") as err:
        LabelHandler(FullDisk(tmp_path))([FakeMessage(feedback(), _topic=FEEDBACK.name)])
    assert OutagePolicy().is_outage(err.value)  # the consumer loop waits; nothing is dead-lettered
