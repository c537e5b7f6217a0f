"""The data plane's spec comes from the platform's own definitions and the service's settings."""

from __future__ import annotations

from pathlib import Path

from driftline.featurestore import TRANSACTION_FEATURES
from driftline.kit.topics import PREDICTIONS
from driftline.services.inference.batcher import BatchingOptions
from driftline.services.inference.config import Settings
from driftline.services.inference.dataplane import build_spec


def test_the_spec_carries_the_feature_set_the_settings_and_the_log_bound(tmp_path: Path) -> None:
    settings = Settings(
        max_batch_size=32,
        max_queue_delay_us=250,
        queue_capacity=99,
        canary_share=0.25,
        prediction_log_capacity=1234,
        prediction_log_linger_ms=7,
        online_store_key_prefix="t",
    )
    spec = build_spec(
        settings,
        feature_set=TRANSACTION_FEATURES,
        predictions=PREDICTIONS,
        port_file=tmp_path / "ports.json",
        control_socket=tmp_path / "control.sock",
    )
    store = spec["store"]
    assert store["names"] == list(TRANSACTION_FEATURES.feature_names)
    assert store["ttls_s"] == [f.ttl_s for f in TRANSACTION_FEATURES.features]
    assert store["defaults"] == list(TRANSACTION_FEATURES.defaults)
    assert store["key_prefix"].startswith("t:")
    assert spec["batching"] == {
        "max_batch_size": 32,
        "max_queue_delay_us": 250,
        "queue_capacity": 99,
        "inline_below_us": BatchingOptions().inline_below_us,
    }
    assert spec["routing"] == {"shadow": False, "canary_share": 0.25}
    assert spec["default_deadline_s"] == settings.grpc.default_deadline_s
    assert spec["max_message_bytes"] == settings.grpc.max_message_bytes
    log = spec["log"]
    assert log["topic"] == PREDICTIONS.name
    # librdkafka properties as text, the prediction log's own bound and linger over the platform's.
    assert log["config"]["queue.buffering.max.messages"] == "1234"
    assert log["config"]["linger.ms"] == "7"
    assert log["config"]["enable.idempotence"] == "true"
    assert log["config"]["acks"] == "all"
