//! TLS for every connection to a node's port, with rustls on ring.
//!
//! - [`server`]: the node's side. `server::accept` completes the TLS handshake before it
//!   reads the preface, so gRPC and segment fetch both run inside TLS on the one port; the
//!   certificate is reloaded on SIGHUP and when its files change.
//! - [`TlsOptions`]: the dialing side, for the Rust client and CLI (`--tls-ca`,
//!   `--tls-cert`, `--tls-key`) and for a node dialing its upstream or a repair peer (its
//!   own certificate as client identity). Files are read at each dial, so a node's new
//!   certificate is used by its next connection without a reload of its own.

pub mod dev_certs;
pub mod server;
pub mod stream;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// The crypto every TLS config here is built with: ring (no aws-lc).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    // Deprecated in 0.23.48 for lacking post-quantum key exchange, which only aws-lc
    // offers; ring is the choice here (as tonic's `tls-ring`).
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of a PEM file, at least one.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificates in {}", path.display()))?;
    if certs.is_empty() {
        bail!("{} holds no PEM certificate", path.display());
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .with_context(|| format!("reading a private key from {}", path.display()))
}

/// The CA certificates of a PEM file as trust roots.
pub fn load_roots(path: &Path) -> Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(path)? {
        roots
            .add(c)
            .with_context(|| format!("a CA certificate in {}", path.display()))?;
    }
    Ok(roots)
}

/// How a client (or a node dialing a peer) uses TLS: the CA that signed the server's
/// certificate, and its own certificate and key when the server asks for one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl TlsOptions {
    /// `Some` when any option is given.
    pub fn given(ca: Option<PathBuf>, cert: Option<PathBuf>, key: Option<PathBuf>) -> Option<Self> {
        (ca.is_some() || cert.is_some() || key.is_some()).then_some(TlsOptions { ca, cert, key })
    }

    /// A node's side when it dials its peers: its own certificate as identity, its peer CA.
    pub fn for_node(tls: &crate::config::TlsConfig) -> TlsOptions {
        TlsOptions {
            ca: tls.peer_ca.clone(),
            cert: Some(tls.cert.clone()),
            key: Some(tls.key.clone()),
        }
    }

    fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
        std::fs::read(path).with_context(|| format!("reading TLS {what} {}", path.display()))
    }

    /// tonic's client config, the files read now.
    pub fn tonic_config(&self) -> Result<ClientTlsConfig> {
        let mut c = ClientTlsConfig::new();
        match &self.ca {
            Some(ca) => c = c.ca_certificate(Certificate::from_pem(Self::read(ca, "CA")?)),
            None => bail!("TLS needs the CA that signed the server's certificate (--tls-ca)"),
        }
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let identity =
                    Identity::from_pem(Self::read(cert, "cert")?, Self::read(key, "key")?);
                c = c.identity(identity);
            }
            (None, None) => {}
            _ => bail!("a TLS client certificate needs both --tls-cert and --tls-key"),
        }
        // A server that never answers the handshake is an error, not a hang.
        Ok(c.timeout(std::time::Duration::from_secs(5)))
    }

    /// A rustls connector with the same settings (segment fetch, outside tonic).
    pub fn connector(&self) -> Result<tokio_rustls::TlsConnector> {
        let ca = self
            .ca
            .as_ref()
            .ok_or_else(|| anyhow!("TLS needs the CA that signed the server's certificate"))?;
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(load_roots(ca)?);
        let config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                builder.with_client_auth_cert(load_certs(cert)?, load_key(key)?)?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
    }
}

/// `addr` (HOST:PORT or a URI) as the URI to dial: `https://` when `tls` is given,
/// whatever scheme it was named with (a replica names its primary without one).
pub fn uri(addr: &str, tls: bool) -> String {
    let rest = addr.split_once("://").map_or(addr, |(_, rest)| rest);
    let scheme = if tls || addr.starts_with("https://") {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{rest}")
}

/// The endpoint to dial `addr` with, over TLS when `tls` is given or `addr` is `https://`.
pub fn endpoint(addr: &str, tls: Option<&TlsOptions>) -> Result<Endpoint> {
    let uri = uri(addr, tls.is_some());
    let endpoint = Endpoint::from_shared(uri.clone())
        .map_err(|_| anyhow!("invalid address {addr:?}: expected HOST:PORT or a URI"))?;
    match tls {
        Some(t) => Ok(endpoint.tls_config(t.tonic_config()?)?),
        None if uri.starts_with("https://") => {
            bail!("{addr} is https:// but no --tls-ca names the CA to verify it with")
        }
        None => Ok(endpoint),
    }
}

/// The name a server's certificate is checked against: the host of `host:port`.
pub fn server_name(host_port: &str) -> Result<ServerName<'static>> {
    let host = match host_port.rsplit_once(':') {
        Some((h, _)) => h,
        None => host_port,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned()).map_err(|e| anyhow!("server name {host:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_take_the_scheme_tls_says() {
        assert_eq!(uri("h:1", false), "http://h:1");
        assert_eq!(uri("h:1", true), "https://h:1");
        assert_eq!(uri("http://h:1", true), "https://h:1");
        assert_eq!(uri("https://h:1", false), "https://h:1");
        assert!(server_name("127.0.0.1:7070").is_ok());
        assert!(server_name("[::1]:7070").is_ok());
        assert!(server_name("localhost:7070").is_ok());
    }
}
