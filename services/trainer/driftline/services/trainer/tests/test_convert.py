from __future__ import annotations

import lightgbm as lgb
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from driftline.kit.errors import InvalidArgument
from driftline.services.trainer.convert import OnnxScorer, check_parity, max_abs_diff, to_onnx
from driftline.services.trainer.errors import ParityError
from driftline.services.trainer.train import TrainParams, predict_native, snap_thresholds, train_model


def data(seed: int, n: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)) * np.array([1.0, 10.0, 100.0, 0.01, 1000.0])
    y = (x[:, 0] + x[:, 1] / 10 * x[:, 3] * 100 + rng.normal(size=n) > 0.5).astype(int)
    return x, y


def test_onnx_scores_match_the_native_model_on_a_holdout() -> None:
    x, y = data(1)
    model = train_model(x[:2000], y[:2000], TrainParams(n_estimators=80))
    holdout = x[2000:]
    scores = OnnxScorer(to_onnx(model, x.shape[1])).predict(holdout)
    assert check_parity(predict_native(model, holdout), scores, 1e-5) <= 1e-5


def test_onnx_model_has_one_float_input_and_a_probability_output_without_zipmap() -> None:
    x, y = data(2)
    artifact = to_onnx(train_model(x, y, TrainParams(n_estimators=10)), x.shape[1])
    model = onnx.load_from_string(artifact)
    assert {op.domain for op in model.opset_import} <= {"", "ai.onnx.ml"}
    assert all(node.op_type != "ZipMap" for node in model.graph.node)
    session = ort.InferenceSession(artifact, providers=["CPUExecutionProvider"])
    (feature_input,) = session.get_inputs()
    assert (feature_input.name, feature_input.type, feature_input.shape[1]) == (
        "features",
        "tensor(float)",
        5,
    )
    outputs = {o.name: o for o in session.get_outputs()}
    assert set(outputs) == {"probability", "label"}
    probability, label = session.run(["probability", "label"], {"features": x[:7].astype(np.float32)})
    assert probability.shape == (7,)
    assert probability.dtype == np.float32
    assert label.shape == (7,)
    np.testing.assert_array_equal(label, (probability > 0.5).astype(np.int64))


def test_parity_check_fails_when_the_onnx_model_is_not_the_native_one() -> None:
    x, y = data(3)
    model = train_model(x, y, TrainParams(n_estimators=30))
    other = train_model(x, y, TrainParams(n_estimators=30, seed=99, num_leaves=4))
    wrong = OnnxScorer(to_onnx(other, x.shape[1])).predict(x)
    with pytest.raises(ParityError, match="differ from the native model"):
        check_parity(predict_native(model, x), wrong, 1e-5)


def test_parity_check_fails_on_nan_scores() -> None:
    with pytest.raises(ParityError):
        check_parity(np.array([0.1, 0.2]), np.array([0.1, np.nan]), 1e-5)


def test_same_data_and_seed_give_byte_identical_artifacts() -> None:
    x, y = data(4)
    first = to_onnx(train_model(x, y, TrainParams()), x.shape[1])
    second = to_onnx(train_model(x, y, TrainParams()), x.shape[1])
    assert first == second
    different_seed = OnnxScorer(to_onnx(train_model(x, y, TrainParams(seed=8, n_estimators=5)), 5))
    assert max_abs_diff(OnnxScorer(first).predict(x), different_seed.predict(x)) > 0


def test_scorer_refuses_bytes_that_are_not_onnx() -> None:
    with pytest.raises(InvalidArgument, match="not a loadable ONNX model"):
        OnnxScorer(b"\x80\x04pickle-ish")


def adjacent_float32_pair() -> tuple[float, float]:
    """Two neighbouring float32 values whose float64 midpoint rounds up onto the upper one."""
    for start in (0.7, 1.5, 3.0, 1234.5):
        low = np.float32(start)
        high = np.nextafter(low, np.float32(np.inf))
        if np.float32((float(low) + float(high)) / 2) == high:
            return float(low), float(high)
    raise AssertionError("no such pair found")


def test_split_between_neighbouring_float32_values_keeps_parity() -> None:
    # LightGBM splits at the float64 midpoint; stored as float32 it would round onto `high`,
    # sending `high` the other way in ONNX and flipping the tree. Snapped thresholds prevent it.
    low, high = adjacent_float32_pair()
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2000)
    x = np.column_stack([np.where(y == 1, high, low), rng.normal(size=2000)])
    model = train_model(x, y, TrainParams(n_estimators=5))
    scores = OnnxScorer(to_onnx(model, 2)).predict(x)
    assert check_parity(predict_native(model, x), scores, 1e-5) <= 1e-5
    assert scores[y == 1].min() > scores[y == 0].max()  # and the model still separates them


def test_snapping_thresholds_leaves_native_predictions_on_float32_inputs_unchanged() -> None:
    x, y = data(5)
    x = x.astype(np.float32).astype(np.float64)
    plain = lgb.LGBMClassifier(n_estimators=50, deterministic=True, force_row_wise=True, n_jobs=1, verbose=-1)
    plain.fit(x, y)
    snapped = lgb.Booster(model_str=snap_thresholds(plain.booster_.model_to_string()))
    assert snapped.model_to_string() != plain.booster_.model_to_string()
    np.testing.assert_array_equal(snapped.predict(x), plain.predict_proba(x)[:, 1])
