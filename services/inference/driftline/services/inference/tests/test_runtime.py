from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from driftline.services.inference.errors import ModelLoadError
from driftline.services.inference.runtime import CPU, CUDA, Device, RuntimeOptions, SessionFactory
from driftline.services.inference.testing import echo_model, logistic_model, mlp_model, scalar_model


def test_the_provider_is_the_one_the_session_really_got():
    factory = SessionFactory()
    model = factory.load(logistic_model([1.0, -1.0]))
    # Whatever get_available_providers() claims, the session decides: CPU here unless CUDA works.
    assert model.provider in (CPU, CUDA)
    assert factory.provider == model.provider
    assert model.use_io_binding == (model.provider == CUDA)
    if CUDA not in ort.get_available_providers():
        assert model.provider == CPU


def test_cpu_device_never_tries_cuda():
    factory = SessionFactory(RuntimeOptions(device=Device.CPU))
    assert factory.load(echo_model(2)).provider == CPU


@pytest.fixture
def sessions_asked(monkeypatch) -> list[list]:
    """The provider lists of every session created."""
    asked: list[list] = []
    real = ort.InferenceSession

    def recording(model, sess_options=None, providers=None):
        asked.append([p if isinstance(p, str) else p[0] for p in providers])
        return real(model, sess_options=sess_options, providers=providers)

    monkeypatch.setattr(ort, "InferenceSession", recording)
    return asked


def test_without_an_nvidia_driver_cuda_is_never_tried(sessions_asked, monkeypatch):
    # Even where the onnxruntime-gpu wheel lists CUDA: the try would only print its error.
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    factory = SessionFactory(driver_check=lambda: "no NVIDIA driver")
    assert factory.load(echo_model(2)).provider == CPU
    assert factory.load(echo_model(2)).provider == CPU
    assert sessions_asked == [[CPU], [CPU]]
    assert factory.provider == CPU


def test_required_cuda_without_a_driver_is_a_load_error(sessions_asked, monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    factory = SessionFactory(RuntimeOptions(device=Device.CUDA), driver_check=lambda: "no NVIDIA driver")
    with pytest.raises(ModelLoadError) as err:
        factory.load(echo_model(2))
    assert err.value.code == "no_cuda"
    assert sessions_asked == []


def test_the_driver_check_loads_libcuda(monkeypatch):
    import ctypes

    from driftline.services.inference import runtime

    loaded = []
    monkeypatch.setattr(ctypes, "CDLL", lambda name: loaded.append(name))
    assert runtime.nvidia_driver() is None
    assert loaded == ["libcuda.so.1"]

    def missing(name):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", missing)
    assert "no NVIDIA driver" in runtime.nvidia_driver()


def test_with_a_driver_cuda_is_tried_once(sessions_asked, monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    factory = SessionFactory(driver_check=lambda: None)
    first = factory.load(echo_model(2))
    factory.load(echo_model(2))
    assert sessions_asked[0] == [CUDA, CPU]
    if first.provider == CPU:  # no GPU here: the CPU from then on, without another try
        assert sessions_asked[1:] == [[CPU], [CPU]]


def test_logistic_model_scores_like_numpy():
    weights = [0.5, -1.0, 2.0]
    model = SessionFactory(RuntimeOptions(device=Device.CPU)).load(logistic_model(weights, bias=0.1))
    x = np.random.default_rng(1).normal(size=(7, 3)).astype(np.float32)
    label, proba = model.run({"input": x})
    expected = 1 / (1 + np.exp(-(x @ np.array(weights, np.float32) + 0.1)))
    np.testing.assert_allclose(proba[:, 1], expected, rtol=1e-5)
    np.testing.assert_array_equal(label, (expected > 0.5).astype(np.int64))
    assert [o.name for o in model.outputs] == ["label", "probabilities"]
    assert model.inputs[0].shape == (None, 3)
    assert model.inputs[0].datatype == "FP32"


def test_garbage_bytes_are_a_load_error():
    with pytest.raises(ModelLoadError) as err:
        SessionFactory(RuntimeOptions(device=Device.CPU)).load(b"\x80\x04pickle")
    assert err.value.code == "invalid_model"


def test_a_model_that_cannot_be_batched_fails_warm_up():
    model = SessionFactory(RuntimeOptions(device=Device.CPU)).load(scalar_model(3))
    with pytest.raises(ModelLoadError, match="batch"):
        model.warm_up((1, 8), 1)


def test_zipmap_outputs_are_refused_at_load():
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    x = np.random.default_rng(0).normal(size=(40, 2)).astype(np.float32)
    clf = LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))
    zipped = to_onnx(clf, x[:1]).SerializeToString()
    with pytest.raises(ModelLoadError, match="zipmap"):
        SessionFactory(RuntimeOptions(device=Device.CPU)).load(zipped)
    plain = to_onnx(clf, x[:1], options={id(clf): {"zipmap": False}}).SerializeToString()
    model = SessionFactory(RuntimeOptions(device=Device.CPU)).load(plain)
    assert model.warm_up((1, 4), 1) >= 0


def test_required_cuda_is_cuda_with_io_binding_or_a_load_error():
    factory = SessionFactory(RuntimeOptions(device=Device.CUDA))
    if SessionFactory().load(echo_model(2)).provider == CUDA:
        model = factory.load(echo_model(2))
        assert model.provider == CUDA
        assert model.use_io_binding
    else:
        with pytest.raises(ModelLoadError) as err:
            factory.load(echo_model(2))
        assert err.value.code == "no_cuda"


def test_the_chosen_device_scores_like_the_cpu_and_returns_rows_unchanged():
    # On a GPU machine this compares CUDA (I/O binding, TF32 off) with the CPU; here, CPU with CPU.
    data = mlp_model(12, hidden=64)
    auto = SessionFactory().load(data)
    cpu = SessionFactory(RuntimeOptions(device=Device.CPU)).load(data)
    x = np.random.default_rng(0).normal(size=(257, 12)).astype(np.float32)
    np.testing.assert_allclose(auto.run({"input": x})[0], cpu.run({"input": x})[0], rtol=1e-4, atol=1e-5)
    echo = SessionFactory().load(echo_model(12))
    for rows in (1, 7, 1024):
        x = np.random.default_rng(rows).normal(size=(rows, 12)).astype(np.float32)
        out, row_sum = echo.run({"input": x})
        np.testing.assert_array_equal(out, x)
        np.testing.assert_allclose(row_sum[:, 0], x.sum(axis=1), rtol=1e-5, atol=1e-5)


def test_a_one_thread_cpu_session_is_timed_on_its_calling_thread():
    one = SessionFactory(RuntimeOptions(device=Device.CPU, intra_op_threads=1)).load(echo_model(2))
    two = SessionFactory(RuntimeOptions(device=Device.CPU, intra_op_threads=2)).load(echo_model(2))
    assert one.computes_on_caller
    assert not two.computes_on_caller
