"""Test helpers: in-memory fakes for unit tests, and helpers for integration tests that talk to
the real broker (they never replace it)."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis
from confluent_kafka import Consumer, Message, TopicPartition
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import REGISTRY

from driftline.kit.kafka import Headers, admin_client
from driftline.kit.settings import KafkaSettings, RedisSettings
from driftline.kit.tls import CERTIFICATE_EXPIRY
from driftline.kit.topics import Topic, ensure_topics


@dataclass
class FakeMessage:
    """Quacks like ``confluent_kafka.Message`` for handlers under unit test."""

    _value: bytes | None
    _key: bytes | None = None
    _topic: str = "test.topic.v1"
    _partition: int = 0
    _offset: int = 0
    _headers: Headers = field(default_factory=list)
    _timestamp_ms: int = 0

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> bytes | None:
        return self._key

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def headers(self) -> Headers:
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        return (1, self._timestamp_ms)

    def error(self) -> None:
        return None


def fake_messages(values: Iterable[bytes], topic: str = "test.topic.v1") -> list[FakeMessage]:
    return [FakeMessage(v, _topic=topic, _offset=i) for i, v in enumerate(values)]


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.2) -> None:
    """Poll ``condition`` until it holds; fail the test with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def free_port() -> int:
    """A loopback TCP port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class ServerTls:
    """PEM files of a test server that serves TLS only, demanding client certificates its CA signed."""

    cert_file: Path
    key_file: Path
    ca_file: Path


@contextmanager
def redis_server(
    port: int,
    data_dir: Path,
    *,
    timeout_s: float = 20.0,
    tls: ServerTls | None = None,
    plaintext_port: int | None = None,
) -> Iterator[redis.Redis]:
    """A redis-server of the test's own on ``port`` (no password, no persistence), yielding a
    client of it: for tests that take Redis away from a service and give it back, while the
    stack's Redis serves every other test. With ``tls`` the port serves TLS only (mutual TLS),
    and the client presents the server's own certificate; ``plaintext_port`` then serves the same
    data in plaintext beside it (what a benchmark of TLS compares with)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (make setup installs it)")
    args = [binary, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(data_dir)]
    if tls is None:
        args += ["--port", str(port)]
        client = redis.Redis(port=port)
    else:
        args += ["--port", str(plaintext_port or 0), "--tls-port", str(port), "--tls-auth-clients", "yes"]
        args += ["--tls-cert-file", str(tls.cert_file), "--tls-key-file", str(tls.key_file)]
        args += ["--tls-ca-cert-file", str(tls.ca_file)]
        client = redis.Redis(
            host="127.0.0.1",
            port=port,
            ssl=True,
            ssl_ca_certs=str(tls.ca_file),
            ssl_certfile=str(tls.cert_file),
            ssl_keyfile=str(tls.key_file),
        )
    server = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {port} did not start") from None
                time.sleep(0.05)
        yield client
    finally:
        client.close()
        server.terminate()
        server.wait(timeout=timeout_s)


@contextmanager
def tls_redis_server(folder: Path) -> Iterator[RedisSettings]:
    """A redis-server of the test's own serving mutual TLS only (``redis_server`` with ``tls``),
    and the settings of a client with a certificate its authority signed."""
    authority = Authority(folder, "redis")
    server, client = authority.issue("server"), authority.issue("client")
    port = free_port()
    with redis_server(port, folder, tls=ServerTls(server.cert, server.key, authority.ca_file)):
        yield RedisSettings(
            url=f"rediss://127.0.0.1:{port}/0",
            tls_ca_file=authority.ca_file,
            tls_cert_file=client.cert,
            tls_key_file=client.key,
            socket_timeout_s=1.0,
        )


#: Error replies of a Redis that cannot serve right now (none is a message's fault): what
#: ``driftline.kit.redis_clients.REDIS_OUTAGE`` must treat as an outage.
REDIS_CANNOT_SERVE_REPLIES = (
    "OOM command not allowed when used memory > 'maxmemory'.",
    "READONLY You can't write against a read only replica.",
    "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
    "TRYAGAIN Multiple keys request during rehashing of slot",
    "CLUSTERDOWN The cluster is down",
    "LOADING Redis is loading the dataset in memory",
    "NOPERM User driftline has no permissions to run the 'set' command",
)


@dataclass(frozen=True)
class CertificatePair:
    cert: Path
    key: Path


class Authority:
    """A throw-away certificate authority, for tests and benchmarks of TLS: its certificate and
    those it issues are PEM files in ``folder`` (keys unencrypted PKCS#8), valid until
    ``not_after`` (an hour from now by default)."""

    def __init__(self, folder: Path, name: str, *, not_after: datetime.datetime | None = None) -> None:
        self.folder = folder
        self.name = name
        self.not_after = not_after or datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        certificate = (
            self._builder(self._subject, self._key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.ca_file = folder / f"{name}-ca.pem"
        self.ca_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))

    def _builder(self, subject: x509.Name, public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC))
            .not_valid_after(self.not_after)
        )

    def issue(self, common_name: str) -> CertificatePair:
        """A certificate for ``common_name`` that also names 127.0.0.1 and localhost."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        certificate = (
            self._builder(subject, key.public_key())
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        pair = CertificatePair(
            self.folder / f"{self.name}-{common_name}.pem", self.folder / f"{self.name}-{common_name}.key"
        )
        pair.cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        pair.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return pair


def certificate_expiry(port: str) -> float | None:
    """``driftline_tls_certificate_expiry_timestamp_seconds{port}`` as a scrape of this process
    reads it (a port that watches its files exports it through a function, not a set value)."""
    return REGISTRY.get_sample_value(CERTIFICATE_EXPIRY._name, {"port": port})


def unique_prefix() -> str:
    """A topic/group/key prefix that no other test run shares."""
    return f"t{uuid.uuid4().hex[:10]}."


def create_test_topics(settings: KafkaSettings, topics: Sequence[Topic]) -> None:
    ensure_topics(settings, [t for topic in topics for t in topic.with_dead_letter()])


def delete_topics(settings: KafkaSettings, topics: Sequence[Topic], *, wait_s: float = 30.0) -> None:
    """Delete the topics and their dead-letter topics, and wait (up to ``wait_s``) until the
    broker's metadata no longer lists them: a deletion the controller accepted can still show
    for a moment, and a test that checks or recreates a topic right after must not see it."""
    names = {t.name for topic in topics for t in topic.with_dead_letter()}
    admin = admin_client(settings)
    try:
        for future in admin.delete_topics(sorted(names), operation_timeout=30).values():
            try:
                future.result()
            except Exception:  # noqa: BLE001 - cleanup of a topic that is already gone
                continue
        deadline = time.monotonic() + wait_s
        while names & set(admin.list_topics(timeout=10).topics) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        admin.poll(0)


def written(settings: KafkaSettings, topic: Topic) -> int:
    """Messages written to ``topic`` so far, over all its partitions (the sum of its end offsets):
    what a reader that stops at an expected count cannot see, surplus copies included."""
    consumer = Consumer({**settings.connection(), "group.id": unique_prefix()})
    try:
        ends = (
            consumer.get_watermark_offsets(TopicPartition(topic.name, p), timeout=10)
            for p in range(topic.partitions)
        )
        return sum(high for _, high in ends)
    finally:
        consumer.close()


def consume(settings: KafkaSettings, topic: str, *, expected: int, timeout_s: float = 30.0) -> list[Message]:
    """Read a topic from the beginning until ``expected`` messages arrived or the time is up."""
    consumer = Consumer(
        {
            **settings.connection(),
            "group.id": f"reader-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([topic])
    messages: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(messages) < expected and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=1000, timeout=0.5):
                if message.error() is None:
                    messages.append(message)
    finally:
        consumer.close()
    return messages
