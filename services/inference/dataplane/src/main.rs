//! `driftline-dataplane`: inference's compiled data plane (a spike, ADR 0011).
//!
//!     driftline-dataplane serve SPEC.json     # Predict/PredictBatch from the champion
//!     driftline-dataplane echo PORT_FILE [FEATURE ...]   # the benchmark's echo on tonic
//!
//! The Python control plane (`driftline.services.inference.dataplane`) writes the spec and
//! starts, waits for and stops the process. Readiness: the bound port is written to the spec's
//! `port_file` once the model is loaded and warm. SIGTERM or SIGINT stops accepting calls,
//! finishes those in flight, then waits up to 10 s for the log's acknowledgements.

mod echo;
mod jsonlog;
mod log;
mod model;
mod proto;
mod service;
mod spec;
mod store;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

use crate::proto::inference::inference_service_server::InferenceServiceServer;

type Failure = Box<dyn std::error::Error + Send + Sync>;

/// Resolves on SIGTERM or SIGINT.
async fn stop_signal() {
    let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("a SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Listens on `address`; writes the bound port to `port_file`. Accepted connections send small
/// messages at once (TCP_NODELAY): without it a response waits for the client's delayed ACK,
/// 40 ms here.
async fn bind(address: &str, port_file: Option<&Path>) -> Result<TcpIncoming, Failure> {
    let listener = TcpListener::bind(address).await?;
    let bound: SocketAddr = listener.local_addr()?;
    if let Some(path) = port_file {
        // Written whole, then renamed: a reader never sees half a port.
        let partial = path.with_extension("partial");
        std::fs::write(&partial, bound.port().to_string())?;
        std::fs::rename(&partial, path)?;
    }
    jsonlog::emit("info", "listening", json!({"address": bound.to_string()}));
    TcpIncoming::from_listener(listener, true, None)
}

async fn serve(spec_path: &Path) -> Result<(), Failure> {
    let spec: spec::Spec = serde_json::from_slice(&std::fs::read(spec_path)?)?;
    spec.check()?;
    ort::init_from(spec.ort_library.clone())
        .with_name("driftline-dataplane")
        .commit()?;
    let model =
        model::Model::load(&spec.model).map_err(|e| format!("model load failed: {}", e.0))?;
    let store = store::Store::connect(&spec.store)
        .await
        .map_err(|e| format!("online store: {e:?}"))?;
    let logger = log::PredictionLogger::new(&spec.log)?;
    jsonlog::emit(
        "info",
        "model_ready",
        json!({
            "model": spec.model.name,
            "version": spec.model.version,
            "feature_set": spec.store.feature_set,
            "provider": "CPUExecutionProvider",
        }),
    );
    let predictor = Arc::new(service::Predictor {
        store,
        model,
        logger,
        max_entities: spec.max_entities,
        policy: spec.store.policy,
    });
    let incoming = bind(&spec.listen, spec.port_file.as_deref()).await?;
    let service = InferenceServiceServer::new(service::Service(predictor.clone()))
        .max_decoding_message_size(spec.max_message_bytes);
    Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, stop_signal())
        .await?;
    let flushed = predictor.logger.flush(Duration::from_secs(10));
    let counts = &predictor.logger.counts;
    jsonlog::emit(
        if flushed { "info" } else { "warning" },
        "stopped",
        json!({
            "log_produced": counts.produced.load(Ordering::Relaxed),
            "log_acknowledged": counts.acknowledged.load(Ordering::Relaxed),
            "log_dropped_queue_full": counts.dropped_queue_full.load(Ordering::Relaxed),
            "log_delivery_failed": counts.delivery_failed.load(Ordering::Relaxed),
            "log_flushed": flushed,
        }),
    );
    Ok(())
}

async fn echo(port_file: &Path, features: Vec<String>) -> Result<(), Failure> {
    let incoming = bind("127.0.0.1:0", Some(port_file)).await?;
    Server::builder()
        .add_service(InferenceServiceServer::new(echo::Echo { features }))
        .serve_with_incoming_shutdown(incoming, stop_signal())
        .await?;
    Ok(())
}

fn workers_of(spec_path: &Path) -> usize {
    std::fs::read(spec_path)
        .ok()
        .and_then(|raw| serde_json::from_slice::<serde_json::Value>(&raw).ok())
        .and_then(|v| v.get("workers").and_then(serde_json::Value::as_u64))
        .map_or(2, |w| w.max(1) as usize)
}

enum Command {
    Serve(PathBuf),
    Echo(PathBuf, Vec<String>),
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match args.first().map(String::as_str) {
        Some("serve") if args.len() == 2 => Command::Serve(PathBuf::from(&args[1])),
        Some("echo") if args.len() >= 2 => {
            Command::Echo(PathBuf::from(&args[1]), args[2..].to_vec())
        }
        _ => {
            eprintln!("usage: driftline-dataplane serve SPEC.json | echo PORT_FILE [FEATURE ...]");
            return ExitCode::from(2);
        }
    };
    let workers = match &command {
        Command::Serve(spec) => workers_of(spec),
        Command::Echo(..) => 2,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            jsonlog::emit("error", "runtime_failed", json!({"error": err.to_string()}));
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match command {
            Command::Serve(spec) => serve(&spec).await,
            Command::Echo(port_file, features) => echo(&port_file, features).await,
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            jsonlog::emit("error", "failed", json!({"error": err.to_string()}));
            ExitCode::FAILURE
        }
    }
}
