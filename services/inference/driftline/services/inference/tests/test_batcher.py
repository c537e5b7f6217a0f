from __future__ import annotations

import asyncio
import random
import threading
import time

import numpy as np
import pytest

from driftline.services.inference.batcher import BatchingOptions, DynamicBatcher
from driftline.services.inference.errors import Expired, ModelFailed, ModelNotReady, QueueFull


class EchoModel:
    """Returns each row unchanged plus its sum; records every batch it ran."""

    def __init__(self, delay_s: float = 0.0, fail_when: float | None = None) -> None:
        self.delay_s = delay_s
        self.fail_when = fail_when
        self.batches: list[int] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, feeds):
        self.gate.wait(5)
        x = feeds["input"]
        self.batches.append(x.shape[0])
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail_when is not None and (x[:, 0] == self.fail_when).any():
            raise RuntimeError("boom")
        return [x.copy(), x.sum(axis=1, keepdims=True)]


def rows(caller: int, n: int, width: int = 3) -> np.ndarray:
    """Rows that say who sent them: caller id in column 0, row index in column 1."""
    out = np.zeros((n, width), dtype=np.float32)
    out[:, 0] = caller
    out[:, 1] = np.arange(n)
    out[:, 2] = random.random()
    return out


@pytest.mark.parametrize(
    ("delay_s", "inline_below_us", "max_queue_delay_us"),
    [(0.001, 0, 2000), (0.0, 1_000_000, 0), (0.0, 1_000_000, 2000), (0.0005, 0, 0)],
    ids=["thread-with-delay", "on-the-loop", "on-the-loop-with-delay", "thread-no-delay"],
)
async def test_every_concurrent_caller_gets_exactly_its_own_rows_with_mixed_sizes(
    delay_s, inline_below_us, max_queue_delay_us
):
    model = EchoModel(delay_s=delay_s)
    options = BatchingOptions(
        max_batch_size=32,
        max_queue_delay_us=max_queue_delay_us,
        queue_capacity=10_000,
        inline_below_us=inline_below_us,
    )
    batcher = DynamicBatcher(model, options)
    batcher.start()
    sizes = [random.choice([1, 1, 2, 3, 7, 16, 31, 32, 40]) for _ in range(400)]

    async def call(caller: int, n: int) -> None:
        await asyncio.sleep(random.random() * 0.01)
        sent = rows(caller, n)
        output, row_sum = await batcher.submit({"input": sent})
        np.testing.assert_array_equal(output, sent)
        np.testing.assert_allclose(row_sum[:, 0], sent.sum(axis=1), rtol=1e-6)

    await asyncio.gather(*(call(i, n) for i, n in enumerate(sizes)))
    await batcher.close()
    assert sum(model.batches) == sum(sizes)
    assert len(model.batches) < len(sizes), "requests were never merged"
    # No batch goes over the limit unless one request alone is larger than it.
    assert all(b <= 32 or b in sizes for b in model.batches)


async def test_batches_fill_up_to_max_batch_size_while_the_model_is_busy():
    model = EchoModel()
    model.gate.clear()
    batcher = DynamicBatcher(
        model, BatchingOptions(max_batch_size=8, max_queue_delay_us=0, queue_capacity=100, inline_below_us=0)
    )
    batcher.start()
    tasks = [asyncio.create_task(batcher.submit({"input": rows(0, 1)}))]
    await asyncio.sleep(0.02)  # the lone first request found the model idle and did not wait
    tasks += [asyncio.create_task(batcher.submit({"input": rows(i, 1)})) for i in range(1, 17)]
    await asyncio.sleep(0.02)
    model.gate.set()
    results = await asyncio.gather(*tasks)
    await batcher.close()
    assert [int(r[0][0, 0]) for r in results] == list(range(17))
    assert model.batches == [1, 8, 8]


async def test_requests_with_different_trailing_shapes_are_never_merged():
    model = EchoModel()
    model.gate.clear()
    batcher = DynamicBatcher(model, BatchingOptions(max_batch_size=64, inline_below_us=0))
    batcher.start()
    narrow = [asyncio.create_task(batcher.submit({"input": rows(i, 2, width=3)})) for i in range(5)]
    wide = [asyncio.create_task(batcher.submit({"input": rows(100 + i, 2, width=5)})) for i in range(5)]
    await asyncio.sleep(0.02)
    model.gate.set()
    for i, task in enumerate(narrow):
        out = (await task)[0]
        assert out.shape == (2, 3)
        assert (out[:, 0] == i).all()
    for i, task in enumerate(wide):
        out = (await task)[0]
        assert out.shape == (2, 5)
        assert (out[:, 0] == 100 + i).all()
    await batcher.close()


async def test_a_full_queue_refuses_with_resource_exhausted():
    model = EchoModel()
    model.gate.clear()
    batcher = DynamicBatcher(model, BatchingOptions(max_batch_size=1, queue_capacity=3, inline_below_us=0))
    batcher.start()
    running = asyncio.create_task(batcher.submit({"input": rows(0, 1)}))
    await asyncio.sleep(0.02)  # the first one is in the model; the next three fill the queue
    queued = [asyncio.create_task(batcher.submit({"input": rows(i, 1)})) for i in range(1, 4)]
    await asyncio.sleep(0)
    with pytest.raises(QueueFull) as err:
        await batcher.submit({"input": rows(9, 1)})
    assert err.value.status.name == "RESOURCE_EXHAUSTED"
    model.gate.set()
    await asyncio.gather(running, *queued)
    await batcher.close()


async def test_cancelled_requests_are_dropped_from_the_batch():
    model = EchoModel()
    model.gate.clear()
    batcher = DynamicBatcher(model, BatchingOptions(max_batch_size=64, inline_below_us=0))
    batcher.start()
    first = asyncio.create_task(batcher.submit({"input": rows(0, 1)}))
    await asyncio.sleep(0.02)
    keep = asyncio.create_task(batcher.submit({"input": rows(1, 2)}))
    gone = asyncio.create_task(batcher.submit({"input": rows(2, 5)}))
    await asyncio.sleep(0)
    gone.cancel()
    model.gate.set()
    await first
    assert (await keep)[0][:, 0].tolist() == [1, 1]
    assert gone.cancelled()
    await batcher.close()
    assert model.batches == [1, 2], "the cancelled request's 5 rows were run"


async def test_requests_whose_deadline_passed_in_the_queue_are_not_run():
    model = EchoModel()
    model.gate.clear()
    batcher = DynamicBatcher(model, BatchingOptions(max_batch_size=64, inline_below_us=0))
    batcher.start()
    loop = asyncio.get_running_loop()
    first = asyncio.create_task(batcher.submit({"input": rows(0, 1)}))
    await asyncio.sleep(0.02)
    late = asyncio.create_task(batcher.submit({"input": rows(1, 4)}, deadline=loop.time() + 0.01))
    ok = asyncio.create_task(batcher.submit({"input": rows(2, 1)}, deadline=loop.time() + 10))
    await asyncio.sleep(0.05)
    model.gate.set()
    await first
    with pytest.raises(Expired):
        await late
    assert (await ok)[0][0, 0] == 2
    await batcher.close()
    assert model.batches == [1, 1]


async def test_a_failing_batch_fails_only_its_own_requests():
    model = EchoModel(fail_when=13)
    model.gate.clear()
    batcher = DynamicBatcher(model, BatchingOptions(max_batch_size=2, inline_below_us=0))
    batcher.start()
    tasks = [asyncio.create_task(batcher.submit({"input": rows(i, 1)})) for i in (10, 11, 12, 13, 14)]
    await asyncio.sleep(0.02)
    model.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    await batcher.close()
    failed = [i for i, r in zip((10, 11, 12, 13, 14), results, strict=True) if isinstance(r, ModelFailed)]
    assert 13 in failed
    assert len(failed) <= 2
    assert not isinstance(results[0], Exception)
    assert not isinstance(results[-1], Exception)


async def test_a_model_returning_the_wrong_number_of_rows_fails_the_batch():
    batcher = DynamicBatcher(lambda feeds: [feeds["input"][:1]], BatchingOptions())
    batcher.start()
    with pytest.raises(ModelFailed):
        await batcher.submit({"input": rows(0, 3)})
    await batcher.close()


async def test_close_runs_what_is_queued_then_refuses_new_requests():
    model = EchoModel()
    model.gate.clear()
    batcher = DynamicBatcher(model, BatchingOptions(max_batch_size=1, inline_below_us=0))
    batcher.start()
    tasks = [asyncio.create_task(batcher.submit({"input": rows(i, 1)})) for i in range(3)]
    await asyncio.sleep(0.01)
    closing = asyncio.create_task(batcher.close())
    await asyncio.sleep(0.01)
    with pytest.raises(ModelNotReady):
        await batcher.submit({"input": rows(9, 1)})
    model.gate.set()
    await closing
    assert [int((await t)[0][0, 0]) for t in tasks] == [0, 1, 2]


async def test_fast_models_run_on_the_loop_and_slow_ones_in_the_thread():
    fast = DynamicBatcher(EchoModel(), BatchingOptions(inline_below_us=50_000))
    slow = DynamicBatcher(EchoModel(delay_s=0.002), BatchingOptions(inline_below_us=500))
    for batcher in (fast, slow):
        batcher.start()
        for i in range(5):
            out = (await batcher.submit({"input": rows(i, 2)}))[0]
            assert (out[:, 0] == i).all()
        await batcher.close()
    assert fast.inline_runs == 4  # the first run measures the model, in the thread
    assert slow.inline_runs == 0


async def test_an_idle_batcher_runs_a_lone_fast_request_at_once():
    model = EchoModel()
    batcher = DynamicBatcher(model, BatchingOptions(max_queue_delay_us=0, inline_below_us=50_000))
    batcher.start()
    await batcher.submit({"input": rows(0, 1)})  # measures the model (in the thread)
    for i in range(1, 6):
        out = (await batcher.submit({"input": rows(i, 3)}))[0]
        assert (out[:, 0] == i).all()
    assert model.batches == [1, 3, 3, 3, 3, 3]
    assert batcher.inline_runs == 5
    await batcher.close()


class NowAndThenSlowModel(EchoModel):
    """Fast, except that every fourth run is held up (as a busy machine holds a run up)."""

    def __call__(self, feeds):
        if len(self.batches) % 4 == 3:
            time.sleep(0.02)
        return super().__call__(feeds)


async def test_runs_held_up_now_and_then_do_not_move_a_fast_model_off_the_loop():
    model = NowAndThenSlowModel()
    batcher = DynamicBatcher(model, BatchingOptions(inline_below_us=5_000))
    batcher.start()
    for i in range(40):
        out = (await batcher.submit({"input": rows(i, 1)}))[0]
        assert (out[:, 0] == i).all()
    await batcher.close()
    # An average would have jumped over the limit after a 20 ms run and sent the runs after it
    # to the thread; a running median stays with the typical, fast run.
    assert batcher.inline_runs == 39  # all but the first, which measures the model in the thread
