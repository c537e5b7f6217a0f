"""The trainer against the real broker and the real registry service, started in-process
(``driftline.services.registry.app.RegistryApp`` on a free port, SQLite in a temp dir).

The module-scoped ``world`` bootstraps a champion with ``driftline train --initial`` over a
simulated history (seed 5, events 0-5999), then writes the features of the stream's continuation
(events 6000-11999, after an injected concept drift) to the offline store, as the features
service would have. Tests publish the continuation's labels and triggers on namespaced topics.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from driftline.featurestore.events import transaction_event_from_mapping
from driftline.featurestore.offline import OfflineStore, materialize
from driftline.kit.settings import KafkaSettings, MetricsSettings
from driftline.kit.testing import create_test_topics, delete_topics, unique_prefix
from driftline.kit.topics import DRIFT_REPORTS, FEEDBACK, PERFORMANCE_DEGRADATIONS, RETRAIN_REQUESTS, Topic
from driftline.services.registry.testing import RegistryThread, settings_for_tests
from driftline.services.trainer.cli import train
from driftline.services.trainer.config import Settings
from driftline.services.trainer.consumer import TriggerTopics
from driftline.services.trainer.registry import SyncRegistry
from driftline.simulator import SimEvent, SimulatorConfig, TransactionSimulator

TOKEN = "trainer-test-token"
START = datetime(2025, 3, 1, tzinfo=UTC)
SEED = 5
HISTORY = 6000
DRIFT_AT = 6000
TOTAL = 12_000


@dataclass
class World:
    prefix: str
    tmp: Path
    kafka: KafkaSettings
    registry: SyncRegistry
    registry_address: str
    triggers: TriggerTopics
    feedback: Topic
    drifted: list[SimEvent]

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "model_name": "fraud",
            "data_dir": self.tmp / "trainer",
            "offline_store_dir": self.tmp / "offline",
            "registry_address": self.registry_address,
            "registry_token": TOKEN,
            "horizon_s": 240.0,
            "min_rows": 500,
            "debounce_s": 0.5,
            "n_estimators": 60,
            "margin": 0.01,
            "code_revision": "integration-test",
            "consumer_group": f"{self.prefix}trainer",
            "labels_group": f"{self.prefix}trainer-labels",
            "kafka": self.kafka,
            "metrics": MetricsSettings(enabled=False),
        }
        values.update(overrides)
        return Settings(**values)

    def env(self, **overrides: str) -> dict[str, str]:
        """Environment for ``driftline train`` run through click's test runner."""
        env = {
            "DRIFTLINE_TRAINER_MODEL_NAME": "fraud",
            "DRIFTLINE_TRAINER_DATA_DIR": str(self.tmp / "trainer"),
            "DRIFTLINE_TRAINER_OFFLINE_STORE_DIR": str(self.tmp / "offline"),
            "DRIFTLINE_TRAINER_REGISTRY_ADDRESS": self.registry_address,
            "DRIFTLINE_TRAINER_REGISTRY_TOKEN": TOKEN,
            "DRIFTLINE_TRAINER_N_ESTIMATORS": "60",
            "DRIFTLINE_TRAINER_CODE_REVISION": "integration-test",
        }
        env.update(overrides)
        return env


def stream() -> list[SimEvent]:
    config = SimulatorConfig(seed=SEED, start=START, concept_drift_at=DRIFT_AT)
    return list(TransactionSimulator(config).events(TOTAL))


@pytest.fixture(scope="module")
def world(kafka_settings: KafkaSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    prefix = unique_prefix()
    tmp = tmp_path_factory.mktemp("trainer")
    triggers = TriggerTopics(
        DRIFT_REPORTS.namespaced(prefix),
        PERFORMANCE_DEGRADATIONS.namespaced(prefix),
        RETRAIN_REQUESTS.namespaced(prefix),
    )
    feedback = FEEDBACK.namespaced(prefix)
    topics = [*triggers.all(), feedback]
    create_test_topics(kafka_settings, topics)
    registry_thread = RegistryThread(
        settings_for_tests(tmp / "registry", kafka_settings, TOKEN, outbox_enabled=False)
    )
    address = f"127.0.0.1:{registry_thread.port}"
    registry = SyncRegistry(address, TOKEN)
    events = stream()
    world = World(prefix, tmp, kafka_settings, registry, address, triggers, feedback, events[DRIFT_AT:])
    try:
        # The bootstrap path a new stack takes: history -> offline store + label log -> champion v1.
        result = CliRunner().invoke(
            train,
            [
                "--initial",
                "--events",
                str(HISTORY),
                "--sim-seed",
                str(SEED),
                "--start",
                "2025-03-01T00:00:00",
            ],
            env=world.env(),
        )
        assert result.exit_code == 0, result.output
        # The features service computed features for the stream's continuation too.
        rows = materialize(
            OfflineStore(tmp / "offline").feature_set,
            [transaction_event_from_mapping({**e.event, "event_time": e.event_time}) for e in events],
        )
        tail = {e.event_id for e in world.drifted}
        OfflineStore(tmp / "offline").append(rows[rows["event_id"].isin(tail)])
        yield world
    finally:
        registry.close()
        registry_thread.stop()
        delete_topics(kafka_settings, topics)
