//! The `[tls]` table and `spool serve`'s TLS flags: the node's certificate for every
//! connection to its port (gRPC, replication, segment fetch), the CA its clients'
//! certificates are checked against, and what it trusts when it dials a peer itself
//! (its upstream, a repair peer), presenting the same certificate as its client identity.

use std::path::PathBuf;

use anyhow::{bail, Result};
use serde::Deserialize;

/// The `[tls]` table as written (every field may also come from a flag).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// The node's certificate chain (PEM), leaf first.
    pub cert: Option<PathBuf>,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates are verified against.
    pub client_ca: Option<PathBuf>,
    /// Refuse clients without a certificate signed by `client_ca`.
    pub require_client_cert: Option<bool>,
    /// CA certificates (PEM) that peers this node dials (upstream, repair) are verified
    /// against [default: client_ca].
    pub ca: Option<PathBuf>,
}

/// TLS flags of `spool serve` (over the `[tls]` table). The node's certificate, key and
/// peer CA come from the global `--tls-cert`, `--tls-key` and `--tls-ca` (SPOOL_TLS_*),
/// which name this process's own files for every command: `main` copies them here.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsOverrides {
    /// TLS certificate chain (PEM) of the node; with its key, turns TLS on.
    #[arg(skip)]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) of the certificate.
    #[arg(skip)]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) that client certificates are verified against.
    #[arg(long = "tls-client-ca", value_name = "PEM")]
    pub tls_client_ca: Option<PathBuf>,
    /// Refuse clients without a certificate signed by --tls-client-ca.
    #[arg(long = "tls-require-client-cert")]
    pub tls_require_client_cert: bool,
    /// CA (PEM) that peers this node dials are verified against [default: client CA].
    #[arg(skip)]
    pub tls_ca: Option<PathBuf>,
}

/// Validated TLS settings: present only when the node serves TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    pub require_client_cert: bool,
    /// What peers this node dials are verified against (`ca`, else `client_ca`).
    pub peer_ca: Option<PathBuf>,
}

impl TlsSection {
    /// The settings with flags over the file; `None` when neither gives a certificate.
    pub fn build(&self, o: &TlsOverrides) -> Result<Option<TlsConfig>> {
        let cert = o.tls_cert.clone().or_else(|| self.cert.clone());
        let key = o.tls_key.clone().or_else(|| self.key.clone());
        let client_ca = o.tls_client_ca.clone().or_else(|| self.client_ca.clone());
        let require = o.tls_require_client_cert || self.require_client_cert.unwrap_or(false);
        let ca = o.tls_ca.clone().or_else(|| self.ca.clone());
        let (cert, key) = match (cert, key) {
            (Some(c), Some(k)) => (c, k),
            (None, None) => {
                if client_ca.is_some() || require || ca.is_some() {
                    bail!("the TLS settings need cert and key (--tls-cert, --tls-key)");
                }
                return Ok(None);
            }
            (Some(_), None) => bail!("cert is set without key (--tls-key)"),
            (None, Some(_)) => bail!("key is set without cert (--tls-cert)"),
        };
        if require && client_ca.is_none() {
            bail!("require_client_cert needs client_ca (--tls-client-ca) to verify them with");
        }
        Ok(Some(TlsConfig {
            cert,
            key,
            peer_ca: ca.or_else(|| client_ca.clone()),
            client_ca,
            require_client_cert: require,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_over_file_and_what_is_missing() {
        let none = TlsSection::default().build(&TlsOverrides::default());
        assert_eq!(none.unwrap(), None);
        let file: TlsSection = toml::from_str(
            "cert = \"a.pem\"\nkey = \"a.key\"\nclient_ca = \"ca.pem\"\nrequire_client_cert = true",
        )
        .unwrap();
        let c = file.build(&TlsOverrides::default()).unwrap().unwrap();
        assert!(c.require_client_cert);
        assert_eq!(c.peer_ca, Some(PathBuf::from("ca.pem")));
        let o = TlsOverrides {
            tls_cert: Some("b.pem".into()),
            tls_ca: Some("up.pem".into()),
            ..TlsOverrides::default()
        };
        let c = file.build(&o).unwrap().unwrap();
        assert_eq!(c.cert, PathBuf::from("b.pem"));
        assert_eq!(c.peer_ca, Some(PathBuf::from("up.pem")));
        let half: TlsSection = toml::from_str("cert = \"a.pem\"").unwrap();
        let e = half
            .build(&TlsOverrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("key"), "{e}");
        let req: TlsSection =
            toml::from_str("cert = \"a\"\nkey = \"b\"\nrequire_client_cert = true").unwrap();
        let e = req.build(&TlsOverrides::default()).unwrap_err().to_string();
        assert!(e.contains("client_ca"), "{e}");
    }
}
