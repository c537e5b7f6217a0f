"""The drift service's reference source against the real registry service, started in-process
(``RegistryApp`` on a free port, SQLite in a temp dir, its outbox publishing model events to a
namespaced topic on the real broker), as the trainer's integration tests start it.

The module-scoped ``world`` registers three versions the way the trainer does (the bootstrap's
``train_initial`` through ``RetrainRunner``, whose registration requests are kept as sent):
v1, promoted champion; v2, from another history, left pending approval; v3, trained with
``reference_rows=0`` and so registered without a reference sample. Each test points the
champion where it needs it.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Consumer
from sqlalchemy import and_, create_engine, select, update

from driftline.kit.codec import decode
from driftline.kit.errors import NotFound, Unavailable
from driftline.kit.registry_client import RegistryClientSettings
from driftline.kit.settings import KafkaSettings, MetricsSettings
from driftline.kit.testing import create_test_topics, delete_topics, free_port, unique_prefix
from driftline.kit.topics import MODEL_EVENTS, Topic
from driftline.registry.v1 import registry_pb2
from driftline.services.drift.alibi_backend import AlibiDetectorFactory
from driftline.services.drift.config import Settings as DriftSettings
from driftline.services.drift.detectors import Status, Stream
from driftline.services.drift.errors import InvalidReference, ReferenceUnavailable
from driftline.services.drift.monitor import DriftMonitor, Reference, restarting_features
from driftline.services.drift.reference import (
    ReferenceWatcher,
    RegistryReferenceSource,
    reference_from_version,
)
from driftline.services.registry.store.schema import references
from driftline.services.registry.testing import RegistryThread, settings_for_tests
from driftline.services.trainer.app import TrainerCore
from driftline.services.trainer.bootstrap import simulate, train_initial, write_history
from driftline.services.trainer.config import Settings as TrainerSettings
from driftline.services.trainer.convert import OnnxScorer
from driftline.services.trainer.registry import SyncRegistry
from driftline.simulator import SimulatorConfig

pytestmark = pytest.mark.integration

TOKEN = "drift-reference-test-token"
MODEL = "fraud"
CHAMPION = "champion"
START = datetime(2025, 3, 1, tzinfo=UTC)
HISTORY = 6000
REFERENCE_ROWS = 500
RETRY_S = 15.0


class RecordingRegistry:
    """The trainer's real registry client, keeping every registration request as it was sent."""

    def __init__(self, inner: SyncRegistry) -> None:
        self._inner = inner
        self.sent: dict[int, registry_pb2.RegisterModelVersionRequest] = {}

    def register(self, request: registry_pb2.RegisterModelVersionRequest) -> registry_pb2.ModelVersion:
        registered = self._inner.register(request)
        self.sent[int(registered.version)] = request
        return registered

    def set_alias(
        self, name: str, alias: str, version: int, expected_version: int, reason: str
    ) -> registry_pb2.AliasChange:
        return self._inner.set_alias(name, alias, version, expected_version, reason)

    def get_version(
        self, name: str, *, version: int | None = None, alias: str | None = None
    ) -> registry_pb2.ModelVersion:
        return self._inner.get_version(name, version=version, alias=alias)

    def fetch_artifact(self, name: str, version: int) -> bytes:
        return self._inner.fetch_artifact(name, version)

    def record_run(self, run: registry_pb2.Run) -> registry_pb2.Run:
        return self._inner.record_run(run)


@dataclass
class World:
    registry: SyncRegistry
    address: str
    database_url: str
    events: Consumer
    sent: dict[int, registry_pb2.RegisterModelVersionRequest]
    seen: list[registry_pb2.ModelEvent] = field(default_factory=list)

    def move_champion(self, version: int) -> registry_pb2.AliasChange:
        try:
            current = int(self.registry.get_version(MODEL, alias=CHAMPION).version)
        except NotFound:
            current = 0
        return self.registry.set_alias(MODEL, CHAMPION, version, current, f"test moves it to v{version}")

    def event_of(self, change: registry_pb2.AliasChange, timeout_s: float = 30.0) -> registry_pb2.ModelEvent:
        """The model event the registry's outbox published for ``change``, read from the broker."""
        deadline = time.monotonic() + timeout_s
        while True:
            for message in self.events.consume(num_messages=100, timeout=0.5):
                if message.error() is None:
                    self.seen.append(decode(registry_pb2.ModelEvent, message.value() or b""))
            for event in self.seen:
                if event.audit_seq == change.audit_seq:
                    return event
            assert time.monotonic() < deadline, f"no model event for audit record {change.audit_seq}"

    @contextmanager
    def torn_reference(self, version: int) -> Iterator[None]:
        """The stored reference values of ``version`` lose their last float (a torn write) in the
        registry's own database until the block ends."""
        engine = create_engine(self.database_url)
        where = and_(references.c.name == MODEL, references.c.version == version)
        with engine.begin() as conn:
            blob = conn.execute(select(references.c["values"]).where(where)).scalar_one()
        try:
            with engine.begin() as conn:
                conn.execute(update(references).where(where).values({"values": blob[:-8]}))
            yield
        finally:
            with engine.begin() as conn:
                conn.execute(update(references).where(where).values({"values": blob}))
            engine.dispose()


def _trainer(
    tmp: Path, kafka: KafkaSettings, address: str, registry: RecordingRegistry, **overrides: Any
) -> TrainerCore:
    values: dict[str, Any] = {
        "model_name": MODEL,
        "data_dir": tmp / "trainer",
        "offline_store_dir": tmp / "offline",
        "registry_address": address,
        "registry_token": TOKEN,
        "n_estimators": 40,
        "reference_rows": REFERENCE_ROWS,
        "code_revision": "integration-test",
        "kafka": kafka,
        "metrics": MetricsSettings(enabled=False),
    }
    settings = TrainerSettings(**{**values, **overrides})
    return TrainerCore(settings, registry=registry)


def _train(core: TrainerCore, seed: int, start: datetime) -> int:
    """One ``driftline train --initial`` over a simulated history: the version it registered."""
    run_id, events = simulate(SimulatorConfig(seed=seed, start=start), HISTORY)
    history = write_history(core.store, core.labels, events, run_id=run_id)
    span = (history.end - history.start).total_seconds()
    warmup = min(core.store.feature_set.max_window_s, span / 2)
    result = train_initial(core.runner, core.dataset, history, warmup_s=warmup)
    assert result.version > 0, result.reason
    return result.version


@pytest.fixture(scope="module")
def world(kafka_settings: KafkaSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    prefix = unique_prefix()
    tmp = tmp_path_factory.mktemp("drift-reference")
    topic = MODEL_EVENTS.namespaced(prefix)
    create_test_topics(kafka_settings, [topic])
    registry_settings = settings_for_tests(
        tmp / "registry", kafka_settings, TOKEN, events_topic_prefix=prefix
    )
    registry_thread = RegistryThread(registry_settings)
    address = f"127.0.0.1:{registry_thread.port}"
    registry = SyncRegistry(address, TOKEN)
    recording = RecordingRegistry(registry)
    events = _reader(kafka_settings, topic)
    try:
        gap = timedelta(hours=1)
        # The bootstrap's champion; then two challengers the gate leaves for manual approval.
        assert _train(_trainer(tmp, kafka_settings, address, recording), 5, START) == 1
        pending = _trainer(tmp, kafka_settings, address, recording, manual_approval=True)
        assert _train(pending, 6, START + gap) == 2
        bare = _trainer(tmp, kafka_settings, address, recording, manual_approval=True, reference_rows=0)
        assert _train(bare, 5, START + 2 * gap) == 3
        assert registry.get_version(MODEL, alias=CHAMPION).version == 1
        yield World(registry, address, registry_settings.resolved_database_url(), events, recording.sent)
    finally:
        events.close()
        registry.close()
        registry_thread.stop()
        delete_topics(kafka_settings, [topic])


def _reader(kafka: KafkaSettings, topic: Topic) -> Consumer:
    consumer = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([topic.name])
    return consumer


@pytest.fixture(scope="module")
def source(world: World) -> Iterator[RegistryReferenceSource]:
    """The source as the drift service builds it (reads need no token)."""
    source = RegistryReferenceSource(RegistryClientSettings(address=world.address, token=None, timeout_s=10))
    yield source
    source.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Watched:
    watcher: ReferenceWatcher
    monitor: DriftMonitor
    clock: Clock


def _watch(source: RegistryReferenceSource, alias: str = CHAMPION) -> Watched:
    """The watcher and monitor the drift service wires (``DriftApp``), on a clock the test moves.

    The online detectors are calibrated cheaply (seconds otherwise): these tests ask which
    sample the detectors hold, not what they make of live traffic.
    """
    settings = DriftSettings(
        metrics=MetricsSettings(enabled=False),
        online_features=False,
        online_ert=50.0,
        online_n_bootstraps=200,
    )
    monitor = DriftMonitor(settings.monitor_config(), AlibiDetectorFactory())
    clock = Clock()
    watcher = ReferenceWatcher(source, monitor, model_name=MODEL, alias=alias, retry_s=RETRY_S, clock=clock)
    return Watched(watcher, monitor, clock)


def _sent_arrays(
    request: registry_pb2.RegisterModelVersionRequest,
) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    sample = request.reference
    names = tuple(sample.feature_names)
    values = np.asarray(sample.values, dtype=float).reshape(int(sample.rows), len(names))
    return names, values, np.asarray(sample.scores, dtype=float)


def _assert_watches(
    monitor: DriftMonitor, request: registry_pb2.RegisterModelVersionRequest, version: int
) -> None:
    """The monitor holds the sample the trainer sent for ``version``, less the features it never
    tests (those of tumbling windows)."""
    names, values, scores = _sent_arrays(request)
    reference = monitor.reference
    assert reference is not None
    assert monitor.version == version
    skipped = restarting_features(request.feature_set, request.feature_set_version)
    kept = [j for j, name in enumerate(names) if name not in skipped]
    assert reference.feature_names == tuple(names[j] for j in kept)
    np.testing.assert_array_equal(reference.values, values[:, kept])
    np.testing.assert_array_equal(reference.scores, scores)


def test_the_champions_reference_is_the_sample_the_trainer_registered(
    world: World, source: RegistryReferenceSource
) -> None:
    world.move_champion(1)
    sent = world.sent[1]
    names, values, scores = _sent_arrays(sent)
    reference: Reference = reference_from_version(source.get_version(MODEL, alias=CHAMPION))
    assert (reference.model_name, reference.model_version) == (MODEL, 1)
    assert reference.feature_names == names == tuple(sent.signature.feature_names)
    assert reference.values.shape == (REFERENCE_ROWS, len(names))
    np.testing.assert_array_equal(reference.values, values)
    np.testing.assert_array_equal(reference.scores, scores)
    assert reference.decision_threshold == float(sent.params["decision_threshold"])
    assert (reference.feature_set, reference.feature_set_version) == (
        sent.feature_set,
        sent.feature_set_version,
    )
    # Rows and scores stay paired and in order: the registered model gives each loaded row its score.
    scorer = OnnxScorer(world.registry.fetch_artifact(MODEL, 1))
    np.testing.assert_allclose(scorer.predict(reference.values), reference.scores, rtol=0, atol=1e-6)


def test_the_watcher_follows_the_champion_to_another_version_on_its_alias_set_event(
    world: World, source: RegistryReferenceSource
) -> None:
    world.move_champion(1)
    watched = _watch(source)
    assert watched.watcher.ensure_loaded() == []
    _assert_watches(watched.monitor, world.sent[1], 1)
    assert not np.array_equal(_sent_arrays(world.sent[1])[1], _sent_arrays(world.sent[2])[1])

    event = world.event_of(world.move_champion(2))
    assert (event.type, event.version) == (registry_pb2.MODEL_EVENT_TYPE_ALIAS_SET, 2)
    assert watched.watcher.on_event(event) == []
    assert watched.watcher.loaded
    _assert_watches(watched.monitor, world.sent[2], 2)


def test_a_champion_without_a_reference_sample_leaves_both_streams_unwatched(
    world: World, source: RegistryReferenceSource
) -> None:
    assert world.sent[3].reference.rows == 0
    world.move_champion(1)
    watched = _watch(source)
    watched.watcher.ensure_loaded()
    event = world.event_of(world.move_champion(3))
    assert not source.get_version(MODEL, alias=CHAMPION).HasField("reference")

    reports = watched.watcher.on_event(event)
    assert watched.watcher.loaded
    assert watched.monitor.version == 3
    assert watched.monitor.reference is not None
    assert watched.monitor.reference.values.shape[0] == 0
    assert sorted((r.stream, r.status, r.model_version, r.reason) for r in reports) == [
        (str(stream), Status.INSUFFICIENT_DATA, 3, "reference has nothing to compare for this stream")
        for stream in (Stream.FEATURES, Stream.PREDICTIONS)
    ]


def test_an_unknown_model_or_alias_is_not_found_and_the_watcher_retries_until_it_exists(
    world: World, source: RegistryReferenceSource
) -> None:
    with pytest.raises(NotFound):
        source.get_version("no-such-model", alias=CHAMPION)
    alias = f"canary-{uuid.uuid4().hex[:8]}"
    with pytest.raises(NotFound):
        source.get_version(MODEL, alias=alias)

    watched = _watch(source, alias)
    assert watched.watcher.ensure_loaded() == []
    assert watched.monitor.reference is None
    assert not watched.watcher.loaded
    world.registry.set_alias(MODEL, alias, 2, 0, "canary")
    watched.clock.now += RETRY_S / 2
    watched.watcher.ensure_loaded()
    assert watched.monitor.reference is None, "asked again before its retry delay"
    watched.clock.now += RETRY_S
    watched.watcher.ensure_loaded()
    assert watched.watcher.loaded
    _assert_watches(watched.monitor, world.sent[2], 2)


def test_a_torn_reference_keeps_the_previous_one_until_the_registry_serves_it_whole(
    world: World, source: RegistryReferenceSource
) -> None:
    world.move_champion(1)
    watched = _watch(source)
    watched.watcher.ensure_loaded()
    with world.torn_reference(2):
        event = world.event_of(world.move_champion(2))
        with pytest.raises(InvalidReference):
            reference_from_version(source.get_version(MODEL, alias=CHAMPION))
        assert watched.watcher.on_event(event) == []
        assert not watched.watcher.loaded
        _assert_watches(watched.monitor, world.sent[1], 1)
    watched.clock.now += RETRY_S
    watched.watcher.ensure_loaded()
    assert watched.watcher.loaded
    _assert_watches(watched.monitor, world.sent[2], 2)


def test_a_registry_that_is_down_raises_unavailable_at_once() -> None:
    source = RegistryReferenceSource(RegistryClientSettings(address=f"127.0.0.1:{free_port()}", timeout_s=10))
    try:
        started = time.monotonic()
        with pytest.raises(Unavailable):
            source.get_version(MODEL, alias=CHAMPION)
        assert time.monotonic() - started < 5
    finally:
        source.close()


def test_a_registry_that_never_answers_raises_reference_unavailable_after_the_timeout() -> None:
    # A listening socket that accepts connections and never speaks: a hung registry process.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        source = RegistryReferenceSource(
            RegistryClientSettings(address=f"127.0.0.1:{port}", timeout_s=30), timeout_s=1.0
        )
        try:
            started = time.monotonic()
            with pytest.raises(ReferenceUnavailable):
                source.get_version(MODEL, alias=CHAMPION)
            assert time.monotonic() - started < 10
        finally:
            source.close()
