//! Server configuration: a TOML file, then flags and environment (flags win), validated at
//! start with errors that say which setting is wrong. Every default works for a single
//! node on this machine.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use spool_storage::{
    BackendChoice, Compression, LogConfig, OnCorruption, RecoveryMode, StorageConfig,
};

mod connections;
pub use connections::{ConnectionConfig, ServerSection};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";
pub const DEFAULT_DATA_DIR: &str = "spool-data";

/// Ack mode a request gets when it names none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum DefaultAck {
    Written,
    #[default]
    Async,
}

/// The `[storage]` table.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    /// auto | uring | std
    pub io_backend: Option<String>,
    /// truncate-tail | strict
    pub recovery: Option<String>,
    /// isolate | refuse: damage found in synced data (never cut either way)
    pub on_corruption: Option<String>,
    pub record_bytes_max: Option<usize>,
    pub group_bytes_max: Option<usize>,
    pub queue_depth: Option<usize>,
    pub unsynced_flush_ms: Option<u64>,
    pub retention_check_ms: Option<u64>,
    /// Idempotent appends: producers each log keeps (least recently written go first).
    pub producers_max: Option<usize>,
    /// Logs whose files stay open at once (default: from the open-files limit).
    pub open_logs_max: Option<usize>,
    /// Background scrub of sealed segments, bytes per second (0: off).
    pub scrub_bytes_per_sec: Option<u64>,
    /// Time from one background scrub pass to the next.
    pub scrub_interval_ms: Option<u64>,
    /// Idempotent appends: a producer silent this long is forgotten.
    pub producer_expiry_ms: Option<u64>,
}

/// The `[log_defaults]` table: settings for logs created without their own.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LogDefaults {
    pub segment_bytes: Option<u64>,
    pub index_interval_bytes: Option<u32>,
    pub retention_bytes: Option<u64>,
    pub retention_ms: Option<u64>,
    /// none | zstd | zstd:LEVEL
    pub compression: Option<String>,
    pub compress_min_bytes: Option<u32>,
    /// A new log's first segment (0: 256 KiB); segments double up to segment_bytes.
    pub initial_segment_bytes: Option<u64>,
}

/// The `[replication]` table.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ReplicationSection {
    /// Makes this node a replica of HOST:PORT (a primary or another replica).
    pub replica_of: Option<String>,
    /// This replica counts as synchronous for `sync` acks.
    pub sync_replica: Option<bool>,
    /// Name in the upstream's status [default: this node's listen address].
    pub replica_id: Option<String>,
    /// How long semi-sync/sync appends wait for replicas.
    pub ack_timeout_ms: Option<u64>,
    /// "fail" (the request fails, the records stay and replicate) or "degrade" (ack as async, marked degraded).
    pub ack_timeout_policy: Option<String>,
    /// Default k for semi-sync appends that do not name one.
    pub semi_sync_replicas: Option<u32>,
    /// Refuse writes unless this many replicas are attached and heard from recently.
    pub min_replicas_to_write: Option<usize>,
    pub min_replicas_max_lag_ms: Option<u64>,
    /// Retention keeps at most this many bytes for a lagging replica.
    pub replica_keep_bytes_max: Option<u64>,
    /// Delayed replicas' acks count toward semi-sync/sync.
    pub delayed_counts_for_acks: Option<bool>,
    /// Acks of cascaded replicas (replicas of replicas), forwarded by the replicas between,
    /// count toward semi-sync/sync on the primary. Off: only direct replicas count.
    pub cascaded_counts_for_acks: Option<bool>,
    /// A replica catching up copies sealed segments from its upstream's files over a
    /// segment-fetch connection (sendfile). Off: they come inside the gRPC stream.
    pub segment_fetch: Option<bool>,
    /// Makes this replica a delayed one: it exposes only what the primary wrote at least
    /// this long ago ("500ms", "30s", "15m", "1h", "2d"). Needs `replica_of`.
    pub delay: Option<String>,
}

/// The whole file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub metrics_listen: Option<String>,
    pub default_ack: Option<DefaultAck>,
    #[serde(default)]
    pub storage: StorageSection,
    #[serde(default)]
    pub log_defaults: LogDefaults,
    #[serde(default)]
    pub replication: ReplicationSection,
    #[serde(default)]
    pub server: ServerSection,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<FileConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("in config file {}", path.display()))
    }
}

/// A replica's default `unsynced_flush_ms`.
const REPLICA_UNSYNCED_FLUSH: Duration = Duration::from_millis(5);

/// Validated replication settings.
#[derive(Debug, Clone)]
pub struct ReplicationConfig {
    pub replica_of: Option<String>,
    pub sync_replica: bool,
    pub replica_id: Option<String>,
    pub ack_timeout: Duration,
    pub degrade_on_timeout: bool,
    pub semi_sync_replicas: u32,
    pub min_replicas_to_write: usize,
    pub min_replicas_max_lag: Duration,
    pub replica_keep_bytes_max: u64,
    pub delayed_counts_for_acks: bool,
    pub cascaded_counts_for_acks: bool,
    pub segment_fetch: bool,
    /// Set on a delayed replica (always with `replica_of`).
    pub delay: Option<Duration>,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            replica_of: None,
            sync_replica: false,
            replica_id: None,
            ack_timeout: Duration::from_secs(5),
            degrade_on_timeout: false,
            semi_sync_replicas: 1,
            min_replicas_to_write: 0,
            min_replicas_max_lag: Duration::from_secs(10),
            replica_keep_bytes_max: 10 << 30,
            delayed_counts_for_acks: false,
            cascaded_counts_for_acks: false,
            segment_fetch: true,
            delay: None,
        }
    }
}

impl ReplicationConfig {
    pub fn ack_config(&self) -> spool_replication::ack::AckConfig {
        use spool_replication::ack::{AckConfig, TimeoutPolicy};
        AckConfig {
            timeout: self.ack_timeout,
            policy: if self.degrade_on_timeout {
                TimeoutPolicy::DegradeToAsync
            } else {
                TimeoutPolicy::Fail
            },
        }
    }

    fn build(r: &ReplicationSection, o: &Overrides) -> Result<Self> {
        let d = ReplicationConfig::default();
        let degrade = match r.ack_timeout_policy.as_deref() {
            None | Some("fail") => false,
            Some("degrade") | Some("degrade-to-async") => true,
            Some(other) => {
                bail!("replication.ack_timeout_policy {other:?}: expected \"fail\" or \"degrade\"")
            }
        };
        let replica_of = o.replica_of.clone().or(r.replica_of.clone());
        if let Some(up) = &replica_of {
            if up.trim().is_empty() {
                bail!("replica_of is empty: give the upstream as HOST:PORT");
            }
        }
        let delay = match o.delay.as_deref().or(r.delay.as_deref()) {
            None => None,
            Some(text) => {
                let d = parse_duration(text).context("replication.delay (--delay)")?;
                if replica_of.is_none() {
                    bail!(
                        "a delay ({text}) needs replica_of (--replica-of HOST:PORT): only a \
                         replica can be delayed"
                    );
                }
                Some(d)
            }
        };
        Ok(ReplicationConfig {
            delay,
            replica_of,
            sync_replica: o.sync_replica || r.sync_replica.unwrap_or(false),
            replica_id: o.replica_id.clone().or(r.replica_id.clone()),
            ack_timeout: r
                .ack_timeout_ms
                .map_or(d.ack_timeout, Duration::from_millis),
            degrade_on_timeout: degrade,
            semi_sync_replicas: r.semi_sync_replicas.unwrap_or(d.semi_sync_replicas),
            min_replicas_to_write: r.min_replicas_to_write.unwrap_or(0),
            min_replicas_max_lag: r
                .min_replicas_max_lag_ms
                .map_or(d.min_replicas_max_lag, Duration::from_millis),
            replica_keep_bytes_max: r.replica_keep_bytes_max.unwrap_or(d.replica_keep_bytes_max),
            delayed_counts_for_acks: r.delayed_counts_for_acks.unwrap_or(false),
            cascaded_counts_for_acks: r.cascaded_counts_for_acks.unwrap_or(false),
            segment_fetch: r.segment_fetch.unwrap_or(d.segment_fetch),
        })
    }
}

/// Validated settings the server runs with.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub metrics_listen: Option<SocketAddr>,
    pub default_ack: DefaultAck,
    pub storage: StorageConfig,
    pub replication: ReplicationConfig,
    pub connections: ConnectionConfig,
}

/// Values given on the command line or through the environment (they override the file).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub metrics_listen: Option<String>,
    pub io_backend: Option<String>,
    pub replica_of: Option<String>,
    pub sync_replica: bool,
    pub replica_id: Option<String>,
    pub delay: Option<String>,
}

/// Why a duration setting was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error(
        "{0:?} is not a duration: write a whole number and a unit, like 500ms, 30s, 15m, 1h or 2d"
    )]
    Syntax(String),
    #[error("{0:?} is zero: a delay must be positive (leave it out for an ordinary replica)")]
    Zero(String),
    #[error("{0:?} is too long")]
    TooLong(String),
}

/// Parse "500ms", "30s", "15m", "1h", "2d" (units ms, s, m, h, d; also "1h30m").
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let syntax = || DurationError::Syntax(text.to_owned());
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(syntax());
    }
    let mut total_ms: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let units = rest[digits..]
            .bytes()
            .take_while(u8::is_ascii_alphabetic)
            .count();
        if digits == 0 || units == 0 {
            return Err(syntax());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| syntax())?;
        let unit_ms: u64 = match &rest[digits..digits + units] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(syntax()),
        };
        let add = n
            .checked_mul(unit_ms)
            .ok_or_else(|| DurationError::TooLong(text.to_owned()))?;
        total_ms = total_ms
            .checked_add(add)
            .ok_or_else(|| DurationError::TooLong(text.to_owned()))?;
        rest = &rest[digits + units..];
    }
    if total_ms == 0 {
        return Err(DurationError::Zero(text.to_owned()));
    }
    Ok(Duration::from_millis(total_ms))
}

fn parse_addr(what: &str, s: &str) -> Result<SocketAddr> {
    s.parse()
        .with_context(|| format!("{what} {s:?} is not HOST:PORT (for example {DEFAULT_LISTEN})"))
}

impl ServerConfig {
    pub fn build(file: FileConfig, o: Overrides) -> Result<ServerConfig> {
        let data_dir = o
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let listen = parse_addr(
            "listen",
            o.listen
                .clone()
                .or(file.listen)
                .as_deref()
                .unwrap_or(DEFAULT_LISTEN),
        )?;
        let metrics_listen = o
            .metrics_listen
            .clone()
            .or(file.metrics_listen)
            .map(|m| parse_addr("metrics_listen", &m))
            .transpose()?;
        let mut storage = StorageConfig::new(data_dir);
        let s = &file.storage;
        if let Some(b) = o.io_backend.clone().or(s.io_backend.clone()) {
            storage.backend = b
                .parse::<BackendChoice>()
                .map_err(anyhow::Error::msg)
                .context("storage.io_backend")?;
        }
        if let Some(r) = &s.recovery {
            storage.recovery = r
                .parse::<RecoveryMode>()
                .map_err(anyhow::Error::msg)
                .context("storage.recovery")?;
        }
        if let Some(r) = &s.on_corruption {
            storage.on_corruption = r
                .parse::<OnCorruption>()
                .map_err(anyhow::Error::msg)
                .context("storage.on_corruption")?;
        }
        if let Some(v) = s.record_bytes_max {
            storage.record_bytes_max = v;
        }
        if let Some(v) = s.group_bytes_max {
            storage.group_bytes_max = v;
        }
        if let Some(v) = s.queue_depth {
            storage.queue_depth = v;
        }
        if let Some(v) = s.unsynced_flush_ms {
            storage.unsynced_flush_interval = Duration::from_millis(v);
        }
        if let Some(v) = s.retention_check_ms {
            storage.retention_check_interval = Duration::from_millis(v);
        }
        if let Some(v) = s.open_logs_max {
            storage.open_logs_max = v.max(1);
        }
        if let Some(v) = s.scrub_bytes_per_sec {
            storage.scrub_bytes_per_sec = v;
        }
        if let Some(v) = s.scrub_interval_ms {
            storage.scrub_interval = Duration::from_millis(v.max(1));
        }
        if let Some(v) = s.producers_max {
            storage.producers_max = v;
        }
        if let Some(v) = s.producer_expiry_ms {
            storage.producer_expiry = Duration::from_millis(v);
        }
        storage.default_log =
            log_config(&file.log_defaults, LogConfig::default()).context("in [log_defaults]")?;
        storage.validate().context("invalid storage settings")?;
        if listen.ip().is_unspecified() {
            tracing::warn!(%listen, "listening on all interfaces: Spool has no authentication yet");
        }
        let replication = ReplicationConfig::build(&file.replication, &o)?;
        if replication.replica_of.is_some() && s.unsynced_flush_ms.is_none() {
            // Frames nobody waits on are synced by this timer on a replica: keep its acks
            // and its readers a few ms behind, not a tenth of a second.
            storage.unsynced_flush_interval = REPLICA_UNSYNCED_FLUSH;
        }
        let connections = ConnectionConfig::build(&file.server, storage.open_logs_max)?;
        Ok(ServerConfig {
            listen,
            metrics_listen,
            default_ack: file.default_ack.unwrap_or_default(),
            storage,
            replication,
            connections,
        })
    }
}

/// Apply the set fields of `d` over `base`, then validate.
pub fn log_config(d: &LogDefaults, base: LogConfig) -> Result<LogConfig> {
    let mut c = base;
    if let Some(v) = d.segment_bytes {
        c.segment_bytes = v;
    }
    if let Some(v) = d.index_interval_bytes {
        c.index_interval_bytes = v;
    }
    if d.retention_bytes.is_some() {
        c.retention_bytes = d.retention_bytes;
    }
    if d.retention_ms.is_some() {
        c.retention_ms = d.retention_ms;
    }
    if let Some(v) = &d.compression {
        c.compression = spool_storage::meta::parse_compression(v).map_err(anyhow::Error::msg)?;
    }
    if let Some(v) = d.initial_segment_bytes {
        c.initial_segment_bytes = v;
    }
    if let Some(v) = d.compress_min_bytes {
        c.compress_min_bytes = v;
    }
    if let Err(e) = c.validate() {
        bail!("{e}");
    }
    Ok(c)
}

/// The compression setting as the API spells it.
pub fn compression_name(c: Compression) -> String {
    match c {
        Compression::None => "none".into(),
        Compression::Zstd { level } => format!("zstd:{level}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_work_with_nothing_given() {
        let c = ServerConfig::build(FileConfig::default(), Overrides::default()).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.storage.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert!(c.metrics_listen.is_none());
    }

    #[test]
    fn file_then_flags() {
        let f: FileConfig = toml::from_str(
            r#"
            data_dir = "/tmp/x"
            listen = "127.0.0.1:9000"
            [storage]
            io_backend = "std"
            producers_max = 50
            producer_expiry_ms = 3600000
            [log_defaults]
            segment_bytes = 1048576
            compression = "zstd:3"
            "#,
        )
        .unwrap();
        let c = ServerConfig::build(
            f,
            Overrides {
                listen: Some("127.0.0.1:9001".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9001);
        assert_eq!(c.storage.backend, BackendChoice::Std);
        assert_eq!(c.storage.producers_max, 50);
        assert_eq!(c.storage.producer_expiry, Duration::from_secs(3600));
        assert_eq!(c.storage.default_log.segment_bytes, 1 << 20);
        assert_eq!(
            c.storage.default_log.compression,
            Compression::Zstd { level: 3 }
        );
    }

    #[test]
    fn durations_parse_the_usual_units() {
        let ms = |t: &str| parse_duration(t).unwrap().as_millis();
        assert_eq!(ms("500ms"), 500);
        assert_eq!(ms("30s"), 30_000);
        assert_eq!(ms("15m"), 900_000);
        assert_eq!(ms("1h"), 3_600_000);
        assert_eq!(ms("2d"), 172_800_000);
        assert_eq!(ms("1h30m"), 5_400_000);
        assert_eq!(ms(" 2s "), 2000);
        for bad in ["", "1", "h", "1x", "1.5h", "-1s", "1 h", "s1"] {
            assert!(
                matches!(parse_duration(bad), Err(DurationError::Syntax(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(parse_duration("0s"), Err(DurationError::Zero(_))));
        assert!(matches!(
            parse_duration("99999999999999999d"),
            Err(DurationError::TooLong(_))
        ));
    }

    #[test]
    fn delay_needs_replica_of() {
        let f: FileConfig = toml::from_str("[replication]\ndelay = \"1h\"").unwrap();
        let e = format!(
            "{:#}",
            ServerConfig::build(f.clone(), Overrides::default()).unwrap_err()
        );
        assert!(e.contains("replica_of"), "{e}");
        let c = ServerConfig::build(
            f,
            Overrides {
                replica_of: Some("127.0.0.1:1".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(c.replication.delay, Some(Duration::from_secs(3600)));
        let e = format!(
            "{:#}",
            ServerConfig::build(
                FileConfig::default(),
                Overrides {
                    replica_of: Some("127.0.0.1:1".into()),
                    delay: Some("soon".into()),
                    ..Overrides::default()
                },
            )
            .unwrap_err()
        );
        assert!(e.contains("delay") && e.contains("30s"), "{e}");
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        let e = toml::from_str::<FileConfig>("listen_addr = \"x\"").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let f: FileConfig = toml::from_str("[log_defaults]\nsegment_bytes = 5").unwrap();
        let e = format!(
            "{:#}",
            ServerConfig::build(f, Overrides::default()).unwrap_err()
        );
        assert!(e.contains("segment_bytes"), "{e}");
        let e = ServerConfig::build(
            FileConfig::default(),
            Overrides {
                listen: Some("nope".into()),
                ..Overrides::default()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("HOST:PORT"), "{e}");
    }
}
