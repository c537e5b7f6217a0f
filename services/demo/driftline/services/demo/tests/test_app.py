from __future__ import annotations

import io
import os
import signal

import pytest
from confluent_kafka import KafkaError, KafkaException
from rich.console import Console

from driftline.services.demo import app
from driftline.services.demo.config import Settings
from driftline.services.demo.processes import ServiceSpec


class FakeSupervisor:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def start(self, spec: ServiceSpec) -> None:
        self.calls.append(f"start {spec.name}")

    def wait_ready(self, spec: ServiceSpec) -> None:
        self.calls.append(f"ready {spec.name}")


@pytest.fixture
def environ(monkeypatch):
    """A private copy of the environment: the demo writes its per-run state into it."""
    copy = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLINE_")}
    monkeypatch.setattr(os, "environ", copy)
    return copy


@pytest.fixture
def demo(tmp_path, environ, monkeypatch):
    calls: list[str] = []
    demo = app.Demo(Settings(run_dir=tmp_path / "run", live=False), Console(file=io.StringIO()))
    demo.supervisor = FakeSupervisor(calls)  # type: ignore[assignment]
    return demo, calls


def test_a_service_starts_after_its_consumer_groups_skip_what_earlier_runs_left(demo, monkeypatch):
    demo, calls = demo
    monkeypatch.setattr(app, "skip_to_end", lambda servers, group: calls.append(f"skip {group}"))
    demo._start(app.DRIFT)
    demo._start(app.SERVING[0])
    assert calls == [
        "skip drift",
        "start drift",
        "ready drift",
        "skip driftline-trainer",
        "skip driftline-trainer-labels",
        "start trainer",
        "ready trainer",
    ]


def test_a_group_that_cannot_be_moved_does_not_stop_the_demo(demo, monkeypatch):
    demo, calls = demo

    def refuse(servers: str, group: str) -> int:
        raise KafkaException(KafkaError(KafkaError.UNKNOWN_MEMBER_ID))

    monkeypatch.setattr(app, "skip_to_end", refuse)
    demo._start(app.STREAMING[0])
    assert calls == ["start ingestion", "ready ingestion"]


def test_consumer_groups_come_from_the_services_settings(environ):
    environ["DRIFTLINE_INGESTION_GROUP_ID"] = "ingest-b"
    environ["DRIFTLINE_FEATURES_APP_ID"] = "features-b"
    assert [spec.consumer_groups() for spec in app.STREAMING] == [["ingest-b"], ["features-b"]]
    assert app.SERVING[1].consumer_groups() == []  # inference: a group of its own per instance


def test_each_run_writes_and_reads_online_features_under_keys_of_its_own(demo, environ):
    from driftline.services.features.config import Settings as FeaturesSettings
    from driftline.services.inference.config import Settings as InferenceSettings

    prefix = environ["DRIFTLINE_FEATURES_KEY_PREFIX"]
    assert prefix.startswith("dl:demo-")
    assert FeaturesSettings().key_prefix == InferenceSettings().online_store_key_prefix == prefix


def test_each_run_claims_event_ids_under_keys_of_its_own(demo, environ):
    from driftline.services.ingestion.config import Settings as IngestionSettings

    demo, _ = demo
    dedup = IngestionSettings().dedup_key_prefix
    assert dedup == environ["DRIFTLINE_INGESTION_DEDUP_KEY_PREFIX"]
    assert dedup.startswith(demo._run_keys)
    assert environ["DRIFTLINE_FEATURES_KEY_PREFIX"].startswith(demo._run_keys)


def test_stopping_deletes_the_keys_of_this_run_only(demo, monkeypatch):
    demo, calls = demo
    demo.supervisor.stop_all = lambda: calls.append("stop all")  # type: ignore[attr-defined]
    deleted: list[str] = []
    monkeypatch.setattr(app, "delete_keys", lambda client, prefix: deleted.append(prefix) or 3)
    demo.stop()
    assert calls == ["stop all"]
    assert deleted == [demo._run_keys]


def test_a_redis_that_cannot_be_reached_does_not_fail_the_stop(demo, monkeypatch):
    from redis.exceptions import ConnectionError as RedisConnectionError

    demo, calls = demo
    demo.supervisor.stop_all = lambda: calls.append("stop all")  # type: ignore[attr-defined]

    def unreachable(client, prefix):
        raise RedisConnectionError("refused")

    monkeypatch.setattr(app, "delete_keys", unreachable)
    demo.stop()
    assert calls == ["stop all"]


def test_a_second_interrupt_does_not_cut_the_stop_short(demo, monkeypatch):
    demo, calls = demo

    def start_services() -> None:
        raise KeyboardInterrupt  # the first Ctrl-C

    def stop() -> None:
        calls.append("stopping")
        os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C mid-stop
        os.kill(os.getpid(), signal.SIGTERM)  # and the group's SIGTERM from `timeout`
        calls.append("stopped")

    demo.start_services = start_services  # type: ignore[method-assign]
    demo.stop = stop  # type: ignore[method-assign]
    monkeypatch.setattr(app, "Demo", lambda settings, console: demo)
    before = signal.getsignal(signal.SIGINT)
    try:
        assert app.serve(demo.settings) == 130
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    assert calls == ["stopping", "stopped"]
    assert signal.getsignal(signal.SIGINT) is before  # handlers are given back
