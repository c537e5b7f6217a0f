from __future__ import annotations

import datetime
import http.client
import math
import random
import ssl
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Histogram

from driftline.kit.metrics import observe_many, serve_metrics
from driftline.kit.settings import MetricsSettings
from driftline.kit.testing import Authority, certificate_expiry

BUCKETS = (0.01, 0.5, 1, 2.5, 60, 3600)


def _samples(histogram: Histogram) -> dict[tuple[str, str], float]:
    (family,) = histogram.collect()
    return {
        (s.name, s.labels.get("le", "")): s.value for s in family.samples if not s.name.endswith("_created")
    }


def _pair() -> tuple[Histogram, Histogram]:
    registry = CollectorRegistry()
    one = Histogram("one_by_one", "reference", ["set"], buckets=BUCKETS, registry=registry).labels("a")
    many = Histogram("all_at_once", "under test", ["set"], buckets=BUCKETS, registry=registry).labels("a")
    return one, many


def test_observing_many_gives_the_samples_of_one_observe_each():
    rng = random.Random(5)
    # Every bound exactly, just either side of each, beyond the last, negative, zero, +Inf.
    amounts = [b + d for b in BUCKETS for d in (-1e-9, 0.0, 1e-9)] + [-3.0, 0.0, 7200.0, math.inf]
    amounts += [rng.expovariate(0.2) for _ in range(500)]
    one, many = _pair()
    for amount in amounts:
        one.observe(amount)
    observe_many(many, amounts[:100])
    observe_many(many, amounts[100:])
    reference, got = _samples(one), _samples(many)
    assert {le: v for (name, le), v in reference.items() if name.endswith("_bucket")} == {
        le: v for (name, le), v in got.items() if name.endswith("_bucket")
    }
    assert got[("all_at_once_count", "")] == reference[("one_by_one_count", "")] == len(amounts)
    finite = [a for a in amounts if math.isfinite(a)]
    assert one._sum.get() == math.inf == many._sum.get()  # type: ignore[attr-defined]
    one2, many2 = _pair()
    for amount in finite:
        one2.observe(amount)
    observe_many(many2, finite)
    assert many2._sum.get() == pytest.approx(one2._sum.get(), rel=1e-12)  # type: ignore[attr-defined]


def test_nan_lands_in_the_sum_only_as_with_observe_and_nothing_observed_changes_nothing():
    one, many = _pair()
    one.observe(math.nan)
    one.observe(0.2)
    observe_many(many, [math.nan, 0.2])
    observe_many(many, [])
    observe_many(many, iter(()))
    reference, got = _samples(one), _samples(many)
    assert [v for (n, _), v in sorted(reference.items()) if n.endswith("_bucket")] == [
        v for (n, _), v in sorted(got.items()) if n.endswith("_bucket")
    ]
    assert math.isnan(many._sum.get())  # type: ignore[attr-defined]
    assert got[("all_at_once_count", "")] == 1  # the count is +Inf's bucket: NaN is not in it


def test_a_histogram_without_the_expected_internals_is_observed_one_by_one():
    class Plain:
        def __init__(self) -> None:
            self.seen: list[float] = []

        def observe(self, amount: float) -> None:
            self.seen.append(amount)

    plain = Plain()
    observe_many(plain, [1.0, 2.0])  # type: ignore[arg-type]
    assert plain.seen == [1.0, 2.0]


def _scrape(url: str, context: ssl.SSLContext | None = None) -> str:
    with urllib.request.urlopen(url, timeout=10, context=context) as response:
        return response.read().decode()


def test_metrics_are_served_over_https_only_when_a_certificate_is_set(tmp_path):
    authority = Authority(tmp_path, "platform")
    served = authority.issue("svc")
    port = serve_metrics(0, MetricsSettings(tls_cert_file=served.cert, tls_key_file=served.key))
    trusting = ssl.create_default_context(cafile=str(authority.ca_file))
    body = _scrape(f"https://127.0.0.1:{port}/metrics", trusting)
    assert 'driftline_tls_certificate_expiry_timestamp_seconds{port="metrics"}' in body
    with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
        _scrape(f"http://127.0.0.1:{port}/metrics")  # plaintext is not answered
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        _scrape(f"https://127.0.0.1:{port}/metrics", ssl.create_default_context())  # untrusted CA


def test_metrics_under_mutual_tls_answer_only_a_scraper_with_a_certificate(tmp_path):
    authority = Authority(tmp_path, "platform")
    served = authority.issue("svc")
    settings = MetricsSettings(
        tls_cert_file=served.cert, tls_key_file=served.key, tls_client_ca_file=authority.ca_file
    )
    port = serve_metrics(0, settings)
    anonymous = ssl.create_default_context(cafile=str(authority.ca_file))
    with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError, http.client.HTTPException)):
        _scrape(f"https://127.0.0.1:{port}/metrics", anonymous)
    scraper = authority.issue("prometheus")
    known = ssl.create_default_context(cafile=str(authority.ca_file))
    known.load_cert_chain(scraper.cert, scraper.key)
    assert "driftline_build_info" in _scrape(f"https://127.0.0.1:{port}/metrics", known)


def test_a_metrics_certificate_renewed_in_place_serves_from_the_next_scrape(tmp_path):
    old_ca = Authority(tmp_path, "old", not_after=datetime.datetime(2031, 1, 1, tzinfo=datetime.UTC))
    new_ca = Authority(tmp_path, "new", not_after=datetime.datetime(2032, 1, 1, tzinfo=datetime.UTC))
    served = old_ca.issue("svc")
    port = serve_metrics(0, MetricsSettings(tls_cert_file=served.cert, tls_key_file=served.key))
    url = f"https://127.0.0.1:{port}/metrics"  # an address: the scraper sends no server name
    trusting_old = ssl.create_default_context(cafile=str(old_ca.ca_file))
    trusting_new = ssl.create_default_context(cafile=str(new_ca.ca_file))
    assert "driftline_build_info" in _scrape(url, trusting_old)
    renewed = new_ca.issue("svc")
    served.cert.write_bytes(renewed.cert.read_bytes())
    served.key.write_bytes(renewed.key.read_bytes())
    assert "driftline_build_info" in _scrape(url, trusting_new)  # the next scrape, the new one
    expiry = certificate_expiry("metrics")
    assert expiry == new_ca.not_after.timestamp()
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        _scrape(url, trusting_old)
