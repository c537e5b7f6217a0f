"""What the platform watches of the certificates its ports serve with."""

from __future__ import annotations

import time

import structlog
from cryptography import x509
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


def record_certificate_expiry(
    settings: ServerTlsSettings, *, port: str, now: float | None = None
) -> float | None:
    """Export when the certificate ``port`` serves with (the first of its chain) stops being
    valid, and warn at start when that is near or past; None when the port serves plaintext.
    Certificates are read at start: a renewed one takes a restart."""
    if settings.tls_cert_file is None:
        return None
    certificate = x509.load_pem_x509_certificate(settings.tls_cert_file.read_bytes())
    expires = certificate.not_valid_after_utc.timestamp()
    CERTIFICATE_EXPIRY.labels(port=port).set(expires)
    left_s = expires - (time.time() if now is None else now)
    if left_s < CERTIFICATE_WARNING_S:
        log.warning(
            "tls_certificate_expiring" if left_s > 0 else "tls_certificate_expired",
            port=port,
            file=str(settings.tls_cert_file),
            not_after=certificate.not_valid_after_utc.isoformat(),
            days_left=round(left_s / 86_400, 1),
        )
    return expires
