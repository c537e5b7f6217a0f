//! TLS of the data plane's ports (the public gRPC port and `/metrics`): rustls (ring) with the
//! certificate chain and key the service's settings name, read again when either file changes on
//! disk, so a certificate renewed in place serves from the next handshake without a restart. A
//! pair that does not agree (the certificate rewritten, its key not yet) is not taken: the last
//! good one serves on, and `tls_certificate_not_reloaded` is logged once per change. The client
//! CA bundle of mutual TLS is watched the same way.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls::client::danger::HandshakeSignatureValid;
use tokio_rustls::rustls::crypto::{ring, CryptoProvider};
use tokio_rustls::rustls::pki_types::{CertificateDer, UnixTime};
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
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
            let verifier_provider = provider.clone();
            let verifier = Reloading::new(
                vec![ca.clone()],
                port,
                Box::new(move |files| client_verifier(files, &verifier_provider)),
            )?;
            builder.with_client_cert_verifier(Arc::new(verifier))
        }
    };
    let resolver = Reloading::new(
        vec![tls.cert_file.clone(), tls.key_file.clone()],
        port,
        Box::new(move |files| certified_key(files, &provider)),
    )?;
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

/// When each watched file last changed, and its size.
type Stamp = Vec<(SystemTime, u64)>;

type Load<T> = Box<dyn Fn(&[PathBuf]) -> Result<T, Failure> + Send + Sync>;

/// What `load` makes of `files`, made again when one of them changes and the result loads.
struct Reloading<T> {
    files: Vec<PathBuf>,
    port: &'static str,
    load: Load<T>,
    state: Mutex<State<T>>,
}

struct State<T> {
    current: T,
    stamp: Stamp,
    /// The files' stamp when they last failed to load: not tried again until they change.
    refused: Option<Stamp>,
}

impl<T: Clone> Reloading<T> {
    fn new(files: Vec<PathBuf>, port: &'static str, load: Load<T>) -> Result<Self, Failure> {
        let state = State {
            stamp: stamp(&files)?,
            current: load(&files)?,
            refused: None,
        };
        Ok(Self {
            files,
            port,
            load,
            state: Mutex::new(state),
        })
    }

    /// The files again when they changed and load, else what was loaded last.
    fn current(&self) -> T {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Ok(now) = stamp(&self.files) else {
            return state.current.clone(); // a file replaced by rename: here again next time
        };
        if now == state.stamp || Some(&now) == state.refused.as_ref() {
            return state.current.clone();
        }
        let file = self.files[0].display().to_string();
        match (self.load)(&self.files) {
            Ok(loaded) => {
                *state = State {
                    current: loaded,
                    stamp: now,
                    refused: None,
                };
                jsonlog::emit(
                    "info",
                    "tls_certificate_reloaded",
                    json!({"port": self.port, "file": file}),
                );
            }
            Err(err) => {
                state.refused = Some(now);
                jsonlog::emit(
                    "warning",
                    "tls_certificate_not_reloaded",
                    json!({"port": self.port, "file": file, "error": err.to_string()}),
                );
            }
        }
        state.current.clone()
    }
}

impl<T> std::fmt::Debug for Reloading<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading")
            .field("files", &self.files)
            .field("port", &self.port)
            .finish()
    }
}

fn stamp(files: &[PathBuf]) -> std::io::Result<Stamp> {
    files
        .iter()
        .map(|path| {
            let meta = std::fs::metadata(path)?;
            Ok((meta.modified()?, meta.len()))
        })
        .collect()
}

/// The server's chain and key (`[cert_file, key_file]`), checked to agree
/// (`CertifiedKey::from_der`).
fn certified_key(
    files: &[PathBuf],
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, Failure> {
    let chain = certificates(&files[0])?;
    let key = rustls_pemfile::private_key(&mut BufReader::new(File::open(&files[1])?))?
        .ok_or_else(|| format!("no private key in {}", files[1].display()))?;
    Ok(Arc::new(CertifiedKey::from_der(chain, key, provider)?))
}

/// A verifier of client certificates against the CA bundle in `files[0]`.
fn client_verifier(
    files: &[PathBuf],
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, Failure> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(&files[0])? {
        roots.add(certificate)?;
    }
    Ok(WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?)
}

impl ResolvesServerCert for Reloading<Arc<CertifiedKey>> {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// Mutual TLS against a client CA bundle that may be renewed in place too. It sends clients no
/// hint of the CAs it accepts (the list would change under a borrowed answer); they present
/// their certificate regardless.
impl ClientCertVerifier for Reloading<Arc<dyn ClientCertVerifier>> {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, tokio_rustls::rustls::Error> {
        self.current()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}
