//! A throwaway CA and certificates it signs (rcgen, ECDSA P-256 on ring), for
//! `spool dev-cluster --tls` and tests. Not for production: the CA key sits beside the
//! certificates it signs.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// A CA that signs certificates; its own certificate in PEM is [`DevCa::cert_pem`].
pub struct DevCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa").finish_non_exhaustive()
    }
}

/// A certificate and its key, in PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Where [`Issued::write`] put the files.
#[derive(Debug, Clone)]
pub struct IssuedFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl DevCa {
    pub fn new(name: &str) -> Result<DevCa> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(DevCa { cert, key })
    }

    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate named `cn`, valid as server and client, for `names` (DNS names or IP
    /// addresses).
    pub fn issue(&self, cn: &str, names: &[&str]) -> Result<Issued> {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The CA's certificate written to `path`.
    pub fn write(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.cert_pem()).with_context(|| path.display().to_string())
    }
}

impl Issued {
    /// `dir/name.pem` and `dir/name.key` (the key readable by its owner only).
    pub fn write(&self, dir: &Path, name: &str) -> Result<IssuedFiles> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.cert_pem).with_context(|| cert.display().to_string())?;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&key)
            .and_then(|mut f| f.write_all(self.key_pem.as_bytes()))
            .with_context(|| key.display().to_string())?;
        Ok(IssuedFiles { cert, key })
    }
}
