//! Where etcd is: [`EtcdConfig`], and `--cluster etcd://HOST:PORT[,HOST:PORT...]` URLs
//! parsed into its endpoints, every endpoint checked before anything is dialled.

use std::time::Duration;

/// The bound on one attempt on one endpoint unless configured.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// The scheme of `--cluster` URLs.
pub const CLUSTER_SCHEME: &str = "etcd://";

/// Where etcd is and how to talk to it.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `HOST:PORT` each (an IPv6 host in brackets), in the order they are tried.
    pub endpoints: Vec<String>,
    /// Both or neither: with them, the client authenticates and sends the token.
    pub username: Option<String>,
    pub password: Option<String>,
    /// The bound on one attempt on one endpoint.
    pub timeout: Duration,
    /// TLS to etcd: its CA, and a client certificate if etcd requires one.
    pub tls: Option<crate::tls::TlsOptions>,
}

impl EtcdConfig {
    /// No credentials, the default timeout.
    pub fn new(endpoints: Vec<String>) -> Self {
        EtcdConfig {
            endpoints,
            username: None,
            password: None,
            timeout: DEFAULT_TIMEOUT,
            tls: None,
        }
    }
}

impl std::fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A cluster URL or an [`EtcdConfig`] that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EtcdConfigError {
    #[error(
        "cluster URL {0:?} does not start with {CLUSTER_SCHEME} (etcd://HOST:PORT[,HOST:PORT...])"
    )]
    WrongScheme(String),
    #[error("no etcd endpoint given in {0:?} (etcd://HOST:PORT[,HOST:PORT...])")]
    Empty(String),
    #[error("etcd endpoint {0:?} has no port (HOST:PORT)")]
    MissingPort(String),
    #[error("etcd endpoint {0:?} has a port that is not a number in 1..=65535")]
    BadPort(String),
    #[error("etcd endpoint {0:?} has no usable host (HOST:PORT, an IPv6 host in brackets)")]
    BadHost(String),
    #[error("etcd username and password go together: give both or neither")]
    HalfCredentials,
    #[error("etcd timeout must be above zero")]
    ZeroTimeout,
}

/// `etcd://h1:p1,h2:p2` into `["h1:p1", "h2:p2"]`, each checked by [`parse_endpoint`].
pub fn parse_cluster_url(url: &str) -> Result<Vec<String>, EtcdConfigError> {
    let list = url
        .strip_prefix(CLUSTER_SCHEME)
        .ok_or_else(|| EtcdConfigError::WrongScheme(url.to_owned()))?;
    if list.trim().is_empty() {
        return Err(EtcdConfigError::Empty(url.to_owned()));
    }
    list.split(',').map(|e| parse_endpoint(e.trim())).collect()
}

/// Check one `HOST:PORT` (IPv6 as `[::1]:2379`) and return it as given.
pub fn parse_endpoint(endpoint: &str) -> Result<String, EtcdConfigError> {
    let bad_host = || EtcdConfigError::BadHost(endpoint.to_owned());
    let (host, port) = endpoint
        .rsplit_once(':')
        .ok_or_else(|| EtcdConfigError::MissingPort(endpoint.to_owned()))?;
    if port.is_empty() {
        return Err(EtcdConfigError::MissingPort(endpoint.to_owned()));
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) || !matches!(port.parse::<u16>(), Ok(1..)) {
        return Err(EtcdConfigError::BadPort(endpoint.to_owned()));
    }
    let bracketed = host.starts_with('[') && host.ends_with(']') && host.len() > 2;
    if host.is_empty()
        || host.contains(|c: char| c.is_whitespace() || "/@?#".contains(c))
        || (host.contains(':') && !bracketed)
    {
        return Err(bad_host());
    }
    Ok(endpoint.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_parse_into_endpoints() {
        assert_eq!(
            parse_cluster_url("etcd://10.0.0.1:2379").unwrap(),
            vec!["10.0.0.1:2379"]
        );
        assert_eq!(
            parse_cluster_url("etcd://h1:1, h2:2,[::1]:2379").unwrap(),
            vec!["h1:1", "h2:2", "[::1]:2379"]
        );
    }

    #[test]
    fn cluster_url_errors_name_the_problem() {
        use EtcdConfigError as E;
        let cases = [
            ("http://h:1", E::WrongScheme("http://h:1".into())),
            ("h:1", E::WrongScheme("h:1".into())),
            ("etcd://", E::Empty("etcd://".into())),
            ("etcd:// ", E::Empty("etcd:// ".into())),
            ("etcd://h1", E::MissingPort("h1".into())),
            ("etcd://h1:1,h2", E::MissingPort("h2".into())),
            ("etcd://h1:", E::MissingPort("h1:".into())),
            ("etcd://h1:1,,h2:2", E::MissingPort("".into())),
            ("etcd://h1:x", E::BadPort("h1:x".into())),
            ("etcd://h1:0", E::BadPort("h1:0".into())),
            ("etcd://h1:65536", E::BadPort("h1:65536".into())),
            ("etcd://h1:+1", E::BadPort("h1:+1".into())),
            ("etcd://:2379", E::BadHost(":2379".into())),
            ("etcd://::1:2379", E::BadHost("::1:2379".into())),
            ("etcd://h1:1/", E::BadPort("h1:1/".into())),
            ("etcd://u@h1:1", E::BadHost("u@h1:1".into())),
        ];
        for (url, want) in cases {
            assert_eq!(parse_cluster_url(url), Err(want), "{url}");
        }
        let message = parse_cluster_url("etcd://h1").unwrap_err().to_string();
        assert!(message.contains("no port"), "{message}");
    }
}
