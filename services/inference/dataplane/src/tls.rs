//! TLS of the data plane's ports (the public gRPC port and `/metrics`): rustls (ring) with the
//! certificate chain and key the service's settings name, read again when either file changes on
//! disk, so a certificate renewed in place serves from the next handshake without a restart. A
//! pair that does not agree (the certificate rewritten, its key not yet) is not taken: the last
//! good one serves on, and `tls_certificate_not_reloaded` is logged once per change. The client
//! CA of mutual TLS is read at start.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls::crypto::{ring, CryptoProvider};
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

use crate::jsonlog;
use crate::spec::TlsSpec;

type Failure = Box<dyn std::error::Error + Send + Sync>;

/// ALPN of the gRPC port (HTTP/2) and of `/metrics` (HTTP/1.1).
pub const GRPC: &[&[u8]] = &[b"h2"];
pub const HTTP1: &[&[u8]] = &[b"http/1.1"];

/// The server side of `tls` for `port` ("grpc", "metrics": how the logs name it).
pub fn server_config(
    tls: &TlsSpec,
    port: &'static str,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, Failure> {
    let provider = Arc::new(ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &tls.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for certificate in certificates(ca)? {
                roots.add(certificate)?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let resolver = Reloading::new(&tls.cert_file, &tls.key_file, provider, port)?;
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The connections `listener` accepts, after their TLS handshake: each handshake runs on a task
/// of its own (10 s at most), so a slow or silent client holds up no other. TCP_NODELAY as on the
/// plaintext port: a response must not wait for the client's delayed ACK.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (sender, receiver) = mpsc::channel(128);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        while !sender.is_closed() {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of file descriptors, say: wait rather than spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (acceptor, sender) = (acceptor.clone(), sender.clone());
            tokio::spawn(async move {
                let handshake =
                    tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await;
                if let Ok(Ok(stream)) = handshake {
                    let _ = sender.send(Ok(stream)).await;
                }
            });
        }
    });
    ReceiverStream::new(receiver)
}

pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, Failure> {
    let found = rustls_pemfile::certs(&mut BufReader::new(File::open(path)?))
        .collect::<Result<Vec<_>, _>>()?;
    if found.is_empty() {
        return Err(format!("no certificate in {}", path.display()).into());
    }
    Ok(found)
}

/// When each file last changed, and its size.
type Stamp = [(SystemTime, u64); 2];

#[derive(Debug)]
struct Reloading {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    port: &'static str,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    current: Arc<CertifiedKey>,
    stamp: Stamp,
    /// The files' stamp when they last failed to load: not tried again until they change.
    refused: Option<Stamp>,
}

impl Reloading {
    fn new(
        cert_file: &Path,
        key_file: &Path,
        provider: Arc<CryptoProvider>,
        port: &'static str,
    ) -> Result<Self, Failure> {
        let state = State {
            stamp: stamp(cert_file, key_file)?,
            current: Arc::new(load(cert_file, key_file, &provider)?),
            refused: None,
        };
        Ok(Self {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            provider,
            port,
            state: Mutex::new(state),
        })
    }

    /// The pair to serve with: the files again when they changed and agree, else the last one.
    fn current(&self) -> Arc<CertifiedKey> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Ok(now) = stamp(&self.cert_file, &self.key_file) else {
            return state.current.clone(); // a file replaced by rename: here again next time
        };
        if now == state.stamp || Some(now) == state.refused {
            return state.current.clone();
        }
        match load(&self.cert_file, &self.key_file, &self.provider) {
            Ok(loaded) => {
                *state = State {
                    current: Arc::new(loaded),
                    stamp: now,
                    refused: None,
                };
                jsonlog::emit(
                    "info",
                    "tls_certificate_reloaded",
                    json!({"port": self.port, "file": self.cert_file.display().to_string()}),
                );
            }
            Err(err) => {
                state.refused = Some(now);
                jsonlog::emit(
                    "warning",
                    "tls_certificate_not_reloaded",
                    json!({"port": self.port, "error": err.to_string()}),
                );
            }
        }
        state.current.clone()
    }
}

fn stamp(cert_file: &Path, key_file: &Path) -> std::io::Result<Stamp> {
    let of = |path: &Path| -> std::io::Result<(SystemTime, u64)> {
        let meta = std::fs::metadata(path)?;
        Ok((meta.modified()?, meta.len()))
    };
    Ok([of(cert_file)?, of(key_file)?])
}

/// The chain and key, checked to agree (`CertifiedKey::from_der`).
fn load(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, Failure> {
    let chain = certificates(cert_file)?;
    let key = rustls_pemfile::private_key(&mut BufReader::new(File::open(key_file)?))?
        .ok_or_else(|| format!("no private key in {}", key_file.display()))?;
    Ok(CertifiedKey::from_der(chain, key, provider)?)
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}
