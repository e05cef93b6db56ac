//! `spool bench`: load generators for the storage engine and the gRPC server.
//!
//! - `spool bench storage` ([`storage`]): N tasks append concurrently through group commit;
//!   reports throughput, latency percentiles, CPU per record and the group-commit shape
//!   (records per group, bytes per fdatasync) so that the run can be set beside fio at the
//!   same flush size (`benches/storage_vs_fio.sh`).
//! - `spool bench scan` ([`scan`]): writes a log of N GiB, reopens it (cold page cache when
//!   the kernel lets us drop it) and reads it back sequentially.
//! - `spool bench grpc` ([`grpc`]): a `spool serve` child process driven over loopback by the
//!   Rust client: pipelined AppendStream, concurrent unary appends, subscribe delay
//!   (`benches/grpc_vs_redis.sh` sets it beside the storage engine and Redis); with
//!   `--replicas N --ack async|semi-sync:K|sync` the primary gets N replica children.
//! - `spool bench catchup` ([`catchup`]): full and partial replica catch-up, MB/s.
//!
//! The peers' load generators (Redis, NATS JetStream) are not here: they are the
//! `spool-loadgen` binary (`loadgen/`), so that the server binary carries only what
//! measures Spool itself. Both report through [`spool::measure`].
//!
//! Data lives in a fresh temporary directory on the repository's disk (under `./target` by
//! default) and is deleted afterwards.

mod catchup;
mod grpc;
mod scan;
mod storage;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use spool_storage::{AppendIo, BackendChoice, Durability, StorageConfig};

pub use catchup::CatchupArgs;
pub use grpc::GrpcArgs;
pub use scan::ScanArgs;
pub use storage::StorageArgs;

use spool::measure::{
    current_rss_mib, human, new_histogram, record_payload, round1, round3, runtime, rusage,
    write_json, LatencyUs, Rusage,
};

const LOG_NAME: &str = "bench";

/// The client options of this run: TLS with `--tls`, a token with `--auth` (set by
/// [`secure_setup`]).
static CLIENT_OPTIONS: std::sync::OnceLock<spool::client::ClientOptions> =
    std::sync::OnceLock::new();

/// `--tls` and `--auth`, files in `work`, named to the `spool serve` children through the
/// environment (inherited). Call before any thread starts: the environment is the
/// process's.
fn secure_setup(work: &Path, tls: bool, auth: bool) -> Result<()> {
    let mut options = spool::client::ClientOptions::default();
    if tls {
        options.tls = Some(tls_setup(work)?);
    }
    if auth {
        options.token = Some(auth_setup(work)?);
    }
    let _ = CLIENT_OPTIONS.set(options);
    Ok(())
}

/// A CA and a node certificate in `work/tls` (every node uses the one certificate, which
/// is also a replica's client identity); the clients' TLS options.
fn tls_setup(work: &Path) -> Result<spool::tls::TlsOptions> {
    let dir = work.join("tls");
    std::fs::create_dir_all(&dir)?;
    let ca = spool::tls::dev_certs::DevCa::new("bench CA")?;
    ca.write(&dir.join("ca.pem"))?;
    let node = ca
        .issue("node", &["127.0.0.1", "localhost"])?
        .write(&dir, "node")?;
    std::env::set_var("SPOOL_TLS_CERT", &node.cert);
    std::env::set_var("SPOOL_TLS_KEY", &node.key);
    std::env::set_var("SPOOL_TLS_CA", dir.join("ca.pem"));
    Ok(spool::tls::TlsOptions {
        ca: Some(dir.join("ca.pem")),
        ..Default::default()
    })
}

/// One token with the admin and replica roles, used by the clients and by the nodes
/// towards each other; the tokens file every node checks.
fn auth_setup(work: &Path) -> Result<String> {
    use spool::server::auth::tokens;
    let token = tokens::new_token();
    let entry = format!(
        "[[token]]\nprincipal = \"bench\"\nsha256 = \"{}\"\nroles = [\"admin\", \"replica\"]\n",
        tokens::hex(&tokens::hash(&token))
    );
    std::fs::write(work.join("tokens.toml"), entry)?;
    std::fs::write(work.join("node-token"), &token)?;
    std::env::set_var("SPOOL_TOKENS_FILE", work.join("tokens.toml"));
    std::env::set_var("SPOOL_NODE_TOKEN_FILE", work.join("node-token"));
    Ok(token)
}

/// A client of the node at `addr`, with this run's options; `connections` sets the size of
/// its pool (default: one per core).
async fn connect(addr: &str, connections: Option<usize>) -> Result<spool::client::Client> {
    let mut options = CLIENT_OPTIONS.get().cloned().unwrap_or_default();
    options.connections = connections.or(options.connections);
    Ok(spool::client::Client::connect_with(addr, options).await?)
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Concurrent appenders with group commit: throughput, latency, CPU, fsync shape.
    Storage(StorageArgs),
    /// Write N GiB, reopen (cold cache if possible), read everything back sequentially.
    Scan(ScanArgs),
    /// A `spool serve` process over loopback: pipelined stream, unary appends, subscribe.
    Grpc(GrpcArgs),
    /// Replica catch-up: fill a primary, time a fresh replica's full sync, then a partial one.
    Catchup(CatchupArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityArg {
    /// Acknowledge after fdatasync.
    Fsync,
    /// Acknowledge once in the page cache (weaker; periodic sync).
    Unsynced,
}

impl From<DurabilityArg> for Durability {
    fn from(d: DurabilityArg) -> Self {
        match d {
            DurabilityArg::Fsync => Durability::Fsync,
            DurabilityArg::Unsynced => Durability::Unsynced,
        }
    }
}

/// A storage backend as the load generators name it: the server's `io_backend`, and
/// `uring-direct` and `std-direct` for `append_io = "direct"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "kebab-case")]
pub enum BenchBackend {
    Auto,
    #[value(alias = "io_uring", alias = "io-uring")]
    Uring,
    UringDirect,
    #[value(alias = "pwrite")]
    Std,
    StdDirect,
}

impl std::fmt::Display for BenchBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use clap::ValueEnum;
        let v = self.to_possible_value().expect("no variant is skipped");
        f.write_str(v.get_name())
    }
}

/// Options shared by the storage and scan load generators.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Directory under which a fresh temporary data directory is created (and removed).
    /// Default: ./target if it exists (same disk as the repository), else $TMPDIR.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// IO backends to run, comma separated; one run per backend.
    #[arg(
        long = "backends",
        alias = "backend",
        value_enum,
        value_delimiter = ',',
        default_value = "auto"
    )]
    pub backends: Vec<BenchBackend>,
    /// Segment file size in bytes.
    #[arg(long, default_value_t = 128 << 20)]
    pub segment_bytes: u64,
    /// The first segment's size (0: the default 256 KiB, doubling up to segment_bytes;
    /// segment_bytes: every segment full size).
    #[arg(long, default_value_t = 0)]
    pub initial_segment_bytes: u64,
    /// Write the JSON results to this file ("-" for stdout; the table then goes to stderr).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Tokio worker threads for the appenders (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Storage(args) => storage::run_storage(&args),
        BenchCommand::Scan(args) => scan::run_scan(&args),
        BenchCommand::Grpc(args) => grpc::run_grpc(&args),
        BenchCommand::Catchup(args) => catchup::run_catchup(&args),
    }
}

// ---------------------------------------------------------------------------------------
// Helpers of spool's own load generators (the measuring ones are in `spool::measure`)

fn base_dir(dir: &Option<PathBuf>) -> PathBuf {
    if let Some(d) = dir {
        return d.clone();
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(t);
    }
    let target = PathBuf::from("target");
    if target.is_dir() {
        target
    } else {
        std::env::temp_dir()
    }
}

fn fresh_data_dir(dir: &Option<PathBuf>) -> Result<tempfile::TempDir> {
    let base = base_dir(dir);
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    tempfile::Builder::new()
        .prefix("spool-bench-")
        .tempdir_in(&base)
        .with_context(|| format!("creating a temporary directory in {}", base.display()))
}

fn storage_config(data_dir: &Path, backend: BenchBackend, common: &CommonArgs) -> StorageConfig {
    let mut config = StorageConfig::new(data_dir);
    (config.backend, config.append_io) = match backend {
        BenchBackend::Auto => (BackendChoice::Auto, AppendIo::Buffered),
        BenchBackend::Uring => (BackendChoice::Uring, AppendIo::Buffered),
        BenchBackend::UringDirect => (BackendChoice::Uring, AppendIo::Direct),
        BenchBackend::Std => (BackendChoice::Std, AppendIo::Buffered),
        BenchBackend::StdDirect => (BackendChoice::Std, AppendIo::Direct),
    };
    config.default_log.segment_bytes = common.segment_bytes;
    config.default_log.initial_segment_bytes = common.initial_segment_bytes;
    config
}
