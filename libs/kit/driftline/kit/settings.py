"""Typed settings shared by several services.

Each component reads its own environment prefix (``DRIFTLINE_KAFKA_``, ``DRIFTLINE_REDIS_`` ...).
Services compose these classes into their own ``Settings``; nothing else reads ``os.environ``.
Defaults work on a laptop against the stack that ``make up`` starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseSettings, Field, FilePath, SecretStr, root_validator, validator

#: How a Kafka client talks to the brokers (librdkafka's ``security.protocol``).
KafkaSecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_SSL", "SASL_PLAINTEXT"]
#: The SASL mechanisms the platform's clients support; all need no library beyond the clients'.
KafkaSaslMechanism = Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def given_paths(files: dict[str, Path | None]) -> dict[str, str]:
    """The files that are set, as text under their option names: how a client library takes them."""
    return {name: str(path) for name, path in files.items() if path is not None}


def require_pair(values: dict[str, Any], prefix: str, cert: str, key: str) -> None:
    """A certificate setting and its key's are set together or not at all (ValueError naming
    both variables): the check of every settings class that takes a certificate."""
    if (values[cert] is None) != (values[key] is None):
        raise ValueError(f"{prefix}{cert.upper()} and {prefix}{key.upper()} go together")


def known_log_level(value: str) -> str:
    """``value`` as a level name the standard library knows (any case); ValueError otherwise.
    The validator of every setting that names a log level."""
    level = value.upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"unknown level {value!r}; use one of {', '.join(LOG_LEVELS)}")
    return level


class KafkaSettings(BaseSettings):
    """How to reach the Kafka broker."""

    bootstrap_servers: str = Field(
        "127.0.0.1:19092", description="Comma-separated host:port list of brokers."
    )
    client_id: str = Field("driftline", description="Client id reported to the broker.")
    delivery_timeout_ms: int = Field(
        120_000,
        description="How long a producer retries one message before reporting failure.",
    )
    session_timeout_ms: int = Field(
        10_000, description="Consumer group session timeout; a dead consumer is evicted after it."
    )
    poll_timeout_s: float = Field(0.5, description="Longest a consumer poll blocks.")
    batch_size: int = Field(
        500, description="Most messages a consumer loop handles at a time (one commit per batch)."
    )
    max_in_flight_batches: int = Field(
        4,
        description=(
            "Batches a consumer loop may have sent but not yet seen acknowledged; it handles the next "
            "batch while earlier ones are in flight, and commits each only once all its outputs are "
            "acknowledged, in order. 1 waits for every batch before consuming the next."
        ),
        ge=1,
    )
    security_protocol: KafkaSecurityProtocol = Field(
        "PLAINTEXT",
        description=(
            "How clients talk to the brokers: PLAINTEXT (fit for 127.0.0.1, not for a network), SSL "
            "(TLS; mutual TLS with ssl_cert_file), SASL_SSL (a SASL login over TLS) or SASL_PLAINTEXT."
        ),
    )
    ssl_ca_file: FilePath | None = Field(
        None, description="PEM CA bundle the brokers' certificates must chain to; unset: the system's."
    )
    ssl_cert_file: FilePath | None = Field(
        None, description="PEM certificate presented to brokers that ask for one (mutual TLS)."
    )
    ssl_key_file: FilePath | None = Field(None, description="PEM private key of ssl_cert_file.")
    sasl_mechanism: KafkaSaslMechanism = Field(
        "SCRAM-SHA-512", description="SASL mechanism: SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN."
    )
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(None, description="SASL password of sasl_username.")

    @root_validator(skip_on_failure=True)
    def _security_is_whole(cls, values: dict[str, Any]) -> dict[str, Any]:  # noqa: N805
        protocol = values["security_protocol"]
        p = "DRIFTLINE_KAFKA_"
        require_pair(values, p, "ssl_cert_file", "ssl_key_file")
        if "SSL" not in protocol:
            named = [n for n in ("ssl_ca_file", "ssl_cert_file") if values[n] is not None]
            if named:
                raise ValueError(f"{p}{named[0].upper()} needs {p}SECURITY_PROTOCOL SSL or SASL_SSL")
        sasl = protocol.startswith("SASL_")
        if sasl and (not values["sasl_username"] or values["sasl_password"] is None):
            raise ValueError(f"{p}SECURITY_PROTOCOL {protocol} needs {p}SASL_USERNAME and {p}SASL_PASSWORD")
        if not sasl and (values["sasl_username"] or values["sasl_password"] is not None):
            raise ValueError(
                f"{p}SASL_USERNAME and {p}SASL_PASSWORD need {p}SECURITY_PROTOCOL SASL_SSL or SASL_PLAINTEXT"
            )
        return values

    @property
    def uses_ssl(self) -> bool:
        return "SSL" in self.security_protocol

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    def connection(self) -> dict[str, str]:
        """The librdkafka properties that say where the brokers are and how to reach them
        (address, TLS, SASL): what every client of the platform starts from. Plain text only, so a
        client outside Python (inference's data plane) gets the same ones."""
        config = {"bootstrap.servers": self.bootstrap_servers, "security.protocol": self.security_protocol}
        if self.uses_ssl:
            files = {
                "ssl.ca.location": self.ssl_ca_file,
                "ssl.certificate.location": self.ssl_cert_file,
                "ssl.key.location": self.ssl_key_file,
            }
            config.update(given_paths(files))
        if self.uses_sasl and self.sasl_password is not None:
            config["sasl.mechanisms"] = self.sasl_mechanism
            config["sasl.username"] = str(self.sasl_username)
            config["sasl.password"] = self.sasl_password.get_secret_value()
        return config

    class Config:
        env_prefix = "DRIFTLINE_KAFKA_"


class RedisSettings(BaseSettings):
    """How to reach Redis, the online feature store and de-duplication memory."""

    url: str = Field(
        "redis://driftline:driftline-dev@127.0.0.1:16379/0",
        description="redis:// URL with the ACL user and password; rediss:// for TLS.",
    )
    socket_timeout_s: float = Field(2.0, description="Per-command socket timeout.")
    retries: int = Field(
        3, description="Retries of a command that met a dropped connection or a timeout, each on a new one."
    )
    retry_backoff_base_s: float = Field(0.01, description="First wait before a retry; doubles per retry.")
    retry_backoff_cap_s: float = Field(0.5, description="Longest wait before a retry.")
    tls_ca_file: FilePath | None = Field(
        None,
        description=(
            "PEM CA bundle the server's certificate must chain to (a rediss:// URL); unset: the system's."
        ),
    )
    tls_cert_file: FilePath | None = Field(
        None, description="PEM client certificate, for a server that demands one (tls-auth-clients)."
    )
    tls_key_file: FilePath | None = Field(None, description="PEM private key of tls_cert_file.")

    @root_validator(skip_on_failure=True)
    def _tls_is_whole(cls, values: dict[str, Any]) -> dict[str, Any]:  # noqa: N805
        p = "DRIFTLINE_REDIS_"
        require_pair(values, p, "tls_cert_file", "tls_key_file")
        named = [n for n in ("tls_ca_file", "tls_cert_file") if values[n] is not None]
        if named and not str(values["url"]).startswith("rediss://"):
            raise ValueError(f"{p}{named[0].upper()} needs a rediss:// {p}URL")
        return values

    @property
    def uses_tls(self) -> bool:
        return self.url.startswith("rediss://")

    def tls_options(self) -> dict[str, str]:
        """redis-py's TLS options of these settings (none for a redis:// URL): the CA and client
        certificate files. The server's certificate and host name are always verified."""
        files = {
            "ssl_ca_certs": self.tls_ca_file,
            "ssl_certfile": self.tls_cert_file,
            "ssl_keyfile": self.tls_key_file,
        }
        return given_paths(files)

    class Config:
        env_prefix = "DRIFTLINE_REDIS_"


class LogSettings(BaseSettings):
    """Logging output."""

    format: Literal["json", "console"] = Field(
        "json", description='"json" for deployments, "console" for a terminal.'
    )
    level: str = Field("INFO", description="Lowest level written: DEBUG, INFO, WARNING, ERROR, CRITICAL.")

    _a_known_level = validator("level", allow_reuse=True)(known_log_level)

    class Config:
        env_prefix = "DRIFTLINE_LOG_"


class ServerTlsSettings(BaseSettings):
    """The TLS of a port a service serves: its certificate and key, and the CA that clients'
    certificates must chain to under mutual TLS. Subclasses set the environment prefix."""

    tls_cert_file: FilePath | None = Field(
        None,
        description=(
            "PEM certificate chain the server presents. Set with tls_key_file, the port serves TLS "
            "only; unset, plaintext (fit for 127.0.0.1, not for a network)."
        ),
    )
    tls_key_file: FilePath | None = Field(None, description="PEM private key of tls_cert_file.")
    tls_client_ca_file: FilePath | None = Field(
        None,
        description="PEM CA bundle: when set, clients must present a certificate it signed (mutual TLS).",
    )

    @root_validator(skip_on_failure=True)
    def _tls_is_whole(cls, values: dict[str, Any]) -> dict[str, Any]:  # noqa: N805
        prefix = str(cls.__config__.env_prefix).upper()
        require_pair(values, prefix, "tls_cert_file", "tls_key_file")
        if values["tls_client_ca_file"] is not None and values["tls_cert_file"] is None:
            raise ValueError(
                f"{prefix}TLS_CLIENT_CA_FILE needs {prefix}TLS_CERT_FILE and {prefix}TLS_KEY_FILE"
            )
        return values

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None

    @property
    def tls_mode(self) -> str:
        """ "off", "on", or "mutual": what start-up logs say of the port."""
        return "mutual" if self.tls_client_ca_file else "on" if self.tls else "off"

    def tls_files(self) -> dict[str, str] | None:
        """The set files as ``cert_file``, ``key_file``, ``client_ca_file``; None without TLS."""
        if not self.tls:
            return None
        return given_paths(
            {
                "cert_file": self.tls_cert_file,
                "key_file": self.tls_key_file,
                "client_ca_file": self.tls_client_ca_file,
            }
        )


class MetricsSettings(ServerTlsSettings):
    """The Prometheus /metrics endpoint of a service (and of inference's data plane)."""

    host: str = Field("127.0.0.1", description="Address the /metrics endpoint binds.")
    enabled: bool = Field(True, description="Serve /metrics at all.")

    class Config:
        env_prefix = "DRIFTLINE_METRICS_"


class GrpcServerSettings(ServerTlsSettings):
    """A gRPC server's transport limits. Services subclass it to set their prefix and port."""

    host: str = Field("127.0.0.1", description="Address the server binds; 127.0.0.1 by default.")
    port: int = Field(50050, description="Port the server binds.")
    max_message_bytes: int = Field(
        4 * 1024 * 1024, description="Largest request or response message accepted."
    )
    default_deadline_s: float = Field(5.0, description="Deadline applied to calls whose client sets none.")
    drain_s: float = Field(10.0, description="How long SIGTERM waits for in-flight calls.")
    max_concurrent_rpcs: int = Field(
        1000, description="Calls beyond this are refused with RESOURCE_EXHAUSTED."
    )


class RegistryTlsSettings(BaseSettings):
    """How a client reaches a registry that serves TLS (environment prefix ``DRIFTLINE_REGISTRY_``)."""

    tls: bool = Field(False, description="Reach the registry over TLS (implied by ca_file).")
    ca_file: FilePath | None = Field(
        None, description="PEM CA bundle the registry's certificate must chain to; unset: the system's."
    )
    client_cert_file: FilePath | None = Field(
        None, description="PEM certificate presented to a registry that asks for one (mutual TLS)."
    )
    client_key_file: FilePath | None = Field(None, description="PEM private key of client_cert_file.")

    @root_validator(skip_on_failure=True)
    def _client_pair(cls, values: dict[str, Any]) -> dict[str, Any]:  # noqa: N805
        require_pair(values, "DRIFTLINE_REGISTRY_", "client_cert_file", "client_key_file")
        return values

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.ca_file is not None or self.client_cert_file is not None

    class Config:
        env_prefix = "DRIFTLINE_REGISTRY_"
