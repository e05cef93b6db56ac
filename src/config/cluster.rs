//! The `[cluster]` table: failover on a coordinator (etcd). Absent (and no `--cluster`),
//! the node runs as before: a primary, or a replica of `replica_of`.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::Overrides;

/// `[cluster]` as written; [`ClusterSection::build`] checks it into a [`ClusterConfig`].
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSection {
    /// etcd endpoints, "HOST:PORT" each (or one "etcd://HOST:PORT,HOST:PORT" URL).
    pub endpoints: Vec<String>,
    /// The cluster's name: its keys live under `/spool/<name>/`.
    pub name: Option<String>,
    /// This node's name among the members [default: its advertised address].
    pub node_name: Option<String>,
    /// The address other nodes and clients reach this node at [default: the listen address].
    pub advertise: Option<String>,
    /// The lease members and the leader key are held on (`lease_ttl_ms`).
    pub lease_ttl_ms: Option<u64>,
    /// Automatic failover [default: on]. Off: `spool admin failover` elects.
    pub failover: Option<bool>,
    /// A replica further behind than this many records on a log is not eligible.
    pub max_lag_records: Option<u64>,
    /// Preferred among equal candidates (higher first).
    pub priority: i32,
    /// Never becomes primary.
    pub never_promote: bool,
    pub etcd_username: Option<String>,
    pub etcd_password: Option<String>,
    /// TLS to etcd: the CA that signed etcd's certificate (PEM)...
    pub etcd_ca: Option<std::path::PathBuf>,
    /// ...and this node's client certificate and key, when etcd requires one.
    pub etcd_cert: Option<std::path::PathBuf>,
    pub etcd_key: Option<std::path::PathBuf>,
}

/// Validated cluster settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub endpoints: Vec<String>,
    pub name: String,
    pub node_name: Option<String>,
    pub advertise: Option<String>,
    pub policy: spool_replication::failover::Policy,
    pub priority: i32,
    pub never_promote: bool,
    pub etcd_username: Option<String>,
    pub etcd_password: Option<String>,
    pub etcd_tls: Option<crate::tls::TlsOptions>,
}

const DEFAULT_NAME: &str = "spool";
const TTL_MIN: Duration = Duration::from_millis(500);

/// "etcd://h1:p1,h2:p2" into ["h1:p1", "h2:p2"], each checked.
pub fn parse_cluster_url(url: &str) -> Result<Vec<String>> {
    crate::cluster::etcd::parse_cluster_url(url.trim().trim_end_matches('/'))
        .with_context(|| format!("--cluster {url:?}: give etcd://HOST:PORT[,HOST:PORT...]"))
}

fn check_endpoints(endpoints: &[String]) -> Result<()> {
    for e in endpoints {
        crate::cluster::etcd::parse_endpoint(e)?;
    }
    Ok(())
}

impl ClusterSection {
    /// The flags over the file; `None` when no coordinator is configured.
    pub(super) fn build(self, o: &Overrides) -> Result<Option<ClusterConfig>> {
        let endpoints = match (&o.cluster, self.endpoints.as_slice()) {
            (Some(url), _) => parse_cluster_url(url)?,
            (None, [one]) if one.starts_with("etcd://") => parse_cluster_url(one)?,
            (None, []) => {
                if o.cluster_name.is_some() || self.name.is_some() {
                    bail!("a cluster name needs a coordinator: --cluster etcd://HOST:PORT");
                }
                return Ok(None);
            }
            (None, list) => {
                check_endpoints(list).context("[cluster] endpoints")?;
                list.to_vec()
            }
        };
        let name = o
            .cluster_name
            .clone()
            .or(self.name)
            .unwrap_or_else(|| DEFAULT_NAME.into());
        if name.is_empty() || name.contains('/') {
            bail!("cluster name {name:?}: give a non-empty name without '/'");
        }
        let ttl = Duration::from_millis(self.lease_ttl_ms.unwrap_or(2000));
        if ttl < TTL_MIN {
            bail!("[cluster] lease_ttl_ms {}: at least 500", ttl.as_millis());
        }
        let policy = spool_replication::failover::Policy {
            ttl,
            safety_margin: spool_replication::failover::Policy::margin_for(ttl),
            failover: self.failover.unwrap_or(true),
            max_lag: self
                .max_lag_records
                .unwrap_or(spool_replication::failover::Policy::default().max_lag),
        };
        Ok(Some(ClusterConfig {
            endpoints,
            name,
            node_name: self.node_name,
            advertise: self.advertise,
            policy,
            priority: self.priority,
            never_promote: self.never_promote,
            etcd_username: self.etcd_username,
            etcd_password: self.etcd_password,
            etcd_tls: crate::tls::TlsOptions::given(self.etcd_ca, self.etcd_cert, self.etcd_key),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_etcd_and_every_endpoint_has_a_port() {
        assert_eq!(
            parse_cluster_url("etcd://a:1,b:2/").unwrap(),
            vec!["a:1".to_owned(), "b:2".to_owned()]
        );
        for bad in [
            "http://a:1",
            "etcd://",
            "etcd://a",
            "etcd://a:x",
            "etcd://:1",
        ] {
            assert!(parse_cluster_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn no_coordinator_means_no_cluster_and_a_name_alone_is_an_error() {
        let none = ClusterSection::default().build(&Overrides::default());
        assert_eq!(none.unwrap(), None);
        let o = Overrides {
            cluster_name: Some("x".into()),
            ..Overrides::default()
        };
        assert!(ClusterSection::default().build(&o).is_err());
    }

    #[test]
    fn flags_win_over_the_file_and_the_ttl_has_a_floor() {
        let file = ClusterSection {
            endpoints: vec!["f:1".into()],
            name: Some("file".into()),
            ..ClusterSection::default()
        };
        let o = Overrides {
            cluster: Some("etcd://flag:2".into()),
            cluster_name: Some("flag".into()),
            ..Overrides::default()
        };
        let c = file.clone().build(&o).unwrap().unwrap();
        assert_eq!(
            (c.endpoints, c.name.as_str()),
            (vec!["flag:2".into()], "flag")
        );
        let short = ClusterSection {
            lease_ttl_ms: Some(100),
            ..file
        };
        assert!(short.build(&Overrides::default()).is_err());
    }
}
