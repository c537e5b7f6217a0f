"""The certificates the platform's ports serve with: what it watches of them (when they end), and
how a renewed one takes effect without a restart."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from prometheus_client import Gauge

from driftline.kit.settings import ServerTlsSettings

log = structlog.get_logger(__name__)

#: A certificate closer than this to its end is logged at start; the alert uses the same horizon.
CERTIFICATE_WARNING_S = 14 * 86_400

CERTIFICATE_EXPIRY = Gauge(
    "driftline_tls_certificate_expiry_timestamp_seconds",
    "When the TLS certificate a port serves with stops being valid (Unix time); label port: grpc or metrics.",
    ["port"],
)


def _not_after(certificate_pem: bytes, *, port: str, file: Path) -> float:
    """When the first certificate of the chain ends; logged when that is near or past."""
    certificate = x509.load_pem_x509_certificate(certificate_pem)
    expires = certificate.not_valid_after_utc.timestamp()
    left_s = expires - time.time()
    if left_s < CERTIFICATE_WARNING_S:
        log.warning(
            "tls_certificate_expiring" if left_s > 0 else "tls_certificate_expired",
            port=port,
            file=str(file),
            not_after=certificate.not_valid_after_utc.isoformat(),
            days_left=round(left_s / 86_400, 1),
        )
    return expires


@dataclass(frozen=True)
class Certificate:
    """One consistent read of a server's PEM files."""

    cert: bytes
    key: bytes
    #: The CA bundle client certificates must chain to (mutual TLS); None: no client certificates.
    client_ca: bytes | None
    not_after: float


class CertificateFiles:
    """A server's PEM files (``tls_cert_file``, ``tls_key_file``, ``tls_client_ca_file``), read
    again once one of them changes on disk (size or modification time): certificates renewed in
    place take effect on the next handshake, without a restart.

    A certificate that does not match its key (the certificate rewritten, the key not yet) is not
    taken: the last good files stay in use, ``tls_certificate_not_reloaded`` is logged once per
    change, and the next change is tried again. Files that are wrong at start raise, as before.
    """

    def __init__(self, settings: ServerTlsSettings, *, port: str) -> None:
        if settings.tls_cert_file is None or settings.tls_key_file is None:
            raise ValueError("CertificateFiles needs tls_cert_file and tls_key_file")
        self._paths = [
            p for p in (settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file) if p
        ]
        self._cert_file, self._key_file = settings.tls_cert_file, settings.tls_key_file
        self._ca_file = settings.tls_client_ca_file
        self.port = port
        self._lock = threading.Lock()
        self._stamp = self._stamp_now()
        self.current = self._read()
        self._refused: tuple[tuple[int, int], ...] | None = None

    def _stamp_now(self) -> tuple[tuple[int, int], ...]:
        stats = [path.stat() for path in self._paths]
        return tuple((s.st_mtime_ns, s.st_size) for s in stats)

    def _read(self) -> Certificate:
        cert, key = self._cert_file.read_bytes(), self._key_file.read_bytes()
        client_ca = self._ca_file.read_bytes() if self._ca_file else None
        public = x509.load_pem_x509_certificate(cert).public_key()
        private = load_pem_private_key(key, password=None)
        spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if public.public_bytes(*spki) != private.public_key().public_bytes(*spki):
            raise ValueError(f"{self._cert_file} does not match the key in {self._key_file}")
        if client_ca is not None:
            x509.load_pem_x509_certificates(client_ca)  # raises on a file that holds none
        not_after = _not_after(cert, port=self.port, file=self._cert_file)
        return Certificate(cert, key, client_ca, not_after)

    def latest(self) -> Certificate:
        """The files in use: read again when they changed and agree, else the last good read (a
        stat of each file: cheap enough for every new connection). Several users share one
        instance (a server's handshakes and its scrapes), so each compares what it gets with
        what it last used rather than rely on being the one that saw the change."""
        with self._lock:
            try:
                stamp = self._stamp_now()
            except OSError:  # a file replaced by rename: here again on the next call
                return self.current
            if stamp == self._stamp or stamp == self._refused:
                return self.current
            try:
                loaded = self._read()
            except (OSError, ValueError, TypeError) as err:  # TypeError: an encrypted key
                self._refused = stamp
                log.warning("tls_certificate_not_reloaded", port=self.port, error=str(err))
                return self.current
            self._stamp, self.current = stamp, loaded
            log.info("tls_certificate_reloaded", port=self.port, file=str(self._cert_file))
            return loaded

    def export_expiry(self) -> None:
        """Export the end of the certificate in use, the files checked at each scrape: a renewal
        shows before the next connection, and for a port another process serves and reloads
        alike (inference's data plane)."""

        def not_after() -> float:
            return self.latest().not_after

        CERTIFICATE_EXPIRY.labels(port=self.port).set_function(not_after)
