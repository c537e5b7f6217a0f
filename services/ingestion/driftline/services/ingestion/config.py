"""Settings of the ingestion service (environment prefix ``DRIFTLINE_INGESTION_``)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseSettings, Field, root_validator

from driftline.kit.settings import KafkaSettings, LogSettings, MetricsSettings, RedisSettings
from driftline.services.ingestion.contract import DEFAULT_CONTRACT_PATH, Contract, FieldSpec

#: The default de-duplication horizon: the contract's 7-day event-age window, its 5 minutes of
#: future skew and a day's margin (clock skew between hosts, a contract's window widened a little).
DEFAULT_DEDUP_TTL_S = 8 * 86_400


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
        DEFAULT_DEDUP_TTL_S,
        description="De-duplication horizon: a repeated event id is dropped within this many seconds. "
        "At least the contract's max_age_s + max_future_s (checked at start-up), or a replay the "
        "contract still accepts passes as new. Redis holds one key per event id seen within it, "
        "about 150 bytes each: some 100 MB per sustained event/s at the 8-day default.",
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

    @root_validator(skip_on_failure=True)
    def _dedup_covers_the_contract(cls, values: dict[str, Any]) -> dict[str, Any]:  # noqa: N805 - pydantic validator
        # Checked where the settings are built (once, in __main__): a wrong horizon stops the
        # service before it consumes anything, not after a replay went through as new.
        contract_path = values["contract_path"]
        try:
            contract = Contract.load(contract_path)
        except Exception as err:  # a missing or broken file: a settings error, said as one
            raise ValueError(f"contract_path {contract_path} cannot be loaded: {err}") from err
        needed = replay_window(contract)
        if needed is not None and values["dedup_ttl_s"] < needed[1].total_seconds():
            spec, window = needed
            raise ValueError(
                f"dedup_ttl_s (DRIFTLINE_INGESTION_DEDUP_TTL_S) is {values['dedup_ttl_s']} s, shorter "
                f"than the {window.total_seconds():.0f} s for which the contract_path "
                f"(DRIFTLINE_INGESTION_CONTRACT_PATH) {contract_path} accepts a copy of an event: "
                f"field {spec.name!r} max_age_s {_seconds(spec.max_age)} + max_future_s "
                f"{_seconds(spec.max_future)}; a replay older than the horizon would pass as new. "
                "Raise dedup_ttl_s or narrow the contract's window."
            )
        return values

    def consumer_groups(self) -> list[str]:
        """The consumer groups this service commits offsets under."""
        return [self.group_id]


def replay_window(contract: Contract) -> tuple[FieldSpec, timedelta] | None:
    """How long after an event's first copy the contract may still accept a copy of it, and the
    timestamp field that sets it; None when no field bounds the event's age.

    A first copy read at ``t0`` has an event time of at most ``t0 + max_future``; a copy read at
    ``t1`` passes while its event time is at least ``t1 - max_age``: until ``t0 + max_future +
    max_age``. (A field without ``max_future`` accepts any future time: counted as 0 here.)
    """
    windows = [
        (spec, spec.max_age + (spec.max_future or timedelta(0)))
        for spec in contract.fields
        if spec.max_age is not None
    ]
    return max(windows, key=lambda window: window[1], default=None)


def _seconds(window: timedelta | None) -> str:
    return "unset" if window is None else f"{window.total_seconds():g}"
