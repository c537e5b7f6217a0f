"""A retrain triggered over Kafka registers and promotes a better model in the real registry; a
worse challenger is refused with the reason on record; ``--reproduce`` rebuilds the same set."""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest
from click.testing import CliRunner
from prometheus_client import REGISTRY

from driftline.drift.v1 import drift_pb2
from driftline.kit.codec import to_timestamp, utcnow
from driftline.kit.errors import FailedPrecondition
from driftline.kit.kafka import KafkaProducer
from driftline.kit.testing import create_test_topics, delete_topics, unique_prefix
from driftline.kit.topics import DRIFT_REPORTS, PERFORMANCE_DEGRADATIONS, RETRAIN_REQUESTS
from driftline.registry.v1 import registry_pb2
from driftline.services.trainer.app import TrainerApp, request_retrain
from driftline.services.trainer.cli import train
from driftline.services.trainer.consumer import TriggerTopics
from driftline.services.trainer.reproduce import reproduce
from driftline.services.trainer.runner import RunResult
from driftline.services.trainer.triggers import MANUAL, Trigger, TriggerBatch
from driftline.simulator import feedback_label

pytestmark = pytest.mark.integration

IGNORED = "driftline_trainer_trigger_messages_ignored_total"


def wait_for(results: list[RunResult], done: threading.Event, timeout_s: float = 120) -> RunResult:
    assert done.wait(timeout_s), "no retrain finished in time"
    return results[-1]


def watch(app: TrainerApp) -> tuple[list[RunResult], threading.Event]:
    results: list[RunResult] = []
    done = threading.Event()

    def seen(result: RunResult) -> None:
        results.append(result)
        done.set()

    app.on_result(seen)
    return results, done


def test_drift_report_triggers_a_retrain_that_registers_and_promotes_a_better_model(world) -> None:
    app = TrainerApp(world.settings(), trigger_topics=world.triggers, feedback_topic=world.feedback)
    results, done = watch(app)
    producer = KafkaProducer(world.kafka)
    app.start()
    try:
        # Ground truth for the drifted stretch arrives as feedback; the trainer logs it.
        for event in world.drifted:
            producer.send(world.feedback, feedback_label(event).SerializeToString(), key=event.card_id)
        producer.flush(30)
        deadline = time.monotonic() + 60
        while len(app.core.labels.read()) < 12_000 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(app.core.labels.read()) == 12_000

        report_id = f"rep-{uuid.uuid4().hex[:8]}"
        report = drift_pb2.DriftReport(
            report_id=report_id,
            model_name="fraud",
            model_version=1,
            detector="cvm-online",
            stream="features",
            status=drift_pb2.DRIFT_STATUS_DRIFT,
            detected_at=to_timestamp(utcnow()),
        )
        # A burst of reports (a second detector agreeing, and a replay) starts a single retrain.
        for message in (
            report,
            report,
            drift_pb2.DriftReport(**{**_fields(report), "report_id": report_id + "b"}),
        ):
            producer.send(world.triggers.drift_reports, message.SerializeToString(), key="fraud")
        producer.flush(30)
        result = wait_for(results, done)
    finally:
        app.stop()
        producer.close(10)

    assert result.promoted, result.reason
    assert result.trigger == "drift"
    assert result.trigger_id == report_id
    assert len(results) == 1  # coalesced
    champion = world.registry.get_version("fraud", alias="champion")
    assert champion.version == result.version == 2
    assert champion.lineage.trigger == "drift"
    assert champion.lineage.trigger_id == report_id
    assert champion.lineage.parent_version == 1
    assert champion.lineage.data_hash == result.data_hash
    assert champion.lineage.code_revision == "integration-test"
    assert champion.metrics["holdout_auc"] >= champion.metrics["champion_holdout_auc"] + 0.01
    # The new model trained on the drifted stretch only (the horizon), never on pre-drift events.
    assert champion.lineage.data_start.ToDatetime() >= world.drifted[0].event_time.replace(tzinfo=None)
    runs = world.registry.run(world.registry.client.list_runs("fraud"))
    run = next(r for r in runs if r.run_id == result.run_id)
    assert run.outcome == registry_pb2.RUN_OUTCOME_PROMOTED
    assert run.version == 2
    assert run.outcome_reason.startswith("wins: ")
    assert run.params["coalesced_triggers"] == f"{report_id},{report_id}b"
    audit = world.registry.run(world.registry.client.list_audit("fraud", limit=1000))
    bootstrap, promotion = [a for a in audit if a.action == "alias_set"]
    assert json.loads(bootstrap.after_json) == {"alias": "champion", "version": 1}
    assert json.loads(promotion.before_json) == {"alias": "champion", "version": 1}
    assert json.loads(promotion.after_json) == {"alias": "champion", "version": 2}
    assert promotion.reason == result.reason
    # And the promoted version reproduces from its lineage: same content hash, same predictions.
    again = reproduce(world.registry, app.core.dataset, "fraud", 2)
    assert again.data_hash == champion.lineage.data_hash
    assert again.max_abs_diff <= 1e-5


def _fields(message: drift_pb2.DriftReport) -> dict[str, object]:
    return {field.name: value for field, value in message.ListFields()}


def _first_champion(world, model: str) -> RunResult:
    """Train and promote ``model``'s first version in-process."""
    strong = TrainerApp(
        world.settings(model_name=model), trigger_topics=world.triggers, feedback_topic=world.feedback
    )
    first = strong.runner.run(TriggerBatch((Trigger(MANUAL, "setup", model, time.time()),)))
    strong.stop()
    assert first.promoted, first.reason
    return first


def test_worse_challenger_is_not_promoted_and_the_run_and_audit_say_why(world) -> None:
    model = f"gate-{uuid.uuid4().hex[:6]}"
    first = _first_champion(world, model)

    # A bad hyper-parameter change: one stump. Requested over Kafka like `driftline train --now`.
    weak = TrainerApp(
        world.settings(
            model_name=model, n_estimators=1, num_leaves=2, margin=0.0, consumer_group=f"{world.prefix}weak"
        ),
        trigger_topics=world.triggers,
        feedback_topic=world.feedback,
    )
    results, done = watch(weak)
    producer = KafkaProducer(world.kafka)
    weak.start()
    try:
        request_id = request_retrain(
            producer, model, requested_by="integration-test", topic=world.triggers.retrain_requests
        )
        result = wait_for(results, done)
    finally:
        weak.stop()
        producer.close(10)

    assert result.trigger_id == request_id
    assert result.trigger == "manual"
    assert result.outcome == registry_pb2.RUN_OUTCOME_REJECTED
    assert world.registry.get_version(model, alias="champion").version == first.version
    run = world.registry.run(world.registry.client.get_run(result.run_id))
    assert run.outcome == registry_pb2.RUN_OUTCOME_REJECTED
    assert run.outcome_reason.startswith("refused: challenger auc=")
    assert f"champion v{first.version} auc=" in run.outcome_reason
    assert run.metrics["holdout_auc"] < run.metrics["champion_holdout_auc"]
    # The audit trail says why: the run record carries the refusal; no alias ever moved to it.
    audit = world.registry.run(world.registry.client.list_audit(model, limit=1000))
    assert [a.reason for a in audit if a.action == "run_recorded"][-1] == run.outcome_reason
    moves = [json.loads(a.after_json)["version"] for a in audit if a.action == "alias_set"]
    assert moves == [first.version]
    assert not world.registry.get_version(model, version=result.version).aliases


def test_a_drift_report_about_a_version_that_is_not_the_champion_starts_no_retrain(
    world, kafka_settings
) -> None:
    prefix = unique_prefix()
    topics = TriggerTopics(
        DRIFT_REPORTS.namespaced(prefix),
        PERFORMANCE_DEGRADATIONS.namespaced(prefix),
        RETRAIN_REQUESTS.namespaced(prefix),
    )
    create_test_topics(kafka_settings, topics.all())
    app = TrainerApp(
        world.settings(consumer_group=f"{prefix}trainer"),
        trigger_topics=topics,
        feedback_topic=world.feedback,
    )
    results, _ = watch(app)
    producer = KafkaProducer(world.kafka)
    champion = world.registry.get_version("fraud", alias="champion").version
    # A version the champion alias no longer (or never) points at, as after a promotion.
    report = drift_pb2.DriftReport(
        report_id=f"rep-{uuid.uuid4().hex[:8]}",
        model_name="fraud",
        model_version=champion + 1,
        detector="cvm-online",
        status=drift_pb2.DRIFT_STATUS_DRIFT,
    )
    labels = {"topic": topics.drift_reports.name, "reason": "not_champion"}
    app.start()
    try:
        producer.send(topics.drift_reports, report.SerializeToString(), key="fraud").result(timeout=30)
        deadline = time.monotonic() + 60
        while not REGISTRY.get_sample_value(IGNORED, labels) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert REGISTRY.get_sample_value(IGNORED, labels) == 1
        assert app.scheduler.idle()
        assert results == []
    finally:
        app.stop()
        producer.close(10)
        delete_topics(kafka_settings, topics.all())
    assert world.registry.get_version("fraud", alias="champion").version == champion


def test_reproduce_command_rebuilds_the_initial_version_with_the_same_hash_and_predictions(world) -> None:
    v1 = world.registry.get_version("fraud", version=1)
    result = CliRunner().invoke(train, ["--reproduce", "1"], env=world.env())
    assert result.exit_code == 0, result.output
    rows = int(v1.metrics["train_rows"] + v1.metrics["holdout_rows"])
    assert 0 < rows < 6000  # the history's warm-up stretch is left out
    expected = f"data_hash={v1.lineage.data_hash} rows={rows} max_abs_diff=0 artifact_identical=true"
    assert expected in result.output


def test_initial_refuses_to_replace_an_existing_champion(world) -> None:
    before = world.registry.run(world.registry.client.list_versions("fraud"))
    result = CliRunner().invoke(train, ["--initial", "--events", "500"], env=world.env())
    assert result.exit_code == 2, result.output
    assert "already has a champion" in result.output
    assert len(world.registry.run(world.registry.client.list_versions("fraud"))) == len(before)


def test_now_in_process_retrains_and_records_a_manual_run(world) -> None:
    model = f"cli-{uuid.uuid4().hex[:6]}"
    result = CliRunner().invoke(
        train, ["--now", "--in-process"], env=world.env(DRIFTLINE_TRAINER_MODEL_NAME=model)
    )
    assert result.exit_code == 0, result.output
    assert "outcome=promoted version=1" in result.output
    (run,) = world.registry.run(world.registry.client.list_runs(model))
    assert run.trigger == "manual"
    assert run.outcome == registry_pb2.RUN_OUTCOME_PROMOTED
    assert world.registry.get_version(model, alias="champion").lineage.trigger == "manual"


def test_retention_archives_a_refused_challenger_in_the_real_registry(world) -> None:
    model = f"keep-{uuid.uuid4().hex[:6]}"
    first = _first_champion(world, model)
    weak = TrainerApp(
        world.settings(model_name=model, n_estimators=1, num_leaves=2, margin=0.0, keep_idle_versions=0),
        trigger_topics=world.triggers,
        feedback_topic=world.feedback,
    )
    result = weak.runner.run(TriggerBatch((Trigger(MANUAL, "weak", model, time.time()),)))
    weak.stop()

    assert result.outcome == registry_pb2.RUN_OUTCOME_REJECTED
    assert result.archived == [result.version]
    refused = world.registry.get_version(model, version=result.version)
    assert refused.HasField("archived_at")
    with pytest.raises(FailedPrecondition, match="archived"):
        world.registry.fetch_artifact(model, result.version)
    champion = world.registry.get_version(model, alias="champion")
    assert (champion.version, champion.HasField("archived_at")) == (first.version, False)
    assert world.registry.fetch_artifact(model, first.version)
