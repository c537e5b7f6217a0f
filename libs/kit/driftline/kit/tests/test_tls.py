from __future__ import annotations

import datetime

import pytest
import structlog

from driftline.kit import tls as kit_tls
from driftline.kit.settings import GrpcServerSettings, MetricsSettings
from driftline.kit.testing import Authority
from driftline.kit.tls import CERTIFICATE_EXPIRY, record_certificate_expiry


def test_a_tls_port_exports_when_its_certificate_ends_and_warns_when_that_is_near(tmp_path, monkeypatch):
    not_after = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    issued = Authority(tmp_path, "platform", not_after=not_after).issue("registry")
    settings = GrpcServerSettings(tls_cert_file=issued.cert, tls_key_file=issued.key)

    def logged(now: float) -> list[tuple[str, str]]:
        with structlog.testing.capture_logs() as logs:
            # A fresh logger: the module's caches the configuration of its first use.
            monkeypatch.setattr(kit_tls, "log", structlog.get_logger(kit_tls.__name__))
            record_certificate_expiry(settings, port="grpc", now=now)
        return [(entry["event"], entry["port"]) for entry in logs]

    assert record_certificate_expiry(GrpcServerSettings(), port="grpc") is None  # plaintext
    months_before = not_after.timestamp() - 90 * 86_400
    assert record_certificate_expiry(settings, port="grpc", now=months_before) == not_after.timestamp()
    assert CERTIFICATE_EXPIRY.labels(port="grpc")._value.get() == not_after.timestamp()
    assert logged(months_before) == []
    assert logged(not_after.timestamp() - 3 * 86_400) == [("tls_certificate_expiring", "grpc")]
    assert logged(not_after.timestamp() + 60) == [("tls_certificate_expired", "grpc")]


def test_each_port_exports_its_own_certificate(tmp_path):
    early = datetime.datetime(2031, 1, 1, tzinfo=datetime.UTC)
    late = datetime.datetime(2032, 1, 1, tzinfo=datetime.UTC)
    grpc_pair = Authority(tmp_path, "a", not_after=early).issue("svc")
    metrics_pair = Authority(tmp_path, "b", not_after=late).issue("svc")
    record_certificate_expiry(
        GrpcServerSettings(tls_cert_file=grpc_pair.cert, tls_key_file=grpc_pair.key), port="grpc"
    )
    record_certificate_expiry(
        MetricsSettings(tls_cert_file=metrics_pair.cert, tls_key_file=metrics_pair.key), port="metrics"
    )
    assert CERTIFICATE_EXPIRY.labels(port="grpc")._value.get() == early.timestamp()
    assert CERTIFICATE_EXPIRY.labels(port="metrics")._value.get() == late.timestamp()


@pytest.mark.parametrize("cls", [GrpcServerSettings, MetricsSettings])
def test_a_certificate_needs_its_key_and_a_client_ca_needs_both(tmp_path, cls):
    pair = Authority(tmp_path, "platform").issue("svc")
    prefix = cls.__config__.env_prefix
    with pytest.raises(ValueError, match=f"{prefix}TLS_CERT_FILE and {prefix}TLS_KEY_FILE go together"):
        cls(tls_cert_file=pair.cert)
    with pytest.raises(ValueError, match=f"{prefix}TLS_CLIENT_CA_FILE needs"):
        cls(tls_client_ca_file=pair.cert)
    assert cls().tls_files() is None
    assert cls().tls_mode == "off"
    on = cls(tls_cert_file=pair.cert, tls_key_file=pair.key)
    assert on.tls_files() == {"cert_file": str(pair.cert), "key_file": str(pair.key)}
    assert on.tls_mode == "on"
    mutual = cls(tls_cert_file=pair.cert, tls_key_file=pair.key, tls_client_ca_file=pair.cert)
    assert mutual.tls_files() == {
        "cert_file": str(pair.cert), "key_file": str(pair.key), "client_ca_file": str(pair.cert)
    }  # fmt: skip
    assert mutual.tls_mode == "mutual"
