"""Settings of the drift service (environment prefix ``DRIFTLINE_DRIFT_``)."""

from __future__ import annotations

from pydantic import BaseSettings, Field

from driftline.kit.registry_client import RegistryClientSettings
from driftline.kit.settings import KafkaSettings, LogSettings, MetricsSettings
from driftline.services.drift.detectors import OnlineConfig, WindowConfig
from driftline.services.drift.hysteresis import HysteresisPolicy
from driftline.services.drift.monitor import MonitorConfig
from driftline.services.drift.performance import PerformancePolicy


class Settings(BaseSettings):
    """Everything the drift service reads from its environment."""

    kafka: KafkaSettings = Field(default_factory=KafkaSettings, description="Broker connection.")
    registry: RegistryClientSettings = Field(
        default_factory=RegistryClientSettings, description="Where reference samples come from."
    )
    log: LogSettings = Field(default_factory=LogSettings, description="Log format and level.")
    metrics: MetricsSettings = Field(default_factory=MetricsSettings, description="The /metrics endpoint.")
    metrics_port: int = Field(
        9105, description="Port of the Prometheus /metrics endpoint (0: any free port)."
    )
    group_id: str = Field("drift", description="Kafka consumer group of the service.")
    start_at: str = Field(
        "earliest",
        description=(
            'Where a consumer group with no committed offsets starts: "earliest" (replay what the '
            'topics hold) or "latest" (watch live traffic only, e.g. after a warm-up).'
        ),
    )
    model_name: str = Field("fraud", description="Model whose streams are watched.")
    alias: str = Field("champion", description="Alias whose version's reference sample the detectors use.")
    reference_retry_s: float = Field(
        15.0, description="Wait before asking the registry again when the reference could not be loaded."
    )
    default_decision_threshold: float = Field(
        0.5, description="Decision threshold when the version has no decision_threshold param."
    )

    # -- feature schema
    categorical_features: list[str] = Field(
        default_factory=list, description="Features tested as categorical (chi-square) whatever their values."
    )
    max_categories: int = Field(
        10, description="Integer-valued features with at most this many distinct values are categorical."
    )
    unwatched_features: list[str] | None = Field(
        None,
        description=(
            "Features no detector tests. Unset: the model's feature-set features computed over "
            "tumbling windows, whose values restart at every window boundary and so differ from "
            "the reference in any few seconds of stationary traffic; [] tests every feature."
        ),
    )

    # -- windowed tests (KS / chi-square)
    window_size: int = Field(500, description="Rows in the sliding window of the KS / chi-square tests.")
    window_step: int = Field(250, description="Rows between two windowed tests.")
    window_p_value: float = Field(
        0.001, description="Family-wise significance of one windowed test (Bonferroni over features)."
    )
    min_window_samples: int = Field(
        30, description="Fewer finite values than this make a feature's window tiny."
    )
    window_enter_after: int = Field(2, description="Consecutive drifted windows that enter DRIFT.")
    window_exit_after: int = Field(3, description="Consecutive clean windows that leave DRIFT.")

    # -- online detectors (CVM / FET)
    online_features: bool = Field(True, description="Run the online detectors on features (scores always).")
    online_ert: float = Field(
        500.0,
        description="Expected run time: rows between raw alarms of one online detector when stationary.",
    )
    online_window_sizes: list[int] = Field(
        default_factory=lambda: [10, 30], description="Test-window sizes of the online detectors."
    )
    online_n_bootstraps: int = Field(
        2500, description="Simulated streams for calibration (raised to the minimum the ERT needs)."
    )
    online_reference_size: int = Field(
        250, description="Reference rows the online detectors use (subsampled)."
    )
    online_eval_every: int = Field(50, description="Rows per online verdict.")
    online_flag_share: float = Field(
        0.5,
        description="Share of a verdict's rows the detector must flag for the verdict to be DRIFT (0: any).",
    )
    online_enter_after: int = Field(2, description="Consecutive drifted online verdicts that enter DRIFT.")
    online_exit_after: int = Field(3, description="Consecutive clean online verdicts that leave DRIFT.")
    fet_alternative: str = Field(
        "both", description='Direction of the online FET: "greater", "less" or "both".'
    )
    seed: int = Field(0, description="Seed of calibration and subsampling (reproducible thresholds).")

    report_cooldown_s: float = Field(
        300.0,
        description=(
            "Least time between two DRIFT reports of one drift episode of a detector (a new "
            "episode, after the drift was seen gone, is reported at once)."
        ),
    )

    # -- feedback join and performance
    feedback_horizon_s: float = Field(
        3600.0, description="How long predictions wait for labels, and labels for their predictions."
    )
    max_predictions: int = Field(200_000, description="Predictions kept in memory for the join, at most.")
    max_labels: int = Field(100_000, description="Labels kept in memory for the join, at most.")
    performance_window: int = Field(500, description="Joined labels the live metrics are computed over.")
    performance_min_labels: int = Field(200, description="Labels needed before a degradation can be raised.")
    degradation_metric: str = Field(
        "auc",
        description=(
            "Metric watched: accuracy, precision, recall, f1 or auc. AUC by default: with a few "
            "percent of positives, accuracy barely moves when the model stops catching them."
        ),
    )
    degradation_threshold: float = Field(0.85, description="The metric below this value is a degradation.")
    degradation_precision_floor: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description=(
            "The champion's precision below this is a degradation too (0: not watched). A model can "
            "rank well, its AUC high, and still flag many legitimate events at its decision threshold."
        ),
    )
    degradation_min_flagged: int = Field(
        10,
        ge=1,
        description=(
            "Fraud verdicts (positive decisions) in the window needed before the precision floor is "
            "judged: precision over a handful of verdicts is mostly noise."
        ),
    )
    degradation_cooldown_s: float = Field(
        300.0, description="Least time between two degradations of a version."
    )

    class Config:
        env_prefix = "DRIFTLINE_DRIFT_"

    def consumer_groups(self) -> list[str]:
        """The consumer groups this service commits offsets under."""
        return [self.group_id]

    def monitor_config(self) -> MonitorConfig:
        return MonitorConfig(
            window=WindowConfig(
                size=self.window_size,
                step=self.window_step,
                p_value=self.window_p_value,
                min_samples=self.min_window_samples,
            ),
            online=OnlineConfig(
                ert=self.online_ert,
                window_sizes=tuple(self.online_window_sizes),
                n_bootstraps=self.online_n_bootstraps,
                reference_size=self.online_reference_size,
                eval_every=self.online_eval_every,
                flag_share=self.online_flag_share,
                fet_alternative=self.fet_alternative,
                seed=self.seed,
            ),
            window_policy=HysteresisPolicy(
                enter_after=self.window_enter_after,
                exit_after=self.window_exit_after,
                cooldown_s=self.report_cooldown_s,
            ),
            online_policy=HysteresisPolicy(
                enter_after=self.online_enter_after,
                exit_after=self.online_exit_after,
                cooldown_s=self.report_cooldown_s,
            ),
            categorical=frozenset(self.categorical_features),
            max_categories=self.max_categories,
            unwatched=None if self.unwatched_features is None else frozenset(self.unwatched_features),
            online_features=self.online_features,
        )

    def performance_policy(self) -> PerformancePolicy:
        return PerformancePolicy(
            window=self.performance_window,
            min_labels=self.performance_min_labels,
            metric=self.degradation_metric,
            threshold=self.degradation_threshold,
            cooldown_s=self.degradation_cooldown_s,
            min_flagged=self.degradation_min_flagged,
            also=(("precision", self.degradation_precision_floor),)
            if self.degradation_precision_floor
            else (),
        )
