"""The data plane's spec comes from the platform's own definitions and the service's settings."""

from __future__ import annotations

import gc
import signal
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from driftline.featurestore import TRANSACTION_FEATURES
from driftline.kit.settings import RedisSettings
from driftline.kit.topics import PREDICTIONS
from driftline.services.inference.batcher import BatchingOptions
from driftline.services.inference.config import Settings
from driftline.services.inference.dataplane import DataPlane, DataPlaneMirror, Signature, build_spec
from driftline.services.inference.models import ModelMeta, Role
from driftline.services.inference.testing import FakeRuntime


def _spec(settings: Settings, workdir: Path) -> dict[str, Any]:
    return build_spec(
        settings,
        feature_set=TRANSACTION_FEATURES,
        predictions=PREDICTIONS,
        port_file=workdir / "ports.json",
        control_socket=workdir / "control.sock",
    )


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
    spec = _spec(settings, tmp_path)
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
    assert spec["tls"] is None
    assert spec["metrics_tls"] is None


def test_the_spec_carries_the_public_port_s_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text("PEM")
    monkeypatch.setenv("DRIFTLINE_INFERENCE_TLS_CERT_FILE", str(tmp_path / "cert.pem"))
    monkeypatch.setenv("DRIFTLINE_INFERENCE_TLS_KEY_FILE", str(tmp_path / "key.pem"))

    assert _spec(Settings(), tmp_path)["tls"] == {
        "cert_file": str(tmp_path / "cert.pem"),
        "key_file": str(tmp_path / "key.pem"),
    }
    monkeypatch.setenv("DRIFTLINE_INFERENCE_TLS_CLIENT_CA_FILE", str(tmp_path / "ca.pem"))
    assert _spec(Settings(), tmp_path)["tls"]["client_ca_file"] == str(tmp_path / "ca.pem")
    assert _spec(Settings(), tmp_path)["metrics_tls"] is None  # the metrics port's are its own


def test_the_spec_carries_the_metrics_port_s_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text("PEM")
    monkeypatch.setenv("DRIFTLINE_METRICS_TLS_CERT_FILE", str(tmp_path / "cert.pem"))
    monkeypatch.setenv("DRIFTLINE_METRICS_TLS_KEY_FILE", str(tmp_path / "key.pem"))
    monkeypatch.setenv("DRIFTLINE_METRICS_TLS_CLIENT_CA_FILE", str(tmp_path / "ca.pem"))
    spec = _spec(Settings(), tmp_path)
    assert spec["metrics_tls"] == {
        "cert_file": str(tmp_path / "cert.pem"),
        "key_file": str(tmp_path / "key.pem"),
        "client_ca_file": str(tmp_path / "ca.pem"),
    }
    assert spec["tls"] is None


def test_the_prediction_log_reaches_the_brokers_as_every_other_client_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "ca.pem").write_text("PEM")
    for name, value in {
        "SECURITY_PROTOCOL": "SASL_SSL",
        "SSL_CA_FILE": str(tmp_path / "ca.pem"),
        "SASL_USERNAME": "inference",
        "SASL_PASSWORD": "pw-71aa",
    }.items():
        monkeypatch.setenv(f"DRIFTLINE_KAFKA_{name}", value)
    settings = Settings()
    config = _spec(settings, tmp_path)["log"]["config"]
    assert settings.kafka.connection().items() <= config.items()
    assert (config["security.protocol"], config["sasl.password"]) == ("SASL_SSL", "pw-71aa")


def test_the_store_spec_carries_the_online_store_s_tls_files(tmp_path: Path) -> None:
    assert _spec(Settings(), tmp_path)["store"]["tls"] is None  # redis://
    (tmp_path / "ca.pem").write_text("PEM")
    redis = RedisSettings(url="rediss://127.0.0.1:6380/0", tls_ca_file=tmp_path / "ca.pem")
    assert _spec(Settings(redis=redis), tmp_path)["store"]["tls"] == {"ca_file": str(tmp_path / "ca.pem")}


class RecordingDataPlane:
    """The mirror's side of a data plane: what it was told to load."""

    def __init__(self) -> None:
        self.loads: list[tuple[int, Any, Role]] = []

    def load_model(self, artifact: bytes, meta: ModelMeta, runtime: Any, *, role: Role) -> None:
        self.loads.append((meta.version, runtime, role))


def test_the_mirror_keeps_a_signature_and_lets_the_session_go() -> None:
    plane = RecordingDataPlane()
    mirror = DataPlaneMirror(plane)  # type: ignore[arg-type]
    champion, challenger = FakeRuntime(4), FakeRuntime(4)
    let_go = weakref.ref(champion)
    kept = mirror.load(b"v1", ModelMeta("fraud", 1), champion, Role.CHAMPION)
    mirror.load(b"c2", ModelMeta("fraud", 2), challenger, Role.CHALLENGER)
    assert plane.loads == [(1, champion, Role.CHAMPION), (2, challenger, Role.CHALLENGER)]
    assert (kept.provider, kept.inputs, kept.outputs) == (
        champion.provider,
        champion.inputs,
        champion.outputs,
    )
    assert kept.warm_up((1, 64), 3) == 0.0
    with pytest.raises(RuntimeError, match="the data plane serves this model"):
        kept.run({"input": np.zeros((1, 4), np.float32)})
    del champion, challenger
    plane.loads.clear()
    gc.collect()
    assert let_go() is None  # nothing here holds the session the data plane was given
    # A restarted data plane gets every live model again, the champion first, from signatures.
    assert mirror.replay() == [1, 2]
    assert [(version, role) for version, _, role in plane.loads] == [(1, Role.CHAMPION), (2, Role.CHALLENGER)]
    assert all(isinstance(runtime, Signature) for _, runtime, _ in plane.loads)


class FakeProcess:
    """A ``subprocess.Popen`` as ``DataPlane`` uses it."""

    def __init__(self, returncode: int | None) -> None:
        self.returncode = returncode
        self.signals: list[int] = []

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)
        self.returncode = -sig

    def wait(self, timeout: float | None = None) -> int | None:
        return self.returncode


def test_a_stop_during_a_restart_stops_the_process_the_restart_started(tmp_path: Path) -> None:
    plane = DataPlane(Settings(), feature_set=TRANSACTION_FEATURES, predictions=PREDICTIONS, workdir=tmp_path)
    plane._process = FakeProcess(returncode=1)  # type: ignore[assignment]  # it exited on its own
    restarted = FakeProcess(returncode=None)
    starting = threading.Event()

    def slow_start(timeout_s: float) -> int:
        starting.set()
        time.sleep(0.3)  # the new process is not listening yet when the stop comes
        plane._process = restarted  # type: ignore[assignment]
        return 1

    plane._start = slow_start  # type: ignore[method-assign]
    restart = threading.Thread(target=plane.restart)
    restart.start()
    assert starting.wait(5)
    assert plane.stop() == -signal.SIGTERM  # it waited for the restart, then stopped its process
    restart.join(5)
    assert restarted.signals == [signal.SIGTERM]
    with pytest.raises(RuntimeError, match="was stopped"):
        plane.restart()
