from __future__ import annotations

import math
import random

import pytest
from prometheus_client import CollectorRegistry, Histogram

from driftline.kit.metrics import observe_many

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
