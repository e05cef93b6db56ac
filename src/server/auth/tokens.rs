//! The tokens file: who may do what, by the SHA-256 of each bearer token (never the token
//! itself), with optional log prefixes and expiry.
//!
//! ```toml
//! [[token]]
//! principal = "orders-service"
//! sha256 = "9f86d0..."          # spool admin token create prints it
//! roles = ["write"]             # read, write, admin, replica
//! logs = ["orders"]             # optional: read/write only logs starting with these
//! expires_unix_s = 1830297600   # optional
//! replica_ids = ["10.0.0.1:7070"] # optional, role replica: ids it may replicate as
//!                               # besides its principal
//!
//! [[cert]]                      # a client certificate (mutual TLS) instead of a token
//! name = "orders-service"       # its subject CN, or a DNS/URI subject alternative name
//! roles = ["write"]
//! logs = ["orders"]
//! ```

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Principal, Role};

/// What a token is made of: a prefix, then 32 random bytes as hex.
pub const TOKEN_PREFIX: &str = "spool_";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    token: Vec<Entry>,
    #[serde(default)]
    cert: Vec<CertEntry>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CertEntry {
    name: String,
    roles: Vec<Role>,
    #[serde(default)]
    logs: Vec<String>,
    #[serde(default)]
    replica_ids: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    principal: String,
    sha256: String,
    roles: Vec<Role>,
    #[serde(default)]
    logs: Vec<String>,
    expires_unix_s: Option<u64>,
    #[serde(default)]
    replica_ids: Vec<String>,
}

/// The loaded tokens.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    entries: Vec<([u8; 32], Principal, Option<u64>)>,
    /// Client certificate names and who they are.
    certs: Vec<(String, Principal)>,
}

/// Why a token was not accepted (the message names no token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejected {
    Unknown,
    Expired(String),
}

pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Tokens {
    pub fn load(path: &Path) -> Result<Tokens> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading tokens file {}", path.display()))?;
        let file: File =
            toml::from_str(&text).with_context(|| format!("in tokens file {}", path.display()))?;
        let mut entries = Vec::new();
        for e in file.token {
            let Some(h) = unhex(&e.sha256) else {
                bail!(
                    "tokens file {}: principal {:?}: sha256 is not 64 hex digits",
                    path.display(),
                    e.principal
                );
            };
            let p = Principal {
                name: e.principal,
                roles: e.roles,
                logs: e.logs,
                replica_ids: e.replica_ids,
            };
            entries.push((h, p, e.expires_unix_s));
        }
        let certs = file
            .cert
            .into_iter()
            .map(|c| {
                let p = Principal {
                    name: c.name.clone(),
                    roles: c.roles,
                    logs: c.logs,
                    replica_ids: c.replica_ids,
                };
                (c.name, p)
            })
            .collect();
        Ok(Tokens { entries, certs })
    }

    /// The principal a client certificate with these names is (the first entry that
    /// names one of them).
    pub fn by_cert(&self, names: &[String]) -> Option<Principal> {
        self.certs
            .iter()
            .find(|(n, _)| names.contains(n))
            .map(|(_, p)| p.clone())
    }

    /// The principal holding `token` at unix time `now_s`. Every entry is compared, in
    /// constant time each, so the time taken says nothing of which hash was near.
    pub fn check(&self, token: &str, now_s: u64) -> Result<Principal, Rejected> {
        let h = hash(token);
        let mut found = None;
        for (eh, p, exp) in &self.entries {
            if bool::from(eh.ct_eq(&h)) {
                found = Some((p, *exp));
            }
        }
        match found {
            None => Err(Rejected::Unknown),
            Some((p, Some(exp))) if now_s >= exp => Err(Rejected::Expired(p.name.clone())),
            Some((p, _)) => Ok(p.clone()),
        }
    }
}

/// A new random token.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{TOKEN_PREFIX}{}", hex(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(body: &str) -> Tokens {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t.toml");
        std::fs::write(&p, body).unwrap();
        Tokens::load(&p).unwrap()
    }

    #[test]
    fn a_token_is_found_by_its_hash_and_expires() {
        let t = new_token();
        assert!(t.starts_with(TOKEN_PREFIX) && t.len() == TOKEN_PREFIX.len() + 64);
        let body = format!(
            "[[token]]\nprincipal = \"a\"\nsha256 = \"{}\"\nroles = [\"write\"]\nexpires_unix_s = 100\n",
            hex(&hash(&t))
        );
        let tokens = file(&body);
        assert_eq!(tokens.check(&t, 99).unwrap().name, "a");
        assert_eq!(tokens.check(&t, 100), Err(Rejected::Expired("a".into())));
        assert_eq!(tokens.check("spool_other", 0), Err(Rejected::Unknown));
    }

    #[test]
    fn bad_hashes_and_roles_are_refused_at_load() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t.toml");
        std::fs::write(
            &p,
            "[[token]]\nprincipal = \"a\"\nsha256 = \"xyz\"\nroles = [\"read\"]\n",
        )
        .unwrap();
        assert!(Tokens::load(&p).is_err());
        let h = "0".repeat(64);
        std::fs::write(
            &p,
            format!("[[token]]\nprincipal = \"a\"\nsha256 = \"{h}\"\nroles = [\"root\"]\n"),
        )
        .unwrap();
        assert!(Tokens::load(&p).is_err());
    }
}
