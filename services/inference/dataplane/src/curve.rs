//! The benchmark's curve over batch sizes (`bench/inference.py --only dataplane-curve`): one
//! model, loaded as `LoadModel` loads it (its device, its I/O binding, its warm-up), run through
//! its batcher as a lone call of each size is, with no server, store or log around it, so the
//! curve runs wherever the binary and ONNX Runtime do (a GPU machine included).
//!
//! Prints JSON lines: the model's provider, and eight rows with their scores (for the bench to
//! compare with the CPU's), then one line per batch size.

use std::path::Path;
use std::time::{Duration, Instant};

use prost::Message;
use serde_json::json;

use crate::metrics::Metrics;
use crate::model::{batch_options, Model};
use crate::proto::control::ModelSpec;
use crate::Failure;

/// What the curve measures: `spec_path` holds a serialized `ModelSpec` (the control plane's
/// `model_spec`), `ort_library` ONNX Runtime's shared library.
pub struct Curve<'a> {
    pub spec_path: &'a Path,
    pub ort_library: &'a str,
    pub max_batch: usize,
    pub seconds_per_point: f64,
}

/// Rows of deterministic values in [-1, 1): the same inputs on every run of the bench.
fn matrix(rows: usize, width: usize) -> Vec<f64> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..rows * width)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect()
}

/// The value at quantile `q` of sorted `samples`.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let at = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[at]
}

pub async fn run(curve: Curve<'_>) -> Result<(), Failure> {
    ort::init_from(curve.ort_library.to_string())
        .with_name("driftline-dataplane-curve")
        .commit()?;
    let spec = ModelSpec::decode(std::fs::read(curve.spec_path)?.as_slice())?;
    let store_width = spec.columns.iter().max().map_or(0, |&c| c as usize + 1);
    // Every size runs as one call, as a lone call does when serving (no delay, the default
    // inline threshold).
    let options = batch_options(curve.max_batch.max(64), 0, 8, 150);
    let metrics = Metrics::new()?.batch("champion");
    let model = Model::load(&spec, store_width, options, metrics)
        .map_err(|err| format!("the model does not load: {err}"))?;
    // Eight rows and their scores on this device, for the bench to check against the CPU's.
    let width = model.columns.len();
    let check = matrix(8, width);
    let scores = model
        .score(check.clone(), 8)
        .await
        .map_err(|err| format!("the check run failed: {err:?}"))?;
    println!(
        "{}",
        json!({
            "provider": model.provider,
            "io_binding": model.io_binding,
            "load_seconds": model.load_seconds,
            "check": {"rows": check.chunks(width).collect::<Vec<_>>(), "scores": scores},
        })
    );
    let per_point = Duration::from_secs_f64(curve.seconds_per_point);
    let mut rows = 1;
    while rows <= curve.max_batch {
        let input = matrix(rows, width);
        for _ in 0..5 {
            model
                .infer(input.clone(), rows)
                .await
                .map_err(|err| format!("a run of {rows} rows failed: {err:?}"))?;
        }
        let mut samples = Vec::new();
        let until = Instant::now() + per_point;
        while Instant::now() < until || samples.len() < 5 {
            let call = input.clone();
            let started = Instant::now();
            let ran = model.infer(call, rows).await;
            samples.push(started.elapsed());
            ran.map_err(|err| format!("a run of {rows} rows failed: {err:?}"))?;
        }
        let mean = samples.iter().sum::<Duration>().as_secs_f64() / samples.len() as f64;
        samples.sort_unstable();
        println!(
            "{}",
            json!({
                "batch": rows,
                "p50_s": quantile(&samples, 0.5).as_secs_f64(),
                "p99_s": quantile(&samples, 0.99).as_secs_f64(),
                "runs_per_s": 1.0 / mean,
                "rows_per_s": rows as f64 / mean,
            })
        );
        rows *= 2;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_the_same_on_every_run_and_within_range() {
        let first = matrix(4, 3);
        assert_eq!(first, matrix(4, 3));
        assert_eq!(first.len(), 12);
        assert!(first.iter().all(|v| (-1.0..1.0).contains(v)));
        assert!(first.windows(2).any(|w| w[0] != w[1]));
    }

    #[test]
    fn quantiles_pick_from_the_sorted_samples() {
        let sorted: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&sorted, 0.5), Duration::from_millis(51));
        assert_eq!(quantile(&sorted, 0.99), Duration::from_millis(99));
        assert_eq!(quantile(&sorted, 0.0), Duration::from_millis(1));
    }
}
