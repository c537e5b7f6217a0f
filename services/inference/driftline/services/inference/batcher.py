"""Dynamic batching: requests queue up, are merged into one model run, and each gets its rows back.

Correctness rules (the unit tests check each):

* a request's rows are contiguous in the merged batch, at an offset recorded when the batch is
  formed; its result is exactly ``output[offset:offset + rows]`` of every output, so no request
  ever sees another's rows, an empty result, or a merged one;
* only requests whose inputs agree on everything but the batch axis (names, dtypes, trailing
  dimensions) are merged; the others wait, in order, for a later batch;
* a request that was cancelled (client gone, deadline hit) before its batch formed is left out
  of the batch; one whose deadline passed while queued fails with DEADLINE_EXCEEDED unrun;
* the queue is bounded: a request that finds it full fails at once with RESOURCE_EXHAUSTED.

A batch starts when it holds ``max_batch_size`` rows or its oldest request has waited
``max_queue_delay_us``, whichever comes first. While ``concurrency`` batches are running, new
requests accumulate, so the next batch fills by itself under load and a lone request waits for
nothing when the model is idle and the delay is 0.

Models whose typical run is shorter than ``inline_below_us`` (tabular models on the CPU: ~10 µs)
run on the event loop instead of a worker thread, since the hand-off would cost more than the
run; with a delay of 0 such a request that finds nothing queued and nothing running is run at
once, without a future or a trip through the queue. Batching then happens only where it pays:
slower models (GPU kernels, big networks) and bursts that queue up behind a running batch.
"Typical" is a running median of the run alone, timed by the thread's own CPU clock for models
that compute on the calling thread: waits for the GIL and preemption by a busy machine only ever
inflate a run's wall time, and an average of wall times once kept a 15 µs model in the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import structlog

from driftline.kit.errors import DriftlineError
from driftline.kit.metrics import observe_many
from driftline.services.inference import metrics
from driftline.services.inference.errors import Expired, ModelFailed, ModelNotReady, QueueFull

log = structlog.get_logger(__name__)

Feeds = Mapping[str, np.ndarray]
RunFn = Callable[[Feeds], list[np.ndarray]]


@dataclass(frozen=True)
class BatchingOptions:
    max_batch_size: int = 64
    max_queue_delay_us: int = 0
    #: Requests that may wait for a batch; beyond it, RESOURCE_EXHAUSTED.
    queue_capacity: int = 1024
    #: Batches run at the same time (each in its own thread).
    concurrency: int = 1
    #: Run batches on the event loop itself while the model's typical run takes less than this:
    #: handing a 10 µs run to a thread costs more than the run (a thread switch and the GIL).
    #: 0 always uses the thread.
    inline_below_us: int = 150

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.queue_capacity < 1 or self.concurrency < 1:
            raise ValueError("max_batch_size, queue_capacity and concurrency must be at least 1")
        if self.max_queue_delay_us < 0:
            raise ValueError("max_queue_delay_us must not be negative")


def _merge_key(feeds: Feeds) -> tuple:
    return tuple(sorted((name, a.dtype.str, a.shape[1:]) for name, a in feeds.items()))


@dataclass(eq=False)
class _Request:
    feeds: Feeds
    rows: int
    key: tuple
    future: asyncio.Future[list[np.ndarray]]
    enqueued: float
    #: In ``loop.time()`` seconds; None for none.
    deadline: float | None


class DynamicBatcher:
    """Merges concurrent ``submit`` calls into model runs executed in a worker thread.

    Create and use it inside one running event loop; ``run`` is called in the batcher's own
    thread pool and must be thread-safe when ``concurrency`` > 1.
    """

    def __init__(
        self,
        run: RunFn,
        options: BatchingOptions | None = None,
        *,
        alias: str = "model",
        run_clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._run = run
        #: Times a run for the choice between the loop and the thread. ``time.thread_time`` for
        #: models that compute on the calling thread: neither the wait for the GIL after a run
        #: in the thread nor a preemption by a busy machine advances it, and both only ever
        #: made the run look slower than it is (and kept a 15 µs model in the thread).
        self._run_clock = run_clock
        self.options = options or BatchingOptions()
        self._alias = alias
        self._queue: deque[_Request] = deque()
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(self.options.concurrency)
        self._executor = ThreadPoolExecutor(
            max_workers=self.options.concurrency, thread_name_prefix=f"batch-{alias}"
        )
        self._running: set[asyncio.Task[None]] = set()
        self._closed = False
        self._worker: asyncio.Task[None] | None = None
        self._depth = metrics.QUEUE_DEPTH.labels(alias)
        self._batch_rows = metrics.BATCH_SIZE.labels(alias)
        self._batch_requests = metrics.BATCH_REQUESTS.labels(alias)
        self._queue_seconds = metrics.STAGE_SECONDS.labels("queue")
        self._model_seconds = metrics.STAGE_SECONDS.labels("model")
        #: Model runs so far (tests and benchmarks read it).
        self.batches = 0
        #: Running median of a run's seconds (by ``run_clock``); None until the first run.
        self.typical_run_s: float | None = None
        self.inline_runs = 0

    @property
    def depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work(), name=f"batcher-{self._alias}")

    async def submit(self, feeds: Feeds, *, deadline: float | None = None) -> list[np.ndarray]:
        """Queue ``feeds`` (every array has the same first dimension) and return its output rows.

        ``deadline`` is in ``loop.time()`` seconds. Cancelling the caller withdraws the request.
        """
        if self._closed:
            raise ModelNotReady("model is being replaced or shut down")
        rows = {a.shape[0] if a.ndim else 0 for a in feeds.values()}
        if len(rows) != 1 or 0 in rows:
            raise ValueError(f"feeds must share one non-zero batch dimension, got {sorted(rows)}")
        count = rows.pop()
        if self._direct(count):
            # Nothing queued, nothing running, and a model faster than a hand-off: waiting for
            # company would only add latency, so run now, without a future or a trip through the
            # queue. It never suspends, so no other request can slip in meanwhile.
            return self._run_now(feeds, count)
        if len(self._queue) >= self.options.queue_capacity:
            metrics.REJECTED.labels("queue_full").inc()
            raise QueueFull(f"inference queue is full ({self.options.queue_capacity} requests waiting)")
        loop = asyncio.get_running_loop()
        request = _Request(
            feeds, count, _merge_key(feeds), loop.create_future(), time.perf_counter(), deadline
        )
        self._queue.append(request)
        self._depth.set(len(self._queue))
        self._wakeup.set()
        # Cancelling the awaiting task cancels this future; the worker then skips the request.
        return await request.future

    def _direct(self, rows: int) -> bool:
        return (
            self.options.max_queue_delay_us == 0
            and not self._queue
            and not self._slots.locked()
            and self._inline(rows)
        )

    def _run_now(self, feeds: Feeds, rows: int) -> list[np.ndarray]:
        self._queue_seconds.observe(0.0)
        try:
            outputs, elapsed, run_s = self._timed_run(feeds)
        except DriftlineError:
            raise
        except Exception as err:
            raise self._failure(err, 1) from err
        self.inline_runs += 1
        self._ran(outputs, elapsed, run_s, rows, 1)
        return outputs

    async def _work(self) -> None:
        while True:
            while not self._queue:
                if self._closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            # Waits here while `concurrency` batches run; requests queue up meanwhile.
            await self._slots.acquire()
            # Let handlers that are already runnable enqueue before the batch is cut.
            await asyncio.sleep(0)
            batch = await self._collect()
            if not batch:
                self._slots.release()
                continue
            if self._inline(sum(r.rows for r in batch)):
                await self._execute(batch)  # never suspends: runs to the end right here
                continue
            task = asyncio.get_running_loop().create_task(self._execute(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _take(self, batch: list[_Request], rows: int) -> int:
        """Move queued requests that fit into ``batch`` (same merge key, FIFO); return its rows."""
        now = asyncio.get_running_loop().time()
        limit = self.options.max_batch_size
        kept: deque[_Request] = deque()
        full = False
        while self._queue:
            request = self._queue.popleft()
            if request.future.done():
                metrics.REJECTED.labels("cancelled").inc()
                continue
            if request.deadline is not None and now >= request.deadline:
                metrics.REJECTED.labels("deadline").inc()
                request.future.set_exception(Expired("deadline passed while queued"))
                continue
            if not batch:
                batch.append(request)
                rows = request.rows
                continue
            if full or request.key != batch[0].key:
                kept.append(request)
                continue
            if rows + request.rows > limit:
                # FIFO among mergeable requests: the first that does not fit closes the batch.
                full = True
                kept.append(request)
                continue
            batch.append(request)
            rows += request.rows
        self._queue = kept
        self._depth.set(len(kept))
        return rows

    async def _collect(self) -> list[_Request]:
        batch: list[_Request] = []
        rows = self._take(batch, 0)
        delay = self.options.max_queue_delay_us / 1e6
        if not batch or delay == 0:
            return batch
        deadline = batch[0].enqueued + delay
        while rows < self.options.max_batch_size and not self._closed:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            rows = self._take(batch, rows)
        return [r for r in batch if not r.future.done()]

    async def _execute(self, batch: list[_Request]) -> None:
        try:
            live = [r for r in batch if not r.future.done()]
            if live:
                await self._run_batch(live)
        except DriftlineError as err:
            self._fail(batch, err)
        except Exception as err:  # noqa: BLE001 - logged in _failure, the callers get ModelFailed
            self._fail(batch, self._failure(err, len(batch)))
        finally:
            self._slots.release()

    async def _run_batch(self, live: list[_Request]) -> None:
        if len(live) == 1:
            feeds = live[0].feeds
        else:
            feeds = {name: np.concatenate([r.feeds[name] for r in live]) for name in live[0].feeds}
        total = sum(r.rows for r in live)
        started = time.perf_counter()
        observe_many(self._queue_seconds, [started - request.enqueued for request in live])
        if self._inline(total):
            self.inline_runs += 1
            outputs, elapsed, run_s = self._timed_run(feeds)
        else:
            outputs, elapsed, run_s = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._timed_run, feeds
            )
        self._ran(outputs, elapsed, run_s, total, len(live))
        offset = 0
        for request in live:
            end = offset + request.rows
            if not request.future.done():
                request.future.set_result([output[offset:end] for output in outputs])
            offset = end

    def _ran(self, outputs: list[np.ndarray], elapsed: float, run_s: float, rows: int, requests: int) -> None:
        """Record one run and check that every output has a row per input row."""
        # A running median of the run alone (not the hand-off), moving 5% per run towards each
        # new time: runs held up by a busy machine only ever add time, and unless they are most
        # runs they cannot flip the mode, as an average's outliers did.
        typical = self.typical_run_s
        if typical is None:
            self.typical_run_s = run_s
        else:
            self.typical_run_s = typical * (1.05 if run_s > typical else 0.95)
        self._model_seconds.observe(elapsed)
        self._batch_rows.observe(rows)
        self._batch_requests.observe(requests)
        self.batches += 1
        for output in outputs:
            if output.ndim == 0 or output.shape[0] != rows:
                raise ModelFailed(f"model returned {output.shape} rows for a batch of {rows}")

    def _timed_run(self, feeds: Feeds) -> tuple[list[np.ndarray], float, float]:
        """Outputs, wall seconds, and the run's seconds by ``run_clock``."""
        started, clock_started = time.perf_counter(), self._run_clock()
        outputs = self._run(feeds)
        return outputs, time.perf_counter() - started, self._run_clock() - clock_started

    def _inline(self, rows: int) -> bool:
        limit = self.options.inline_below_us / 1e6
        return (
            self.typical_run_s is not None
            and self.typical_run_s < limit
            and rows <= self.options.max_batch_size
        )

    def _failure(self, err: Exception, requests: int) -> ModelFailed:
        """A model run's unexpected error, logged with its traceback, as the requests' error."""
        log.exception("batch_failed", alias=self._alias, requests=requests)
        return ModelFailed(f"model run failed: {type(err).__name__}")

    @staticmethod
    def _fail(batch: list[_Request], err: BaseException) -> None:
        for request in batch:
            if not request.future.done():
                request.future.set_exception(err)

    async def close(self) -> None:
        """Refuse new requests, run the queued ones, wait for running batches, stop the thread."""
        self._closed = True
        self._wakeup.set()
        if self._worker is not None:
            await self._worker
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        self._depth.set(0)
        self._executor.shutdown(wait=False)
