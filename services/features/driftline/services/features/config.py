"""Settings of the features service (env prefix ``DRIFTLINE_FEATURES_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseSettings, Field

from driftline.featurestore.online import DEFAULT_KEY_PREFIX
from driftline.kit.runtime import GEN0_THRESHOLD
from driftline.kit.settings import KafkaSettings, LogSettings, MetricsSettings, RedisSettings


class Settings(BaseSettings):
    """Everything the features service reads from its environment."""

    kafka: KafkaSettings = Field(default_factory=KafkaSettings, description="Broker of the source and sinks.")
    redis: RedisSettings = Field(default_factory=RedisSettings, description="Online store and stream state.")
    log: LogSettings = Field(default_factory=LogSettings, description="Log format and level.")
    metrics: MetricsSettings = Field(default_factory=MetricsSettings, description="/metrics endpoint.")

    app_id: str = Field(
        "driftline-features", description="Faust app id: the consumer group and the state-dir name."
    )
    feature_set: str = Field("card_transactions.v1", description="Feature set computed (name.vVERSION).")
    topic_prefix: str = Field(
        "", description="Prefix of every topic name (tests run on namespaced copies of the topics)."
    )
    key_prefix: str = Field(
        DEFAULT_KEY_PREFIX,
        description="Prefix of the Redis keys of the online store and state (inference reads it too).",
    )
    key_ttl_s: float = Field(
        86_400.0,
        description="Redis expiry of an entity's keys after its last write (garbage collection only).",
    )
    allowed_lateness_s: float = Field(
        30.0,
        description="Events up to this much older than their card's newest one still count; later: dropped.",
    )
    batch_max: int = Field(
        500, description="Most events handled in one batch (one Redis round trip each way)."
    )
    batch_within_s: float = Field(0.02, description="Longest a partial batch waits for more events.")
    max_retries: int = Field(
        3, description="Retries of a batch after a transient error before isolating events."
    )
    retry_backoff_s: float = Field(0.2, description="Back-off between retries, times the attempt number.")
    max_poll_interval_s: float = Field(
        1000.0,
        description="Kafka's max.poll.interval for faust's consumer: the longest it may go without "
        "polling before the group counts it gone (faust's default). The stream waiting out an outage "
        "of Redis does not hold the polls back.",
    )

    offline_enabled: bool = Field(True, description="Append feature vectors to the offline store.")
    offline_root: Path = Field(
        Path(".data/offline"), description="Root directory of the offline Parquet store."
    )
    offline_flush_s: float = Field(
        5.0, description="Longest feature vectors wait before they are flushed to Parquet."
    )
    offline_batch_max: int = Field(20_000, description="Most vectors written in one Parquet file.")
    offline_max_pending: int = Field(
        1_000_000, description="Rows kept in memory while Parquet writes fail; older ones are then dropped."
    )

    web_enabled: bool = Field(True, description="Serve faust's web endpoints.")
    web_host: str = Field("127.0.0.1", description="Address faust's web server binds.")
    web_port: int = Field(6066, description="Port of faust's web server (FEATURES_WEB_PORT).")
    metrics_port: int = Field(9102, description="Port of /metrics (FEATURES_METRICS_PORT); 0 picks one.")
    data_dir: Path = Field(Path(".cache/faust"), description="Where faust keeps its local state.")

    gc_young_threshold: int = Field(
        GEN0_THRESHOLD,
        description="Allocations between young-generation collections of Python's cyclic GC, with the "
        "startup heap frozen out of collections once the worker starts (Python's default, 700, made "
        "full collections of the per-card histories a tenth of the CPU); 0 keeps Python's settings.",
    )
    lag_interval_s: float = Field(
        15.0, gt=0, description="How often the consumer group's lag is read from the broker and exported."
    )
    event_loop: Literal["asyncio", "uvloop"] = Field(
        "asyncio",
        description="Event loop of the faust worker; uvloop (needs the uvloop package) cut faust's "
        "own CPU per event by 10-25% on the dev box.",
    )

    class Config:
        env_prefix = "DRIFTLINE_FEATURES_"
        env_nested_delimiter = "__"

    def consumer_groups(self) -> list[str]:
        """The consumer groups this service commits offsets under: faust's is its app id."""
        return [self.app_id]
