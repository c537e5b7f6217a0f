//! `driftline-dataplane`: inference's compiled data plane (ADR 0011).
//!
//!     driftline-dataplane serve SPEC.json                  # Predict/PredictBatch, control, /metrics
//!     driftline-dataplane echo PORT_FILE [FEATURE ...]     # the benchmark's echo on tonic
//!     driftline-dataplane curve SPEC.pb ORT_LIBRARY MAX_BATCH SECONDS_PER_POINT
//!                                                          # the benchmark's curve (`curve`)
//!
//! The Python control plane (`driftline.services.inference.dataplane`) writes the spec, starts
//! the process, and loads models into it over the control socket. Once the public port, the
//! metrics port and the control socket listen, `{"port": .., "metrics_port": ..}` is written to
//! the spec's `port_file`. Health (`grpc.health.v1`) is NOT_SERVING until a model is loaded.
//! SIGTERM or SIGINT stops accepting calls, finishes those in flight and their shadow scorings,
//! then waits up to 10 s for the log's acknowledgements.

// Refusals are `tonic::Status` from the check that finds them to the handler that returns them,
// as tonic's own service traits return them; boxing each would only add an allocation.
#![allow(clippy::result_large_err)]

mod batch;
mod control;
mod curve;
mod echo;
mod jsonlog;
mod kserve;
mod log;
mod metrics;
mod model;
mod proto;
mod routing;
mod service;
mod spec;
mod store;
mod tls;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, Mutex};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tower::util::MapResponseLayer;

use crate::proto::control::data_plane_control_server::DataPlaneControlServer;
use crate::proto::inference::inference_service_server::InferenceServiceServer;
use crate::proto::kserve::grpc_inference_service_server::GrpcInferenceServiceServer;

type Failure = Box<dyn std::error::Error + Send + Sync>;

// A call allocates a few small buffers per prediction (strings, records, replies): glibc's
// malloc and free were 18% of the process's CPU under PredictBatch(64) (perf), mimalloc's a
// fraction of that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A receiver that turns true on SIGTERM or SIGINT.
fn stop_on_signals() -> Result<watch::Receiver<bool>, Failure> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        let _ = tx.send(true);
    });
    Ok(rx)
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// The public port's connections: plain TCP, or after their TLS handshake (`tls::incoming`).
/// Either sends small messages at once (TCP_NODELAY): without it a response waits for the
/// client's delayed ACK, 40 ms here.
enum Incoming {
    Plain(TcpIncoming),
    Tls(ReceiverStream<Result<tokio_rustls::server::TlsStream<TcpStream>, std::io::Error>>),
}

async fn listen(address: &str, tls: Option<&spec::TlsSpec>) -> Result<(Incoming, u16), Failure> {
    let listener = TcpListener::bind(address).await?;
    let port = listener.local_addr()?.port();
    let incoming = match tls {
        None => Incoming::Plain(TcpIncoming::from_listener(listener, true, None)?),
        Some(tls) => Incoming::Tls(tls::incoming(
            listener,
            tls::server_config(tls, "grpc", tls::GRPC)?,
        )),
    };
    Ok((incoming, port))
}

fn tls_mode(tls: Option<&spec::TlsSpec>) -> &'static str {
    match tls {
        None => "off",
        Some(tls) if tls.client_ca_file.is_some() => "mutual",
        Some(_) => "on",
    }
}

/// Written whole, then renamed: a reader never sees half of it.
fn write_ports(path: &Path, ports: &serde_json::Value) -> Result<(), Failure> {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, ports.to_string())?;
    std::fs::rename(&partial, path)?;
    jsonlog::emit("info", "listening", ports.clone());
    Ok(())
}

/// Have the kernel send SIGTERM (a graceful stop) when the control plane's thread that started
/// this process exits, so a control plane killed outright leaves no data plane holding its ports.
fn follow_parent(parent: u32) -> Result<(), Failure> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes plain integers and touches no memory of ours.
    let set = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) };
    if set != 0 {
        return Err(format!(
            "prctl(PR_SET_PDEATHSIG): {}",
            std::io::Error::last_os_error()
        )
        .into());
    }
    // The parent may have gone before the call above.
    if std::os::unix::process::parent_id() != parent {
        return Err(format!("the control plane (pid {parent}) has exited").into());
    }
    Ok(())
}

/// Removes the control socket when dropped: on every way out of `serve` once it is bound.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn serve(spec_path: &Path) -> Result<(), Failure> {
    let spec: spec::Spec = serde_json::from_slice(&std::fs::read(spec_path)?)?;
    spec.check()?;
    if let Some(parent) = spec.parent_pid {
        follow_parent(parent)?;
    }
    ort::init_from(spec.ort_library.clone())
        .with_name("driftline-dataplane")
        .commit()?;
    jsonlog::emit(
        "info",
        "starting",
        json!({"feature_set": spec.store.feature_set, "max_entities": spec.max_entities, "workers": spec.workers}),
    );
    let metrics = metrics::Metrics::new()?;
    let store = store::Store::connect(&spec.store)
        .await
        .map_err(|e| format!("online store: {e}"))?;
    let logger = log::PredictionLogger::new(&spec.log, log::LogCounts::new(&metrics))?;
    let predictor = Arc::new(service::Predictor {
        store,
        champion: service::ModelSlot::default(),
        challenger: service::ModelSlot::default(),
        routing: spec.routing,
        batching: model::batch_options(
            spec.batching.max_batch_size,
            spec.batching.max_queue_delay_us,
            spec.batching.queue_capacity,
            spec.batching.inline_below_us,
        ),
        default_deadline: Duration::from_secs_f64(spec.default_deadline_s),
        logger,
        model_name: spec.model_name.clone(),
        max_entities: spec.max_entities,
        metrics: metrics.clone(),
        shadows: AtomicUsize::new(0),
    });
    let (mut health, health_service) = tonic_health::server::health_reporter();
    for service in service::SERVICES {
        health
            .set_service_status(service, ServingStatus::NotServing)
            .await;
    }

    let (incoming, port) = listen(&spec.listen, spec.tls.as_ref()).await?;
    let metrics_listener = TcpListener::bind(&spec.metrics_listen).await?;
    let metrics_port = metrics_listener.local_addr()?.port();
    let _ = std::fs::remove_file(&spec.control_socket);
    let control_listener = UnixListener::bind(&spec.control_socket)?;
    let _socket = SocketFile(spec.control_socket.clone());
    // Only this user may load models.
    std::fs::set_permissions(&spec.control_socket, std::fs::Permissions::from_mode(0o600))?;
    let metrics_tls = match &spec.metrics_tls {
        Some(tls) => Some(TlsAcceptor::from(tls::server_config(
            tls,
            "metrics",
            tls::HTTP1,
        )?)),
        None => None,
    };
    let scrapes = tokio::spawn(metrics::serve(
        metrics_listener,
        metrics.clone(),
        metrics_tls,
    ));
    let sampler = tokio::spawn({
        let predictor = predictor.clone();
        async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            loop {
                every.tick().await;
                let buffered = predictor.logger.buffered();
                predictor.metrics.log_buffered.set(buffered);
            }
        }
    });
    write_ports(
        &spec.port_file,
        &json!({
            "port": port,
            "metrics_port": metrics_port,
            "tls": tls_mode(spec.tls.as_ref()),
            "metrics_tls": tls_mode(spec.metrics_tls.as_ref()),
        }),
    )?;

    let stop = stop_on_signals()?;
    let control = Arc::new(control::Control {
        predictor: predictor.clone(),
        health: Mutex::new(health),
        loading: Mutex::new(()),
    });
    let control_server = Server::builder()
        .add_service(DataPlaneControlServer::new(control::ControlService(
            control,
        )))
        .serve_with_incoming_shutdown(
            UnixListenerStream::new(control_listener),
            stopped(stop.clone()),
        );
    // Server reflection (v1, and v1alpha as grpcio's serves it) of what the public port serves.
    let reflection = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        for name in service::SERVICES.iter().filter(|n| !n.is_empty()) {
            builder = builder.with_service_name(*name);
        }
        builder
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
    };
    let (reflection_v1, reflection_v1alpha) =
        (reflection().build_v1()?, reflection().build_v1alpha()?);
    let public = Server::builder()
        .layer(MapResponseLayer::new(
            service::oversized_is_resource_exhausted::<tonic::body::BoxBody>,
        ))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            InferenceServiceServer::new(service::Service(predictor.clone()))
                .max_decoding_message_size(spec.max_message_bytes),
        )
        .add_service(
            GrpcInferenceServiceServer::new(kserve::KServe(predictor.clone()))
                .max_decoding_message_size(spec.max_message_bytes),
        );
    let public_server = async move {
        match incoming {
            Incoming::Plain(incoming) => {
                public
                    .serve_with_incoming_shutdown(incoming, stopped(stop))
                    .await
            }
            Incoming::Tls(incoming) => {
                public
                    .serve_with_incoming_shutdown(incoming, stopped(stop))
                    .await
            }
        }
    };
    let served = tokio::try_join!(public_server, control_server);
    scrapes.abort();
    sampler.abort();
    served?;
    // Shadow scorings of calls already answered still go to the log.
    let drain_until = tokio::time::Instant::now() + Duration::from_secs(10);
    while predictor.shadows.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < drain_until
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let flushed = predictor.logger.flush(Duration::from_secs(10));
    let counts = &predictor.logger.counts;
    jsonlog::emit(
        if flushed { "info" } else { "warning" },
        "stopped",
        json!({
            "log_produced": counts.produced.get(),
            "log_acknowledged": counts.acknowledged.get(),
            "log_dropped_queue_full": counts.dropped_queue_full.get(),
            "log_delivery_failed": counts.delivery_failed.get(),
            "log_flushed": flushed,
        }),
    );
    Ok(())
}

async fn echo(port_file: &Path, features: Vec<String>) -> Result<(), Failure> {
    let (Incoming::Plain(incoming), port) = listen("127.0.0.1:0", None).await? else {
        unreachable!("no TLS asked for");
    };
    write_ports(port_file, &json!({"port": port}))?;
    Server::builder()
        .add_service(InferenceServiceServer::new(echo::Echo { features }))
        .serve_with_incoming_shutdown(incoming, stopped(stop_on_signals()?))
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
    Curve {
        spec: PathBuf,
        ort_library: String,
        max_batch: usize,
        seconds_per_point: f64,
    },
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: driftline-dataplane serve SPEC.json | echo PORT_FILE [FEATURE ...] \
         | curve SPEC.pb ORT_LIBRARY MAX_BATCH SECONDS_PER_POINT"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match args.first().map(String::as_str) {
        Some("serve") if args.len() == 2 => Command::Serve(PathBuf::from(&args[1])),
        Some("echo") if args.len() >= 2 => {
            Command::Echo(PathBuf::from(&args[1]), args[2..].to_vec())
        }
        Some("curve") if args.len() == 5 => match (args[3].parse(), args[4].parse()) {
            (Ok(max_batch), Ok(seconds_per_point)) => Command::Curve {
                spec: PathBuf::from(&args[1]),
                ort_library: args[2].clone(),
                max_batch,
                seconds_per_point,
            },
            _ => return usage(),
        },
        _ => return usage(),
    };
    let workers = match &command {
        Command::Serve(spec) => workers_of(spec),
        Command::Echo(..) | Command::Curve { .. } => 2,
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
            Command::Curve {
                spec,
                ort_library,
                max_batch,
                seconds_per_point,
            } => {
                curve::run(curve::Curve {
                    spec_path: &spec,
                    ort_library: &ort_library,
                    max_batch,
                    seconds_per_point,
                })
                .await
            }
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
