//! Dynamic batching: calls queue up, are merged into one model run on the model's own thread,
//! and each gets exactly its own rows back.
//!
//! The rules, as the Python service's batcher keeps them (the tests below check each):
//! * a call's rows are contiguous in the merged batch, at the offset recorded when the batch is
//!   formed; its answer is rows `offset..offset + rows` of every output, so no call ever sees
//!   another's rows, an empty answer or a merged one;
//! * a call whose caller has gone (its deadline passed, it was cancelled) before its batch
//!   formed is left out unrun;
//! * the queue is bounded: a call that finds it full fails at once (RESOURCE_EXHAUSTED).
//!
//! A batch closes when it holds `max_batch_size` rows or its oldest call has waited
//! `max_queue_delay`, whichever comes first. With a delay of 0 it takes what queued up while the
//! model was busy: a lone call waits for nothing, and batches fill by themselves under load.
//! A call larger than `max_batch_size` runs alone.
//!
//! With a delay of 0, a model whose typical run is shorter than `inline_below` (a tabular model
//! on the CPU: 10-80 µs) runs a call that finds nothing queued and the model idle at once, on
//! the caller's thread: the hand-off to the model's thread and back would cost more than the run.
//! Under load calls queue up behind the running one, and batching takes over.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::metrics::BatchMetrics;

/// An output's values, in the model's element type.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    Bool(Vec<bool>),
}

impl Data {
    fn len(&self) -> usize {
        match self {
            Data::F32(v) => v.len(),
            Data::F64(v) => v.len(),
            Data::I64(v) => v.len(),
            Data::I32(v) => v.len(),
            Data::Bool(v) => v.len(),
        }
    }

    fn slice(&self, from: usize, to: usize) -> Data {
        match self {
            Data::F32(v) => Data::F32(v[from..to].to_vec()),
            Data::F64(v) => Data::F64(v[from..to].to_vec()),
            Data::I64(v) => Data::I64(v[from..to].to_vec()),
            Data::I32(v) => Data::I32(v[from..to].to_vec()),
            Data::Bool(v) => Data::Bool(v[from..to].to_vec()),
        }
    }
}

/// One output of a run: rows along the first axis.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Data,
}

impl Tensor {
    /// Rows `from..to` of this tensor; `None` when it has no rows axis holding `to` rows.
    fn rows(&self, from: usize, to: usize) -> Option<Tensor> {
        let (&rows, rest) = self.shape.split_first()?;
        if to > rows {
            return None;
        }
        let per_row: usize = rest.iter().product();
        let mut shape = self.shape.clone();
        shape[0] = to - from;
        Some(Tensor {
            shape,
            data: self.data.slice(from * per_row, to * per_row),
        })
    }
}

/// What runs a merged batch: a `rows` × width row-major matrix in, the model's outputs out.
pub trait Runner: Send + 'static {
    fn run(&mut self, matrix: &[f64], rows: usize) -> Result<Vec<Tensor>, String>;
}

impl<F> Runner for F
where
    F: FnMut(&[f64], usize) -> Result<Vec<Tensor>, String> + Send + 'static,
{
    fn run(&mut self, matrix: &[f64], rows: usize) -> Result<Vec<Tensor>, String> {
        self(matrix, rows)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub max_batch_size: usize,
    pub max_queue_delay: Duration,
    /// Calls that may wait for a batch; beyond it, `BatchError::QueueFull`.
    pub queue_capacity: usize,
    /// Run a lone call on the caller's thread while the model's typical run is shorter than
    /// this (with a delay of 0 only); zero: always hand calls to the model's thread.
    pub inline_below: Duration,
}

#[derive(Debug, PartialEq)]
pub enum BatchError {
    /// The queue held `queue_capacity` calls.
    QueueFull(usize),
    /// The model failed on the batch this call was in.
    Failed(String),
    /// The model's thread has stopped (it panicked outside a run).
    Stopped,
}

struct Job {
    matrix: Vec<f64>,
    rows: usize,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Vec<Tensor>, BatchError>>,
}

/// What the model's thread and the callers that run inline share.
struct Shared<R> {
    runner: Mutex<R>,
    /// Calls queued and not yet taken by the model's thread.
    waiting: AtomicUsize,
    /// A run's typical wall time in ns: a moving average (weight 1/8) of the latest runs.
    typical_ns: AtomicU64,
    metrics: BatchMetrics,
}

impl<R> Shared<R> {
    fn ran(&self, took: Duration, rows: usize, calls: usize) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let typical = self.typical_ns.load(Ordering::Relaxed);
        let next = typical - typical / 8 + ns / 8;
        self.typical_ns.store(next, Ordering::Relaxed);
        self.metrics.model_seconds.observe(took.as_secs_f64());
        self.metrics.batch_size.observe(rows as f64);
        self.metrics.batch_requests.observe(calls as f64);
    }
}

/// `Shared` as a caller sees it, whatever its runner.
trait Inline: Send + Sync {
    /// Runs a call at once on the caller's thread, when the model allows it.
    fn try_run(
        &self,
        matrix: &[f64],
        rows: usize,
        below: Duration,
    ) -> Option<Result<Vec<Tensor>, BatchError>>;

    fn waiting(&self) -> &AtomicUsize;
}

impl<R: Runner> Inline for Shared<R> {
    fn waiting(&self) -> &AtomicUsize {
        &self.waiting
    }

    fn try_run(
        &self,
        matrix: &[f64],
        rows: usize,
        below: Duration,
    ) -> Option<Result<Vec<Tensor>, BatchError>> {
        if self.typical_ns.load(Ordering::Relaxed) >= u64::try_from(below.as_nanos()).ok()?
            || self.waiting.load(Ordering::Acquire) > 0
        {
            return None;
        }
        let mut runner = self.runner.try_lock().ok()?;
        self.metrics.queue_seconds.observe(0.0);
        let started = Instant::now();
        let outputs = checked_run(&mut *runner, matrix, rows);
        drop(runner);
        self.ran(started.elapsed(), rows, 1);
        Some(outputs.map_err(BatchError::Failed))
    }
}

/// The queue in front of one model; its thread ends when the last handle is dropped (with the
/// model, once its last call has finished).
pub struct Batcher {
    queue: SyncSender<Job>,
    options: Options,
    shared: Arc<dyn Inline>,
    metrics: BatchMetrics,
}

impl Batcher {
    /// Starts the thread named `name` that runs batches on `runner`; `typical_run` seeds the
    /// estimate of a run's time (the warm-up's).
    pub fn start<R: Runner>(
        name: &str,
        runner: R,
        options: Options,
        typical_run: Duration,
        metrics: BatchMetrics,
    ) -> std::io::Result<Batcher> {
        let (queue, jobs) = mpsc::sync_channel(options.queue_capacity.max(1));
        let shared = Arc::new(Shared {
            runner: Mutex::new(runner),
            waiting: AtomicUsize::new(0),
            typical_ns: AtomicU64::new(u64::try_from(typical_run.as_nanos()).unwrap_or(u64::MAX)),
            metrics: metrics.clone(),
        });
        let worker = shared.clone();
        std::thread::Builder::new()
            .name(name.chars().take(15).collect())
            .spawn(move || work(&worker, &jobs, options))?;
        Ok(Batcher {
            queue,
            options,
            shared,
            metrics,
        })
    }

    /// Runs `rows` rows of `matrix` in the next batch with room for them (or at once, inline).
    /// Dropping the future before the batch forms takes the call out of it.
    pub async fn run(&self, matrix: Vec<f64>, rows: usize) -> Result<Vec<Tensor>, BatchError> {
        if self.options.max_queue_delay.is_zero() && !self.options.inline_below.is_zero() {
            if let Some(done) = self
                .shared
                .try_run(&matrix, rows, self.options.inline_below)
            {
                return done;
            }
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            matrix,
            rows,
            enqueued: Instant::now(),
            reply,
        };
        // Counted before it is sent: the model's thread counts it down once taken.
        let waiting = self.shared.waiting();
        waiting.fetch_add(1, Ordering::AcqRel);
        self.metrics.queue_depth.inc();
        match self.queue.try_send(job) {
            Ok(()) => {}
            Err(refused) => {
                waiting.fetch_sub(1, Ordering::AcqRel);
                self.metrics.queue_depth.dec();
                return Err(match refused {
                    TrySendError::Full(_) => {
                        self.metrics.queue_full.inc();
                        BatchError::QueueFull(self.options.queue_capacity)
                    }
                    TrySendError::Disconnected(_) => BatchError::Stopped,
                });
            }
        }
        answer.await.unwrap_or(Err(BatchError::Stopped))
    }
}

fn work<R: Runner>(shared: &Shared<R>, jobs: &Receiver<Job>, options: Options) {
    let taken = || {
        shared.metrics.queue_depth.dec();
        shared.waiting.fetch_sub(1, Ordering::AcqRel);
    };
    let mut carried: Option<Job> = None;
    loop {
        let first = match carried.take() {
            Some(job) => job,
            None => match jobs.recv() {
                Ok(job) => {
                    taken();
                    job
                }
                Err(_) => return,
            },
        };
        let closes_at = first.enqueued + options.max_queue_delay;
        let mut rows = first.rows;
        let mut batch = vec![first];
        while rows < options.max_batch_size {
            let next = match closes_at.checked_duration_since(Instant::now()) {
                Some(wait) if !wait.is_zero() => jobs.recv_timeout(wait).ok(),
                _ => jobs.try_recv().ok(),
            };
            let Some(job) = next else { break };
            taken();
            if rows + job.rows > options.max_batch_size {
                carried = Some(job);
                break;
            }
            rows += job.rows;
            batch.push(job);
        }
        run_batch(shared, batch);
    }
}

/// A run of `rows` rows of `matrix` on `runner`, checked: a run that panics fails its calls
/// (its runner is still sound: a session's run is one C call, which cannot unwind), and so does
/// an output that does not hold `rows` rows or whose values do not fill its shape.
fn checked_run<R: Runner>(
    runner: &mut R,
    matrix: &[f64],
    rows: usize,
) -> Result<Vec<Tensor>, String> {
    let outputs = std::panic::catch_unwind(AssertUnwindSafe(|| runner.run(matrix, rows)))
        .unwrap_or_else(|panic| {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(format!("the model's run panicked: {why}"))
        })?;
    let fills = |t: &Tensor| t.shape.iter().product::<usize>() == t.data.len();
    match outputs
        .iter()
        .find(|t| t.shape.first() != Some(&rows) || !fills(t))
    {
        Some(bad) => Err(format!(
            "model returned {:?} ({} values) for a batch of {rows} rows",
            bad.shape,
            bad.data.len()
        )),
        None => Ok(outputs),
    }
}

fn run_batch<R: Runner>(shared: &Shared<R>, mut batch: Vec<Job>) {
    let metrics = &shared.metrics;
    let formed = Instant::now();
    let before = batch.len();
    batch.retain(|job| !job.reply.is_closed());
    let gone = before - batch.len();
    if gone > 0 {
        metrics.cancelled.inc_by(gone as u64);
    }
    if batch.is_empty() {
        return;
    }
    for job in &batch {
        metrics
            .queue_seconds
            .observe(formed.duration_since(job.enqueued).as_secs_f64());
    }
    let rows: usize = batch.iter().map(|job| job.rows).sum();
    let merged;
    let matrix: &[f64] = if let [only] = batch.as_slice() {
        &only.matrix
    } else {
        merged = batch
            .iter()
            .flat_map(|job| job.matrix.iter().copied())
            .collect::<Vec<f64>>();
        &merged
    };
    let outputs = {
        let mut runner = shared
            .runner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let started = Instant::now();
        let outputs = checked_run(&mut *runner, matrix, rows);
        drop(runner);
        shared.ran(started.elapsed(), rows, batch.len());
        outputs
    };
    let mut offset = 0;
    for job in batch {
        let answer = match &outputs {
            Ok(outputs) => Ok(outputs
                .iter()
                .map(|t| {
                    t.rows(offset, offset + job.rows)
                        .expect("every output holds the batch's rows")
                })
                .collect()),
            Err(why) => Err(BatchError::Failed(why.clone())),
        };
        offset += job.rows;
        // A caller gone since the batch formed has nobody to answer.
        let _ = job.reply.send(answer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two outputs per row: the row's first value, and (sum, row count of the batch).
    fn echo_runner(batches: std::sync::Arc<std::sync::Mutex<Vec<usize>>>) -> impl Runner {
        move |matrix: &[f64], rows: usize| {
            batches.lock().unwrap().push(rows);
            let width = matrix.len() / rows;
            let first: Vec<f64> = matrix.chunks(width).map(|r| r[0]).collect();
            let pairs: Vec<f32> = matrix
                .chunks(width)
                .flat_map(|r| [r.iter().sum::<f64>() as f32, rows as f32])
                .collect();
            Ok(vec![
                Tensor {
                    shape: vec![rows],
                    data: Data::F64(first),
                },
                Tensor {
                    shape: vec![rows, 2],
                    data: Data::F32(pairs),
                },
            ])
        }
    }

    /// Without running inline: these tests are about the queue.
    fn options(max_batch_size: usize, delay_us: u64, capacity: usize) -> Options {
        Options {
            max_batch_size,
            max_queue_delay: Duration::from_micros(delay_us),
            queue_capacity: capacity,
            inline_below: Duration::ZERO,
        }
    }

    fn metrics() -> BatchMetrics {
        crate::metrics::Metrics::new()
            .expect("metrics")
            .batch("champion")
    }

    /// `rows` rows of width 3 whose first value names the call and the row.
    fn call(id: usize, rows: usize) -> Vec<f64> {
        (0..rows)
            .flat_map(|r| [(id * 1000 + r) as f64, 1.0, 2.0])
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn every_call_gets_exactly_its_own_rows_under_concurrency() {
        let batches = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let batcher = std::sync::Arc::new(
            Batcher::start(
                "test-batch",
                echo_runner(batches.clone()),
                options(16, 2_000, 1024),
                Duration::ZERO,
                metrics(),
            )
            .unwrap(),
        );
        let mut calls = Vec::new();
        for id in 0..200 {
            let batcher = batcher.clone();
            // Mixed sizes, some larger than a batch.
            let rows = [1, 3, 7, 16, 20][id % 5];
            calls.push(tokio::spawn(async move {
                (id, rows, batcher.run(call(id, rows), rows).await)
            }));
        }
        for done in calls {
            let (id, rows, answer) = done.await.unwrap();
            let outputs = answer.expect("answered");
            assert_eq!(outputs[0].shape, vec![rows]);
            let want: Vec<f64> = (0..rows).map(|r| (id * 1000 + r) as f64).collect();
            assert_eq!(outputs[0].data, Data::F64(want), "call {id}");
            assert_eq!(outputs[1].shape, vec![rows, 2]);
            let Data::F32(pairs) = &outputs[1].data else {
                panic!("f32")
            };
            for (r, pair) in pairs.chunks(2).enumerate() {
                assert_eq!(pair[0], ((id * 1000 + r) as f64 + 3.0) as f32, "call {id}");
            }
        }
        let batches = batches.lock().unwrap();
        assert_eq!(
            batches.iter().sum::<usize>(),
            200 / 5 * (1 + 3 + 7 + 16 + 20)
        );
        // Calls were merged, and only calls larger than a batch ran past its size, alone.
        assert!(batches.len() < 200, "{} runs for 200 calls", batches.len());
        assert!(batches.iter().all(|&rows| rows <= 16 || rows == 20));
    }

    #[tokio::test]
    async fn a_batch_waits_at_most_the_queue_delay() {
        let batches = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let batcher = Batcher::start(
            "test-delay",
            echo_runner(batches.clone()),
            options(64, 20_000, 8),
            Duration::ZERO,
            metrics(),
        )
        .unwrap();
        let started = Instant::now();
        let (a, b) = tokio::join!(batcher.run(call(1, 1), 1), batcher.run(call(2, 2), 2));
        assert_eq!(a.unwrap()[0].data, Data::F64(vec![1000.0]));
        assert_eq!(b.unwrap()[0].data, Data::F64(vec![2000.0, 2001.0]));
        // Both calls waited for the delay in one batch, since 64 rows never came.
        assert_eq!(*batches.lock().unwrap(), vec![3]);
        assert!(started.elapsed() >= Duration::from_millis(20));
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_and_cancelled_calls_are_not_run() {
        let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let runs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = runs.clone();
        let (gate, started) = (
            std::sync::Mutex::new(gate_rx),
            std::sync::Mutex::new(started_tx),
        );
        let runner = move |matrix: &[f64], rows: usize| {
            // Say the model is busy, and stay busy until the test releases it.
            let _ = started.lock().unwrap().send(());
            gate.lock().unwrap().recv().map_err(|e| e.to_string())?;
            seen.lock().unwrap().push(matrix[0]);
            Ok(vec![Tensor {
                shape: vec![rows],
                data: Data::I64(vec![7; rows]),
            }])
        };
        let m = metrics();
        let batcher = std::sync::Arc::new(
            Batcher::start(
                "test-full",
                runner,
                options(1, 0, 2),
                Duration::ZERO,
                m.clone(),
            )
            .unwrap(),
        );
        // The first call is taken by the thread and blocks it; two more fill the queue.
        let first = tokio::spawn({
            let b = batcher.clone();
            async move { b.run(call(1, 1), 1).await }
        });
        tokio::task::spawn_blocking(move || started_rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.queue_depth.get(), 0);
        let cancelled = tokio::spawn({
            let b = batcher.clone();
            async move { b.run(call(2, 1), 1).await }
        });
        let third = tokio::spawn({
            let b = batcher.clone();
            async move { b.run(call(3, 1), 1).await }
        });
        while m.queue_depth.get() != 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            batcher.run(call(4, 1), 1).await,
            Err(BatchError::QueueFull(2))
        );
        cancelled.abort();
        let _ = cancelled.await;
        for _ in 0..3 {
            gate_tx.send(()).unwrap();
        }
        assert_eq!(first.await.unwrap().unwrap()[0].data, Data::I64(vec![7]));
        assert_eq!(third.await.unwrap().unwrap()[0].data, Data::I64(vec![7]));
        // The cancelled call never reached the model.
        assert_eq!(*runs.lock().unwrap(), vec![1000.0, 3000.0]);
        assert_eq!(m.cancelled.get(), 1);
        assert_eq!(m.queue_full.get(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lone_call_of_a_fast_model_runs_inline_and_calls_behind_a_busy_one_queue() {
        let threads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = threads.clone();
        let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let (gate, started) = (
            std::sync::Mutex::new(gate_rx),
            std::sync::Mutex::new(started_tx),
        );
        let runner = move |matrix: &[f64], rows: usize| {
            let name = std::thread::current().name().unwrap_or("").to_string();
            if matrix[0] == 2000.0 {
                // The second call holds the model until released.
                let _ = started.lock().unwrap().send(());
                gate.lock().unwrap().recv().map_err(|e| e.to_string())?;
            }
            seen.lock().unwrap().push((matrix[0], name));
            Ok(vec![Tensor {
                shape: vec![rows],
                data: Data::I64(vec![1; rows]),
            }])
        };
        let m = metrics();
        let inline = Options {
            inline_below: Duration::from_millis(10),
            ..options(8, 0, 8)
        };
        let batcher = std::sync::Arc::new(
            Batcher::start(
                "test-inline",
                runner,
                inline,
                Duration::from_micros(20),
                m.clone(),
            )
            .unwrap(),
        );
        batcher.run(call(1, 1), 1).await.unwrap();
        let busy = tokio::spawn({
            let b = batcher.clone();
            async move { b.run(call(2, 1), 1).await }
        });
        tokio::task::spawn_blocking(move || started_rx.recv())
            .await
            .unwrap()
            .unwrap();
        let queued = tokio::spawn({
            let b = batcher.clone();
            async move { b.run(call(3, 1), 1).await }
        });
        // Calls 1 and 2 ran inline (no time queued); the third reaches the model's thread, which
        // times its wait before it waits for the model.
        while m.queue_seconds.get_sample_count() < 3 {
            tokio::task::yield_now().await;
        }
        gate_tx.send(()).unwrap();
        busy.await.unwrap().unwrap();
        queued.await.unwrap().unwrap();
        let threads = threads.lock().unwrap();
        let thread_of = |id: f64| threads.iter().find(|(v, _)| *v == id).unwrap().1.clone();
        assert_ne!(
            thread_of(1000.0),
            "test-inline",
            "a lone call runs on the caller's thread"
        );
        assert_eq!(
            thread_of(3000.0),
            "test-inline",
            "a call behind a busy model is queued"
        );
    }

    #[tokio::test]
    async fn a_failing_or_misshapen_run_fails_each_of_its_calls() {
        let failing = Batcher::start(
            "test-fail",
            |_: &[f64], _: usize| Err::<Vec<Tensor>, _>("boom".to_string()),
            options(8, 0, 8),
            Duration::ZERO,
            metrics(),
        )
        .unwrap();
        assert_eq!(
            failing.run(call(1, 2), 2).await,
            Err(BatchError::Failed("boom".into()))
        );
        let short = Batcher::start(
            "test-short",
            |_: &[f64], _: usize| {
                Ok(vec![Tensor {
                    shape: vec![1],
                    data: Data::Bool(vec![true]),
                }])
            },
            options(8, 0, 8),
            Duration::ZERO,
            metrics(),
        )
        .unwrap();
        assert_eq!(
            short.run(call(1, 3), 3).await,
            Err(BatchError::Failed(
                "model returned [1] (1 values) for a batch of 3 rows".into()
            ))
        );
        let unfilled = Batcher::start(
            "test-unfilled",
            |_: &[f64], rows: usize| {
                Ok(vec![Tensor {
                    shape: vec![rows, 2],
                    data: Data::F32(vec![0.5; rows]),
                }])
            },
            options(8, 0, 8),
            Duration::ZERO,
            metrics(),
        )
        .unwrap();
        assert_eq!(
            unfilled.run(call(1, 3), 3).await,
            Err(BatchError::Failed(
                "model returned [3, 2] (3 values) for a batch of 3 rows".into()
            ))
        );
    }

    #[tokio::test]
    async fn a_run_that_panics_fails_its_calls_and_the_model_serves_on() {
        // Rows of 1.0 make it panic; queued (delay 0, never inline) and inline alike.
        let panicky = |matrix: &[f64], rows: usize| {
            assert!(matrix[0] != 1.0, "row of ones");
            Ok(vec![Tensor {
                shape: vec![rows],
                data: Data::F64(matrix.to_vec()),
            }])
        };
        for (name, inline_below) in [("test-queued", 0), ("test-inline", 1_000_000)] {
            let mut options = options(8, 0, 8);
            options.inline_below = Duration::from_micros(inline_below);
            let batcher =
                Batcher::start(name, panicky, options, Duration::ZERO, metrics()).unwrap();
            assert_eq!(
                batcher.run(vec![1.0], 1).await,
                Err(BatchError::Failed(
                    "the model's run panicked: row of ones".into()
                ))
            );
            let served = batcher.run(vec![2.0], 1).await.expect("serves on");
            assert_eq!(served[0].data, Data::F64(vec![2.0]));
        }
    }
}
