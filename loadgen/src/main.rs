//! `spool-loadgen`: load generators for the peers `benches/replication_vs_peers.sh` sets
//! beside Spool's replication (Redis primary + replica with WAIT, NATS JetStream). They
//! live outside the server binary; Spool's own load generators are `spool bench`.
//!
//! Also the tools of the failover bench (`benches/failover_rounds.sh`): writers recording
//! every ack while faults run, for Spool and for Redis Sentinel, the checks after each
//! round, a TCP proxy that can be cut, and `spool-append` against a node the script
//! started (`benches/cluster_overhead.sh`).
//!
//! `plot` draws the committed bench results (`benches/results/`) as SVG charts.
//!
//! Both report records/s, p50/p99/p99.9 of send-to-ack and the load generator's CPU (the
//! servers' CPU too when `--server-pid` is given), as `spool bench` does
//! (`spool::measure`).

mod cut_proxy;
mod failover;
mod nats;
mod peer;
mod plot;
mod redis;
mod sentinel;
mod spool_append;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "spool-loadgen",
    version,
    about = "Load generators for the peers Spool is measured against"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Redis primary + replica: SET then WAIT N 0 per write, over RESP.
    RedisWait(peer::PeerArgs),
    /// NATS JetStream: publishes awaiting their ack, file storage.
    NatsJs(peer::PeerArgs),
    /// Spool node started by the caller: unary appends, async or semi-sync:N (--wait-replicas).
    SpoolAppend(peer::PeerArgs),
    /// Failover bench: semi-sync:1 and sync appends to whichever node leads, every ack recorded.
    FailoverWriter(failover::WriterArgs),
    /// Failover bench: acked records lost, split-brain epochs and failover time so far.
    FailoverCheck(failover::CheckArgs),
    /// Failover bench: SET + WAIT on the master Sentinel names, every confirmed write recorded.
    SentinelWriter(sentinel::SentinelWriterArgs),
    /// Failover bench: confirmed writes the current master lacks, and failover time.
    SentinelCheck(sentinel::SentinelCheckArgs),
    /// A TCP forwarder: SIGUSR1 cuts every connection and refuses new ones, SIGUSR2 restores.
    CutProxy(cut_proxy::ProxyArgs),
    /// SVG charts of the bench results committed under benches/results (per commit).
    Plot(plot::PlotArgs),
}

fn main() -> std::process::ExitCode {
    let result = match Cli::parse().command {
        Command::RedisWait(args) => redis::run_redis_wait(&args),
        Command::NatsJs(args) => nats::run_nats_js(&args),
        Command::SpoolAppend(args) => spool_append::run_spool_append(&args),
        Command::FailoverWriter(args) => failover::run_writer(&args),
        Command::FailoverCheck(args) => failover::run_check(&args),
        Command::SentinelWriter(args) => sentinel::run_writer(&args),
        Command::SentinelCheck(args) => sentinel::run_check(&args),
        Command::CutProxy(args) => cut_proxy::run_proxy(&args),
        Command::Plot(args) => plot::run(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
