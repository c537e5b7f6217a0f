"""Settings of the inference service (env prefix ``DRIFTLINE_INFERENCE_``)."""

from __future__ import annotations

from pydantic import BaseSettings, Field, root_validator

from driftline.featurestore.online import DEFAULT_KEY_PREFIX
from driftline.featurestore.vectors import StalenessPolicy
from driftline.kit.settings import (
    GrpcServerSettings,
    KafkaSettings,
    LogSettings,
    MetricsSettings,
    RedisSettings,
    RegistryTlsSettings,
)
from driftline.services.inference.runtime import Device


class InferenceGrpcSettings(GrpcServerSettings):
    """The gRPC server serving driftline.inference.v1 and KServe v2 on one port."""

    port: int = Field(15052, description="Port the server binds (INFERENCE_GRPC_PORT).")
    max_message_bytes: int = Field(
        4 * 1024 * 1024,
        description="Largest request or response accepted; larger ones get RESOURCE_EXHAUSTED.",
    )
    default_deadline_s: float = Field(2.0, description="Deadline for calls whose client sets none.")

    class Config:
        env_prefix = "DRIFTLINE_INFERENCE_"


class Settings(BaseSettings):
    """Everything the inference service reads from its environment."""

    grpc: InferenceGrpcSettings = Field(default_factory=InferenceGrpcSettings, description="gRPC server.")
    kafka: KafkaSettings = Field(
        default_factory=KafkaSettings, description="Broker for model events and logs."
    )
    redis: RedisSettings = Field(default_factory=RedisSettings, description="Online feature store.")
    log: LogSettings = Field(default_factory=LogSettings, description="Log format and level.")
    metrics: MetricsSettings = Field(default_factory=MetricsSettings, description="/metrics endpoint.")

    metrics_port: int = Field(9104, description="Port of /metrics (INFERENCE_METRICS_PORT); 0 picks one.")
    model_name: str = Field("fraud", description="Registered model this server serves.")
    alias: str = Field("champion", description="Alias whose version answers requests.")
    challenger_alias: str = Field(
        "challenger",
        description="Alias of the shadow or canary model; used only when shadow or canary is on.",
    )
    registry_address: str = Field(
        "127.0.0.1:15051",
        description="host:port of the registry's gRPC API.",
        env=["DRIFTLINE_INFERENCE_REGISTRY_ADDRESS", "DRIFTLINE_REGISTRY_ADDRESS"],
    )
    registry_token: str = Field(
        "driftline-dev-token",
        description="Bearer token for the registry.",
        env=["DRIFTLINE_INFERENCE_REGISTRY_TOKEN", "DRIFTLINE_REGISTRY_TOKEN"],
    )
    registry_tls: RegistryTlsSettings = Field(
        default_factory=RegistryTlsSettings, description="TLS to the registry, when it serves TLS."
    )
    device: Device = Field(Device.AUTO, description='"auto" (CUDA if it works, else CPU), "cpu" or "cuda".')
    intra_op_threads: int = Field(1, description="ONNX Runtime threads per model run (1-2 for small models).")
    max_batch_size: int = Field(64, description="Most rows one model run takes.")
    max_queue_delay_us: int = Field(
        0,
        description="Longest a request waits for a batch to fill, in µs. 0: batch only what queued up "
        "while the model was busy (lowest latency; batches still fill under load).",
    )
    queue_capacity: int = Field(
        2048, description="Requests that may wait for a batch; more get RESOURCE_EXHAUSTED."
    )
    batch_concurrency: int = Field(1, description="Batches that may run at the same time per model.")
    staleness_policy: StalenessPolicy = Field(
        StalenessPolicy.SERVE,
        description='Stale features: "serve" them, use the "default", or "fail" the call.',
    )
    decision_threshold: float = Field(
        0.5, description="Score at or above which the label is 1 (a version's decision_threshold param wins)."
    )
    shadow: bool = Field(False, description="Score the challenger on every request, log it, never return it.")
    canary_share: float = Field(
        0.0, description="Share of entities (sticky by hash) served by the challenger."
    )
    max_entities_per_call: int = Field(1024, description="Most entities one PredictBatch may ask for.")
    prediction_log_capacity: int = Field(
        10_000, description="Prediction-log records buffered before new ones are dropped (and counted)."
    )
    prediction_log_linger_ms: int = Field(
        50,
        description="How long prediction-log records gather before they are sent: in the logger's "
        "buffer (fewer wake-ups of its thread), then in the producer (fewer, bigger requests).",
    )
    feature_set: str = Field(
        "card_transactions.v1", description="Feature set (name.vN) read from the online store."
    )
    warmup_batch_sizes: list[int] = Field(
        [1, 64], description="Batch sizes each new model runs before it serves."
    )
    warmup_runs: int = Field(3, description="Runs per warm-up batch size.")
    startup_retry_s: float = Field(2.0, description="Pause between attempts to load the champion at start.")
    gc_freeze: bool = Field(
        True,
        description="Once the first champion is warm (before SERVING), exempt every object alive "
        "then from garbage collection (gc.freeze): full collections of that heap stalled requests "
        "for 50-90 ms.",
    )
    gc_young_threshold: int = Field(
        10_000,
        description="Allocations between collections of the youngest generation, from the first "
        "champion on (Python's default: 700); 0 keeps Python's.",
    )
    data_plane: bool = Field(
        True,
        description="Serve on the compiled data plane (ADR 0011; make dataplane builds it): it "
        "listens on the gRPC port with both APIs and health, and this process is its control plane "
        "(model events, registry, loads). False: this process serves them itself.",
    )
    data_plane_metrics_port: int = Field(
        9114,
        description="Port of the data plane's /metrics (INFERENCE_DATA_PLANE_METRICS_PORT); 0 picks one.",
    )
    model_events_group_prefix: str = Field(
        "inference", description="Prefix of this instance's own consumer group (a unique suffix is added)."
    )
    online_store_key_prefix: str = Field(
        DEFAULT_KEY_PREFIX,
        env="DRIFTLINE_FEATURES_KEY_PREFIX",
        description="Prefix of the online store's Redis keys. The features service's variable, read "
        "here too: the writer and the reader of the store cannot disagree.",
    )

    class Config:
        env_prefix = "DRIFTLINE_INFERENCE_"

    @root_validator(skip_on_failure=True)
    def _one_challenger_mode(cls, values: dict) -> dict:  # noqa: N805 - pydantic validator
        if values.get("shadow") and values.get("canary_share", 0) > 0:
            raise ValueError("shadow and canary_share > 0 are exclusive")
        if not 0 <= values.get("canary_share", 0) <= 1:
            raise ValueError("canary_share must be within [0, 1]")
        return values
