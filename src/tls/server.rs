//! The node's TLS: its certificate, the CA client certificates are verified against, and
//! reloading them while it serves.
//!
//! [`ServerTls`] holds the current `rustls::ServerConfig`; each new connection takes the
//! one current when it is accepted, so a reload changes what new connections see and
//! leaves open ones as they are. A reload happens on SIGHUP and when one of the files'
//! modification time (or size) changes, looked at every [`POLL_EVERY`]; a certificate that
//! does not load (unreadable, unparsable, not matching its key) is logged and the old one
//! kept. Writers replacing the files one at a time may leave a key beside the wrong
//! certificate for a moment: that load fails, and the next look (the files settled) loads.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use parking_lot::RwLock;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use tokio_rustls::TlsAcceptor;

use super::{load_certs, load_key, load_roots, provider};
use crate::config::TlsConfig;

/// How often the files' modification times are looked at.
pub const POLL_EVERY: Duration = Duration::from_secs(2);
/// The protocol ALPN names for gRPC; segment fetch offers none.
const ALPN_H2: &[u8] = b"h2";

/// The node's TLS settings and the server config built from them now.
#[derive(Debug)]
pub struct ServerTls {
    config: TlsConfig,
    current: RwLock<Arc<Loaded>>,
    /// The files' (mtime, size) as of the last load attempt.
    stamps: parking_lot::Mutex<Vec<Option<(SystemTime, u64)>>>,
}

impl ServerTls {
    /// Load the files (an error names the one that failed).
    pub fn load(config: TlsConfig) -> Result<Arc<ServerTls>> {
        let stamps = stamps(&config);
        let built = build(&config)?;
        Ok(Arc::new(ServerTls {
            config,
            current: RwLock::new(built),
            stamps: parking_lot::Mutex::new(stamps),
        }))
    }

    /// What a connection accepted now is served with.
    pub fn current(&self) -> Arc<Loaded> {
        self.current.read().clone()
    }

    /// Load the files again; on success new connections use them, on failure the error is
    /// logged and the current certificate stays. Returns whether it loaded.
    pub fn reload(&self, why: &str) -> bool {
        *self.stamps.lock() = stamps(&self.config);
        match build(&self.config) {
            Ok(c) => {
                *self.current.write() = c;
                tracing::info!(cert = %self.config.cert.display(), why, "TLS certificate reloaded");
                true
            }
            Err(e) => {
                tracing::error!(
                    cert = %self.config.cert.display(),
                    why,
                    error = %format!("{e:#}"),
                    "TLS certificate not reloaded: keeping the current one"
                );
                false
            }
        }
    }

    /// Reload on SIGHUP and when a file changes, until the runtime stops.
    pub fn spawn_reloader(self: &Arc<Self>) -> Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        let tls = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let why = tokio::select! {
                    _ = hup.recv() => "SIGHUP",
                    _ = tick.tick() => "file changed",
                };
                let Some(tls) = tls.upgrade() else { return };
                if why == "SIGHUP" || *tls.stamps.lock() != stamps(&tls.config) {
                    tls.reload(why);
                }
            }
        });
        Ok(())
    }
}

fn files(c: &TlsConfig) -> Vec<&PathBuf> {
    [Some(&c.cert), Some(&c.key), c.client_ca.as_ref()]
        .into_iter()
        .flatten()
        .collect()
}

fn stamps(c: &TlsConfig) -> Vec<Option<(SystemTime, u64)>> {
    files(c)
        .into_iter()
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
}

/// One load of the files: the rustls config, and the client certificate check that
/// follows its handshakes.
#[derive(Debug)]
pub struct Loaded {
    config: Arc<ServerConfig>,
    /// The client CA's verifier (`None`: client certificates are not asked for).
    clients: Option<Arc<dyn ClientCertVerifier>>,
    require_client_cert: bool,
}

impl Loaded {
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.clone())
    }

    /// After the handshake, before a byte of the connection is served: the client's
    /// certificate verified against the client CA (required, or checked if given). The
    /// error says why, for the client.
    pub fn check_client(&self, certs: Option<&[CertificateDer<'_>]>) -> Result<(), String> {
        let Some(verifier) = &self.clients else {
            return Ok(());
        };
        match certs {
            Some([leaf, chain @ ..]) => verifier
                .verify_client_cert(leaf, chain, UnixTime::now())
                .map(|_| ())
                .map_err(|e| format!("this node refused the client certificate: {e}")),
            _ if self.require_client_cert => Err("this node requires a client certificate \
                 signed by its client CA (--tls-cert and --tls-key)"
                .to_owned()),
            _ => Ok(()),
        }
    }
}

/// The client CA's verifier with its verdict on the certificate put off until
/// [`Loaded::check_client`] (the proof that the client holds the certificate's key is
/// still checked in the handshake). A certificate refused inside the handshake is a TLS
/// alert that a TLS 1.3 client, which has finished its side by then, often reads only as
/// "connection closed"; after it, the node refuses in the client's protocol, saying why.
#[derive(Debug)]
struct Deferred(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for Deferred {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The server config of `c`'s files.
fn build(c: &TlsConfig) -> Result<Arc<Loaded>> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let clients = match &c.client_ca {
        Some(ca) => {
            let roots = Arc::new(load_roots(ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
                .build()
                .context("the client CA")?;
            Some(verifier)
        }
        None => None,
    };
    let builder = match &clients {
        Some(v) => builder.with_client_cert_verifier(Arc::new(Deferred(v.clone()))),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(load_certs(&c.cert)?, load_key(&c.key)?)
        .with_context(|| {
            format!(
                "the certificate {} with the key {}",
                c.cert.display(),
                c.key.display()
            )
        })?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(Loaded {
        config: Arc::new(config),
        clients,
        require_client_cert: c.require_client_cert,
    }))
}
