"""Settings of the registry service (environment prefix ``DRIFTLINE_REGISTRY_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, root_validator, validator

from driftline.kit.settings import (
    GrpcServerSettings,
    KafkaSettings,
    LogSettings,
    MetricsSettings,
)
from driftline.services.registry.security import validate_token_names

MIB = 1024 * 1024


class Settings(GrpcServerSettings):
    """Everything the registry reads from its environment; defaults suit a laptop."""

    port: int = Field(15051, description="gRPC port (REGISTRY_GRPC_PORT in .env).")
    max_message_bytes: int = Field(
        64 * MIB,
        description="Largest gRPC message; must exceed max_artifact_bytes plus the reference sample.",
    )
    token: SecretStr | None = Field(
        None,
        description=(
            "Bearer token that authorises writes (recorded in the audit log as actor 'default'). "
            "Unset and no `tokens`: every write is refused with UNAUTHENTICATED."
        ),
    )
    tokens: dict[str, SecretStr] = Field(
        default_factory=dict,
        description='Named write tokens, JSON {"actor": "token"}; the audit log records the actor.',
    )
    lock_breakers: list[str] = Field(
        default_factory=list,
        description=(
            'Token names, JSON ["actor", ...], that may break a deployment lock held with another '
            "token (UnlockModel with force, and a reason); empty: nobody can."
        ),
    )
    require_token_for_reads: bool = Field(
        False, description="Also demand a bearer token on read RPCs (reads are open by default)."
    )
    data_dir: Path = Field(
        Path(".run/registry"),
        description="Where the SQLite database and the artifact store live unless set apart.",
    )
    database_url: str | None = Field(
        None,
        description=(
            "SQLAlchemy URL of the metadata database: sqlite:///path or "
            "postgresql+psycopg://user:password@host:port/db. Unset: SQLite in data_dir."
        ),
    )
    database_schema: str | None = Field(
        None, description="PostgreSQL schema to keep the tables in (search_path); unset: the default."
    )
    artifact_dir: Path | None = Field(
        None, description="Root of the content-addressed artifact store; unset: data_dir/artifacts."
    )
    max_artifact_bytes: int = Field(
        32 * MIB, description="Largest ONNX artifact accepted; larger uploads get RESOURCE_EXHAUSTED."
    )
    artifact_gc_interval_s: float = Field(
        3600.0,
        description=(
            "How often the registry removes stored artifacts no live version uses (those of "
            "archived versions, or left by a failed registration); 0: never."
        ),
    )
    artifact_gc_grace_s: float = Field(
        3600.0, description="An unused artifact is removed only once it was last stored this long ago."
    )
    audit_key: SecretStr | None = Field(
        None,
        description=(
            "Optional key that makes audit hashes HMAC-SHA256, so a database writer without it cannot "
            "forge a consistent chain. Set it once: changing it breaks verification of older records."
        ),
    )
    metrics_port: int = Field(9103, description="Prometheus /metrics port (REGISTRY_METRICS_PORT).")
    outbox_poll_interval_s: float = Field(
        1.0, description="How often the outbox relay looks for unpublished events when not woken."
    )
    outbox_batch_size: int = Field(100, description="Most outbox events the relay publishes at once.")
    outbox_lease_s: float = Field(
        30.0, description="How long one relay holds the publishing lease among replicas."
    )
    outbox_enabled: bool = Field(True, description="Run the relay that publishes outbox events.")
    events_topic_prefix: str = Field(
        "", description="Prefix for the model-events topic name (tests isolate themselves with it)."
    )
    kafka: KafkaSettings = Field(default_factory=KafkaSettings, description="The Kafka broker.")
    log: LogSettings = Field(default_factory=LogSettings, description="Log output.")
    metrics: MetricsSettings = Field(default_factory=MetricsSettings, description="The /metrics endpoint.")

    class Config:
        env_prefix = "DRIFTLINE_REGISTRY_"

    @validator("tokens")
    def _token_names_are_actor_names(cls, tokens: dict[str, SecretStr]) -> dict[str, SecretStr]:  # noqa: N805
        validate_token_names(tokens)
        return tokens

    @root_validator(skip_on_failure=True)
    def _lock_breakers_hold_tokens(cls, values: dict[str, Any]) -> dict[str, Any]:  # noqa: N805
        unknown = sorted(set(values["lock_breakers"]) - set(_write_tokens(values["token"], values["tokens"])))
        if unknown:
            raise ValueError(f"lock_breakers must name configured tokens (TOKEN is 'default'): {unknown}")
        return values

    def resolved_database_url(self) -> str:
        """The configured URL, or SQLite under data_dir."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'registry.db').resolve()}"

    def resolved_artifact_dir(self) -> Path:
        return self.artifact_dir if self.artifact_dir is not None else self.data_dir / "artifacts"

    def write_tokens(self) -> dict[str, str]:
        """Actor name -> token, the shared token included as actor 'default'."""
        return _write_tokens(self.token, self.tokens)


def _write_tokens(token: SecretStr | None, tokens: dict[str, SecretStr]) -> dict[str, str]:
    found = {actor: secret.get_secret_value() for actor, secret in tokens.items()}
    if token is not None and token.get_secret_value():
        found.setdefault("default", token.get_secret_value())
    return found
