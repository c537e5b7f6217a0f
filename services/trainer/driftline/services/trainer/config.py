"""The trainer's settings (environment prefix ``DRIFTLINE_TRAINER_``)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from pydantic import BaseSettings, Field

from driftline.kit.settings import KafkaSettings, LogSettings, MetricsSettings, RegistryTlsSettings
from driftline.services.trainer.gate import GateConfig
from driftline.services.trainer.runner import RunnerConfig
from driftline.services.trainer.train import TrainParams


class Settings(BaseSettings):
    """Everything the trainer service and ``driftline train`` read from the environment."""

    model_name: str = Field("fraud", description="Registered model the trainer trains and promotes.")
    data_dir: Path = Field(
        Path(".data/trainer"),
        description="The trainer's own state: the label log (labels/) and pending triggers.",
    )
    offline_store_dir: Path = Field(
        Path(".data/offline"),
        description="Root of the offline feature store, shared with the features service.",
        env=["DRIFTLINE_TRAINER_OFFLINE_STORE_DIR", "DRIFTLINE_FEATURES_OFFLINE_ROOT"],
    )
    registry_address: str = Field(
        "127.0.0.1:15051",
        description="host:port of the registry's gRPC API.",
        env=["DRIFTLINE_TRAINER_REGISTRY_ADDRESS", "DRIFTLINE_REGISTRY_ADDRESS"],
    )
    registry_token: str = Field(
        "driftline-dev-token",
        description="Bearer token for registry writes.",
        env=["DRIFTLINE_TRAINER_REGISTRY_TOKEN", "DRIFTLINE_REGISTRY_TOKEN"],
    )
    registry_tls: RegistryTlsSettings = Field(
        default_factory=RegistryTlsSettings, description="TLS to the registry, when it serves TLS."
    )
    champion_alias: str = Field("champion", description="Alias the gate promotes a winner to.")
    challenger_alias: str = Field(
        "challenger", description="Alias a winner waiting for manual approval is given."
    )
    horizon_s: float = Field(
        60.0,
        description=(
            "Event-time span of a retrain's training set, back from the newest labelled event. Short "
            "enough that soon after a drift most of it is drifted data (see docs/training.md)."
        ),
        gt=0,
    )
    min_rows: int = Field(500, description="Fewest labelled rows a retrain accepts.", ge=10)
    min_positives: int = Field(
        20,
        description=(
            "Fewest positive (fraud) labels among a retrain's training rows; with fewer the retrain "
            "is deferred. The demo's 60 s horizon holds ~100-190 (3 % of ~100 events/s)."
        ),
        ge=1,
    )
    min_holdout_positives: int = Field(
        10,
        description=(
            "Fewest positive labels in the holdout, where the gate compares recall at each model's "
            "threshold; with fewer the retrain is deferred. The demo's holdout holds ~10-80."
        ),
        ge=1,
    )
    holdout_fraction: float = Field(
        0.25,
        description="Most recent share of the set held out to compare challenger and champion.",
        gt=0,
        lt=1,
    )
    metric: str = Field(
        "auc", description="Gate metric: auc, f1, average_precision, accuracy or neg_log_loss."
    )
    margin: float = Field(
        0.005,
        description=(
            "How much the challenger must beat the champion by on the metric; never negative, "
            "which would promote a worse model."
        ),
        ge=0,
    )
    max_recall_drop: float = Field(
        0.10,
        description=(
            "Gate: how far the challenger's recall at its own decision threshold may fall below the "
            "champion's at the champion's threshold, on the same holdout rows. Zero recall is always "
            "refused."
        ),
        ge=0,
        le=1,
    )
    better_f1_when_degraded: bool = Field(
        True,
        description=(
            "Gate: when a performance degradation triggered the retrain, the challenger's F1 at its "
            "decision threshold must beat the degraded champion's, on the same holdout rows."
        ),
    )
    max_recall_drop_when_degraded: float = Field(
        0.25,
        description=(
            "Gate: against a degraded champion, how far a challenger whose F1 at its threshold is "
            "better may fall below the champion's recall (a champion degraded on precision catches "
            "frauds by flagging legitimate events; fewer false alarms are worth some recall)."
        ),
        ge=0,
        le=1,
    )
    manual_approval: bool = Field(
        False, description="Leave winners pending (alias 'challenger') instead of promoting them."
    )
    parity_tolerance: float = Field(
        1e-5, description="Largest allowed |ONNX - native| score difference on the holdout.", gt=0
    )
    reference_rows: int = Field(500, description="Rows of training features stored as the drift reference.")
    debounce_s: float = Field(
        5.0,
        description="Triggers arriving within this window of the first are coalesced into one retrain.",
        ge=0,
    )
    defer_retry_s: float = Field(
        15.0,
        description="A retrain deferred for too few labels runs again after this many seconds.",
        gt=0,
    )
    max_defer_s: float = Field(
        600.0,
        description=(
            "A deferred retrain is retried while its first trigger is younger than this; then a "
            "shortage fails the run. 0 never defers."
        ),
        ge=0,
    )
    refused_retries: int = Field(
        6,
        description=(
            "A retrain with a degradation trigger whose challenger the gate refuses is deferred and "
            "tried again (DEFER_RETRY_S apart, within MAX_DEFER_S) up to this many times before "
            "the refusal is final: right after a change the window holds too few labels of it to "
            "win. 0 makes every refusal final."
        ),
        ge=0,
    )
    keep_idle_versions: int | None = Field(
        None,
        description=(
            "After each retrain that registers a version, archive the model's versions no alias "
            "points at but the newest this many (the registry then collects their artifacts); "
            "unset: archive nothing. 2 or more keeps the last champions for a rollback."
        ),
        ge=0,
    )
    seed: int = Field(7, description="Training seed; a version's seed is recorded with it.")
    n_estimators: int = Field(100, description="LightGBM boosting rounds.", ge=1)
    num_leaves: int = Field(15, description="LightGBM leaves per tree.", ge=2)
    learning_rate: float = Field(0.1, description="LightGBM learning rate.", gt=0)
    min_child_samples: int = Field(20, description="LightGBM minimum rows per leaf.", ge=1)
    code_revision: str = Field(
        "",
        description="Code revision recorded in lineage; empty means ask git, then fall back to 'unknown'.",
    )
    consumer_group: str = Field("driftline-trainer", description="Consumer group of the trigger consumer.")
    labels_group: str = Field(
        "driftline-trainer-labels", description="Consumer group of the label-log consumer."
    )
    metrics_port: int = Field(9106, description="Port of the Prometheus /metrics endpoint.")
    kafka: KafkaSettings = Field(default_factory=KafkaSettings, description="Broker connection.")
    metrics: MetricsSettings = Field(default_factory=MetricsSettings, description="/metrics endpoint.")
    log: LogSettings = Field(default_factory=LogSettings, description="Logging output.")

    class Config:
        env_prefix = "DRIFTLINE_TRAINER_"

    def consumer_groups(self) -> list[str]:
        """The consumer groups this service commits offsets under."""
        return [self.consumer_group, self.labels_group]

    @property
    def labels_dir(self) -> Path:
        return self.data_dir / "labels"

    @property
    def journal_path(self) -> Path:
        return self.data_dir / "pending-triggers.json"

    @property
    def horizon(self) -> timedelta:
        return timedelta(seconds=self.horizon_s)

    def train_params(self) -> TrainParams:
        return TrainParams(
            n_estimators=self.n_estimators,
            num_leaves=self.num_leaves,
            learning_rate=self.learning_rate,
            min_child_samples=self.min_child_samples,
            seed=self.seed,
        )

    def runner_config(self, code_revision: str) -> RunnerConfig:
        return RunnerConfig(
            model_name=self.model_name,
            champion_alias=self.champion_alias,
            challenger_alias=self.challenger_alias,
            holdout_fraction=self.holdout_fraction,
            parity_tolerance=self.parity_tolerance,
            reference_rows=self.reference_rows,
            train=self.train_params(),
            gate=GateConfig(
                metric=self.metric,
                margin=self.margin,
                manual_approval=self.manual_approval,
                max_recall_drop=self.max_recall_drop,
                better_f1_when_degraded=self.better_f1_when_degraded,
                max_recall_drop_when_degraded=self.max_recall_drop_when_degraded,
            ),
            code_revision=code_revision,
            min_positives=self.min_positives,
            min_holdout_positives=self.min_holdout_positives,
            refused_retries=self.refused_retries,
            keep_idle_versions=self.keep_idle_versions,
        )
