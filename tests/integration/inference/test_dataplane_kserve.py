"""The compiled data plane's KServe v2 API, dynamic batching and deadlines, against the real
broker and Redis: answers checked against ONNX Runtime in this process, refusals against the
Python service's codes and messages (``kserve.py``, ``validation.py``)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import onnxruntime
import pytest

from driftline.inference.v1 import inference_pb2 as ipb
from driftline.kit.settings import RedisSettings
from driftline.kit.testing import free_port, redis_server
from driftline.kserve.v2 import grpc_predict_v2_pb2 as v2

from .planes import FEATURES, MAX_MESSAGE_BYTES, Plane, row, version_bytes

pytestmark = pytest.mark.integration

WIDTH = len(FEATURES)


def infer(
    array: np.ndarray, datatype: str = "FP32", *, model: str = "fraud", name: str = "input", **kwargs
) -> v2.ModelInferRequest:
    """A raw-tensor request for ``array`` (little-endian bytes, as Triton's clients send)."""
    return v2.ModelInferRequest(
        model_name=model,
        inputs=[v2.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=list(array.shape))],
        raw_input_contents=[array.astype(array.dtype.newbyteorder("<")).tobytes()],
        **kwargs,
    )


def in_process(version: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    session = onnxruntime.InferenceSession(version_bytes(version), providers=["CPUExecutionProvider"])
    label, probabilities = session.run(None, {"input": x})
    return label, probabilities


def metric(text: str, name: str) -> float:
    """The value of the one series named ``name`` (its labels included) in a scrape."""
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} is not in the scrape"
    return float(match.group(1))


async def test_v2_readiness_follows_the_champion_and_model_infer_is_counted_not_logged(
    start_plane: Callable[..., Plane],
) -> None:
    plane = start_plane(load=None)
    k = plane.kserve
    assert (await k.ServerLive(v2.ServerLiveRequest())).live
    assert not (await k.ServerReady(v2.ServerReadyRequest())).ready
    assert not (await k.ModelReady(v2.ModelReadyRequest(name="fraud"))).ready
    with pytest.raises(grpc.aio.AioRpcError) as unloaded:
        await k.ModelInfer(infer(np.ones((1, WIDTH), np.float32)))
    assert unloaded.value.code() == grpc.StatusCode.UNAVAILABLE
    assert unloaded.value.details() == "no fraud champion is loaded yet"

    plane.load(3)
    assert (await k.ServerReady(v2.ServerReadyRequest())).ready
    assert (await k.ModelReady(v2.ModelReadyRequest(name="fraud"))).ready
    assert (await k.ModelReady(v2.ModelReadyRequest(name="fraud", version="3"))).ready
    assert not (await k.ModelReady(v2.ModelReadyRequest(name="fraud", version="99"))).ready
    # Metadata and ModelInfer's answers: test_inference_service.py, on both serving paths.
    x = np.random.default_rng(7).normal(0, 30, size=(5, WIDTH)).astype(np.float32)
    _, want_proba = in_process(3, x)
    for _ in range(2):
        raw = await k.ModelInfer(infer(x))
        np.testing.assert_allclose(
            np.frombuffer(raw.raw_output_contents[1], "<f4").reshape(5, 2), want_proba, rtol=1e-6
        )
    # Raw tensors carry no entity: ModelInfer is counted, not written to the prediction log.
    text = plane.metrics()
    assert metric(text, 'driftline_inference_requests_total{code="OK",method="ModelInfer"}') == 2
    assert metric(text, 'driftline_dataplane_prediction_log_records_total{outcome="produced"}') == 0


def _bad_cases() -> dict[str, tuple[v2.ModelInferRequest, grpc.StatusCode, str]]:
    good = np.ones((2, WIDTH), np.float32)
    nan = good.copy()
    nan[1, 3] = np.nan
    inf = good.copy()
    inf[0, 0] = np.inf
    wide = np.ones((2, WIDTH + 1), np.float32)
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    short = infer(good)
    short.raw_input_contents[0] = short.raw_input_contents[0][:-4]
    oversized_rows = MAX_MESSAGE_BYTES // (4 * WIDTH) + 10
    return {
        "wrong-shape": (
            infer(wide),
            invalid,
            f"input input has {WIDTH + 1} on axis 1, the model expects {WIDTH} "
            f"(shape [2, {WIDTH + 1}] vs [-1, {WIDTH}])",
        ),
        "wrong-rank": (
            infer(np.ones((WIDTH,), np.float32)),
            invalid,
            f"input input has shape [{WIDTH}], the model expects [-1, {WIDTH}]",
        ),
        "wrong-dtype": (
            infer(good.astype(np.float64), "FP64"),
            invalid,
            "input input is float64, the model expects float32",
        ),
        "integer-dtype": (
            infer(good.astype(np.int64), "INT64"),
            invalid,
            "input input is int64, the model expects float32",
        ),
        "nan": (infer(nan), invalid, "input input holds NaN or Inf (first at index [1, 3])"),
        "inf": (infer(inf), invalid, "input input holds NaN or Inf (first at index [0, 0])"),
        "no-rows": (infer(np.ones((0, WIDTH), np.float32)), invalid, "input input holds no rows"),
        "short-bytes": (
            short,
            invalid,
            f"input input: {8 * WIDTH - 4} bytes do not hold shape [2, {WIDTH}] of FP32 ({8 * WIDTH} bytes)",
        ),
        "unknown-input": (
            infer(good, name="x"),
            invalid,
            "unknown input(s) ['x']; the model takes ['input']",
        ),
        "unknown-output": (
            infer(good, outputs=[v2.ModelInferRequest.InferRequestedOutputTensor(name="logits")]),
            invalid,
            "unknown output(s) ['logits']; the model has ['label', 'probabilities']",
        ),
        "bad-version": (
            infer(good, model_version="latest"),
            invalid,
            "model_version 'latest' is not a number",
        ),
        "unloaded-version": (
            infer(good, model_version="9"),
            grpc.StatusCode.NOT_FOUND,
            "version 9 of fraud is not loaded",
        ),
        "unknown-model": (
            infer(good, model="credit"),
            grpc.StatusCode.NOT_FOUND,
            "unknown model 'credit'; this server serves 'fraud'",
        ),
        "oversized": (
            infer(np.ones((oversized_rows, WIDTH), np.float32)),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "Error, decoded message length too large",
        ),
    }


BAD = _bad_cases()


@pytest.mark.parametrize("case", list(BAD))
async def test_bad_tensors_get_the_python_services_codes_and_the_server_stays_up(
    start_plane: Callable[..., Plane], case: str
) -> None:
    plane = start_plane()
    request, code, details = BAD[case]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await plane.kserve.ModelInfer(request)
    assert refused.value.code() == code
    assert refused.value.details().startswith(details)
    ok = await plane.kserve.ModelInfer(infer(np.ones((2, WIDTH), np.float32)))
    assert [o.name for o in ok.outputs] == ["label", "probabilities"]


async def test_concurrent_calls_of_mixed_sizes_each_get_exactly_their_own_rows(
    start_plane: Callable[..., Plane],
) -> None:
    # A queue delay long enough that concurrent calls are merged into shared runs.
    plane = start_plane(max_batch_size=32, max_queue_delay_us=5_000)
    rng = np.random.default_rng(11)
    sizes = [1, 2, 5, 8, 13, 40] * 10  # 40 rows: larger than a batch, run alone
    inputs = [rng.normal(0, 30, size=(n, WIDTH)).astype(np.float32) for n in sizes]
    entities = [await plane.put(row(i)) for i in range(8)]

    async def by_entity(ids: list[str]) -> list[float]:
        reply = await plane.stub.PredictBatch(
            ipb.PredictBatchRequest(requests=[ipb.PredictRequest(entity_id=e) for e in ids])
        )
        assert [p.entity_id for p in reply.predictions] == ids
        return [p.score for p in reply.predictions]

    replies = await asyncio.gather(
        *(plane.kserve.ModelInfer(infer(x, id=f"call-{i}")) for i, x in enumerate(inputs)),
        *(by_entity(entities[: 1 + i % 8]) for i in range(20)),
    )
    for i, (x, reply) in enumerate(zip(inputs, replies[: len(inputs)], strict=True)):
        want_label, want_proba = in_process(3, x)
        assert reply.id == f"call-{i}"
        label_bytes, proba_bytes = reply.raw_output_contents
        np.testing.assert_array_equal(np.frombuffer(label_bytes, "<i8"), want_label)
        np.testing.assert_allclose(np.frombuffer(proba_bytes, "<f4").reshape(-1, 2), want_proba, rtol=1e-6)
    expected = plane.scores([row(i) for i in range(8)])
    for i, scores in enumerate(replies[len(inputs) :]):
        assert scores == pytest.approx(expected[: 1 + i % 8], abs=1e-6)

    text = plane.metrics()
    calls = len(inputs) + 20
    runs = metric(text, 'driftline_inference_batch_size_count{alias="champion"}')
    rows = metric(text, 'driftline_inference_batch_size_sum{alias="champion"}')
    assert rows == sum(sizes) + sum(1 + i % 8 for i in range(20))
    assert runs < calls  # calls were merged
    assert metric(
        text, 'driftline_inference_batch_size_bucket{alias="champion",le="32"}'
    ) == runs - sizes.count(40)


async def test_deadlines_the_servers_default_and_the_clients_own(
    start_plane: Callable[..., Plane], tmp_path: Path
) -> None:
    port = free_port()
    own = RedisSettings(url=f"redis://127.0.0.1:{port}/0", socket_timeout_s=10.0)
    with redis_server(port, tmp_path) as client:
        plane = start_plane(redis=own, default_deadline_s=0.5)
        entity = await plane.put(row(2))
        assert (await plane.stub.Predict(ipb.PredictRequest(entity_id=entity))).prediction.entity_id == entity
        # Every read now waits for Redis to resume.
        client.execute_command("CLIENT", "PAUSE", "2500", "ALL")
        with pytest.raises(grpc.aio.AioRpcError) as defaulted:
            await plane.stub.Predict(ipb.PredictRequest(entity_id=entity))
        assert defaulted.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert defaulted.value.details() == "no answer within the default deadline of 0.5 s"
        with pytest.raises(grpc.aio.AioRpcError) as own_deadline:
            await plane.stub.Predict(ipb.PredictRequest(entity_id=entity), timeout=0.2)
        assert own_deadline.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # A call its client cancels before any answer.
        cancelled = plane.stub.Predict(ipb.PredictRequest(entity_id=entity), timeout=5)
        await asyncio.sleep(0.2)
        assert cancelled.cancel()
        # The same server answers a call whose deadline outlasts the pause.
        reply = await plane.stub.Predict(ipb.PredictRequest(entity_id=entity), timeout=5)
        assert reply.prediction.score == pytest.approx(plane.scores([row(2)])[0], abs=1e-6)
        text = plane.metrics()
        count = {
            code: metric(text, f'driftline_inference_requests_total{{code="{code}",method="Predict"}}')
            for code in ("OK", "DEADLINE_EXCEEDED", "CANCELLED")
        }
        # Every call is counted once: the default's call timed out; the client's own deadline
        # too, unless its timer cancelled the call first; the cancelled call was cancelled.
        assert count["OK"] == 2
        assert count["DEADLINE_EXCEEDED"] in (1, 2)
        assert count["DEADLINE_EXCEEDED"] + count["CANCELLED"] == 3


async def test_sigterm_lets_calls_in_flight_finish(start_plane: Callable[..., Plane], tmp_path: Path) -> None:
    port = free_port()
    own = RedisSettings(url=f"redis://127.0.0.1:{port}/0", socket_timeout_s=10.0)
    with redis_server(port, tmp_path) as client:
        plane = start_plane(redis=own, default_deadline_s=10.0)
        entities = [await plane.put(row(i)) for i in range(4)]
        # Reads wait until Redis resumes: the calls are in flight when SIGTERM arrives.
        client.execute_command("CLIENT", "PAUSE", "1500", "ALL")

        async def predict(entity: str) -> ipb.PredictResponse:
            return await plane.stub.Predict(ipb.PredictRequest(entity_id=entity), timeout=10)

        calls = [asyncio.create_task(predict(e)) for e in entities]
        await asyncio.sleep(0.3)
        assert not any(call.done() for call in calls)
        stopped = asyncio.create_task(asyncio.to_thread(plane.process.stop))
        replies = await asyncio.gather(*calls)
        assert await stopped == 0
    assert [r.prediction.entity_id for r in replies] == entities
    assert [r.prediction.score for r in replies] == pytest.approx(
        plane.scores([row(i) for i in range(4)]), abs=1e-6
    )
