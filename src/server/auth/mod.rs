//! Authentication (bearer tokens, by their hashes in a tokens file) and authorisation by
//! role, checked for every RPC by [`layer::AuthLayer`]; log-scoped grants are checked by
//! the handlers that know the log ([`check_log`]). Without `[auth]` every call is allowed
//! (the quick start on loopback; `serve` refuses other addresses without it).

pub mod certs;
pub mod layer;
pub mod rules;
pub mod tokens;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::RwLock;
use serde::Deserialize;
use tonic::Status;

use tokens::{Rejected, Tokens};

/// How often the tokens file is looked at for changes (revocations, new tokens).
const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// A role; `write` includes `read`, `admin` includes `write`; `replica` stands alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Read,
    Write,
    Admin,
    Replica,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
            Role::Replica => "replica",
        }
    }

    /// Whether holding `self` grants `needed`.
    fn grants(self, needed: Role) -> bool {
        use Role::*;
        matches!(
            (self, needed),
            (Admin, Read | Write | Admin)
                | (Write, Read | Write)
                | (Read, Read)
                | (Replica, Replica)
        )
    }
}

/// Who a call comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub roles: Vec<Role>,
    /// Read and write only logs starting with one of these (empty: every log).
    pub logs: Vec<String>,
    /// Replica ids it may replicate as besides its own name (a tokens file's
    /// `replica_ids`).
    pub replica_ids: Vec<String>,
}

impl Principal {
    pub fn has(&self, needed: Role) -> bool {
        self.roles.iter().any(|r| r.grants(needed))
    }

    /// Whether it may replicate as `replica_id`: its own name or one listed for it.
    pub fn may_replicate_as(&self, replica_id: &str) -> bool {
        self.name == replica_id || self.replica_ids.iter().any(|r| r == replica_id)
    }

    fn may_touch(&self, log: &str) -> bool {
        self.logs.is_empty() || self.logs.iter().any(|p| log.starts_with(p.as_str()))
    }
}

/// The tokens a node accepts, reloaded when the file changes.
#[derive(Debug)]
pub struct Auth {
    path: PathBuf,
    tokens: RwLock<(Tokens, Option<SystemTime>)>,
}

impl Auth {
    pub fn open(path: PathBuf) -> anyhow::Result<Arc<Auth>> {
        let tokens = Tokens::load(&path)?;
        let mtime = mtime(&path);
        Ok(Arc::new(Auth {
            path,
            tokens: RwLock::new((tokens, mtime)),
        }))
    }

    /// Reload the file whenever its mtime changes; a bad file keeps the old tokens.
    pub fn spawn_reload(self: &Arc<Self>) {
        let auth = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RELOAD_EVERY).await;
                let m = mtime(&auth.path);
                if m == auth.tokens.read().1 {
                    continue;
                }
                let (path, loaded) = (auth.path.clone(), auth.path.clone());
                match tokio::task::spawn_blocking(move || Tokens::load(&loaded)).await {
                    Ok(Ok(t)) => {
                        *auth.tokens.write() = (t, m);
                        tracing::info!(file = %path.display(), "tokens reloaded");
                    }
                    Ok(Err(e)) => {
                        tracing::error!(error = %format!("{e:#}"), "tokens file not reloaded; the previous tokens stay")
                    }
                    Err(_) => {}
                }
            }
        });
    }

    /// The principal behind `authorization: Bearer TOKEN` or, without one, behind the
    /// verified client certificate with these names (a `[[cert]]` entry); else
    /// UNAUTHENTICATED.
    pub fn authenticate(&self, header: Option<&str>, cert: &[String]) -> Result<Principal, Status> {
        let Some(token) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
            if let Some(p) = self.tokens.read().0.by_cert(cert) {
                return Ok(p);
            }
            return Err(Status::unauthenticated(
                "no token: send `authorization: Bearer TOKEN` (SPOOL_TOKEN for the CLI), or a \
                 client certificate the node's tokens file names",
            ));
        };
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.tokens
            .read()
            .0
            .check(token.trim(), now)
            .map_err(|r| match r {
                Rejected::Unknown => Status::unauthenticated("the token is not valid here"),
                Rejected::Expired(p) => {
                    Status::unauthenticated(format!("the token of {p} has expired"))
                }
            })
    }
}

fn mtime(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Whether the call's principal (if auth is on) may see `log`.
pub fn sees_log<T>(req: &tonic::Request<T>, log: &str) -> bool {
    check_log(req, log).is_ok()
}

/// Whether the call is an admin's, or auth is off.
pub fn is_admin<T>(req: &tonic::Request<T>) -> bool {
    req.extensions()
        .get::<Principal>()
        .is_none_or(|p| p.has(Role::Admin))
}

/// This node's own token towards its peers (replication, FetchFrames): one per process,
/// as its identity is, set once at `serve`.
static NODE_TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Read `[auth] node_token_file` (its first line) as the node's token.
pub fn load_node_token(path: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading node token file {}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_owned();
    anyhow::ensure!(
        !token.is_empty(),
        "node token file {} is empty",
        path.display()
    );
    let _ = NODE_TOKEN.set(token);
    Ok(())
}

/// This node's own token, if it has one.
pub fn node_token() -> Option<String> {
    NODE_TOKEN.get().cloned()
}

/// `req` carrying this node's token, if it has one.
pub fn as_node<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(t) = NODE_TOKEN.get() {
        if let Ok(v) = format!("Bearer {t}").parse() {
            req.metadata_mut().insert("authorization", v);
        }
    }
    req
}

/// PERMISSION_DENIED naming the missing role (and never a token).
pub fn denied(p: &Principal, needed: Role, what: &str) -> Status {
    Status::permission_denied(format!(
        "{} lacks the {} role needed for {what}",
        p.name,
        needed.name()
    ))
}

/// The call may touch `log` (with auth on: the principal's log prefixes allow it).
pub fn check_log<T>(req: &tonic::Request<T>, log: &str) -> Result<(), Status> {
    check_log_of(req.extensions().get::<Principal>(), log)
}

/// With auth on, a Replicate hello names the principal itself (or a replica id its tokens
/// file entry lists): its acks count for that replica, so no peer acks in another's name.
pub fn check_replica_id(principal: Option<&Principal>, replica_id: &str) -> Result<(), Status> {
    match principal {
        Some(p) if !p.may_replicate_as(replica_id) => Err(Status::permission_denied(format!(
            "{} may replicate only as {:?}{}, not as replica {replica_id:?} (set the \
             replica's replica_id, or list it under replica_ids in the tokens file)",
            p.name,
            p.name,
            if p.replica_ids.is_empty() {
                String::new()
            } else {
                format!(" or {:?}", p.replica_ids)
            }
        ))),
        _ => Ok(()),
    }
}

/// As [`check_log`], for the principal of a stream's call.
pub fn check_log_of(principal: Option<&Principal>, log: &str) -> Result<(), Status> {
    match principal {
        Some(p) if !p.may_touch(log) => Err(Status::permission_denied(format!(
            "{} may not use log {log:?} (its logs: {:?})",
            p.name, p.logs
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_include_the_lesser_ones_and_replica_stands_alone() {
        let p = |r| Principal {
            name: "p".into(),
            roles: vec![r],
            logs: vec![],
            replica_ids: vec![],
        };
        assert!(p(Role::Admin).has(Role::Read) && p(Role::Admin).has(Role::Write));
        assert!(p(Role::Write).has(Role::Read) && !p(Role::Write).has(Role::Admin));
        assert!(!p(Role::Read).has(Role::Write));
        assert!(!p(Role::Admin).has(Role::Replica) && !p(Role::Replica).has(Role::Read));
    }

    #[test]
    fn log_prefixes_limit_what_a_principal_touches() {
        let p = Principal {
            name: "p".into(),
            roles: vec![Role::Write],
            logs: vec!["orders".into()],
            replica_ids: vec![],
        };
        assert!(p.may_touch("orders-eu") && !p.may_touch("payments"));
    }

    #[test]
    fn a_replica_principal_replicates_only_as_itself_or_its_listed_ids() {
        let p = Principal {
            name: "host1".into(),
            roles: vec![Role::Replica],
            logs: vec![],
            replica_ids: vec!["10.0.0.1:7070".into()],
        };
        assert!(check_replica_id(Some(&p), "host1").is_ok());
        assert!(check_replica_id(Some(&p), "10.0.0.1:7070").is_ok());
        let e = check_replica_id(Some(&p), "host2").unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("host2"), "{e:?}");
        assert!(check_replica_id(None, "anyone").is_ok(), "auth off");
    }
}
