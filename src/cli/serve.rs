//! `spool serve`: run a node until SIGINT/SIGTERM. Either signal stops it cleanly: no new
//! requests (UNAVAILABLE), streams ended, in-flight appends finished and acked, logs
//! fsync'd and closed, then exit 0 (deploy/spool.service relies on it).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use spool::config::{FileConfig, Overrides, ServerConfig};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML config file (flags and environment override it).
    #[arg(long, env = "SPOOL_CONFIG")]
    pub config: Option<PathBuf>,
    /// A name put on every log line ("[NAME] " in text, "node": NAME in JSON), to tell
    /// nodes apart when their logs are interleaved (as `spool dev-cluster` does).
    #[arg(long, env = "SPOOL_LOG_LABEL", value_name = "NAME")]
    pub log_label: Option<String>,
    #[command(flatten)]
    pub overrides: Overrides,
}

/// Raise the soft open-files limit to the hard one (logs hold descriptors, see
/// `open_logs_max`); returns (soft before, soft now, hard).
fn raise_open_files_limit() -> (u64, u64, u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct they are given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return (0, 0, 0);
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    (before, lim.rlim_cur, lim.rlim_max)
}

pub fn run(args: ServeArgs) -> Result<()> {
    // Before the config: the default number of logs kept open follows the limit.
    let (before, soft, hard) = raise_open_files_limit();
    let file = match &args.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let config = ServerConfig::build(file, args.overrides)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("spool-grpc")
        .build()?;
    tracing::info!(
        soft_before = before,
        soft,
        hard,
        open_logs_max = config.storage.open_logs_max,
        max_connections = config.connections.max_connections,
        "open files limit"
    );
    rt.block_on(async {
        let shutdown = shutdown_signal()?;
        spool::server::serve(config, shutdown, |addr| {
            // Tests and scripts read this line to find a port chosen with :0.
            println!("spool listening on {addr}");
        })
        .await
    })
}

/// Resolves at SIGINT or SIGTERM. The handlers are installed now, not when the future is
/// first polled (once serving begins): a signal sent as soon as the address is printed
/// would otherwise kill the process without its clean stop.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}
