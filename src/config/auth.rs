//! The `[auth]` table: bearer tokens checked on every call.

use std::path::PathBuf;

use serde::Deserialize;

/// `[auth]` as written.
#[derive(Debug, Clone, Deserialize, Default, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The tokens file (hashes, principals, roles; see `spool admin token create`). Set:
    /// every call needs a token with the role its RPC needs.
    pub tokens_file: Option<PathBuf>,
    /// A file holding this node's own token, sent when it replicates from or fetches
    /// records of a peer (the peer gives it the `replica` role).
    pub node_token_file: Option<PathBuf>,
}
