"""Settings of the demo (env prefix DRIFTLINE_DEMO_)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseSettings, Field, validator

from driftline.kit.settings import KafkaSettings, RedisSettings, known_log_level


class Settings(BaseSettings):
    """What the demo drives, and where it writes."""

    rate: float = Field(100.0, description="Events per second the producer publishes.")
    warmup_s: float = Field(
        600.0,
        description="Seconds of past traffic replayed first so the feature windows are full.",
    )
    warmup_timeout_s: float = Field(240.0, description="Longest the warm-up may take to catch up.")
    settle_s: float = Field(
        90.0,
        description="Real-time seconds allowed for the warm-up to catch up and the watchers to start.",
    )
    drift_after_s: float = Field(
        45.0, description="Seconds of live, scored traffic (after settle_s) before drift is injected."
    )
    drift: str = Field("concept", description='"concept" (the fraud pattern changes) or "covariate".')
    after_promotion_labels: int = Field(
        1500, description="Labelled predictions to collect from the new champion before the summary."
    )
    recovered_recall: float = Field(
        0.6,
        description=(
            "The demo ends once a champion promoted after the drift reaches this live fraud recall "
            "over its last after_promotion_labels labelled predictions (or at max_duration_s). A "
            "first retrain after a change may promote a model that has seen too little of the new "
            "pattern; the platform then retrains again on its own (the drift service raises a "
            "degradation for any champion version whose live AUC stays low). 0, with "
            "recovered_precision 0: end at the first new champion."
        ),
    )
    recovered_precision: float = Field(
        0.5,
        description=(
            "And this live precision over the same predictions: a champion that catches the frauds by "
            "flagging many legitimate transactions has not recovered (the drift service degrades a "
            "champion whose precision falls below DRIFTLINE_DRIFT_DEGRADATION_PRECISION_FLOOR, and "
            "the platform retrains). 0: recall alone."
        ),
    )
    max_duration_s: float = Field(420.0, description="The demo ends after this long, loop closed or not.")
    garbage_rate: float = Field(0.02, description="Share of published messages that are garbage.")
    duplicate_rate: float = Field(0.01, description="Share of published messages re-sent as duplicates.")
    seed: int = Field(7, description="Seed of the synthetic transaction stream.")
    model_name: str = Field("fraud", description="Name of the model the loop keeps correct.")
    inference_address: str = Field("127.0.0.1:15052", description="host:port of the inference gRPC API.")
    registry_address: str = Field("127.0.0.1:15051", description="host:port of the registry gRPC API.")
    prometheus_url: str = Field("http://127.0.0.1:19090", description="Prometheus the live view queries.")
    run_dir: Path = Field(Path(".run"), description="Where service logs and PID files go.")
    out_dir: Path = Field(Path("out/demo"), description="Where the report (HTML + PNG) is written.")
    live: bool = Field(True, description="Show the live terminal view (off in tests).")
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    redis: RedisSettings = Field(
        default_factory=RedisSettings, description="Redis, where the run's keys are deleted when it stops."
    )
    log_level: str = Field(
        "WARNING", description="The demo's own log level (its console belongs to the live view)."
    )
    _a_known_level = validator("log_level", allow_reuse=True)(known_log_level)

    class Config:
        env_prefix = "DRIFTLINE_DEMO_"
