"""Settings of the ingestion service (environment prefix ``DRIFTLINE_INGESTION_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseSettings, Field

from driftline.kit.settings import KafkaSettings, LogSettings, MetricsSettings, RedisSettings
from driftline.services.ingestion.contract import DEFAULT_CONTRACT_PATH


class Settings(BaseSettings):
    """Everything ingestion needs; the defaults work against the local stack (``make up``)."""

    kafka: KafkaSettings = Field(default_factory=KafkaSettings, description="The Kafka broker.")
    redis: RedisSettings = Field(
        default_factory=RedisSettings, description="Redis, the de-duplication memory."
    )
    log: LogSettings = Field(default_factory=LogSettings, description="Log output.")
    metrics: MetricsSettings = Field(default_factory=MetricsSettings, description="The /metrics endpoint.")
    metrics_port: int = Field(
        9101, description="Port of /metrics (INGESTION_METRICS_PORT in .env); 0 picks one."
    )
    group_id: str = Field("ingestion", description="Consumer group of the raw-transactions consumer.")
    topic_prefix: str = Field(
        "", description="Prefix of every topic name: isolated runs (tests, demos) on a shared broker."
    )
    contract_path: Path = Field(DEFAULT_CONTRACT_PATH, description="The data-contract file to enforce.")
    dedup_ttl_s: int = Field(
        86_400, description="De-duplication horizon: a repeated event id is dropped within this many seconds."
    )
    dedup_key_prefix: str = Field(
        "driftline:ingestion:dedup:v1:", description="Prefix of the Redis keys that remember event ids."
    )
    native_gate: bool = Field(
        True,
        description="Check canonical JSON events in the native batch fast path (docs/adr/0006); "
        "false sends every event through the Python gate, which decides the same, more slowly.",
    )
    quality_window: int = Field(
        10_000, description="How many recent decoded events the per-field data-quality gauges cover."
    )

    class Config:
        env_prefix = "DRIFTLINE_INGESTION_"

    def consumer_groups(self) -> list[str]:
        """The consumer groups this service commits offsets under."""
        return [self.group_id]
