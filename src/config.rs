//! Server configuration: a TOML file, then flags and environment (flags win), validated at
//! start with errors that say which setting is wrong. Every default works for a single
//! node on this machine.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use spool_storage::{Compression, LogConfig, StorageConfig};

mod auth;
mod choices;
mod cluster;
mod connections;
mod replication;
mod tls;
pub use auth::AuthConfig;
pub use choices::{
    AckTimeoutPolicy, AppendIo, CorruptionPolicy, DefaultAck, ImportIo, IoBackend, Recovery,
};
pub use cluster::{parse_cluster_url, ClusterConfig, ClusterSection};
pub use connections::{ConnectionConfig, ServerSection};
pub use replication::{parse_duration, DurationError, ReplicationConfig};
pub use tls::{TlsConfig, TlsOverrides, TlsSection};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";
pub const DEFAULT_DATA_DIR: &str = "spool-data";

/// The `[storage]` table.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    pub io_backend: Option<IoBackend>,
    /// How segments received whole (catch-up, full sync) are written.
    pub import_io: Option<ImportIo>,
    /// How group commits are written (buffered, direct, direct for replicated frames).
    pub append_io: Option<AppendIo>,
    /// A torn tail at open.
    pub recovery: Option<Recovery>,
    /// Damage found in synced data (never cut either way).
    pub on_corruption: Option<CorruptionPolicy>,
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
    pub replication: ReplicationConfig,
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub cluster: ClusterSection,
    #[serde(default)]
    pub tls: TlsSection,
    #[serde(default)]
    pub auth: AuthConfig,
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

/// Validated settings the server runs with.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub metrics_listen: Option<SocketAddr>,
    pub default_ack: DefaultAck,
    pub storage: StorageConfig,
    pub replication: ReplicationConfig,
    pub connections: ConnectionConfig,
    /// Failover on a coordinator (`--cluster`, `[cluster]`).
    pub cluster: Option<ClusterConfig>,
    /// TLS on the node's port and on the connections it dials (`[tls]`, `--tls-*`).
    pub tls: Option<TlsConfig>,
    pub auth: AuthConfig,
    /// Listen beyond loopback without authentication (`--insecure`).
    pub insecure: bool,
}

/// Values given on the command line or through the environment (they override the file):
/// `spool serve`'s flags, declared once here.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// Data directory [default: ./spool-data].
    #[arg(long, env = "SPOOL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// gRPC listen address [default: 127.0.0.1:7070]; port 0 picks a free port.
    #[arg(long, env = "SPOOL_LISTEN")]
    pub listen: Option<String>,
    /// Prometheus endpoint address (off unless set).
    #[arg(long, env = "SPOOL_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// IO backend [default: std].
    #[arg(long, env = "SPOOL_IO_BACKEND", value_enum)]
    pub io_backend: Option<IoBackend>,
    /// How a replica writes segments it receives whole [default: threads].
    #[arg(long, env = "SPOOL_IMPORT_IO", value_enum)]
    pub import_io: Option<ImportIo>,
    /// How group commits are written [default: replicated].
    #[arg(long, env = "SPOOL_APPEND_IO", value_enum)]
    pub append_io: Option<AppendIo>,
    /// Run as a replica of this upstream (a primary or another replica).
    #[arg(long, env = "SPOOL_REPLICA_OF")]
    pub replica_of: Option<String>,
    /// This replica counts as synchronous for `sync` acks.
    #[arg(long)]
    pub sync_replica: bool,
    /// Name shown in the upstream's status [default: the listen address]. With auth on
    /// the upstream, the principal of the node's token or certificate (or one of the
    /// `replica_ids` its tokens file entry lists).
    #[arg(long, env = "SPOOL_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// Delayed replica: expose only what the primary wrote at least this long ago
    /// (500ms, 30s, 15m, 1h, 2d). Needs --replica-of.
    #[arg(long, env = "SPOOL_DELAY")]
    pub delay: Option<String>,
    /// Fail over automatically through etcd: etcd://HOST:PORT[,HOST:PORT...].
    #[arg(long, env = "SPOOL_CLUSTER")]
    pub cluster: Option<String>,
    /// The cluster's name in etcd [default: spool].
    #[arg(long, env = "SPOOL_CLUSTER_NAME")]
    pub cluster_name: Option<String>,
    #[command(flatten)]
    pub tls: TlsOverrides,
    /// Tokens file: every call then needs a token with the role its RPC needs.
    #[arg(long, env = "SPOOL_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
    /// This node's own token (a file), sent when it replicates from a peer with tokens.
    #[arg(long, env = "SPOOL_NODE_TOKEN_FILE")]
    pub node_token_file: Option<PathBuf>,
    /// Listen on a non-loopback address without authentication.
    #[arg(long)]
    pub insecure: bool,
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
        if let Some(b) = o.io_backend.or(s.io_backend) {
            storage.backend = b.into();
        }
        if let Some(i) = o.import_io.or(s.import_io) {
            storage.import_io = i.into();
        }
        if let Some(a) = o.append_io.or(s.append_io) {
            storage.append_io = a.into();
        }
        if let Some(r) = s.recovery {
            storage.recovery = r.into();
        }
        if let Some(c) = s.on_corruption {
            storage.on_corruption = c.into();
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
        let mut auth = file.auth.clone();
        if let Some(t) = &o.tokens_file {
            auth.tokens_file = Some(t.clone());
        }
        if let Some(t) = &o.node_token_file {
            auth.node_token_file = Some(t.clone());
        }
        let tls = file.tls.build(&o.tls).context("in [tls]")?;
        check_exposure(listen, &auth, tls.is_some(), o.insecure)?;
        let cluster = file.cluster.build(&o).context("in [cluster]")?;
        let replication = file.replication.with_overrides(&o, cluster.is_some())?;
        let may_replicate = replication.replica_of.is_some() || cluster.is_some();
        if may_replicate && s.unsynced_flush_ms.is_none() {
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
            cluster,
            tls,
            auth,
            insecure: o.insecure,
        })
    }
}

/// A node reachable beyond loopback must authenticate its callers, unless told otherwise.
fn check_exposure(listen: SocketAddr, auth: &AuthConfig, tls: bool, insecure: bool) -> Result<()> {
    let authed = auth.tokens_file.is_some();
    if listen.ip().is_loopback() || (authed && tls) {
        return Ok(());
    }
    if insecure {
        tracing::warn!(%listen, tls, authed, "listening beyond loopback without TLS and tokens (--insecure)");
        return Ok(());
    }
    let missing = match (tls, authed) {
        (false, false) => "TLS and authentication",
        (false, true) => "TLS (tokens would cross the network in clear)",
        _ => "authentication",
    };
    bail!(
        "refusing to listen on {listen} without {missing}: anyone who reaches it could \
         read, write and delete every log. Give [tls] cert/key and [auth] tokens_file \
         (--tokens-file; see `spool admin token create`), listen on 127.0.0.1, or pass \
         --insecure on a trusted network"
    )
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
    use spool_storage::BackendChoice;

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

    /// Flags over the file over the defaults, for the word-valued settings too.
    #[test]
    fn flag_over_file_over_default() {
        use spool_storage::{OnCorruption, RecoveryMode};
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            o: Overrides,
        }
        let flags = |args: &[&str]| {
            let argv = std::iter::once("spool").chain(args.iter().copied());
            <Cli as clap::Parser>::try_parse_from(argv).map(|c| c.o)
        };
        let d = ServerConfig::build(FileConfig::default(), flags(&[]).unwrap()).unwrap();
        assert_eq!(d.storage.backend, BackendChoice::Std);
        assert_eq!(d.storage.recovery, RecoveryMode::TruncateTail);
        assert_eq!(d.storage.on_corruption, OnCorruption::Isolate);
        assert_eq!(d.replication.ack_timeout_policy, AckTimeoutPolicy::Fail);
        assert_eq!(d.default_ack, DefaultAck::Async);

        let file: FileConfig = toml::from_str(
            "default_ack = \"written\"\n[storage]\nio_backend = \"io_uring\"\n\
             import_io = \"io_uring\"\n\
             recovery = \"strict\"\non_corruption = \"refuse\"\n\
             [replication]\nack_timeout_policy = \"degrade-to-async\"\n",
        )
        .unwrap();
        let f = ServerConfig::build(file.clone(), flags(&[]).unwrap()).unwrap();
        assert_eq!(f.storage.backend, BackendChoice::Uring);
        assert_eq!(f.storage.import_io, spool_storage::ImportIo::Uring);
        let o = flags(&["--io-backend", "uring", "--append-io", "direct"]).unwrap();
        let d = ServerConfig::build(FileConfig::default(), o).unwrap();
        assert_eq!(d.storage.append_io, spool_storage::AppendIo::Direct);
        let o = flags(&["--append-io", "replicated"]).unwrap();
        let d = ServerConfig::build(FileConfig::default(), o).unwrap();
        assert_eq!(d.storage.append_io, spool_storage::AppendIo::Replicated);
        assert!(flags(&["--append-io", "sometimes"]).is_err());
        assert_eq!(f.storage.recovery, RecoveryMode::Strict);
        assert_eq!(f.storage.on_corruption, OnCorruption::Refuse);
        assert!(matches!(
            f.replication.ack_config().policy,
            spool_replication::ack::TimeoutPolicy::DegradeToAsync
        ));
        assert_eq!(f.default_ack, DefaultAck::Written);

        let o = flags(&["--io-backend", "pwrite"]).unwrap();
        let c = ServerConfig::build(file, o).unwrap();
        assert_eq!(c.storage.backend, BackendChoice::Std);

        let e = flags(&["--io-backend", "nope"]).err().unwrap().to_string();
        assert!(e.contains("--io-backend") && e.contains("uring"), "{e}");
        let e = toml::from_str::<FileConfig>("[storage]\non_corruption = \"ignore\"")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("on_corruption") && e.contains("isolate"), "{e}");
    }

    /// The `[replication]` table is read into the settings the server runs with: what the
    /// file leaves out keeps its default, the replica flags go over it.
    #[test]
    fn replication_table_then_replica_flags() {
        let file: FileConfig = toml::from_str(
            "[replication]\nreplica_of = \"127.0.0.1:1\"\nack_timeout_ms = 1500\n\
             min_replicas_max_lag_ms = 300\ndelay = \"1h30m\"\nsegment_fetch = false\n",
        )
        .unwrap();
        let r = ServerConfig::build(file.clone(), Overrides::default())
            .unwrap()
            .replication;
        assert_eq!(r.replica_of.as_deref(), Some("127.0.0.1:1"));
        assert_eq!(r.ack_timeout, Duration::from_millis(1500));
        assert_eq!(r.min_replicas_max_lag, Duration::from_millis(300));
        assert_eq!(r.delay, Some(Duration::from_secs(5400)));
        assert!(!r.segment_fetch);
        assert_eq!(r.semi_sync_replicas, 1, "left out: the default");
        let o = Overrides {
            replica_of: Some("127.0.0.1:2".into()),
            sync_replica: true,
            delay: Some("2s".into()),
            ..Overrides::default()
        };
        let r = ServerConfig::build(file, o).unwrap().replication;
        assert_eq!(r.replica_of.as_deref(), Some("127.0.0.1:2"));
        assert!(r.sync_replica);
        assert_eq!(r.delay, Some(Duration::from_secs(2)));
        let e = toml::from_str::<FileConfig>("[replication]\ndelay = \"soon\"")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("delay") && e.contains("30s"), "{e}");
        let e = toml::from_str::<FileConfig>("[replication]\nack_timeout = 5")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("unknown field"), "{e}");
    }
}
