from __future__ import annotations

from datetime import timedelta

import pytest

from driftline.featurestore.definitions import (
    TRANSACTION_FEATURES,
    Aggregation,
    FeatureSet,
    Window,
    WindowType,
    feature_set_by_key,
)
from driftline.featurestore.testing import feature
from driftline.kit.topics import TRANSACTIONS_CLEAN

S = timedelta(seconds=1)


def test_sliding_window_starts_exclusive_one_length_back() -> None:
    assert Window.sliding(10 * S).start(121.0) == (111.0, False)


def test_tumbling_window_starts_at_the_aligned_boundary() -> None:
    assert Window.tumbling(60 * S).start(121.0) == (120.0, True)
    assert Window.tumbling(60 * S).start(119.5) == (60.0, True)


def test_hopping_window_is_the_earliest_started_window_holding_t() -> None:
    # Windows [k*10, k*10 + 30): at t=121 the ones starting at 100, 110, 120 hold it; 100 is first.
    assert Window.hopping(30 * S, 10 * S).start(121.0) == (100.0, True)
    assert Window.hopping(30 * S, 10 * S).start(120.0) == (100.0, True)
    assert Window.hopping(30 * S, 10 * S).start(129.99) == (100.0, True)
    assert Window.hopping(30 * S, 10 * S).start(130.0) == (110.0, True)


def test_hopping_window_needs_a_step_no_longer_than_its_length() -> None:
    with pytest.raises(ValueError, match="step"):
        Window(WindowType.HOPPING, 10 * S, 20 * S)
    with pytest.raises(ValueError, match="step"):
        Window(WindowType.HOPPING, 10 * S)
    with pytest.raises(ValueError, match="no step"):
        Window(WindowType.SLIDING, 10 * S, S)


def test_feature_set_rejects_duplicate_names() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        FeatureSet(
            name="x",
            version=1,
            entity="card_id",
            source=TRANSACTIONS_CLEAN,
            features=(
                feature("a", Aggregation.COUNT, "event_id", None),
                feature("a", Aggregation.SUM, "amount", None),
            ),
        )


def test_feature_rejects_a_nan_default_and_a_non_positive_ttl() -> None:
    with pytest.raises(ValueError, match="default"):
        feature("a", Aggregation.MEAN, "amount", None, default=float("nan"))
    with pytest.raises(ValueError, match="ttl"):
        feature("a", Aggregation.MEAN, "amount", None, ttl_s=0)


def test_transaction_feature_set_is_versioned_and_ordered() -> None:
    fs = TRANSACTION_FEATURES
    assert fs.key == "card_transactions.v1"
    assert fs.entity == "card_id"
    assert fs.source is TRANSACTIONS_CLEAN
    assert 8 <= len(fs.feature_names) <= 12
    assert fs.feature_names[0] == "amount"
    assert feature_set_by_key("card_transactions.v1") is fs
    kinds = {f.window.type for f in fs.features if f.window is not None}
    assert kinds == {WindowType.SLIDING, WindowType.TUMBLING, WindowType.HOPPING}
